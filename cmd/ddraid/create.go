package main

import (
	"fmt"
	"log/slog"

	"github.com/ddraid/ddraid/blockdev/remote"
	"github.com/ddraid/ddraid/internal/units"
	"github.com/ddraid/ddraid/raid"
	"github.com/ddraid/ddraid/raid/meta"
)

// CreateCmd is `ddraid create`.
type CreateCmd struct {
	Name        string     `arg:"" help:"Array name (also the NBD export name)."`
	Members     []string   `arg:"" help:"Member files, block devices, disks hosted by agents (HOST[:PORT]:/PATH) or NBD URIs (nbd://HOST:PORT/EXPORT, nbd+unix:///EXPORT?socket=PATH), in role order."`
	Level       string     `help:"RAID level: raid35, mirror or linear." default:"raid35"`
	Size        units.Size `help:"Create member files that do not exist with this size (e.g. 1GiB)."`
	BlockSize   units.Size `help:"Array block size (raid35: 512·2^k to 64 KiB)." default:"4096"`
	Parity      string     `help:"raid35 parity placement: rotating or dedicated." default:"rotating"`
	ParityChunk int        `help:"raid35 blocks per parity rotation step." default:"16"`
	Force       bool       `help:"Overwrite members that belong to another array."`
	AssumeClean bool       `help:"Skip the initial sync of members that already hold data."`
	RegionSize  units.Size `help:"Write-intent bitmap region size." default:"4MiB"`
	Nodes       int        `help:"Cluster mode: writer slots, the most nodes that may write the array at once (grow it later with 'ddraid grow --nodes')." default:"4"`
	MemberTLS
}

// Run creates the array.
func (c *CreateCmd) Run(g *Globals) error {
	level, err := raid.ParseLevel(c.Level)
	if err != nil {
		return err
	}
	parity, err := raid.ParseParity(c.Parity)
	if err != nil {
		return err
	}
	if err := meta.ValidateSlots(c.Nodes); err != nil {
		return err
	}
	tc, err := c.MemberTLS.config()
	if err != nil {
		return err
	}
	opts := raid.CreateOptions{
		Name: c.Name, Level: level, Members: c.Members, CreateSize: int64(c.Size), Force: c.Force,
		AssumeClean: c.AssumeClean, RegionSize: int64(c.RegionSize), Slots: c.Nodes, Remote: remote.Config{TLS: tc, Logger: slog.Default()},
		Geometry: raid.Geometry{BlockSize: int(c.BlockSize), Parity: parity, ParityChunk: c.ParityChunk},
	}
	var a *meta.Array
	err = meta.View(g.StateDir, func(s *meta.Store) error {
		a, err = raid.Create(s, opts)
		return err
	})
	if err != nil {
		return err
	}
	fmt.Printf("created %s: %s, %d members, %s, block size %d\n", a.Name, a.Level, len(a.Members), units.FormatSize(a.Size), a.BlockSize)
	if a.InitialSync {
		fmt.Println("members held data: the initial sync runs in the background when the array is served (--assume-clean skips it)")
	}
	return nil
}
