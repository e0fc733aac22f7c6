package main

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ddraid/ddraid/internal/config"
)

// TestPackagedConfigIsGenerated keeps packaging/ddraid.toml equal to
// `ddraid config default` (regenerate it with `make packaging/ddraid.toml`).
func TestPackagedConfigIsGenerated(t *testing.T) {
	var cli CLI
	k, err := newParser(&cli)
	if err != nil {
		t.Fatal(err)
	}
	want := config.Default(k.Model, defaultConfigHeader)
	got, err := os.ReadFile("../../packaging/ddraid.toml")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("packaging/ddraid.toml differs from `ddraid config default`: run `make packaging/ddraid.toml`")
	}
}

// TestEnvNamesUnique: no two flags of the command line share a variable,
// so one set for a command never reaches another's flag.
func TestEnvNamesUnique(t *testing.T) {
	var cli CLI
	k, err := newParser(&cli)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]string{}
	keys := config.Keys(k.Model)
	if len(keys) < 20 {
		t.Fatalf("only %d configuration keys: the model walk lost commands", len(keys))
	}
	for _, key := range keys {
		if len(key.Flag.Envs) == 0 {
			t.Errorf("%s has no environment variable", key)
		}
		for _, e := range key.Flag.Envs {
			if other, dup := seen[e]; dup {
				t.Errorf("%s and %s share %s", other, key, e)
			}
			seen[e] = key.String()
		}
	}
}

// TestConfigOnTheRealCLI parses real command lines with a file, variables
// and flags, and checks what the commands would get.
func TestConfigOnTheRealCLI(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := write("good.toml", `state-dir = "/srv/ddraid"
log-format = "json"
[serve]
listen = ["unix:/run/ddraid/a.sock", "127.0.0.1:10810"]
max-payload = "1MiB"
shutdown-wait = "5s"
[check]
speed-max = "50M"
`)
	bad := write("bad.toml", "[serve]\nlisten = [\"x\"]\nlisen = 1\n")
	cases := []struct {
		name  string
		args  []string
		env   map[string]string
		check func(t *testing.T, cli *CLI)
		err   string
	}{
		{name: "file values", args: []string{"--config", good, "serve", "a"}, check: func(t *testing.T, cli *CLI) {
			if cli.StateDir != "/srv/ddraid" || cli.LogFormat != "json" || int64(cli.Serve.MaxPayload) != 1<<20 ||
				cli.Serve.ShutdownWait != 5*time.Second || !slices.Equal(cli.Serve.Listen, []string{"unix:/run/ddraid/a.sock", "127.0.0.1:10810"}) {
				t.Fatalf("got %+v %+v", cli.Globals, cli.Serve)
			}
		}},
		{name: "other command's section", args: []string{"--config", good, "check", "a"}, check: func(t *testing.T, cli *CLI) {
			if cli.Check.SpeedMax != "50M" || cli.Check.SpeedMin != "1M" || cli.StateDir != "/srv/ddraid" {
				t.Fatalf("got %+v", cli.Check)
			}
		}},
		{name: "environment over file", args: []string{"--config", good, "serve", "a"},
			env: map[string]string{"DDRAID_STATE_DIR": "/env", "DDRAID_SERVE_SHUTDOWN_WAIT": "7s"},
			check: func(t *testing.T, cli *CLI) {
				if cli.StateDir != "/env" || cli.Serve.ShutdownWait != 7*time.Second || int64(cli.Serve.MaxPayload) != 1<<20 {
					t.Fatalf("got %+v %+v", cli.Globals, cli.Serve)
				}
			}},
		{name: "flag over environment", args: []string{"--config", good, "serve", "a", "--state-dir=/flag"},
			env: map[string]string{"DDRAID_STATE_DIR": "/env"},
			check: func(t *testing.T, cli *CLI) {
				if cli.StateDir != "/flag" {
					t.Fatalf("state dir %q", cli.StateDir)
				}
			}},
		{name: "config path from the environment", args: []string{"status"}, env: map[string]string{"DDRAID_CONFIG": good},
			check: func(t *testing.T, cli *CLI) {
				if cli.StateDir != "/srv/ddraid" {
					t.Fatalf("state dir %q", cli.StateDir)
				}
			}},
		{name: "unknown key refused", args: []string{"--config", bad, "serve", "a"}, err: `bad.toml:3: "serve.lisen": unknown key`},
		{name: "missing given file", args: []string{"--config", filepath.Join(dir, "nope.toml"), "status"}, err: "no such file"},
		{name: "config check parses despite a broken file", args: []string{"--config", bad, "config", "check"},
			check: func(t *testing.T, cli *CLI) {
				if string(cli.Config) != bad {
					t.Fatalf("config %q", cli.Config)
				}
			}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Setenv("DDRAID_CONFIG", filepath.Join(dir, "default-is-missing.toml"))
			os.Unsetenv("DDRAID_CONFIG") // default path below, unless the case sets one
			for k, v := range c.env {
				t.Setenv(k, v)
			}
			var cli CLI
			k, err := newParser(&cli)
			if err != nil {
				t.Fatal(err)
			}
			_, err = k.Parse(c.args)
			if c.err != "" {
				if err == nil || !strings.Contains(err.Error(), c.err) {
					t.Fatalf("err %v, want one containing %q", err, c.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			c.check(t, &cli)
		})
	}
}

// FuzzConfigFile checks arbitrary files against the real command line:
// never a panic, and every accepted file also passes a real parse of
// `ddraid status`.
func FuzzConfigFile(f *testing.F) {
	f.Add([]byte("state-dir = \"/x\"\n[serve]\nlisten = [\"unix:/run/ddraid/a.sock\"]\nmax-payload = \"1M\"\n"))
	f.Add([]byte("[agent]\nhost-disk = [\"/dev/sdb\"]\nshutdown-wait = \"1s\"\n[tls.issue]\n"))
	f.Add([]byte("[create]\nblock-size = 4096\nregion-size = \"4MiB\"\nlevel = \"mirror\"\n"))
	var cli CLI
	k, err := newParser(&cli)
	if err != nil {
		f.Fatal(err)
	}
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, data []byte) {
		_, errs := config.Parse(k.Model, "fuzz", data)
		if len(errs) > 0 {
			return
		}
		path := filepath.Join(dir, "fuzz.toml")
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		var cli CLI
		p, err := newParser(&cli)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := p.Parse([]string{"--config", path, "status"}); err != nil {
			t.Fatalf("accepted file fails a parse: %v\n%s", err, data)
		}
	})
}
