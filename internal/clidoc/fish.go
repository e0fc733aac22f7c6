package clidoc

import (
	"bytes"
	"fmt"
	"strings"

	"github.com/alecthomas/kong"
)

// Fish renders a fish completion script for the application (install it
// as NAME.fish in a vendor_completions.d directory, or source it): command
// names with their help, flags with their help (global ones everywhere),
// enum values, file or directory names for flags that take paths and for
// arguments — what the bash script completes, with descriptions.
func Fish(app *kong.Application) []byte {
	name := app.Name
	fn := "__" + strings.NewReplacer("-", "_", ".", "_").Replace(name)
	nodes := tree(app)

	var b bytes.Buffer
	fmt.Fprintf(&b, "# fish completion for %s, generated from its command line.\n", name)
	fmt.Fprintf(&b, "# Regenerate with `%s completion fish`.\n\n", name)

	// Subcommands of each command path.
	fmt.Fprintf(&b, "function %s_commands --description 'Subcommands of a command path'\n\tswitch \"$argv[1]\"\n", fn)
	for _, nd := range nodes {
		if subs := subcommandNames(nd.n); len(subs) > 0 {
			fmt.Fprintf(&b, "\tcase %s\n\t\tprintf '%%s\\n' %s\n", fishQuote(nd.path), strings.Join(subs, " "))
		}
	}
	b.WriteString("\tend\nend\n\n")

	// Flags taking a value, keyed by "PATH --flag" (globals: "--flag").
	fmt.Fprintf(&b, "function %s_takes_value --description 'Does a flag of a command path take a value'\n\tswitch \"$argv[1]\"\n", fn)
	var valued []string
	for _, nd := range nodes {
		for _, f := range visibleFlags(nd.n) {
			if takesValue(f) {
				valued = append(valued, fishQuote(strings.TrimSpace(nd.path+" --"+f.Name)))
			}
		}
	}
	if len(valued) > 0 {
		fmt.Fprintf(&b, "\tcase %s\n\t\treturn 0\n", strings.Join(valued, " "))
	}
	b.WriteString("\tend\n\treturn 1\nend\n\n")

	// The command path of the command line: command names move down the
	// tree, flags are skipped with their values.
	fmt.Fprintf(&b, `function %[1]s_path --description 'The command path of the command line'
	set -l path ''
	set -l skip 0
	set -l words (commandline -opc)
	set -e words[1]
	for w in $words
		if test $skip = 1
			set skip 0
			continue
		end
		switch $w
			case '--*=*'
			case '--*'
				if %[1]s_takes_value (string trim -- "$path $w"); or %[1]s_takes_value $w
					set skip 1
				end
			case '-*'
			case '*'
				if contains -- $w (%[1]s_commands "$path")
					set path (string trim -- "$path $w")
				end
		end
	end
	echo $path
end

function %[1]s_at --description 'Is the command line at this command path'
	test (%[1]s_path) = "$argv[1]"
end

`, fn)

	fmt.Fprintf(&b, "complete -c %s -e\n", name)
	// Nothing completes file names unless said below.
	fmt.Fprintf(&b, "complete -c %s -f\n", name)
	for _, nd := range nodes {
		at := fishQuote(fn + "_at " + fishQuote(nd.path))
		for _, c := range subcommands(nd.n) {
			fmt.Fprintf(&b, "complete -c %s -n %s -a %s -d %s\n", name, at, fishQuote(c.Name), fishQuote(oneLine(c.Help)))
		}
		cond := " -n " + at
		if nd.path == "" {
			cond = "" // global flags: after every command too
		}
		for _, f := range visibleFlags(nd.n) {
			fmt.Fprintf(&b, "complete -c %s%s%s\n", name, cond, fishFlag(f))
		}
		if len(subcommands(nd.n)) == 0 && len(nd.n.Positional) > 0 {
			// Arguments complete file names, as in the bash script.
			fmt.Fprintf(&b, "complete -c %s -n %s -F\n", name, at)
		}
	}
	return b.Bytes()
}

// fishFlag is the options of a `complete` line for a flag: its names,
// help, and what its value completes to.
func fishFlag(f *kong.Flag) string {
	var b strings.Builder
	if f.Short != 0 {
		fmt.Fprintf(&b, " -s %s", fishQuote(string(f.Short)))
	}
	fmt.Fprintf(&b, " -l %s", fishQuote(f.Name))
	if f.Help != "" {
		fmt.Fprintf(&b, " -d %s", fishQuote(oneLine(f.Help)))
	}
	switch valueKind(f) {
	case "-":
	case "@file":
		b.WriteString(" -r -F")
	case "@dir":
		b.WriteString(" -x -a '(__fish_complete_directories (commandline -ct))'")
	case "@any":
		b.WriteString(" -x")
	default:
		// -a is split like a command line: escape what would split a value.
		var words []string
		for _, w := range f.EnumSlice() {
			words = append(words, strings.NewReplacer(`\`, `\\`, " ", `\ `, "'", `\'`, `"`, `\"`).Replace(w))
		}
		fmt.Fprintf(&b, " -x -a %s", fishQuote(strings.Join(words, " ")))
	}
	return b.String()
}

// fishQuote quotes s for fish: inside single quotes only \ and ' are
// special.
func fishQuote(s string) string {
	return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(s) + "'"
}
