package clidoc

import (
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/alecthomas/kong"
)

type testCLI struct {
	StateDir string `help:"State directory." default:"/var/lib/ddraid" type:"path" placeholder:"DIR" env:"DDRAID_STATE_DIR"`
	LogLevel string `help:"Log level." default:"info" enum:"debug,info,warn,error"`
	Verbose  bool   `short:"v" help:"Say more."`

	Serve struct {
		Names  []string `arg:"" help:"Arrays to serve."`
		Listen []string `help:"Listen address." default:"127.0.0.1:10809"`
		TLS    string   `name:"tls" help:"TLS mode." enum:"off,on,require" default:"off"`
		Cert   string   `help:"Certificate." type:"path"`
		Secret string   `hidden:"" help:"Hidden flag."`
	} `cmd:"" help:"Serve arrays over NBD."`
	Config struct {
		Check struct {
			Strict bool `help:"Refuse warnings."`
		} `cmd:"" help:"Check the file."`
		Default struct{} `cmd:"" help:"Print the default file."`
	} `cmd:"" help:"Configuration tools."`
	Man struct{} `cmd:"" hidden:"" help:"Print the manual page."`
}

func model(t *testing.T) *kong.Application {
	t.Helper()
	var cli testCLI
	k, err := kong.New(&cli, kong.Name("ddraid"), kong.Description("a cluster RAID"))
	if err != nil {
		t.Fatal(err)
	}
	return k.Model
}

func TestEscape(t *testing.T) {
	cases := []struct{ in, want string }{
		{"plain", "plain"},
		{`back\slash`, `back\eslash`},
		{"µs and 512·2^k", `\[u00B5]s and 512\[u00B7]2^k`},
		{"tab\tand\nnewline", "tab and newline"},
		{"bell\x07", "bell"},
	}
	for _, c := range cases {
		if got := escape(c.in); got != c.want {
			t.Errorf("escape(%q) = %q, want %q", c.in, got, c.want)
		}
	}
	lines := []struct{ in, want string }{
		{".starts with a dot", "\\&.starts with a dot\n"},
		{"'starts with a quote", "\\&'starts with a quote\n"},
		{"normal", "normal\n"},
	}
	for _, c := range lines {
		if got := line(c.in); got != c.want {
			t.Errorf("line(%q) = %q, want %q", c.in, got, c.want)
		}
	}
}

func TestMan(t *testing.T) {
	page := string(Man(model(t), ManOptions{
		Section: "1", Date: "2026-11-21", Version: "ddraid 1.0", Manual: "User Commands", Summary: "cluster RAID",
		Description: []string{"More words."},
		FlagNote: func(f *kong.Flag) string {
			if f.Name == "listen" {
				return "Configuration key: serve.listen."
			}
			return ""
		},
		Extra: []ManSection{{Title: "FILES", Paragraphs: []string{"/etc/ddraid/ddraid.toml", "  [serve]\n  listen = 1"}}},
	}))
	for _, want := range []string{
		`.TH "DDRAID" "1" "2026-11-21" "ddraid 1.0" "User Commands"` + "\n.nh\n.ad l\n",
		".SH NAME\nddraid \\- cluster RAID\n",
		".SH GLOBAL OPTIONS\n",
		"\\fB\\-\\-state\\-dir\\fR=\\fIDIR\\fR\nState directory. Default: /var/lib/ddraid. Environment: DDRAID_STATE_DIR.\n",
		"\\fB\\-\\-log\\-level\\fR=\\fILOG_LEVEL\\fR\nLog level. One of: debug, info, warn, error. Default: info.\n",
		"\\fB\\-v\\fR, \\fB\\-\\-verbose\\fR\nSay more.\n",
		`.SS "ddraid serve NAMES..."` + "\n",
		"\\fB\\-\\-listen\\fR=\\fILISTEN\\fR\nListen address. May be given more than once. Default: 127.0.0.1:10809. Configuration key: serve.listen.\n",
		`.SS "ddraid config check"` + "\n",
		`.SS "ddraid config default"` + "\n",
		".SH \"FILES\"\n.PP\n/etc/ddraid/ddraid.toml\n.PP\n.nf\n.RS 4\n[serve]\nlisten = 1\n.RE\n.fi\n",
	} {
		if !strings.Contains(page, want) {
			t.Errorf("page lacks %q", want)
		}
	}
	for _, unwanted := range []string{"secret", "Hidden", "ddraid man", `.SS "ddraid config"`} {
		if strings.Contains(page, unwanted) {
			t.Errorf("page shows %q", unwanted)
		}
	}
	// man renders it without a single warning.
	if _, err := exec.LookPath("man"); err != nil {
		t.Fatalf("man is not installed (make test-deps installs man-db): %v", err)
	}
	path := filepath.Join(t.TempDir(), "ddraid.1")
	if err := os.WriteFile(path, []byte(page), 0o644); err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd := exec.Command("man", "--warnings", "-E", "UTF-8", "-l", "-Tutf8", "-Z", path)
	cmd.Stdout, cmd.Stderr = io.Discard, &stderr
	if err := cmd.Run(); err != nil || stderr.Len() > 0 {
		t.Fatalf("man: %v\n%s", err, stderr.String())
	}
}

// complete runs the generated completion function for a command line
// whose last word is being completed; it returns the candidates.
func complete(t *testing.T, script, words string) []string {
	t.Helper()
	dir := t.TempDir()
	for _, f := range []string{"alpha.toml", "beta.toml"} {
		if err := os.WriteFile(filepath.Join(dir, f), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Mkdir(filepath.Join(dir, "subdir"), 0o755); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "completion.bash")
	if err := os.WriteFile(path, []byte(script), 0o644); err != nil {
		t.Fatal(err)
	}
	// Split the way bash does with the default COMP_WORDBREAKS: "=" is a
	// word of its own.
	var ws []string
	for _, w := range strings.Split(words, " ") {
		if before, after, ok := strings.Cut(w, "="); ok && strings.HasPrefix(w, "--") {
			ws = append(ws, before, "=")
			if after != "" {
				ws = append(ws, after)
			}
			continue
		}
		ws = append(ws, w)
	}
	if strings.HasSuffix(words, "=") {
		// "--tls=" then the cursor: bash completes the "=" word itself.
	} else if strings.HasSuffix(words, " ") {
		ws = append(ws[:len(ws)-1], "")
	}
	var quoted []string
	for _, w := range ws {
		quoted = append(quoted, "'"+w+"'")
	}
	prog := "source " + path + "\nCOMP_WORDS=(" + strings.Join(quoted, " ") + ")\nCOMP_CWORD=$((${#COMP_WORDS[@]} - 1))\n_ddraid\nprintf '%s\\n' \"${COMPREPLY[@]}\"\n"
	cmd := exec.Command("bash", "--norc", "--noprofile", "-c", prog)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("bash: %v\n%s", err, out)
	}
	var got []string
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if l != "" {
			got = append(got, l)
		}
	}
	return got
}

func TestBash(t *testing.T) {
	if _, err := exec.LookPath("bash"); err != nil {
		t.Fatalf("bash is not installed: %v", err)
	}
	script := string(Bash(model(t)))
	cases := []struct {
		name  string
		words string // the command line up to the cursor
		want  string // candidates, space separated
	}{
		{"commands", "ddraid ", "serve config"},
		{"command prefix", "ddraid se", "serve"},
		{"hidden command left out", "ddraid ma", ""},
		{"subcommands", "ddraid config ", "check default"},
		{"global flags", "ddraid --", "--help --state-dir --log-level --verbose"},
		{"command flags after globals", "ddraid serve --", "--help --state-dir --log-level --verbose --listen --tls --cert"},
		{"nested command flags", "ddraid config check --s", "--state-dir --strict"},
		{"enum value", "ddraid serve --tls ", "off on require"},
		{"enum value after =", "ddraid serve --tls=", "off on require"},
		{"enum value prefix after =", "ddraid serve --tls=o", "off on"},
		{"global enum", "ddraid --log-level w", "warn"},
		{"global flag after the command", "ddraid serve --log-level d", "debug"},
		{"path flag completes files", "ddraid serve --cert a", "alpha.toml"},
		{"directory placeholder completes directories", "ddraid --state-dir s", "subdir"},
		{"free value completes nothing", "ddraid serve --listen ", ""},
		{"flag value skipped when walking", "ddraid --state-dir subdir serve --t", "--tls"},
		{"arguments complete files", "ddraid serve b", "beta.toml"},
		{"bool flag takes no value", "ddraid --verbose se", "serve"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := strings.Join(complete(t, script, c.words), " ")
			if got != c.want {
				t.Fatalf("%q: got %q, want %q", c.words, got, c.want)
			}
		})
	}
}
