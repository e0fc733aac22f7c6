// Command ddraid creates, serves and inspects ddraid arrays. The commands
// only parse flags and wire packages together; the work is done in blockdev,
// raid and their subpackages.
package main

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime/debug"

	"github.com/alecthomas/kong"

	"github.com/ddraid/ddraid/internal/config"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = ""

// Globals are flags every command takes.
type Globals struct {
	Config    config.File      `help:"Configuration file (TOML, see 'ddraid config default'); the default path may be missing." default:"/etc/ddraid/ddraid.toml" env:"DDRAID_CONFIG" placeholder:"FILE"`
	StateDir  string           `help:"State directory (metadata)." env:"DDRAID_STATE_DIR" default:"/var/lib/ddraid" type:"path" placeholder:"DIR"`
	LogLevel  string           `help:"Log level: debug, info, warn, error." env:"DDRAID_LOG_LEVEL" default:"info" enum:"debug,info,warn,error"`
	LogFormat string           `help:"Log format: text or json." env:"DDRAID_LOG_FORMAT" default:"text" enum:"text,json"`
	Version   kong.VersionFlag `help:"Print the version and exit."`
}

// CLI is the command tree.
type CLI struct {
	Globals

	Create       CreateCmd       `cmd:"" help:"Create an array from member files or block devices."`
	Serve        ServeCmd        `cmd:"" help:"Assemble arrays and serve them over NBD."`
	Status       StatusCmd       `cmd:"" help:"Show arrays, their members and background jobs."`
	Check        CheckCmd        `cmd:"" help:"Scrub an array: verify every block's redundancy (exit 1 on mismatches)."`
	FailDevice   FailDeviceCmd   `cmd:"" name:"fail-device" help:"Mark a member failed."`
	RemoveDevice RemoveDeviceCmd `cmd:"" name:"remove-device" help:"Take a failed or missing member, or a spare, out of an array."`
	AddDevice    AddDeviceCmd    `cmd:"" name:"add-device" help:"Add a device: into an empty role (recovery starts) or as a spare."`
	Replace      ReplaceCmd      `cmd:"" help:"Rebuild a new device from a member while it still serves, then swap them."`
	Grow         GrowCmd         `cmd:"" help:"Grow an array: more writer slots for cluster mode (--nodes)."`
	Demo         DemoCmd         `cmd:"" help:"Create (or reuse) a 5-member raid35 array on files in ./ddraid-demo and serve it."`
	Agent        AgentCmd        `cmd:"" help:"Serve the disks this node hosts to the writers of arrays (member exports)."`
	Fence        FenceCmd        `cmd:"" help:"Tell an agent to refuse writes from an array slot's older epochs."`
	Cluster      ClusterCmd      `cmd:"" help:"Cluster mode: the local agent's view of the cluster; make a gossip key."`
	Locks        LocksCmd        `cmd:"" help:"The local agent's lock dump (resources, masters, holders, waiters); debugging locks."`
	TLS          TLSCmd          `cmd:"" name:"tls" help:"Create a CA and node certificates for TLS between agents."`
	ConfigCmd    ConfigCmd       `cmd:"" name:"config" noconfig:"" help:"Check the configuration file or print the default one."`
	Completion   CompletionCmd   `cmd:"" hidden:"" noconfig:"" help:"Print a shell completion script."`
	Man          ManCmd          `cmd:"" hidden:"" noconfig:"" help:"Print the manual page (roff)."`
}

func buildVersion() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "dev"
}

func newParser(cli *CLI) (*kong.Kong, error) {
	return kong.New(cli,
		kong.Name("ddraid"),
		kong.Description("ddraid: a cluster RAID served over NBD."),
		kong.UsageOnError(),
		kong.Vars{"version": "ddraid " + buildVersion()},
		kong.ConfigureHelp(kong.HelpOptions{Compact: true}),
		config.Envars(),
	)
}

func setupLogging(g *Globals) {
	var lvl slog.Level
	_ = lvl.UnmarshalText([]byte(g.LogLevel))
	opts := &slog.HandlerOptions{Level: lvl}
	var h slog.Handler = slog.NewTextHandler(os.Stderr, opts)
	if g.LogFormat == "json" {
		h = slog.NewJSONHandler(os.Stderr, opts)
	}
	slog.SetDefault(slog.New(h))
}

func run(args []string) int {
	var cli CLI
	parser, err := newParser(&cli)
	if err != nil {
		fmt.Fprintf(os.Stderr, "ddraid: %v\n", err)
		return 2
	}
	ctx, err := parser.Parse(args)
	if err != nil {
		fmt.Fprintf(os.Stderr, "ddraid: error: %v\n", err)
		return 2
	}
	setupLogging(&cli.Globals)
	if err := ctx.Run(&cli.Globals); err != nil {
		if !errors.Is(err, errMismatches) && !errors.Is(err, errReported) {
			fmt.Fprintf(os.Stderr, "ddraid: error: %v\n", err)
		}
		return 1
	}
	return 0
}

func main() { os.Exit(run(os.Args[1:])) }
