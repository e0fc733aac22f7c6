package main

import (
	"os"

	"github.com/alecthomas/kong"

	"github.com/ddraid/ddraid/internal/clidoc"
)

// CompletionCmd is the hidden `ddraid completion`; the packages install its
// output as /usr/share/bash-completion/completions/ddraid,
// /usr/share/zsh/vendor-completions/_ddraid and
// /usr/share/fish/vendor_completions.d/ddraid.fish.
type CompletionCmd struct {
	Bash CompletionBashCmd `cmd:"" help:"Print the bash completion script."`
	Zsh  CompletionZshCmd  `cmd:"" help:"Print the zsh completion script (install as _ddraid in a directory of $fpath)."`
	Fish CompletionFishCmd `cmd:"" help:"Print the fish completion script (install as ddraid.fish in a completions directory)."`
}

// CompletionBashCmd is `ddraid completion bash`.
type CompletionBashCmd struct{}

// Run prints the script.
func (c *CompletionBashCmd) Run(kctx *kong.Context) error {
	_, err := os.Stdout.Write(clidoc.Bash(kctx.Model))
	return err
}

// CompletionZshCmd is `ddraid completion zsh`.
type CompletionZshCmd struct{}

// Run prints the script.
func (c *CompletionZshCmd) Run(kctx *kong.Context) error {
	_, err := os.Stdout.Write(clidoc.Zsh(kctx.Model))
	return err
}

// CompletionFishCmd is `ddraid completion fish`.
type CompletionFishCmd struct{}

// Run prints the script.
func (c *CompletionFishCmd) Run(kctx *kong.Context) error {
	_, err := os.Stdout.Write(clidoc.Fish(kctx.Model))
	return err
}
