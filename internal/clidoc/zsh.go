package clidoc

import (
	"bytes"
	"fmt"
	"strings"

	"github.com/alecthomas/kong"
)

// cmdNode is one command of the tree: its words after the program, space
// separated ("" for the program itself), and its kong node.
type cmdNode struct {
	path string
	n    *kong.Node
}

// tree returns the program and every visible command below it, depth
// first in model order, groups included.
func tree(app *kong.Application) []cmdNode {
	var nodes []cmdNode
	var walk func(n *kong.Node, path string)
	walk = func(n *kong.Node, path string) {
		nodes = append(nodes, cmdNode{path, n})
		for _, c := range subcommands(n) {
			walk(c, strings.TrimSpace(path+" "+c.Name))
		}
	}
	walk(app.Node, "")
	return nodes
}

// subcommandNames are the names of subcommands(n).
func subcommandNames(n *kong.Node) []string {
	var out []string
	for _, c := range subcommands(n) {
		out = append(out, c.Name)
	}
	return out
}

// subcommands are the visible commands directly below n.
func subcommands(n *kong.Node) []*kong.Node {
	var out []*kong.Node
	for _, c := range n.Children {
		if c.Type == kong.CommandNode && !c.Hidden {
			out = append(out, c)
		}
	}
	return out
}

// funcName is the shell function name of a command path: "_ddraid",
// "_ddraid_config_check".
func funcName(app, path string) string {
	r := strings.NewReplacer("-", "_", ".", "_", " ", "_")
	if path == "" {
		return "_" + r.Replace(app)
	}
	return "_" + r.Replace(app) + "_" + r.Replace(path)
}

// Zsh renders a zsh completion script for the application (install it as
// _NAME in a directory of $fpath, or source it): command names with their
// help, flags with their help (global ones everywhere), enum values, file
// or directory names for flags that take paths and for arguments — what
// the bash script completes, with descriptions.
func Zsh(app *kong.Application) []byte {
	name := app.Name
	root := funcName(name, "")
	nodes := tree(app)
	globals := visibleFlags(app.Node)

	var b bytes.Buffer
	fmt.Fprintf(&b, "#compdef %s\n", name)
	fmt.Fprintf(&b, "# zsh completion for %s, generated from its command line.\n", name)
	fmt.Fprintf(&b, "# Regenerate with `%s completion zsh`.\n\n", name)

	// The global flags, accepted before and after every command name.
	fmt.Fprintf(&b, "%s_globals=(\n", root)
	for _, f := range globals {
		for _, s := range zshFlagSpecs(f) {
			fmt.Fprintf(&b, "\t%s\n", s)
		}
	}
	b.WriteString(")\n\n")

	for i := len(nodes) - 1; i >= 0; i-- {
		nd := nodes[i]
		fn := funcName(name, nd.path)
		fmt.Fprintf(&b, "%s() {\n", fn)
		var specs []string
		if nd.path != "" {
			for _, f := range visibleFlags(nd.n) {
				specs = append(specs, zshFlagSpecs(f)...)
			}
		}
		subs := subcommands(nd.n)
		if len(subs) == 0 {
			for _, p := range nd.n.Positional {
				specs = append(specs, zshArgSpec(p))
			}
			b.WriteString("\t_arguments -S \\\n")
			fmt.Fprintf(&b, "\t\t\"${%s_globals[@]}\"", root)
			for _, s := range specs {
				fmt.Fprintf(&b, " \\\n\t\t%s", s)
			}
			b.WriteString("\n}\n\n")
			continue
		}
		b.WriteString("\tlocal curcontext=\"$curcontext\" state state_descr line ret=1\n")
		b.WriteString("\tlocal -A opt_args\n")
		b.WriteString("\t_arguments -C -S \\\n")
		fmt.Fprintf(&b, "\t\t\"${%s_globals[@]}\"", root)
		for _, s := range specs {
			fmt.Fprintf(&b, " \\\n\t\t%s", s)
		}
		b.WriteString(" \\\n\t\t'1: :->command' \\\n\t\t'*:: :->args' && ret=0\n")
		b.WriteString("\tcase $state in\n\tcommand)\n\t\tlocal -a cmds\n\t\tcmds=(\n")
		for _, c := range subs {
			fmt.Fprintf(&b, "\t\t\t%s\n", shellQuote(zshEscape(c.Name, ":")+":"+oneLine(c.Help)))
		}
		what := "command"
		if nd.path != "" {
			what = nd.path + " command"
		}
		fmt.Fprintf(&b, "\t\t)\n\t\t_describe -t commands %s cmds && ret=0\n\t\t;;\n", shellQuote(name+" "+what))
		b.WriteString("\targs)\n\t\tcurcontext=\"${curcontext%:*:*}:" + strings.ReplaceAll(fn, "_", "-")[1:] + "-$words[1]:\"\n")
		b.WriteString("\t\tcase $words[1] in\n")
		for _, c := range subs {
			fmt.Fprintf(&b, "\t\t%s) %s && ret=0 ;;\n", shellQuote(c.Name), funcName(name, strings.TrimSpace(nd.path+" "+c.Name)))
		}
		b.WriteString("\t\tesac\n\t\t;;\n\tesac\n\treturn ret\n}\n\n")
	}
	// Autoloaded from $fpath the file is the body of the root function:
	// run it. Sourced, it registers the function.
	fmt.Fprintf(&b, "if [ \"$funcstack[1]\" = %s ]; then\n\t%s \"$@\"\nelse\n\tcompdef %s %s\nfi\n", shellQuote(root), root, root, name)
	return b.Bytes()
}

// zshFlagSpecs are the _arguments specs of a flag, quoted for the shell:
// '--name=[help]:PLACEHOLDER:action' ("*" first when it may be repeated;
// a short form excludes the long one and back).
func zshFlagSpecs(f *kong.Flag) []string {
	help := "[" + zshEscape(oneLine(f.Help), "[]:") + "]"
	value := ""
	if takesValue(f) {
		value = ":" + zshEscape(placeholder(f), ":") + ":" + zshAction(f)
	}
	repeat := f.IsSlice() || f.IsCounter()
	forms := []string{"--" + f.Name}
	if f.Short != 0 {
		forms = append([]string{"-" + string(f.Short)}, forms...)
	}
	var out []string
	for _, form := range forms {
		s := form
		if takesValue(f) {
			if form == "--"+f.Name {
				s += "=" // --flag=value or --flag value
			} else {
				s += "+" // -fvalue or -f value
			}
		}
		prefix := ""
		switch {
		case repeat:
			prefix = "*"
		case len(forms) > 1:
			prefix = "(" + strings.Join(forms, " ") + ")"
		}
		out = append(out, shellQuote(prefix+s+help+value))
	}
	return out
}

// zshAction is what a flag's value completes to, as an _arguments action.
func zshAction(f *kong.Flag) string {
	switch k := valueKind(f); k {
	case "@dir":
		return "_files -/"
	case "@file":
		return "_files"
	case "@any":
		return " " // show the placeholder, complete nothing
	default:
		var words []string
		for _, w := range f.EnumSlice() {
			words = append(words, zshEscape(w, "() :"))
		}
		return "(" + strings.Join(words, " ") + ")"
	}
}

// zshArgSpec is the _arguments spec of a positional argument: arguments
// complete file names, as in the bash script.
func zshArgSpec(p *kong.Positional) string {
	prefix := ":"
	if !p.Required {
		prefix = "::"
	}
	if p.IsCumulative() {
		prefix = "*" + prefix
	}
	return shellQuote(prefix + zshEscape(strings.ToUpper(p.Name), ":") + ":_files")
}

// zshEscape puts a backslash before backslashes and the given characters.
func zshEscape(s, chars string) string {
	var b strings.Builder
	for _, r := range s {
		if r == '\\' || strings.ContainsRune(chars, r) {
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	return b.String()
}

// oneLine folds help text to one line.
func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }
