package clidoc

import (
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

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

// completionCases are command lines up to the cursor and the candidates
// every shell's script must offer (space separated, in model order; zsh
// and fish are compared as sets).
var completionCases = []struct {
	name  string
	words string
	want  string
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

// needShell fails the test when a shell is missing: `make test-deps`
// installs bash, zsh and fish.
func needShell(t *testing.T, shell string) {
	t.Helper()
	if _, err := exec.LookPath(shell); err != nil {
		t.Fatalf("%s is not installed (make test-deps installs it): %v", shell, err)
	}
}

// completionDir is a directory with the files and the directory the
// cases complete.
func completionDir(t *testing.T) string {
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
	return dir
}

// sameSet compares candidate lists ignoring order; a trailing "/" (fish
// marks directories) does not count.
func sameSet(got []string, want string) bool {
	g := make([]string, 0, len(got))
	for _, s := range got {
		g = append(g, strings.TrimSuffix(s, "/"))
	}
	w := strings.Fields(want)
	slices.Sort(g)
	slices.Sort(w)
	return slices.Equal(slices.Compact(g), w)
}

func TestBash(t *testing.T) {
	needShell(t, "bash")
	script := string(Bash(model(t)))
	for _, c := range completionCases {
		t.Run(c.name, func(t *testing.T) {
			got := strings.Join(complete(t, script, c.words), " ")
			if got != c.want {
				t.Fatalf("%q: got %q, want %q", c.words, got, c.want)
			}
		})
	}
}

func TestZsh(t *testing.T) {
	needShell(t, "zsh")
	fp := t.TempDir()
	if err := os.WriteFile(filepath.Join(fp, "_ddraid"), Zsh(model(t)), 0o644); err != nil {
		t.Fatal(err)
	}
	capture, err := filepath.Abs("testdata/capture.zsh")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range completionCases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
			defer cancel()
			cmd := exec.CommandContext(ctx, "zsh", "-f", capture, fp, c.words)
			cmd.Dir = completionDir(t)
			out, err := cmd.Output()
			if err != nil {
				t.Fatalf("zsh %q: %v\n%s", c.words, err, out)
			}
			got := strings.Fields(string(out))
			if !sameSet(got, c.want) {
				t.Fatalf("%q: got %q, want %q", c.words, got, c.want)
			}
		})
	}
}

func TestFish(t *testing.T) {
	needShell(t, "fish")
	script := filepath.Join(t.TempDir(), "ddraid.fish")
	if err := os.WriteFile(script, Fish(model(t)), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, c := range completionCases {
		t.Run(c.name, func(t *testing.T) {
			cmd := exec.Command("fish", "--no-config", "-c", "source $argv[1]; complete -C $argv[2]", script, c.words)
			cmd.Dir = completionDir(t)
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("fish %q: %v\n%s", c.words, err, out)
			}
			// Lines are "candidate<TAB>description"; after "--tls=" fish
			// repeats the flag in front of the value.
			var got []string
			for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
				cand, _, _ := strings.Cut(l, "\t")
				if _, v, ok := strings.Cut(cand, "="); ok && strings.HasPrefix(cand, "--") {
					cand = v
				}
				if cand != "" {
					got = append(got, cand)
				}
			}
			if !sameSet(got, c.want) {
				t.Fatalf("%q: got %q, want %q", c.words, got, c.want)
			}
		})
	}
}

// TestSyntax checks the three scripts with the shells' own parsers.
func TestSyntax(t *testing.T) {
	dir := t.TempDir()
	for _, sh := range []struct {
		shell  string
		script []byte
		args   []string
	}{
		{"bash", Bash(model(t)), []string{"-n"}},
		{"zsh", Zsh(model(t)), []string{"-n"}},
		{"fish", Fish(model(t)), []string{"--no-execute"}},
	} {
		needShell(t, sh.shell)
		path := filepath.Join(dir, "ddraid."+sh.shell)
		if err := os.WriteFile(path, sh.script, 0o644); err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command(sh.shell, append(sh.args, path)...).CombinedOutput(); err != nil || len(out) > 0 {
			t.Errorf("%s %v: %v\n%s", sh.shell, sh.args, err, out)
		}
	}
}

// TestSpecs checks how help text and values are quoted for zsh's
// _arguments and fish's complete.
func TestSpecs(t *testing.T) {
	type cli struct {
		Odd  string `help:"It's [odd]: a\\b." placeholder:"A:B"`
		Dir  string `help:"Dir." type:"existingdir"`
		Many []int  `help:"Many."`
		Mode string `help:"Mode." enum:"a,b c" default:"a"`
		On   bool   `short:"o" help:"On."`
	}
	k, err := kong.New(&cli{}, kong.Name("x"))
	if err != nil {
		t.Fatal(err)
	}
	flags := map[string]*kong.Flag{}
	for _, f := range k.Model.Flags {
		flags[f.Name] = f
	}
	cases := []struct {
		flag string
		zsh  string // the specs, space separated
		fish string
	}{
		{"odd", `'--odd=[It'\''s \[odd\]\: a\\b.]:A\:B: '`, ` -l 'odd' -d 'It\'s [odd]: a\\b.' -x`},
		{"dir", `'--dir=[Dir.]:DIR:_files -/'`, ` -l 'dir' -d 'Dir.' -x -a '(__fish_complete_directories (commandline -ct))'`},
		{"many", `'*--many=[Many.]:MANY: '`, ` -l 'many' -d 'Many.' -x`},
		{"mode", `'--mode=[Mode.]:MODE:(a b\ c)'`, ` -l 'mode' -d 'Mode.' -x -a 'a b\\ c'`},
		{"on", `'(-o --on)-o[On.]' '(-o --on)--on[On.]'`, ` -s 'o' -l 'on' -d 'On.'`},
	}
	for _, c := range cases {
		f := flags[c.flag]
		if f == nil {
			t.Fatalf("no flag %s", c.flag)
		}
		if got := strings.Join(zshFlagSpecs(f), " "); got != c.zsh {
			t.Errorf("zsh %s:\n got %s\nwant %s", c.flag, got, c.zsh)
		}
		if got := fishFlag(f); got != c.fish {
			t.Errorf("fish %s:\n got %s\nwant %s", c.flag, got, c.fish)
		}
	}
}
