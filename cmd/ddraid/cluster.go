package main

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/ddraid/ddraid/blockdev/member"
	"github.com/ddraid/ddraid/blockdev/nbd"
	"github.com/ddraid/ddraid/blockdev/remote"
	"github.com/ddraid/ddraid/cluster"
	"github.com/ddraid/ddraid/cluster/serve"
	"github.com/ddraid/ddraid/internal/procs"
	"github.com/ddraid/ddraid/lockd"
	"github.com/ddraid/ddraid/lockd/membership"
)

// ClusterFlags are the agent's cluster-mode flags; without --nodes the
// agent only hosts members.
type ClusterFlags struct {
	Nodes          []string      `name:"nodes" help:"Cluster mode: the names of all cluster nodes (the same list on every agent); quorum is a strict majority of them." placeholder:"NAME,..."`
	NodeName       string        `name:"node-name" help:"This node's name in the cluster (its certificate's DNS name); default the host name." placeholder:"NAME"`
	Bind           string        `name:"bind" help:"Cluster gossip address (UDP and TCP)." default:"127.0.0.1:7946" placeholder:"HOST:PORT"`
	Advertise      string        `name:"advertise" help:"Gossip address other nodes reach this one at, if not --bind." placeholder:"HOST:PORT"`
	RPC            string        `name:"rpc" help:"Address of the lock and coordination transport (mutual TLS)." default:"127.0.0.1:7947" placeholder:"HOST:PORT"`
	Join           []string      `name:"join" help:"Gossip address of a cluster node to join (repeatable); none starts a new cluster." placeholder:"HOST:PORT"`
	EncryptKeyFile string        `name:"encrypt-key-file" type:"path" help:"File holding the cluster's gossip key in base64 (ddraid cluster keygen); required in cluster mode." placeholder:"FILE"`
	ProbeInterval  time.Duration `name:"gossip-probe-interval" help:"Failure detection: time between probes of one node. A failed node is declared so after about probe interval + probe timeout + suspicion mult × probe interval (5 to 7 s by default)." default:"1s"`
	ProbeTimeout   time.Duration `name:"gossip-probe-timeout" help:"Failure detection: how long a probe waits for an answer (about the network's 99th percentile round trip); at most the probe interval." default:"500ms"`
	SuspicionMult  int           `name:"gossip-suspicion-mult" help:"Failure detection: how many probe intervals a suspected node has to refute the suspicion (at least 1)." default:"4"`
	GossipTuning   string        `name:"gossip-tuning" hidden:"" enum:"flags,fast-local" default:"flags" help:"fast-local: serf's test settings (detection well under a second; loopback only), overriding the gossip-probe flags."`
	Serve          []string      `name:"serve" help:"Cluster mode: assemble array NAME as one of its writers and export it over NBD at LISTEN (HOST:PORT or unix:/PATH; default 127.0.0.1:10809); repeatable, one listener per array." placeholder:"NAME[=LISTEN]"`
	ServeDelay     time.Duration `name:"serve-member-delay" hidden:"" help:"Add this latency to every member request of the served arrays (drills and benchmarks only)."`
	ServeTimeout   time.Duration `name:"serve-timeout" help:"Cluster mode: bound on every wait of a served array's coordination (superblock fetch, slot, metadata update, takeover step, resync window)." default:"30s"`
	ServeSpeedMin  string        `name:"serve-speed-min" help:"Cluster mode: minimum speed of the served arrays' resync, rebuild and check, kept even under foreground IO." default:"1M"`
	ServeSpeedMax  string        `name:"serve-speed-max" help:"Cluster mode: maximum speed of the served arrays' resync, rebuild and check (the initial sync and rebuilds of a cluster included); 0 for no limit." default:"200M"`
	ServeMemberTO  time.Duration `name:"serve-member-timeout" help:"Cluster mode: how long a member of a served array may stay unreachable, its requests waiting, before this writer fails it." default:"10s"`
	ServeClear     time.Duration `name:"serve-clear-delay" help:"Cluster mode: how long a write-intent bitmap region of a served array stays dirty after its last write." default:"5s"`
}

// newCluster makes the cluster runtime when --nodes is given (nil, nil, nil
// otherwise), not started yet: message handlers are registered before
// Start. TLS files are the agent's; tc is their TLS configuration.
func (c *ClusterFlags) newCluster(stateDir, certFile, keyFile, caFile string) (n *cluster.Node, tc *tls.Config, err error) {
	if len(c.Nodes) == 0 {
		if len(c.Join) > 0 || c.NodeName != "" || c.EncryptKeyFile != "" || len(c.Serve) > 0 {
			return nil, nil, errors.New("--join, --node-name, --encrypt-key-file and --serve need --nodes (cluster mode)")
		}
		return nil, nil, nil
	}
	if certFile == "" || keyFile == "" || caFile == "" {
		return nil, nil, errors.New("cluster mode needs --tls-cert, --tls-key and --tls-ca (agents talk mutual TLS)")
	}
	if c.EncryptKeyFile == "" {
		return nil, nil, errors.New("cluster mode needs --encrypt-key-file (gossip is always encrypted; make a key with `ddraid cluster keygen`)")
	}
	key, err := readKeyFile(c.EncryptKeyFile)
	if err != nil {
		return nil, nil, err
	}
	tc, err = nbd.LoadTLSConfig(certFile, keyFile, caFile)
	if err != nil {
		return nil, nil, err
	}
	name := c.NodeName
	if name == "" {
		if name, err = os.Hostname(); err != nil {
			return nil, nil, fmt.Errorf("--node-name not given and no host name: %w", err)
		}
	}
	var voters []lockd.NodeID
	for _, n := range c.Nodes {
		for _, s := range strings.Split(n, ",") {
			if s = strings.TrimSpace(s); s != "" {
				voters = append(voters, lockd.NodeID(s))
			}
		}
	}
	tu := membership.LAN()
	tu.ProbeInterval, tu.ProbeTimeout, tu.SuspicionMult = c.ProbeInterval, c.ProbeTimeout, c.SuspicionMult
	if c.GossipTuning == "fast-local" {
		tu = membership.FastLocal()
	}
	n, err = cluster.New(cluster.Config{Name: lockd.NodeID(name), Voters: voters, Bind: c.Bind, Advertise: c.Advertise, RPC: c.RPC,
		Join: c.Join, Key: key, Certificate: tc.Certificates[0], CA: tc.ClientCAs, Tunables: tu,
		StatePath: filepath.Join(agentDir(stateDir), "lockd.state"), Logger: slog.Default()})
	if err != nil {
		return nil, nil, err
	}
	return n, tc, nil
}

// startCluster starts n and says so.
func startCluster(n *cluster.Node, rpc string) error {
	if err := n.Start(); err != nil {
		return err
	}
	fmt.Printf("cluster node %s: gossip %s, rpc %s\n", n.Name(), n.GossipAddr(), rpc)
	return nil
}

// controlRoutes are the cluster endpoints of the agent's control socket.
func controlRoutes(ctl *cluster.Control, arrays *serve.Server) []member.Route {
	if ctl == nil {
		return nil
	}
	h := ctl.Handler()
	var rs []member.Route
	for _, p := range cluster.ControlPatterns {
		rs = append(rs, member.Route{Pattern: p, Handler: h})
	}
	if arrays != nil {
		rs = append(rs, member.Route{Pattern: serve.ControlPattern, Handler: arrays.Handler()})
	}
	return rs
}

// newArrays makes the server of the --serve arrays on node n, whose TLS
// configuration tc also reaches the agent members. Every cluster node has
// one, serving arrays or not: it answers the coordination messages of the
// arrays whose members it hosts.
func (c *ClusterFlags) newArrays(stateDir string, n *cluster.Node, tc *tls.Config, gov *procs.Governor) (*serve.Server, []serve.Spec, error) {
	var specs []serve.Spec
	for _, s := range c.Serve {
		sp, err := serve.ParseSpec(s)
		if err != nil {
			return nil, nil, err
		}
		specs = append(specs, sp)
	}
	if c.ServeMemberTO < time.Millisecond {
		return nil, nil, fmt.Errorf("--serve-member-timeout %v: want at least 1ms", c.ServeMemberTO)
	}
	th, err := parseThrottle(c.ServeSpeedMin, c.ServeSpeedMax, "serve-")
	if err != nil {
		return nil, nil, err
	}
	client := &tls.Config{Certificates: tc.Certificates, RootCAs: tc.ClientCAs, MinVersion: tls.VersionTLS12}
	srv, err := serve.New(serve.Config{StateDir: stateDir, Node: n.Name(), Messenger: n.Messenger(),
		Remote: remote.Config{FailAfter: c.ServeMemberTO, TLS: client, Logger: slog.Default()}, Timeout: c.ServeTimeout, Wrap: memberDelay(c.ServeDelay),
		Throttle: th, ClearDelay: c.ServeClear, Logger: slog.Default(), OnTransmission: gov.Hook(), OnSpread: gov.SpreadHook()})
	if err != nil {
		return nil, nil, err
	}
	return srv, specs, nil
}

func readKeyFile(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("gossip key: %w", err)
	}
	if fi, err := os.Stat(path); err == nil && fi.Mode().Perm()&0o077 != 0 {
		slog.Warn("the gossip key file is readable by others; chmod 600 it", "file", path, "mode", fi.Mode().Perm().String())
	}
	k, err := membership.ParseKey(strings.TrimSpace(string(b)))
	if err != nil {
		return nil, fmt.Errorf("gossip key %s: %w", path, err)
	}
	return k, nil
}

// agentControl is the control socket a client command talks to.
func agentControl(g *Globals, flag string) string {
	if flag != "" {
		return flag
	}
	return filepath.Join(agentDir(g.StateDir), "agent.sock")
}

// ClusterCmd is `ddraid cluster`.
type ClusterCmd struct {
	Status ClusterStatusCmd `cmd:"" help:"Show the cluster as the local agent sees it: nodes, quorum, epoch, and the arrays it serves."`
	Arrays ClusterArraysCmd `cmd:"" help:"Show the arrays the local agent serves (--serve): writer slot, epoch, resync windows, takeovers."`
	Keygen ClusterKeygenCmd `cmd:"" help:"Print a new gossip encryption key (base64, 32 bytes) for --encrypt-key-file."`
}

// ClusterStatusCmd is `ddraid cluster status`.
type ClusterStatusCmd struct {
	Control string        `type:"path" help:"The agent's control socket (default STATE_DIR/agent/agent.sock)." placeholder:"SOCKET"`
	JSON    bool          `name:"json" help:"Print JSON."`
	Timeout time.Duration `help:"How long to wait for the agent." default:"10s"`
}

// Run prints the status.
func (c *ClusterStatusCmd) Run(g *Globals) error {
	ctx, cancel := context.WithTimeout(context.Background(), c.Timeout)
	defer cancel()
	st, err := cluster.DialControl(agentControl(g, c.Control)).Status(ctx)
	if err != nil {
		return fmt.Errorf("cluster status: %w", err)
	}
	if c.JSON {
		return printJSON(st)
	}
	if err := cluster.WriteStatus(os.Stdout, st); err != nil {
		return err
	}
	arrays, err := serve.Arrays(ctx, agentControl(g, c.Control))
	if err != nil {
		return fmt.Errorf("cluster status: served arrays: %w", err)
	}
	if len(arrays) > 0 {
		fmt.Println()
	}
	return serve.WriteStatus(os.Stdout, arrays)
}

// ClusterArraysCmd is `ddraid cluster arrays`.
type ClusterArraysCmd struct {
	Control string        `type:"path" help:"The agent's control socket (default STATE_DIR/agent/agent.sock)." placeholder:"SOCKET"`
	JSON    bool          `name:"json" help:"Print JSON."`
	Timeout time.Duration `help:"How long to wait for the agent." default:"10s"`
}

// Run prints the served arrays.
func (c *ClusterArraysCmd) Run(g *Globals) error {
	ctx, cancel := context.WithTimeout(context.Background(), c.Timeout)
	defer cancel()
	arrays, err := serve.Arrays(ctx, agentControl(g, c.Control))
	if err != nil {
		return fmt.Errorf("cluster arrays: %w", err)
	}
	if c.JSON {
		if arrays == nil {
			arrays = []serve.ArrayStatus{}
		}
		return printJSON(arrays)
	}
	return serve.WriteStatus(os.Stdout, arrays)
}

func printJSON(v any) error {
	e := json.NewEncoder(os.Stdout)
	e.SetIndent("", "  ")
	return e.Encode(v)
}

// ClusterKeygenCmd is `ddraid cluster keygen`.
type ClusterKeygenCmd struct{}

// Run prints a key.
func (ClusterKeygenCmd) Run() error {
	k := make([]byte, 32)
	if _, err := rand.Read(k); err != nil {
		return err
	}
	fmt.Println(base64.StdEncoding.EncodeToString(k))
	return nil
}

// LocksCmd is `ddraid locks`: the lock dump of the local agent.
type LocksCmd struct {
	Show    LocksShowCmd    `cmd:"" default:"withargs" help:"Print the agent's lock dump: resources it masters (granted, converting, waiting) and its own locks."`
	Acquire LocksAcquireCmd `cmd:"" help:"Debugging: have the agent take a lock and hold it for a while."`
}

// LocksShowCmd is `ddraid locks [show]`.
type LocksShowCmd struct {
	Control string        `type:"path" help:"The agent's control socket (default STATE_DIR/agent/agent.sock)." placeholder:"SOCKET"`
	All     bool          `name:"all" help:"Every live node's dump (through the agent), not only the agent's own."`
	JSON    bool          `name:"json" help:"Print JSON."`
	Timeout time.Duration `help:"How long to wait for the agent." default:"10s"`
}

// Run prints the dump.
func (c *LocksShowCmd) Run(g *Globals) error {
	ctx, cancel := context.WithTimeout(context.Background(), c.Timeout)
	defer cancel()
	cc := cluster.DialControl(agentControl(g, c.Control))
	if c.All {
		cd, err := cc.AllLocks(ctx)
		if err != nil {
			return fmt.Errorf("locks: %w", err)
		}
		if c.JSON {
			if err := printJSON(cd); err != nil {
				return err
			}
		} else {
			for i, d := range cd.Dumps {
				if i > 0 {
					fmt.Println()
				}
				if err := cluster.WriteDump(os.Stdout, d); err != nil {
					return err
				}
			}
		}
		if cd.Error != "" {
			return fmt.Errorf("locks: some nodes did not answer: %s", cd.Error)
		}
		return nil
	}
	d, err := cc.Locks(ctx)
	if err != nil {
		return fmt.Errorf("locks: %w", err)
	}
	if c.JSON {
		return printJSON(d)
	}
	return cluster.WriteDump(os.Stdout, d)
}

// LocksAcquireCmd is `ddraid locks acquire`.
type LocksAcquireCmd struct {
	Resource  string        `arg:"" help:"Resource name."`
	Mode      string        `arg:"" help:"Mode: NL, CR, CW, PR, PW or EX."`
	Lockspace string        `help:"Lockspace." default:"debug"`
	Hold      time.Duration `help:"How long the agent holds the lock once granted." default:"10s"`
	Wait      time.Duration `help:"How long to wait for the grant." default:"30s"`
	NoQueue   bool          `name:"noqueue" help:"Fail at once if the lock cannot be granted (NOQUEUE)."`
	JSON      bool          `name:"json" help:"Print the grant as JSON."`
	Control   string        `type:"path" help:"The agent's control socket (default STATE_DIR/agent/agent.sock)." placeholder:"SOCKET"`
}

// Run takes the lock.
func (c *LocksAcquireCmd) Run(g *Globals) error {
	if _, err := lockd.ParseMode(c.Mode); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), c.Wait+10*time.Second)
	defer cancel()
	rep, err := cluster.DialControl(agentControl(g, c.Control)).Acquire(ctx, cluster.AcquireRequest{Lockspace: c.Lockspace,
		Resource: c.Resource, Mode: c.Mode, NoQueue: c.NoQueue, WaitMS: c.Wait.Milliseconds(), HoldMS: c.Hold.Milliseconds()})
	if err != nil {
		return fmt.Errorf("locks acquire: %w", err)
	}
	if c.JSON {
		return printJSON(rep)
	}
	fmt.Printf("granted %s/%s %s on %s, token %s (epoch %d), held for %v\n", c.Lockspace, c.Resource, rep.Mode, rep.Node, rep.Token, rep.Token.Epoch, c.Hold)
	return nil
}
