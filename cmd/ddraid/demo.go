package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/ddraid/ddraid/raid"
	"github.com/ddraid/ddraid/raid/meta"
)

// DemoCmd is `ddraid demo`.
type DemoCmd struct {
	Dir    string `help:"Directory for the member files and state." default:"./ddraid-demo" type:"path"`
	Listen string `help:"Address to serve on." default:"127.0.0.1:10809"`
}

const demoName = "demo"

// Run creates the demo array if needed and serves it.
func (c *DemoCmd) Run(g *Globals) error {
	stateDir := filepath.Join(c.Dir, "state")
	if err := os.MkdirAll(c.Dir, 0o750); err != nil {
		return err
	}
	var members []string
	for i := range 5 {
		members = append(members, filepath.Join(c.Dir, fmt.Sprintf("m%d", i)))
	}
	err := meta.View(stateDir, func(s *meta.Store) error {
		_, err := s.Get(demoName)
		if !errors.Is(err, meta.ErrNotFound) {
			if err == nil {
				fmt.Printf("reusing array %q in %s\n", demoName, c.Dir)
			}
			return err
		}
		a, err := raid.Create(s, raid.CreateOptions{Name: demoName, Level: raid.LevelRaid35, Members: members, CreateSize: 1 << 30})
		if err == nil {
			fmt.Printf("created array %q in %s: raid35, 5 x 1 GiB sparse member files, %d bytes usable\n", demoName, c.Dir, a.Size)
		}
		return err
	})
	if err != nil {
		return err
	}
	url := nbdURL(c.Listen, demoName)
	fmt.Printf(`
Next, in another terminal:
  nbdinfo %[1]s
  qemu-io -f raw -c 'write -P 0xab 0 1M' -c 'read -P 0xab 0 1M' %[1]s
  fio --name=demo --ioengine=nbd --uri=%[1]s --rw=randwrite --bs=4k --size=256M --verify=crc32c
  %[3]s status --state-dir=%[2]s
Press Ctrl-C to stop.

`, url, stateDir, os.Args[0])
	return serveArrays(stateDir, []string{demoName}, &ServeCmd{
		Listen: []string{c.Listen}, MinBlockSize: "512", MaxConnections: 1024, MaxPayload: 32 << 20, ShutdownWait: 30e9,
		SpeedMin: "1M", SpeedMax: "200M", ClearDelay: 5e9,
	})
}
