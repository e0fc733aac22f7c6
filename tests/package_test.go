package tests

import (
	"debug/elf"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
)

// builtPackages are the .deb and .rpm `make package` made for this run.
type builtPackages struct {
	version string
	deb     string
	rpm     string
	build   string // dist/build: the binary, scripts, man page the packages hold
}

var (
	packagesOnce sync.Once
	packages     builtPackages
	packagesErr  string
)

// buildPackages runs `make package` once per test binary with the version
// packaging/version.sh prints, and returns the package paths.
func buildPackages(t *testing.T) builtPackages {
	t.Helper()
	needTools(t, "make", "git", "gzip", "dpkg-deb")
	packagesOnce.Do(func() {
		top, err := filepath.Abs("..")
		if err != nil {
			packagesErr = err.Error()
			return
		}
		out, err := runErr("sh", filepath.Join(top, "packaging/version.sh"))
		if err != nil {
			packagesErr = "packaging/version.sh: " + err.Error() + "\n" + out
			return
		}
		v := strings.TrimSpace(out)
		if out, err := runErr("make", "-C", top, "package", "PKG_VERSION="+v); err != nil {
			packagesErr = "make package: " + err.Error() + "\n" + out
			return
		}
		packages = builtPackages{
			version: v,
			deb:     filepath.Join(top, "dist", "ddraid_"+v+"_amd64.deb"),
			rpm:     filepath.Join(top, "dist", "ddraid-"+v+".x86_64.rpm"),
			build:   filepath.Join(top, "dist", "build"),
		}
	})
	if packagesErr != "" {
		t.Fatal(packagesErr)
	}
	return packages
}

// installedFiles are the files both packages must hold.
var installedFiles = []string{
	"/etc/ddraid/ddraid.toml",
	"/usr/bin/ddraid",
	"/usr/lib/systemd/system/ddraid.service",
	"/usr/lib/systemd/system/ddraid-serve@.service",
	"/usr/share/bash-completion/completions/ddraid",
	"/usr/share/zsh/vendor-completions/_ddraid",
	"/usr/share/fish/vendor_completions.d/ddraid.fish",
	"/usr/share/doc/ddraid/copyright",
	"/usr/share/doc/ddraid/install.md",
	"/usr/share/man/man1/ddraid.1.gz",
}

func TestPackageDeb(t *testing.T) {
	p := buildPackages(t)
	needTools(t, "dpkg-deb")
	if got := strings.TrimSpace(run(t, "dpkg-deb", "-f", p.deb, "Version")); got != p.version {
		t.Fatalf("deb version %q, want %q", got, p.version)
	}
	info := run(t, "dpkg-deb", "-I", p.deb)
	for _, want := range []string{"Package: ddraid", "Architecture: amd64", "Section: admin", " conffiles", " postinst", " prerm", " postrm"} {
		if !strings.Contains(info, want) {
			t.Errorf("dpkg-deb -I lacks %q:\n%s", want, info)
		}
	}
	if dep := run(t, "dpkg-deb", "-f", p.deb, "Depends"); strings.TrimSpace(dep) != "" {
		t.Errorf("a static binary needs no dependencies, got Depends: %s", dep)
	}
	if conf := run(t, "dpkg-deb", "--ctrl-tarfile", p.deb); conf == "" {
		t.Fatal("empty control archive")
	}
	ctrl := t.TempDir()
	run(t, "dpkg-deb", "-e", p.deb, ctrl)
	conffiles, err := os.ReadFile(filepath.Join(ctrl, "conffiles"))
	if err != nil {
		t.Fatal(err)
	}
	if strings.TrimSpace(string(conffiles)) != "/etc/ddraid/ddraid.toml" {
		t.Errorf("conffiles = %q, want only /etc/ddraid/ddraid.toml", conffiles)
	}
	contents := run(t, "dpkg-deb", "-c", p.deb)
	for _, f := range append(slices.Clone(installedFiles), "/usr/share/doc/ddraid/changelog.gz", "/usr/share/lintian/overrides/ddraid") {
		if !regexp.MustCompile(`(?m) \.` + regexp.QuoteMeta(f) + `$`).MatchString(contents) {
			t.Errorf("dpkg-deb -c lacks %s:\n%s", f, contents)
		}
	}
	if !regexp.MustCompile(`(?m)^-rwxr-xr-x root/root .* \./usr/bin/ddraid$`).MatchString(contents) {
		t.Errorf("/usr/bin/ddraid is not root-owned 0755:\n%s", contents)
	}
	// The binary is static: no interpreter, no shared libraries.
	f, err := elf.Open(filepath.Join(p.build, "ddraid"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, prog := range f.Progs {
		if prog.Type == elf.PT_INTERP {
			t.Errorf("ddraid has an ELF interpreter: not static")
		}
	}
	if libs, err := f.ImportedLibraries(); err != nil || len(libs) > 0 {
		t.Errorf("ddraid needs shared libraries %q (%v)", libs, err)
	}
	if strings.Contains(contents, "./var/lib/ddraid") {
		t.Errorf("the package ships /var/lib/ddraid; the maintainer script and StateDirectory= create it")
	}
}

func TestPackageRpm(t *testing.T) {
	p := buildPackages(t)
	needTools(t, "rpm")
	info := run(t, "rpm", "-qpi", p.rpm)
	for _, want := range []string{"Name        : ddraid", "Version     : " + p.version, "Architecture: x86_64"} {
		if !strings.Contains(info, want) {
			t.Errorf("rpm -qpi lacks %q:\n%s", want, info)
		}
	}
	list := strings.Fields(run(t, "rpm", "-qpl", p.rpm))
	for _, f := range installedFiles {
		if !slices.Contains(list, f) {
			t.Errorf("rpm -qpl lacks %s: %q", f, list)
		}
	}
	if conf := strings.TrimSpace(run(t, "rpm", "-qpc", p.rpm)); conf != "/etc/ddraid/ddraid.toml" {
		t.Errorf("rpm -qpc = %q, want /etc/ddraid/ddraid.toml", conf)
	}
	flags := run(t, "rpm", "-qp", "--qf", `[%{FILENAMES} %{FILEFLAGS:fflags}\n]`, p.rpm)
	if !regexp.MustCompile(`(?m)^/etc/ddraid/ddraid\.toml cn$`).MatchString(flags) {
		t.Errorf("ddraid.toml is not %%config(noreplace):\n%s", flags)
	}
	scripts := run(t, "rpm", "-qp", "--scripts", p.rpm)
	for _, want := range []string{
		"postinstall scriptlet (using /bin/sh):", "phase=postinstall",
		"preuninstall scriptlet (using /bin/sh):", "phase=preremove",
		"postuninstall scriptlet (using /bin/sh):", "phase=postremove",
	} {
		if !strings.Contains(scripts, want) {
			t.Errorf("rpm --scripts lacks %q:\n%s", want, scripts)
		}
	}
}

// TestPackageSystemdUnits verifies copies of the packaged units whose
// ExecStart is the built binary: systemd-analyze must print nothing.
func TestPackageSystemdUnits(t *testing.T) {
	p := buildPackages(t)
	needTools(t, "systemd-analyze")
	dir := t.TempDir()
	bin := filepath.Join(p.build, "ddraid")
	var units []string
	for src, dst := range map[string]string{
		"ddraid.service":        "ddraid.service",
		"ddraid-serve@.service": "ddraid-serve@data.service",
	} {
		body, err := os.ReadFile(filepath.Join("..", "packaging", "systemd", src))
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(body), "ExecStart=/usr/bin/ddraid ") {
			t.Fatalf("%s: no ExecStart=/usr/bin/ddraid", src)
		}
		for _, want := range []string{"NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes",
			"CapabilityBoundingSet=\n", "StateDirectory=ddraid", "RuntimeDirectory=ddraid", "User=ddraid"} {
			if !strings.Contains(string(body), want) {
				t.Errorf("%s lacks %q", src, strings.TrimSpace(want))
			}
		}
		body = []byte(strings.ReplaceAll(string(body), "/usr/bin/ddraid", bin))
		path := filepath.Join(dir, dst)
		if err := os.WriteFile(path, body, 0o644); err != nil {
			t.Fatal(err)
		}
		units = append(units, path)
	}
	slices.Sort(units)
	out, err := runErr("systemd-analyze", append([]string{"verify", "--man=no"}, units...)...)
	if err != nil || out != "" {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
	// Hardening: systemd's exposure score (0 best, 10 worst) stays at or
	// below 2.0; it is 1.9 today.
	for _, u := range units {
		if out, err := runErr("systemd-analyze", "security", "--offline=true", "--threshold=20", u); err != nil {
			t.Errorf("systemd-analyze security %s: exposure above 2.0 (%v)\n%s", filepath.Base(u), err, out)
		}
	}
	// The template serves the instance's array on its own socket.
	serve, err := os.ReadFile(filepath.Join(dir, "ddraid-serve@data.service"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"Environment=DDRAID_SERVE_LISTEN=unix:/run/ddraid/%i.sock", " serve --config /etc/ddraid/ddraid.toml %i\n", "RuntimeDirectoryPreserve=yes"} {
		if !strings.Contains(string(serve), want) {
			t.Errorf("ddraid-serve@.service lacks %q", want)
		}
	}
}

func TestPackageLintian(t *testing.T) {
	p := buildPackages(t)
	needTools(t, "lintian")
	cmd := exec.Command("lintian", "--fail-on", "error,warning", "--tag-display-limit", "0", p.deb)
	stdout, err := cmd.Output()
	if err != nil {
		t.Fatalf("lintian: %v\n%s", err, stdout)
	}
	for _, l := range strings.Split(string(stdout), "\n") {
		if strings.HasPrefix(l, "E: ") || strings.HasPrefix(l, "W: ") {
			t.Errorf("lintian: %s", l)
		}
	}
}

// TestPackageInstall installs the .deb into an empty directory with
// dpkg --root (maintainer scripts run too), runs the installed binary,
// then purges it.
func TestPackageInstall(t *testing.T) {
	p := buildPackages(t)
	needTools(t, "dpkg", "bash")
	root := t.TempDir()
	for _, d := range []string{"var/lib/dpkg/info", "var/lib/dpkg/updates"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(root, "var/lib/dpkg/status"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	dpkg := func(args ...string) string {
		base := []string{"--root=" + root, "--force-script-chrootless", "--log=/dev/null"}
		if os.Geteuid() != 0 {
			base = append(base, "--force-not-root")
		}
		return run(t, "dpkg", append(base, args...)...)
	}
	out := dpkg("-i", p.deb)
	if !strings.Contains(out, "ddraid: installed.") {
		t.Errorf("postinst did not report a fresh install:\n%s", out)
	}
	ver := run(t, filepath.Join(root, "usr/bin/ddraid"), "--version")
	if ver != "ddraid "+p.version+"\n" {
		t.Fatalf("installed ddraid --version = %q, want %q", ver, "ddraid "+p.version)
	}
	st, err := os.Stat(filepath.Join(root, "var/lib/ddraid"))
	if err != nil || !st.IsDir() || st.Mode().Perm() != 0o750 {
		t.Fatalf("postinst did not make /var/lib/ddraid 0750: %v %v", st, err)
	}
	// The installed configuration is the default one and checks out.
	if out := run(t, filepath.Join(root, "usr/bin/ddraid"), "config", "check", "--config", filepath.Join(root, "etc/ddraid/ddraid.toml")); out != "ok\n" {
		t.Fatalf("config check of the installed file: %q", out)
	}
	// The completion scripts parse in their shells.
	needTools(t, "zsh", "fish")
	run(t, "bash", "-n", filepath.Join(root, "usr/share/bash-completion/completions/ddraid"))
	run(t, "zsh", "-n", filepath.Join(root, "usr/share/zsh/vendor-completions/_ddraid"))
	run(t, "fish", "--no-execute", filepath.Join(root, "usr/share/fish/vendor_completions.d/ddraid.fish"))

	// Reinstalling the same version runs postinst as an upgrade.
	if out := dpkg("-i", p.deb); !strings.Contains(out, "ddraid: upgraded") {
		t.Errorf("postinst did not report an upgrade:\n%s", out)
	}
	// An edited configuration file survives the upgrade (noreplace).
	conf := filepath.Join(root, "etc/ddraid/ddraid.toml")
	if err := os.WriteFile(conf, []byte("state-dir = \"/srv/ddraid\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	dpkg("--force-confold", "-i", p.deb)
	if b, _ := os.ReadFile(conf); string(b) != "state-dir = \"/srv/ddraid\"\n" {
		t.Fatalf("upgrade replaced the edited configuration: %q", b)
	}

	out = dpkg("--purge", "ddraid")
	if !strings.Contains(out, "ddraid: purged") {
		t.Errorf("postrm did not report the purge:\n%s", out)
	}
	for _, gone := range []string{"usr/bin/ddraid", "etc/ddraid/ddraid.toml", "usr/lib/systemd/system/ddraid.service"} {
		if _, err := os.Stat(filepath.Join(root, gone)); !os.IsNotExist(err) {
			t.Errorf("%s is still there after purge (%v)", gone, err)
		}
	}
	if _, err := os.Stat(filepath.Join(root, "var/lib/ddraid")); err != nil {
		t.Errorf("purge removed the state directory: %v", err)
	}
}

// TestPackageMaintainerScript runs the generated scripts with the
// argument conventions of both formats (DPKG_ROOT keeps them inside a
// temporary directory, away from users and systemd).
func TestPackageMaintainerScript(t *testing.T) {
	p := buildPackages(t)
	cases := []struct {
		script string
		args   []string
		want   string // "" for no output
	}{
		{"postinstall", []string{"configure"}, "ddraid: installed."},
		{"postinstall", []string{"configure", "0.1.0"}, "ddraid: upgraded"},
		{"postinstall", []string{"1"}, "ddraid: installed."},
		{"postinstall", []string{"2"}, "ddraid: upgraded"},
		{"postinstall", []string{"abort-upgrade", "0.1.0"}, ""},
		{"preremove", []string{"remove"}, "no units to stop"},
		{"preremove", []string{"0"}, "no units to stop"},
		{"preremove", []string{"upgrade", "0.2.0"}, ""},
		{"preremove", []string{"1"}, ""},
		{"postremove", []string{"remove"}, "ddraid: removed;"},
		{"postremove", []string{"0"}, "ddraid: removed;"},
		{"postremove", []string{"purge"}, "ddraid: purged;"},
		{"postremove", []string{"1"}, ""},
		{"postremove", []string{"upgrade", "0.2.0"}, ""},
	}
	for _, c := range cases {
		t.Run(c.script+"_"+strings.Join(c.args, "_"), func(t *testing.T) {
			root := t.TempDir()
			cmd := exec.Command("sh", append([]string{filepath.Join(p.build, c.script+".sh")}, c.args...)...)
			cmd.Env = append(os.Environ(), "DPKG_ROOT="+root)
			b, err := cmd.CombinedOutput()
			out := string(b)
			if err != nil {
				t.Fatalf("%v\n%s", err, out)
			}
			lines := strings.Split(strings.TrimSpace(out), "\n")
			last := lines[len(lines)-1]
			if c.want == "" {
				if strings.TrimSpace(out) != "" {
					t.Fatalf("want no output, got %q", out)
				}
				return
			}
			if !strings.Contains(last, c.want) {
				t.Fatalf("output %q, want %q", out, c.want)
			}
		})
	}
}

// TestPackageConfigCommands drives `ddraid config` and a refused file
// through the binary.
func TestPackageConfigCommands(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.toml")
	if err := os.WriteFile(bad, []byte("state-dir = \"/x\"\n[serve]\nlisen = [\"a\"]\nshutdown-wait = 5\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	good := filepath.Join(dir, "good.toml")
	if err := os.WriteFile(good, []byte("state-dir = \""+filepath.Join(dir, "state")+"\"\n[serve]\nshutdown-wait = \"5s\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		args []string
		env  []string
		code int
		want []string
	}{
		{"check ok", []string{"config", "check", "--config", good}, nil, 0, []string{"ok\n"}},
		{"check reports every error", []string{"config", "check", "--config", bad}, nil, 1, []string{
			`bad.toml:3: "serve.lisen": unknown key`, `bad.toml:4: "serve.shutdown-wait": `}},
		{"check a missing file", []string{"config", "check", "--config", filepath.Join(dir, "none.toml")}, nil, 1, []string{"no such file"}},
		{"status refuses a bad file", []string{"status", "--config", bad}, nil, 2, []string{`"serve.lisen": unknown key`}},
		{"status reads state-dir from the file", []string{"status", "--config", good}, nil, 0, []string{"no arrays in " + filepath.Join(dir, "state")}},
		{"environment beats the file", []string{"status", "--config", good}, []string{"DDRAID_STATE_DIR=" + filepath.Join(dir, "env")}, 0, []string{"no arrays in " + filepath.Join(dir, "env")}},
		{"DDRAID_CONFIG names the file", []string{"status"}, []string{"DDRAID_CONFIG=" + good}, 0, []string{"no arrays in " + filepath.Join(dir, "state")}},
		{"default is commented", []string{"config", "default"}, nil, 0, []string{"#state-dir = \"/var/lib/ddraid\"\n", "[serve]\n"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cmd := exec.Command(ddraidBin, c.args...)
			cmd.Env = append(os.Environ(), c.env...)
			b, err := cmd.CombinedOutput()
			code := 0
			if ee, ok := err.(*exec.ExitError); ok {
				code = ee.ExitCode()
			} else if err != nil {
				t.Fatal(err)
			}
			if code != c.code {
				t.Fatalf("exit %d, want %d\n%s", code, c.code, b)
			}
			for _, w := range c.want {
				if !strings.Contains(string(b), w) {
					t.Errorf("output lacks %q:\n%s", w, b)
				}
			}
			if strings.Contains(string(b), "panic") {
				t.Fatalf("panic:\n%s", b)
			}
		})
	}
}
