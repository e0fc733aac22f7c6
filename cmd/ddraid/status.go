package main

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/ddraid/ddraid/internal/units"
	"github.com/ddraid/ddraid/raid"
	"github.com/ddraid/ddraid/raid/meta"
)

// StatusCmd is `ddraid status`.
type StatusCmd struct {
	Name string `arg:"" optional:"" help:"Array name (default: every array)."`
	JSON bool   `help:"Print JSON."`
}

// Run prints the status.
func (c *StatusCmd) Run(g *Globals) error {
	var out []raid.Status
	err := meta.View(g.StateDir, func(s *meta.Store) error {
		names := []string{c.Name}
		if c.Name == "" {
			var err error
			if names, err = s.List(); err != nil {
				return err
			}
		}
		for _, n := range names {
			a, err := s.Get(n)
			if err != nil {
				return err
			}
			out = append(out, raid.Describe(g.StateDir, a))
		}
		return nil
	})
	if err != nil {
		return err
	}
	if c.JSON {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		if out == nil {
			out = []raid.Status{}
		}
		return enc.Encode(out)
	}
	if len(out) == 0 {
		fmt.Printf("no arrays in %s\n", g.StateDir)
		return nil
	}
	for i, s := range out {
		if i > 0 {
			fmt.Println()
		}
		printStatus(s)
	}
	return nil
}

func printStatus(s raid.Status) {
	geom := fmt.Sprintf("block size %d", s.BlockSize)
	if s.Parity != "" {
		geom += ", parity " + s.Parity
	}
	fmt.Printf("%s: %s %s, %s, %s, events %d\n", s.Name, s.Level, s.State, units.FormatSize(s.Size), geom, s.Events)
	fmt.Printf("  uuid %s\n", s.UUID)
	if s.Serving != nil {
		fmt.Printf("  served by pid %d at %s\n", s.Serving.PID, strings.Join(s.Serving.Listen, ", "))
	} else {
		fmt.Println("  not served")
	}
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "  ROLE\tSTATE\tPATH")
	for _, m := range s.Members {
		fmt.Fprintf(tw, "  %d\t%s\t%s\n", m.Role, m.State, m.Path)
	}
	tw.Flush()
}
