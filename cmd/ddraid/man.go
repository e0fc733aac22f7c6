package main

import (
	"os"

	"github.com/alecthomas/kong"

	"github.com/ddraid/ddraid/internal/clidoc"
	"github.com/ddraid/ddraid/internal/config"
)

// ManCmd is the hidden `ddraid man`: it prints the ddraid(1) manual page,
// generated from the command line.
type ManCmd struct {
	Date string `help:"Date for the page footer (YYYY-MM-DD)."`
}

// Run prints the page.
func (c *ManCmd) Run(kctx *kong.Context) error {
	_, err := os.Stdout.Write(clidoc.Man(kctx.Model, manOptions(c.Date, kctx.Model)))
	return err
}

func manOptions(date string, app *kong.Application) clidoc.ManOptions {
	keys := map[*kong.Flag]string{}
	for _, k := range config.Keys(app) {
		keys[k.Flag] = k.String()
	}
	return clidoc.ManOptions{
		Section: "1",
		Date:    date,
		Version: "ddraid " + buildVersion(),
		Manual:  "User Commands",
		Summary: "cluster RAID served over NBD",
		Description: []string{
			"ddraid assembles redundant arrays from local disks, files or disks exported by other nodes, " +
				"and serves them over the Network Block Device protocol (NBD). Its main level, raid35, " +
				"puts every logical block in one full stripe of 2, 3, 5 or 9 members with XOR parity; " +
				"mirror and linear levels are there too. A write-intent bitmap limits resync after a " +
				"crash to the regions that were being written.",
			"Every option can also be set in the configuration file and through an environment variable; " +
				"a flag on the command line wins over the variable, the variable over the file, " +
				"and the file over the built-in default.",
		},
		FlagNote: func(f *kong.Flag) string {
			if k, ok := keys[f]; ok {
				return "Configuration key: " + k + "."
			}
			return ""
		},
		Extra: []clidoc.ManSection{
			{Title: "CONFIGURATION FILE", Paragraphs: []string{
				"/etc/ddraid/ddraid.toml (or --config, DDRAID_CONFIG) is a TOML file. Global options are keys " +
					"above the first table; the options of a command are keys in a table named after it, " +
					"for example:",
				"  state-dir = \"/var/lib/ddraid\"\n  [serve]\n  listen = [\"unix:/run/ddraid/data.sock\"]\n  shutdown-wait = \"1m\"",
				"Unknown keys are errors. ddraid config default prints every key with its default; " +
					"ddraid config check checks a file. The default path may be missing; a file named " +
					"with --config or DDRAID_CONFIG must exist.",
			}},
			{Title: "ENVIRONMENT", Paragraphs: []string{
				"DDRAID_CONFIG names the configuration file. Every other option reads DDRAID_ followed by " +
					"its command and its name in upper case with underscores, for example " +
					"DDRAID_STATE_DIR or DDRAID_SERVE_LISTEN; each option above names its variable.",
			}},
			{Title: "FILES", Paragraphs: []string{
				"/etc/ddraid/ddraid.toml — the configuration file.",
				"/var/lib/ddraid — the state directory: array metadata and write-intent bitmaps.",
				"/run/ddraid — sockets of the units; ddraid-serve@NAME.service serves array NAME on /run/ddraid/NAME.sock.",
			}},
			{Title: "EXIT STATUS", Paragraphs: []string{
				"0 on success, 1 when a command fails (check also when it finds mismatches), " +
					"2 when the command line or the configuration file is invalid.",
			}},
			{Title: "SEE ALSO", Paragraphs: []string{
				"nbdinfo(1), nbdfuse(1), qemu-img(1), systemd.exec(5); /usr/share/doc/ddraid/install.md.",
			}},
		},
	}
}
