package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/ddraid/ddraid/cluster"
	"github.com/ddraid/ddraid/cluster/serve"
	"github.com/ddraid/ddraid/internal/units"
	"github.com/ddraid/ddraid/raid"
	"github.com/ddraid/ddraid/raid/array"
	"github.com/ddraid/ddraid/raid/meta"
	"github.com/ddraid/ddraid/resync"
)

// StatusCmd is `ddraid status`.
type StatusCmd struct {
	Name     string        `arg:"" optional:"" help:"Array name (default: every array)."`
	JSON     bool          `help:"Print JSON."`
	Watch    bool          `help:"Redraw every interval until interrupted, with progress bars."`
	Interval time.Duration `help:"Redraw interval for --watch." default:"1s"`
}

// Run prints the status.
func (c *StatusCmd) Run(g *Globals) error {
	if !c.Watch {
		return c.once(g)
	}
	for {
		fmt.Print("\033[H\033[2J")
		fmt.Println(time.Now().Format(time.DateTime))
		if err := c.once(g); err != nil {
			return err
		}
		time.Sleep(c.Interval)
	}
}

func (c *StatusCmd) once(g *Globals) error {
	out, err := collectStatus(g.StateDir, c.Name)
	if err != nil {
		return err
	}
	if c.JSON {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(out)
	}
	if len(out) == 0 {
		fmt.Printf("no arrays in %s\n", g.StateDir)
		return nil
	}
	clustered, nodes := clusterArrays(g)
	for i, s := range out {
		if i > 0 {
			fmt.Println()
		}
		printStatus(s)
		for _, ca := range clustered {
			if ca.Name == s.Name {
				fmt.Println("  cluster:")
				var b strings.Builder
				serve.WriteStatus(&b, []serve.ArrayStatus{ca})
				for _, line := range strings.Split(strings.TrimRight(b.String(), "\n"), "\n") {
					fmt.Println("    " + strings.TrimSpace(line))
				}
			}
		}
	}
	if nodes != nil {
		fmt.Println()
		fmt.Print("cluster ")
		return cluster.WriteStatus(os.Stdout, *nodes)
	}
	return nil
}

// clusterArrays returns what the state dir's agent says of the arrays it
// serves in cluster mode and of the cluster's nodes: nothing when no agent
// runs there or it is not in cluster mode.
func clusterArrays(g *Globals) ([]serve.ArrayStatus, *cluster.Status) {
	path := agentControl(g, "")
	if _, err := os.Stat(path); err != nil {
		return nil, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	arrays, err := serve.Arrays(ctx, path)
	if err != nil {
		return nil, nil
	}
	st, err := cluster.DialControl(path).Status(ctx)
	if err != nil {
		return arrays, nil
	}
	return arrays, &st
}

// collectStatus returns the status of the named array (or all): from the
// serving process when there is one, else from the stored metadata.
func collectStatus(stateDir, name string) ([]array.Status, error) {
	out := []array.Status{}
	var sbs []*meta.Array
	err := meta.View(stateDir, func(s *meta.Store) error {
		names := []string{name}
		if name == "" {
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
			sbs = append(sbs, a)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	for _, sb := range sbs {
		if cl := controlFor(stateDir, sb.Name); cl != nil {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			live, err := cl.Status(ctx)
			cancel()
			found := false
			for _, s := range live {
				if err == nil && s.Name == sb.Name {
					out = append(out, s)
					found = true
				}
			}
			if found {
				continue
			}
		}
		out = append(out, array.Status{Status: raid.Describe(stateDir, sb)})
	}
	return out, nil
}

func printStatus(s array.Status) {
	geom := fmt.Sprintf("block size %d", s.BlockSize)
	if s.Parity != "" {
		geom += ", parity " + s.Parity
	}
	fmt.Printf("%s: %s %s, %s, %s, events %d\n", s.Name, s.Level, s.State, units.FormatSize(s.Size), geom, s.Events)
	fmt.Printf("  uuid %s\n", s.UUID)
	if s.Serving != nil {
		fmt.Printf("  served by pid %d at %s; %d dirty bitmap regions\n", s.Serving.PID, strings.Join(s.Serving.Listen, ", "), s.DirtyRegions)
		if s.ReadBalancing != nil {
			on := "off"
			if *s.ReadBalancing {
				on = "on"
			}
			fmt.Printf("  read balancing %s; %d reads balanced\n", on, s.ReadsAround)
		}
	} else {
		fmt.Println("  not served")
	}
	if s.Job != nil {
		fmt.Printf("  %s\n", progressLine(*s.Job))
	} else if s.Queued > 0 {
		fmt.Printf("  %d jobs queued\n", s.Queued)
	}
	if s.LastJob != nil && s.Job == nil {
		l := s.LastJob
		res := "done"
		if l.Error != "" {
			res = "stopped: " + l.Error
		}
		fmt.Printf("  last %s: %s, %s", l.Kind, res, units.FormatSize(l.Done))
		if l.Kind == resync.KindCheck || l.Kind == resync.KindRepair {
			fmt.Printf(", %d mismatches", l.Mismatches)
		}
		fmt.Println()
	}
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "  ROLE\tSTATE\tPATH")
	for _, m := range s.Members {
		path := m.Path
		if path == "" {
			path = "(removed)"
		}
		fmt.Fprintf(tw, "  %d\t%s\t%s\n", m.Role, m.State, path)
	}
	for _, m := range s.Spares {
		fmt.Fprintf(tw, "  -\tspare\t%s\n", m.Path)
	}
	tw.Flush()
}

// progressLine formats a job's progress with a bar:
// "recover [=======>     ] 58.1% 1.2 GiB/2.0 GiB 150.0 MiB/s ETA 6s".
func progressLine(p resync.Progress) string {
	const width = 30
	pct := p.Percent()
	n := int(pct / 100 * width)
	bar := strings.Repeat("=", n) + strings.Repeat(" ", width-n)
	if n > 0 && n < width {
		bar = strings.Repeat("=", n-1) + ">" + strings.Repeat(" ", width-n)
	}
	line := fmt.Sprintf("%s [%s] %5.1f%% %s/%s %s/s ETA %s", p.Kind, bar, pct,
		units.FormatSize(p.Done), units.FormatSize(p.Total), units.FormatSize(int64(p.Rate)),
		(time.Duration(p.ETA) * time.Second).Round(time.Second))
	if p.Kind == resync.KindRecover && p.Member >= 0 {
		line += fmt.Sprintf(" (member %d)", p.Member)
	}
	return line
}
