// Package clidoc renders a kong command line as a manual page (roff with
// the man(7) macros) and as bash, zsh and fish completion scripts, by
// walking the kong model: commands added later appear in all of them
// without being listed here. Hidden commands and flags are left out. The
// three scripts complete the same things: command names, flags (global
// ones after every command too), enum values, file or directory names for
// flags that take paths, file names for arguments; zsh and fish show the
// help text beside each candidate.
package clidoc

import (
	"bytes"
	"fmt"
	"slices"
	"strings"

	"github.com/alecthomas/kong"
)

// ManOptions describe the parts of a manual page the model does not hold.
type ManOptions struct {
	Section string // "1"
	Date    string // shown in the footer, e.g. "2026-11-21"; may be empty
	Version string // shown in the footer, e.g. "ddraid 1.2.0"
	Manual  string // shown in the header, e.g. "User Commands"
	Summary string // the NAME line after "name \-"
	// Description paragraphs follow the model's own description.
	Description []string
	// FlagNote, when set, adds a sentence to a flag's entry (e.g. its
	// configuration key); "" adds nothing.
	FlagNote func(f *kong.Flag) string
	// Extra sections come after COMMANDS (FILES, ENVIRONMENT, ...).
	Extra []ManSection
}

// ManSection is one extra top-level section of the page.
type ManSection struct {
	Title      string   // upper case by convention
	Paragraphs []string // plain text; a paragraph starting with "  " is shown as a literal, unfilled block
}

// Man renders the manual page of the application.
func Man(app *kong.Application, o ManOptions) []byte {
	var b bytes.Buffer
	name := app.Name
	fmt.Fprintf(&b, ".TH %s %s %s %s %s\n", quoteArg(strings.ToUpper(name)), quoteArg(o.Section),
		quoteArg(o.Date), quoteArg(o.Version), quoteArg(o.Manual))
	// No hyphenation, ragged right: option names, variables and keys
	// must not be split or stretched.
	b.WriteString(".nh\n.ad l\n")
	b.WriteString(".SH NAME\n")
	fmt.Fprintf(&b, "%s \\- %s\n", escape(name), escape(o.Summary))

	b.WriteString(".SH SYNOPSIS\n")
	fmt.Fprintf(&b, ".B %s\n", escape(name))
	b.WriteString(".RI [ \"GLOBAL OPTIONS\" ]\n.I COMMAND\n.RI [ OPTIONS ]\n.RI [ ARGUMENTS ]\n")

	b.WriteString(".SH DESCRIPTION\n")
	paras := []string{}
	if app.Help != "" {
		paras = append(paras, app.Help)
	}
	if app.Detail != "" {
		paras = append(paras, app.Detail)
	}
	paras = append(paras, o.Description...)
	writeParagraphs(&b, paras)

	if flags := visibleFlags(app.Node); len(flags) > 0 {
		b.WriteString(".SH GLOBAL OPTIONS\n")
		b.WriteString(".PP\nThese options are accepted by every command, before or after its name.\n")
		for _, f := range flags {
			writeFlag(&b, f, o.FlagNote)
		}
	}

	b.WriteString(".SH COMMANDS\n")
	for _, n := range commands(app.Node) {
		fmt.Fprintf(&b, ".SS %s\n", quoteArg(commandLine(name, n)))
		writeParagraphs(&b, []string{n.Help, n.Detail})
		for _, p := range n.Positional {
			fmt.Fprintf(&b, ".TP\n.I %s\n%s\n", escape(argName(p)), escape(p.Help))
		}
		for _, f := range visibleFlags(n) {
			writeFlag(&b, f, o.FlagNote)
		}
	}
	for _, s := range o.Extra {
		fmt.Fprintf(&b, ".SH %s\n", quoteArg(s.Title))
		writeParagraphs(&b, s.Paragraphs)
	}
	return b.Bytes()
}

// commands returns every visible command that runs something, depth first
// in model order (a group such as `config` is left out, its subcommands
// are listed).
func commands(n *kong.Node) []*kong.Node {
	var out []*kong.Node
	for _, c := range n.Children {
		if c.Type != kong.CommandNode || c.Hidden {
			continue
		}
		sub := commands(c)
		if len(sub) == 0 || len(c.Flags) > 0 || len(c.Positional) > 0 {
			out = append(out, c)
		}
		out = append(out, sub...)
	}
	return out
}

// commandLine is the .SS heading: "ddraid serve NAMES...".
func commandLine(app string, n *kong.Node) string {
	parts := []string{app, n.Path()}
	for _, p := range n.Positional {
		parts = append(parts, argName(p))
	}
	return strings.Join(parts, " ")
}

func argName(p *kong.Positional) string {
	s := strings.ToUpper(p.Name)
	if p.IsCumulative() {
		s += "..."
	}
	if !p.Required {
		s = "[" + s + "]"
	}
	return s
}

func visibleFlags(n *kong.Node) []*kong.Flag {
	var out []*kong.Flag
	for _, f := range n.Flags {
		if !f.Hidden {
			out = append(out, f)
		}
	}
	return out
}

// placeholder is the word shown for a flag's value.
func placeholder(f *kong.Flag) string {
	if f.PlaceHolder != "" {
		return f.PlaceHolder
	}
	return strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
}

func takesValue(f *kong.Flag) bool { return !f.IsBool() && !f.IsCounter() }

func writeFlag(b *bytes.Buffer, f *kong.Flag, note func(*kong.Flag) string) {
	b.WriteString(".TP\n")
	if f.Short != 0 {
		fmt.Fprintf(b, "\\fB\\-%s\\fR, ", escape(string(f.Short)))
	}
	fmt.Fprintf(b, "\\fB\\-\\-%s\\fR", optionName(f.Name))
	if takesValue(f) {
		fmt.Fprintf(b, "=\\fI%s\\fR", escape(placeholder(f)))
	}
	b.WriteString("\n")
	var text []string
	if f.Help != "" {
		text = append(text, f.Help)
	}
	if f.IsSlice() {
		text = append(text, "May be given more than once.")
	}
	if f.Enum != "" && !mentionsAll(f.Help, f.EnumSlice()) {
		text = append(text, "One of: "+strings.Join(f.EnumSlice(), ", ")+".")
	}
	if f.HasDefault && f.Default != "" {
		text = append(text, "Default: "+f.Default+".")
	}
	if len(f.Envs) > 0 {
		text = append(text, "Environment: "+strings.Join(f.Envs, ", ")+".")
	}
	if note != nil {
		if s := note(f); s != "" {
			text = append(text, s)
		}
	}
	b.WriteString(line(strings.Join(text, " ")))
}

// mentionsAll says whether help already names every word.
func mentionsAll(help string, words []string) bool {
	for _, w := range words {
		if !strings.Contains(help, w) {
			return false
		}
	}
	return true
}

// writeParagraphs writes .PP paragraphs; one starting with two spaces is
// an unfilled example block.
func writeParagraphs(b *bytes.Buffer, paras []string) {
	for _, p := range paras {
		if strings.TrimSpace(p) == "" {
			continue
		}
		if strings.HasPrefix(p, "  ") {
			b.WriteString(".PP\n.nf\n.RS 4\n")
			for _, l := range strings.Split(strings.TrimRight(p, "\n"), "\n") {
				b.WriteString(line(strings.TrimPrefix(l, "  ")))
			}
			b.WriteString(".RE\n.fi\n")
			continue
		}
		b.WriteString(".PP\n")
		b.WriteString(line(strings.Join(strings.Fields(p), " ")))
	}
}

// line escapes one line of running text and ends it.
func line(s string) string {
	s = escape(s)
	if strings.HasPrefix(s, ".") || strings.HasPrefix(s, "'") {
		s = `\&` + s
	}
	return s + "\n"
}

// escape makes text safe for roff: backslashes, and characters outside
// ASCII as \[uXXXX] so no input encoding has to be guessed.
func escape(s string) string {
	var b strings.Builder
	for _, r := range s {
		switch {
		case r == '\\':
			b.WriteString(`\e`)
		case r == '\n' || r == '\r' || r == '\t':
			b.WriteByte(' ')
		case r < 0x20 || r == 0x7f:
			// control characters have no place on a page
		case r > 0x7e:
			fmt.Fprintf(&b, `\[u%04X]`, r)
		default:
			b.WriteRune(r)
		}
	}
	return b.String()
}

// optionName escapes a flag name so its hyphens print as hyphen-minus.
func optionName(s string) string { return strings.ReplaceAll(escape(s), "-", `\-`) }

// quoteArg quotes a macro argument.
func quoteArg(s string) string {
	return `"` + strings.ReplaceAll(escape(s), `"`, `\(dq`) + `"`
}

// Bash renders a bash completion script for the application: command
// names, flags (global ones everywhere), enum values, and file or
// directory names for flags that take paths and for arguments.
func Bash(app *kong.Application) []byte {
	name := app.Name
	fn := funcName(name, "")
	nodes := tree(app)

	var b bytes.Buffer
	fmt.Fprintf(&b, "# bash completion for %s, generated from its command line.\n", name)
	fmt.Fprintf(&b, "# Regenerate with `%s completion bash`.\n\n", name)

	// Subcommands of each command path.
	fmt.Fprintf(&b, "%s_commands() {\n\tcase \"$1\" in\n", fn)
	for _, nd := range nodes {
		if subs := subcommandNames(nd.n); len(subs) > 0 {
			fmt.Fprintf(&b, "\t%s) echo %s ;;\n", shellQuote(nd.path), shellQuote(strings.Join(subs, " ")))
		}
	}
	b.WriteString("\tesac\n}\n\n")

	// Flags of each command path (its own; the caller adds the globals).
	fmt.Fprintf(&b, "%s_flags() {\n\tcase \"$1\" in\n", fn)
	for _, nd := range nodes {
		var fl []string
		for _, f := range visibleFlags(nd.n) {
			fl = append(fl, "--"+f.Name)
		}
		if len(fl) > 0 {
			fmt.Fprintf(&b, "\t%s) echo %s ;;\n", shellQuote(nd.path), shellQuote(strings.Join(fl, " ")))
		}
	}
	b.WriteString("\tesac\n}\n\n")

	// What a flag's value completes to, keyed by "PATH --flag":
	// "-" takes no value, "@file", "@dir", "@any", or a list of words.
	fmt.Fprintf(&b, "%s_value() {\n\tcase \"$1\" in\n", fn)
	for _, nd := range nodes {
		for _, f := range visibleFlags(nd.n) {
			fmt.Fprintf(&b, "\t%s) echo %s ;;\n", shellQuote(strings.TrimSpace(nd.path+" --"+f.Name)), shellQuote(valueKind(f)))
		}
	}
	b.WriteString("\t*) echo @any ;;\n\tesac\n}\n\n")

	fmt.Fprintf(&b, `%[1]s() {
	local cur=${COMP_WORDS[COMP_CWORD]} prev="" path="" i w kind flag cands=""
	COMPREPLY=()
	# Walk the words before the cursor: command names move down the tree,
	# flags are skipped with their values.
	i=1
	while [ "$i" -lt "$COMP_CWORD" ]; do
		w=${COMP_WORDS[i]}
		case "$w" in
		--*=*) ;;
		--*)
			if [ "${COMP_WORDS[i+1]}" = "=" ]; then
				i=$((i + 2))
			else
				kind=$(%[1]s_flagvalue "$path" "$w")
				[ "$kind" != "-" ] && i=$((i + 1))
			fi
			;;
		-*) ;;
		*)
			for c in $(%[1]s_commands "$path"); do
				if [ "$c" = "$w" ]; then path=${path:+$path }$w; break; fi
			done
			;;
		esac
		i=$((i + 1))
	done
	# The value of a flag: "--flag value", "--flag=value" (bash splits the
	# "=" into its own word).
	flag=""
	if [ "$cur" = "=" ]; then
		flag=${COMP_WORDS[COMP_CWORD-1]}; cur=""
	elif [ "$COMP_CWORD" -ge 2 ] && [ "${COMP_WORDS[COMP_CWORD-1]}" = "=" ]; then
		flag=${COMP_WORDS[COMP_CWORD-2]}
	elif [ "$COMP_CWORD" -ge 2 ]; then
		prev=${COMP_WORDS[COMP_CWORD-1]}
		case "$prev" in --*=*) ;; --*) flag=$prev ;; esac
	fi
	if [ -n "$flag" ]; then
		kind=$(%[1]s_flagvalue "$path" "$flag")
		case "$kind" in
		-) flag="" ;;
		@file) COMPREPLY=($(compgen -f -- "$cur")); return 0 ;;
		@dir) COMPREPLY=($(compgen -d -- "$cur")); return 0 ;;
		@any) return 0 ;;
		*) COMPREPLY=($(compgen -W "$kind" -- "$cur")); return 0 ;;
		esac
	fi
	case "$cur" in
	-*)
		cands="$(%[1]s_flags "")"
		[ -n "$path" ] && cands="$cands $(%[1]s_flags "$path")"
		COMPREPLY=($(compgen -W "$cands" -- "$cur"))
		;;
	*)
		cands=$(%[1]s_commands "$path")
		if [ -n "$cands" ]; then
			COMPREPLY=($(compgen -W "$cands" -- "$cur"))
		else
			COMPREPLY=($(compgen -f -- "$cur"))
		fi
		;;
	esac
	return 0
}

# %[1]s_flagvalue PATH FLAG: the value kind of FLAG for the command PATH,
# looking at the command's own flags, then the global ones.
%[1]s_flagvalue() {
	local k
	if [ -n "$1" ]; then
		k=$(%[1]s_value "$1 $2")
		[ "$k" != "@any" ] && { echo "$k"; return; }
		case " $(%[1]s_flags "$1") " in *" $2 "*) echo "$k"; return ;; esac
	fi
	%[1]s_value "$2"
}

complete -o filenames -F %[1]s %[2]s
`, fn, name)
	return b.Bytes()
}

// valueKind says what a flag's value completes to.
func valueKind(f *kong.Flag) string {
	if !takesValue(f) {
		return "-"
	}
	if f.Enum != "" {
		return strings.Join(f.EnumSlice(), " ")
	}
	typ := f.Tag.Type
	ph := strings.ToUpper(f.PlaceHolder)
	switch {
	case typ == "existingdir" || ph == "DIR":
		return "@dir"
	case slices.Contains([]string{"path", "existingfile", "filecontent"}, typ) || ph == "FILE" || ph == "PATH":
		return "@file"
	}
	return "@any"
}

// shellQuote quotes s for a POSIX shell.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
