package main

import (
	"os"

	"github.com/alecthomas/kong"

	"github.com/ddraid/ddraid/internal/clidoc"
)

// CompletionCmd is the hidden `ddraid completion`; the packages install its
// output as /usr/share/bash-completion/completions/ddraid.
type CompletionCmd struct {
	Bash CompletionBashCmd `cmd:"" help:"Print the bash completion script."`
}

// CompletionBashCmd is `ddraid completion bash`.
type CompletionBashCmd struct{}

// Run prints the script.
func (c *CompletionBashCmd) Run(kctx *kong.Context) error {
	_, err := os.Stdout.Write(clidoc.Bash(kctx.Model))
	return err
}
