package config

import (
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/alecthomas/kong"

	"github.com/ddraid/ddraid/internal/units"
)

// testCLI has the shapes ddraid's command line uses: global flags, an env
// tag, enums, repeatable flags, sizes, durations, a hidden flag, a nested
// command and commands that do not read the file.
type testCLI struct {
	Config   File             `help:"Configuration file." default:"/nonexistent/ddraid.toml" env:"DDRAID_CONFIG"`
	StateDir string           `help:"State directory." default:"/var/lib/ddraid" env:"DDRAID_STATE_DIR"`
	LogLevel string           `help:"Log level." default:"info" enum:"debug,info,warn,error"`
	LogFmt   string           `help:"Log format: text or json." default:"text" enum:"text,json"`
	Version  kong.VersionFlag `help:"Print the version."`

	Serve struct {
		Names        []string      `arg:"" optional:""`
		Listen       []string      `help:"Listen address." default:"127.0.0.1:10809"`
		TLS          string        `name:"tls" help:"TLS mode." enum:"off,on,require" default:"off"`
		ReadOnly     bool          `help:"Read only."`
		MaxConns     int           `help:"Most connections." default:"1024"`
		MaxPayload   units.Size    `help:"Largest request." default:"32MiB"`
		ShutdownWait time.Duration `help:"Shutdown wait." default:"30s"`
		Debug        string        `hidden:"" help:"Hidden."`
	} `cmd:"" help:"Serve arrays."`
	TLS struct {
		Init struct {
			Dir string `help:"Output directory." default:"/etc/ddraid/tls"`
		} `cmd:"" help:"Make a CA."`
	} `cmd:"" help:"TLS tools."`
	Check struct {
		Name  string `arg:""`
		Force bool   `help:"Force."`
	} `cmd:"" help:"Check an array."`
	Config2 struct {
		Check struct{} `cmd:"" help:"Check a file."`
	} `cmd:"" name:"config" noconfig:"" help:"Configuration file tools."`
	Bench struct {
		Speed int `help:"Speed."`
	} `cmd:"" hidden:"" help:"Hidden command."`
}

func newTestParser(t testing.TB, cli *testCLI) *kong.Kong {
	t.Helper()
	k, err := kong.New(cli, kong.Name("ddraid"), Envars(), kong.Exit(func(int) {}))
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestKeysAndEnvNames(t *testing.T) {
	var cli testCLI
	k := newTestParser(t, &cli)
	var got []string
	for _, key := range Keys(k.Model) {
		got = append(got, key.String()+"="+strings.Join(key.Flag.Envs, ","))
	}
	want := []string{
		"state-dir=DDRAID_STATE_DIR",
		"log-level=DDRAID_LOG_LEVEL",
		"log-fmt=DDRAID_LOG_FMT",
		"serve.listen=DDRAID_SERVE_LISTEN",
		"serve.tls=DDRAID_SERVE_TLS",
		"serve.read-only=DDRAID_SERVE_READ_ONLY",
		"serve.max-conns=DDRAID_SERVE_MAX_CONNS",
		"serve.max-payload=DDRAID_SERVE_MAX_PAYLOAD",
		"serve.shutdown-wait=DDRAID_SERVE_SHUTDOWN_WAIT",
		"tls.init.dir=DDRAID_TLS_INIT_DIR",
		"check.force=DDRAID_CHECK_FORCE",
	}
	if !slices.Equal(got, want) {
		t.Fatalf("keys:\n got %q\nwant %q", got, want)
	}
	var sections []string
	for _, s := range Sections(k.Model) {
		sections = append(sections, s.Name)
	}
	if want := []string{"serve", "tls.init", "check"}; !slices.Equal(sections, want) {
		t.Fatalf("sections %q, want %q", sections, want)
	}
}

func TestEnvName(t *testing.T) {
	cases := []struct{ section, name, want string }{
		{"", "state-dir", "DDRAID_STATE_DIR"},
		{"serve", "listen", "DDRAID_SERVE_LISTEN"},
		{"fail-device", "force", "DDRAID_FAIL_DEVICE_FORCE"},
		{"tls.init", "dir", "DDRAID_TLS_INIT_DIR"},
	}
	for _, c := range cases {
		if got := EnvName(c.section, c.name); got != c.want {
			t.Errorf("EnvName(%q, %q) = %q, want %q", c.section, c.name, got, c.want)
		}
	}
}

func TestParse(t *testing.T) {
	cases := []struct {
		name string
		file string
		want map[string]string // key -> command-line value
		errs []string          // regexps, one per error, in order
	}{
		{name: "empty", file: "", want: map[string]string{}},
		{
			name: "globals and sections",
			file: "state-dir = \"/srv/dd\"\nlog-level = \"debug\"\n[serve]\nlisten = [\"unix:/run/a.sock\", \"0.0.0.0:10809\"]\n" +
				"tls = \"require\"\nread-only = true\nmax-conns = 8\nmax-payload = \"1MiB\"\nshutdown-wait = \"2m\"\n" +
				"[tls.init]\ndir = \"/tmp/x\"\n[check]\nforce = false\n",
			want: map[string]string{
				"state-dir": "/srv/dd", "log-level": "debug", "serve.listen": "unix:/run/a.sock,0.0.0.0:10809",
				"serve.tls": "require", "serve.read-only": "true", "serve.max-conns": "8", "serve.max-payload": "1MiB",
				"serve.shutdown-wait": "2m", "tls.init.dir": "/tmp/x", "check.force": "false",
			},
		},
		{name: "dotted keys", file: "serve.max-conns = 3\n", want: map[string]string{"serve.max-conns": "3"}},
		{name: "size as integer", file: "[serve]\nmax-payload = 4096\n", want: map[string]string{"serve.max-payload": "4096"}},
		{name: "comma inside a list element", file: "[serve]\nlisten = [\"a,b\"]\n", want: map[string]string{"serve.listen": `a\,b`}},
		{name: "empty table of a command without keys", file: "[config]\n[config.check]\n", want: map[string]string{}},
		{name: "unknown global key", file: "state-dir = \"/x\"\nstate_dir = \"/y\"\n", errs: []string{`^f:2: "state_dir": unknown key$`}},
		{name: "unknown key in a section", file: "[serve]\nlisen = [\"x\"]\n", errs: []string{`^f:2: "serve.lisen": unknown key$`}},
		{name: "global key in a section", file: "[serve]\nstate-dir = \"/x\"\n", errs: []string{`"serve.state-dir": unknown key: state-dir is a global option`}},
		{name: "key of another command", file: "[check]\nlisten = [\"x\"]\n", errs: []string{`"check.listen": unknown key here; it exists in \[serve\]`}},
		{name: "unknown section", file: "[serv]\nlisten = 1\n", errs: []string{`^f:1: "serv": unknown section: no such command$`}},
		{name: "hidden flag", file: "[serve]\ndebug = \"x\"\n", errs: []string{`"serve.debug": unknown key`}},
		{name: "hidden command", file: "[bench]\nspeed = 1\n", errs: []string{`"bench": unknown section`}},
		{name: "version is not a key", file: "version = true\n", errs: []string{`"version": unknown key`}},
		{name: "config is not a key", file: "config = \"/etc/x\"\n", errs: []string{`"config": unknown key: config is a command`}},
		{name: "command given as a value", file: "serve = 1\n", errs: []string{`"serve": unknown key: serve is a command`}},
		{name: "option given as a table", file: "[state-dir]\n", errs: []string{`"state-dir": is an option, not a table`}},
		{name: "bad enum", file: "log-level = \"loud\"\n", errs: []string{`"log-level": "loud" is not one of debug, info, warn, error`}},
		{name: "bad enum in section", file: "[serve]\ntls = \"maybe\"\n", errs: []string{`"serve.tls": "maybe" is not one of off, on, require`}},
		{name: "bad size", file: "[serve]\nmax-payload = \"lots\"\n", errs: []string{`"serve.max-payload": .*invalid size`}},
		{name: "bad duration", file: "[serve]\nshutdown-wait = 30\n", errs: []string{`"serve.shutdown-wait": .*duration`}},
		{name: "bad int", file: "[serve]\nmax-conns = \"many\"\n", errs: []string{`"serve.max-conns": .*`}},
		{name: "bad bool", file: "[serve]\nread-only = \"perhaps\"\n", errs: []string{`"serve.read-only": .*`}},
		{name: "array for a single value", file: "state-dir = [\"/a\"]\n", errs: []string{`"state-dir": takes one value, not an array`}},
		{name: "date", file: "state-dir = 1979-05-27T07:32:00Z\n", errs: []string{`"state-dir": dates and times are not option values`}},
		{name: "array of tables", file: "[[serve]]\n", errs: []string{`"serve": arrays of tables`}},
		{name: "syntax error", file: "[serve\n", errs: []string{`^f: TOML: `}},
		{
			name: "every error reported, in file order",
			file: "a = 1\n[serve]\nb = 2\ntls = \"x\"\n",
			errs: []string{`^f:1: "a": unknown key`, `^f:3: "serve.b": unknown key`, `^f:4: "serve.tls": "x" is not one of`},
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var cli testCLI
			k := newTestParser(t, &cli)
			vals, errs := Parse(k.Model, "f", []byte(c.file))
			if len(errs) != len(c.errs) {
				t.Fatalf("errors %q, want %d matching %q", errs, len(c.errs), c.errs)
			}
			for i, e := range errs {
				if !regexp.MustCompile(c.errs[i]).MatchString(e.Error()) {
					t.Errorf("error %d = %q, want match %q", i, e, c.errs[i])
				}
			}
			if c.errs != nil {
				return
			}
			got := map[string]string{}
			for _, key := range Keys(k.Model) {
				if v, ok := vals[key.Flag]; ok {
					got[key.String()] = v
				}
			}
			if len(got) != len(c.want) {
				t.Fatalf("values %q, want %q", got, c.want)
			}
			for key, v := range c.want {
				if got[key] != v {
					t.Errorf("%s = %q, want %q", key, got[key], v)
				}
			}
		})
	}
}

// TestPrecedence runs real parses: flag > environment > file > default.
func TestPrecedence(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "ddraid.toml")
	if err := os.WriteFile(file, []byte("state-dir = \"/from/file\"\n[serve]\nlisten = [\"file:1\", \"file:2\"]\nmax-conns = 7\nshutdown-wait = \"1m\"\nread-only = true\nmax-payload = \"1MiB\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name      string
		args      []string
		env       map[string]string
		stateDir  string
		listen    []string
		maxConns  int
		wait      time.Duration
		tlsOption string
	}{
		{name: "file over default", args: nil,
			stateDir: "/from/file", listen: []string{"file:1", "file:2"}, maxConns: 7, wait: time.Minute, tlsOption: "off"},
		{name: "env over file", env: map[string]string{"DDRAID_STATE_DIR": "/from/env", "DDRAID_SERVE_MAX_CONNS": "9", "DDRAID_SERVE_TLS": "on"},
			stateDir: "/from/env", listen: []string{"file:1", "file:2"}, maxConns: 9, wait: time.Minute, tlsOption: "on"},
		{name: "flag over env and file", args: []string{"--state-dir=/from/flag", "--listen=flag:1", "--max-conns=11"},
			env:      map[string]string{"DDRAID_STATE_DIR": "/from/env", "DDRAID_SERVE_MAX_CONNS": "9"},
			stateDir: "/from/flag", listen: []string{"flag:1"}, maxConns: 11, wait: time.Minute, tlsOption: "off"},
		{name: "env list", env: map[string]string{"DDRAID_SERVE_LISTEN": "env:1,env:2"},
			stateDir: "/from/file", listen: []string{"env:1", "env:2"}, maxConns: 7, wait: time.Minute, tlsOption: "off"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			for k, v := range c.env {
				t.Setenv(k, v)
			}
			var cli testCLI
			k := newTestParser(t, &cli)
			if _, err := k.Parse(append([]string{"--config=" + file, "serve"}, c.args...)); err != nil {
				t.Fatal(err)
			}
			if !cli.Serve.ReadOnly || cli.Serve.MaxPayload != 1<<20 {
				t.Fatalf("read-only %v max-payload %d from the file", cli.Serve.ReadOnly, cli.Serve.MaxPayload)
			}
			if cli.StateDir != c.stateDir || !slices.Equal(cli.Serve.Listen, c.listen) || cli.Serve.MaxConns != c.maxConns ||
				cli.Serve.ShutdownWait != c.wait || cli.Serve.TLS != c.tlsOption {
				t.Fatalf("got state-dir %q listen %q max-conns %d wait %v tls %q; want %q %q %d %v %q",
					cli.StateDir, cli.Serve.Listen, cli.Serve.MaxConns, cli.Serve.ShutdownWait, cli.Serve.TLS,
					c.stateDir, c.listen, c.maxConns, c.wait, c.tlsOption)
			}
		})
	}
}

func TestFileFlag(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.toml")
	bad := filepath.Join(dir, "bad.toml")
	missing := filepath.Join(dir, "missing.toml")
	if err := os.WriteFile(good, []byte("state-dir = \"/good\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bad, []byte("[serve]\nlisten-on = 1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	bad2 := filepath.Join(dir, "bad2.toml")
	if err := os.WriteFile(bad2, []byte("x = 1\ny = 2\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name     string
		args     []string
		env      map[string]string
		stateDir string
		err      string
	}{
		{name: "missing default file is fine", args: []string{"check", "a"}, stateDir: "/var/lib/ddraid"},
		{name: "given file applies", args: []string{"--config", good, "check", "a"}, stateDir: "/good"},
		{name: "file from the environment", args: []string{"check", "a"}, env: map[string]string{"DDRAID_CONFIG": good}, stateDir: "/good"},
		{name: "flag after the command", args: []string{"check", "a", "--config=" + good}, stateDir: "/good"},
		{name: "missing given file", args: []string{"--config", missing, "check", "a"}, err: "missing.toml: no such file"},
		{name: "missing file from the environment", args: []string{"check", "a"}, env: map[string]string{"DDRAID_CONFIG": missing}, err: "no such file"},
		{name: "unknown key fails any command", args: []string{"--config", bad, "check", "a"}, err: `bad.toml:2: "serve.listen-on": unknown key`},
		{name: "several errors listed", args: []string{"--config", bad2, "check", "a"}, err: "2 errors in " + bad2 + " (ddraid config check lists them too):\n  " + bad2 + `:1: "x": unknown key` + "\n  " + bad2 + `:2: "y": unknown key`},
		{name: "noconfig command ignores a broken file", args: []string{"--config", bad, "config", "check"}, stateDir: "/var/lib/ddraid"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			for k, v := range c.env {
				t.Setenv(k, v)
			}
			var cli testCLI
			k := newTestParser(t, &cli)
			_, err := k.Parse(c.args)
			if c.err != "" {
				if err == nil || !strings.Contains(err.Error(), c.err) {
					t.Fatalf("err %v, want one containing %q", err, c.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if cli.StateDir != c.stateDir {
				t.Fatalf("state-dir %q, want %q", cli.StateDir, c.stateDir)
			}
		})
	}
}

// TestDefault checks the generated file: with every key still commented it
// sets nothing; with every key uncommented it is valid and each value is
// the flag's default.
func TestDefault(t *testing.T) {
	var cli testCLI
	k := newTestParser(t, &cli)
	out := string(Default(k.Model, []string{"header line"}))
	if !strings.HasPrefix(out, "# header line\n") {
		t.Fatalf("no header:\n%s", out)
	}
	for _, want := range []string{
		"#state-dir = \"/var/lib/ddraid\"\n", "#log-level = \"info\"\n", "# One of: debug, info, warn, error.\n", "# Log format: text or json.\n# Flag --log-fmt",
		"[serve]\n", "#listen = [\"127.0.0.1:10809\"]\n", "#read-only = false\n", "#max-conns = 1024\n",
		"#max-payload = \"32MiB\"\n", "#shutdown-wait = \"30s\"\n", "environment DDRAID_SERVE_SHUTDOWN_WAIT.",
		"[tls.init]\n", "#dir = \"/etc/ddraid/tls\"\n", "[check]\n", "#force = false\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("default file lacks %q", want)
		}
	}
	for _, unwanted := range []string{"debug", "version", "config =", "[bench]", "speed"} {
		if strings.Contains(out, "#"+unwanted) || strings.Contains(out, "["+unwanted) {
			t.Errorf("default file shows %q", unwanted)
		}
	}
	vals, errs := Parse(k.Model, "default", []byte(out))
	if len(errs) != 0 || len(vals) != 0 {
		t.Fatalf("commented default: values %v errors %v", vals, errs)
	}
	uncommented := regexp.MustCompile(`(?m)^#([a-z][a-z0-9-]* = )`).ReplaceAllString(out, "$1")
	vals, errs = Parse(k.Model, "uncommented", []byte(uncommented))
	if len(errs) != 0 {
		t.Fatalf("uncommented default: %v\n%s", errors.Join(errs...), uncommented)
	}
	keys := Keys(k.Model)
	if len(vals) != len(keys) {
		t.Fatalf("uncommented default sets %d keys, want %d", len(vals), len(keys))
	}
	for _, key := range keys {
		want := key.Flag.Default
		if want == "" && key.Flag.IsBool() {
			want = "false"
		}
		if vals[key.Flag] != want {
			t.Errorf("%s: uncommented default %q, flag default %q", key, vals[key.Flag], want)
		}
	}
}

func TestTOMLString(t *testing.T) {
	cases := []struct{ in, want string }{
		{"", `""`},
		{"plain", `"plain"`},
		{`a"b\c`, `"a\"b\\c"`},
		{"tab\there", `"tab\u0009here"`},
		{"µs", `"µs"`},
	}
	for _, c := range cases {
		if got := tomlString(c.in); got != c.want {
			t.Errorf("tomlString(%q) = %s, want %s", c.in, got, c.want)
		}
	}
}

// FuzzParse feeds arbitrary files to the validator: it must never panic,
// and a value it accepts must parse on the command line.
func FuzzParse(f *testing.F) {
	f.Add([]byte("state-dir = \"/x\"\n[serve]\nlisten = [\"a\", \"b\"]\nmax-payload = \"1M\"\n"))
	f.Add([]byte("[tls.init]\ndir = 'x'\n[[serve]]\n"))
	f.Add([]byte("serve.tls = \"on\"\nlog-level = 3\n"))
	f.Add([]byte("a = {b = 1, c = [1, [2]]}\nd = 1979-05-27T07:32:00Z\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		var cli testCLI
		k := newTestParser(t, &cli)
		vals, errs := Parse(k.Model, "fuzz", data)
		for _, e := range errs {
			if e.Error() == "" {
				t.Fatal("empty error message")
			}
		}
		for fl, s := range vals {
			if err := checkValue(fl, s); err != nil {
				t.Fatalf("accepted value %q for --%s fails again: %v", s, fl.Name, err)
			}
		}
	})
}
