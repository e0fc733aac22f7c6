package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/ddraid/ddraid/blockdev/remote"
	"github.com/ddraid/ddraid/raid"
	"github.com/ddraid/ddraid/raid/array"
	"github.com/ddraid/ddraid/resync"
)

// controlFor returns a client for the process serving the array, or nil
// when the array is not served.
func controlFor(stateDir, name string) *array.Client {
	ri, err := raid.ReadRunInfo(stateDir, name)
	if err != nil || ri.Control == "" {
		return nil
	}
	return array.NewClient(ri.Control)
}

// offlineAllowed refuses to change or check the stored metadata of an
// array that no process here serves while this node's agent runs in
// cluster mode: the array's writers elsewhere would not record the change,
// and their next update would overwrite it.
func offlineAllowed(g *Globals, name, action string) error {
	if _, nodes := clusterArrays(g); nodes != nil {
		return fmt.Errorf("%s %s: this node's agent runs in cluster mode and does not serve the array here; run it on a node whose agent serves it (--serve), so that every writer records it", action, name)
	}
	return nil
}

// act runs an action on a served array through its control socket, or on
// the stored metadata of a stopped one.
func act(g *Globals, name, action string, req array.Request, mt MemberTLS) error {
	if req.Path != "" {
		// The server resolves paths in its own directory: send absolute
		// ones (NBD URIs in canonical form).
		p, err := raid.MemberPath(req.Path)
		if err != nil {
			return fmt.Errorf("%s %s: %w", action, name, err)
		}
		req.Path = p
	}
	if c := controlFor(g.StateDir, name); c != nil {
		rep, err := c.Do(context.Background(), name, action, req)
		if err != nil {
			return fmt.Errorf("%s %s: %w", action, name, err)
		}
		fmt.Println(rep.Message)
		return nil
	}
	if err := offlineAllowed(g, name, action); err != nil {
		return err
	}
	tc, err := mt.config()
	if err != nil {
		return err
	}
	mo := raid.MemberOptions{Remote: remote.Config{TLS: tc, Logger: slog.Default()}}
	msg, err := array.OfflineUpdate(g.StateDir, name, action, req, mo)
	if err != nil {
		return fmt.Errorf("%s %s: %w", action, name, err)
	}
	fmt.Println(msg + " (array not served)")
	return nil
}

// GrowCmd is `ddraid grow`.
type GrowCmd struct {
	Name  string `arg:"" help:"Array name."`
	Nodes int    `required:"" help:"New number of writer slots: the most nodes that may write the array at once in cluster mode (it only grows)."`
}

// Run grows the array.
func (c *GrowCmd) Run(g *Globals) error {
	return act(g, c.Name, "grow", array.Request{Slots: c.Nodes}, MemberTLS{})
}

// FailDeviceCmd is `ddraid fail-device`.
type FailDeviceCmd struct {
	Name   string `arg:"" help:"Array name."`
	Member string `arg:"" help:"Member: role number or path."`
	Force  bool   `help:"Fail it even if the array loses its data."`
}

// Run fails the member.
func (c *FailDeviceCmd) Run(g *Globals) error {
	return act(g, c.Name, "fail", array.Request{Ref: c.Member, Force: c.Force}, MemberTLS{})
}

// RemoveDeviceCmd is `ddraid remove-device`.
type RemoveDeviceCmd struct {
	Name   string `arg:"" help:"Array name."`
	Member string `arg:"" help:"Failed or missing member (role number or path), or a spare."`
}

// Run removes the member.
func (c *RemoveDeviceCmd) Run(g *Globals) error {
	return act(g, c.Name, "remove", array.Request{Ref: c.Member}, MemberTLS{})
}

// AddDeviceCmd is `ddraid add-device`.
type AddDeviceCmd struct {
	Name  string `arg:"" help:"Array name."`
	Path  string `arg:"" help:"File, block device, NBD URI or agent member (HOST[:PORT]:/PATH) to add."`
	Force bool   `help:"Overwrite a device that belongs to another array."`
	MemberTLS
}

// Run adds the device.
func (c *AddDeviceCmd) Run(g *Globals) error {
	return act(g, c.Name, "add", array.Request{Path: c.Path, Force: c.Force}, c.MemberTLS)
}

// ReplaceCmd is `ddraid replace`.
type ReplaceCmd struct {
	Name  string `arg:"" help:"Array name."`
	Old   string `arg:"" help:"Member to replace: role number or path."`
	New   string `arg:"" help:"New file, block device, NBD URI or agent member (HOST[:PORT]:/PATH)."`
	Force bool   `help:"Overwrite a device that belongs to another array."`
	MemberTLS
}

// Run replaces the member.
func (c *ReplaceCmd) Run(g *Globals) error {
	return act(g, c.Name, "replace", array.Request{Ref: c.Old, Path: c.New, Force: c.Force}, c.MemberTLS)
}

// CheckCmd is `ddraid check`.
type CheckCmd struct {
	Name     string `arg:"" help:"Array name."`
	Repair   bool   `help:"Rewrite the redundancy of blocks that do not match."`
	SpeedMin string `help:"Minimum check speed (stopped arrays), e.g. 1M." default:"1M"`
	SpeedMax string `help:"Maximum check speed (stopped arrays); 0 for none." default:"0"`
	MemberTLS
	WriterFlags
}

// errMismatches makes check exit non-zero without a second message.
var errMismatches = errors.New("mismatches found")

// Run checks the array; it exits 1 when mismatches were found.
func (c *CheckCmd) Run(g *Globals) error {
	var p resync.Progress
	var err error
	if cl := controlFor(g.StateDir, c.Name); cl != nil {
		stop := watchProgress(cl, c.Name)
		var rep array.Reply
		rep, err = cl.Do(context.Background(), c.Name, "check", array.Request{Repair: c.Repair})
		stop()
		if rep.Progress != nil {
			p = *rep.Progress
		}
	} else {
		if err := offlineAllowed(g, c.Name, "check"); err != nil {
			return err
		}
		th, terr := parseThrottle(c.SpeedMin, c.SpeedMax, "")
		if terr != nil {
			return terr
		}
		tc, terr := c.MemberTLS.config()
		if terr != nil {
			return terr
		}
		a, oerr := array.Open(array.Options{StateDir: g.StateDir, Name: c.Name, Throttle: th,
			Remote: remote.Config{TLS: tc, Logger: slog.Default()}, Writer: c.WriterFlags.writer()})
		if oerr != nil {
			return oerr
		}
		p, err = a.Check(context.Background(), c.Repair)
		if cerr := a.Close(); err == nil {
			err = cerr
		}
	}
	if err != nil {
		return fmt.Errorf("check %s: %w", c.Name, err)
	}
	verb := "found"
	if c.Repair && p.Mismatches > 0 {
		verb = "repaired"
	}
	fmt.Printf("check %s: %d bytes checked, %d mismatched blocks %s\n", c.Name, p.Done, p.Mismatches, verb)
	if p.Mismatches > 0 {
		return errMismatches
	}
	return nil
}

// watchProgress prints the running job's progress to stderr while a
// long action waits; the returned func stops it.
func watchProgress(cl *array.Client, name string) func() {
	done := make(chan struct{})
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
			}
			sts, err := cl.Status(context.Background())
			if err != nil {
				continue
			}
			for _, s := range sts {
				if s.Name == name && s.Job != nil {
					fmt.Fprintf(os.Stderr, "  %s\n", progressLine(*s.Job))
				}
			}
		}
	}()
	return func() { close(done); <-stopped }
}
