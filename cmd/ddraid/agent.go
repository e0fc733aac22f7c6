package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"time"

	"github.com/ddraid/ddraid/blockdev/member"
	"github.com/ddraid/ddraid/blockdev/nbd"
	"github.com/ddraid/ddraid/cluster"
	"github.com/ddraid/ddraid/cluster/serve"
	"github.com/ddraid/ddraid/internal/ctlsock"
	"github.com/ddraid/ddraid/raid"
	"github.com/ddraid/ddraid/raid/array"
)

// AgentCmd is `ddraid agent`: serve the disks this node hosts as members.
type AgentCmd struct {
	ListenMember []string      `name:"listen-member" help:"Address for member exports: HOST:PORT or unix:/PATH (repeatable)." default:"127.0.0.1:10810"`
	HostDisk     []string      `name:"host-disk" type:"path" help:"Disk (block device or file) to serve; writers name it HOST[:PORT]:/PATH (repeatable). Required unless in cluster mode (a writer-only node hosts none)." placeholder:"PATH"`
	Direct       bool          `help:"Open the disks with O_DIRECT."`
	Control      string        `type:"path" help:"Control socket (default STATE_DIR/agent/agent.sock)." placeholder:"PATH"`
	TLSCert      string        `name:"tls-cert" type:"path" help:"Agent certificate (PEM); with --tls-key and --tls-ca, every client must use TLS and present a certificate signed by the CA." placeholder:"FILE"`
	TLSKey       string        `name:"tls-key" type:"path" help:"Private key (PEM) of --tls-cert." placeholder:"FILE"`
	TLSCA        string        `name:"tls-ca" type:"path" help:"CA (PEM) that signs client certificates." placeholder:"FILE"`
	ShutdownWait time.Duration `help:"How long SIGTERM waits for requests in flight." default:"30s"`
	HTTP         string        `name:"http" help:"Also serve a read-only status page (the cluster's nodes, the arrays served here, the member disks) on this TCP address (e.g. 127.0.0.1:10881); off when empty." placeholder:"HOST:PORT"`
	CPUFlags
	Cluster ClusterFlags `embed:"" group:"Cluster mode"`
}

// agentDir is the agent's part of a state directory.
func agentDir(stateDir string) string { return filepath.Join(stateDir, "agent") }

// Run serves until SIGTERM or SIGINT.
func (c *AgentCmd) Run(g *Globals) error {
	if len(c.HostDisk) == 0 && len(c.Cluster.Nodes) == 0 {
		return errors.New("--host-disk is required (only a cluster-mode agent, with --nodes, may host no disk)")
	}
	gov, err := c.CPUFlags.governor()
	if err != nil {
		return err
	}
	cfg := nbd.DefaultConfig()
	cfg.Logger = slog.Default()
	cfg.OnTransmission = gov.Hook()
	switch {
	case c.TLSCert == "" && c.TLSKey == "" && c.TLSCA == "":
	case c.TLSCert == "" || c.TLSKey == "" || c.TLSCA == "":
		return errors.New("--tls-cert, --tls-key and --tls-ca go together (agents require client certificates)")
	default:
		tc, err := nbd.LoadTLSConfig(c.TLSCert, c.TLSKey, c.TLSCA)
		if err != nil {
			return err
		}
		cfg.TLSMode, cfg.TLS = nbd.TLSRequired, tc
	}
	srv, err := nbd.NewServer(cfg)
	if err != nil {
		return err
	}
	host, err := member.Open(member.Config{StateDir: agentDir(g.StateDir), Direct: c.Direct, Logger: slog.Default()})
	if errors.Is(err, member.ErrInUse) {
		return fmt.Errorf("state dir %s is in use by another ddraid process (%w)", g.StateDir, err)
	}
	if err != nil {
		return err
	}
	defer host.Close()
	for _, p := range c.HostDisk {
		d, err := host.AddDisk(p)
		if err != nil {
			return err
		}
		if err := srv.AddExport(nbd.Export{Name: d.Path(), Device: d.Device(), Member: d,
			Description: "ddraid member disk " + d.Path()}); err != nil {
			return err
		}
	}
	ctlPath := c.Control
	if ctlPath == "" {
		ctlPath = filepath.Join(agentDir(g.StateDir), "agent.sock")
	}
	node, tc, err := c.Cluster.newCluster(g.StateDir, c.TLSCert, c.TLSKey, c.TLSCA)
	if err != nil {
		return err
	}
	var clusterCtl *cluster.Control
	var arrays *serve.Server
	if node != nil {
		defer node.Close()
		var specs []serve.Spec
		if arrays, specs, err = c.Cluster.newArrays(g.StateDir, node, tc, gov); err != nil {
			return err
		}
		if err := startCluster(node, c.Cluster.RPC); err != nil {
			return err
		}
		clusterCtl = cluster.NewControl(node)
		defer clusterCtl.Close()
		if arrays != nil {
			// Closed before the node (deferred after it): leaving the
			// slots needs lockd.
			defer func() {
				ctx, cancel := context.WithTimeout(context.Background(), c.ShutdownWait)
				defer cancel()
				if err := arrays.Close(ctx); err != nil {
					slog.Error("stop serving arrays", "err", err)
				}
			}()
			if err := arrays.Start(node.Locks(), specs); err != nil {
				return err
			}
		}
	}
	ctl, err := member.ListenControl(ctlPath, host, slog.Default(), controlRoutes(clusterCtl, arrays)...)
	if err != nil {
		return err
	}
	defer ctl.Close()
	var listeners []net.Listener
	for _, addr := range c.ListenMember {
		l, err := nbd.Listen(addr)
		if err != nil {
			for _, l := range listeners {
				l.Close()
			}
			return fmt.Errorf("listen %s: %w", addr, err)
		}
		listeners = append(listeners, l)
		if tcp, ok := l.Addr().(*net.TCPAddr); ok && !tcp.IP.IsLoopback() && cfg.TLSMode == nbd.TLSOff {
			slog.Warn("member exports are served beyond loopback without TLS: anyone who reaches this address can read the disks (use --tls-cert, --tls-key and --tls-ca)", "listen", addr)
		}
	}
	serveErr := make(chan error, len(listeners))
	for _, l := range listeners {
		go func() { serveErr <- srv.Serve(l) }()
	}
	for _, l := range listeners {
		for _, d := range host.Disks() {
			fmt.Printf("agent serving %s at %s:%s\n", d.Path(), l.Addr(), d.Path())
		}
	}
	if c.HTTP != "" {
		stop, err := c.servePage(node, arrays, host, listeners)
		if err != nil {
			for _, l := range listeners {
				l.Close()
			}
			return err
		}
		defer stop()
	}
	fmt.Printf("agent control socket %s\n", ctlPath)
	runErr := waitForStop(serveErr)
	ctx, cancel := context.WithTimeout(context.Background(), c.ShutdownWait)
	defer cancel()
	if arrays != nil {
		// Before the member exports stop: the arrays may use this node's disks.
		if err := arrays.Close(ctx); err != nil && runErr == nil {
			runErr = fmt.Errorf("stop serving arrays: %w", err)
		}
	}
	if err := srv.Shutdown(ctx); err != nil && !errors.Is(err, context.Canceled) && runErr == nil {
		runErr = fmt.Errorf("shutdown: %w", err)
	}
	return runErr
}

// servePage starts the read-only status page on --http; stop shuts it
// down.
func (c *AgentCmd) servePage(node *cluster.Node, arrays *serve.Server, host *member.Host, listeners []net.Listener) (stop func(), err error) {
	ln, err := net.Listen("tcp", c.HTTP)
	if err != nil {
		return nil, fmt.Errorf("--http: %w", err)
	}
	pc := serve.PageConfig{Title: "agent", Exports: func() []array.PageExport {
		var out []array.PageExport
		for _, d := range host.Disks() {
			e := array.PageExport{Path: d.Path()}
			for _, l := range listeners {
				addr := l.Addr().String()
				if l.Addr().Network() == "unix" {
					addr = "unix:" + addr
				}
				e.Addresses = append(e.Addresses, addr)
			}
			out = append(out, e)
		}
		return out
	}}
	if node != nil {
		pc.Title = "agent " + string(node.Name())
		pc.Cluster = node.Status
	}
	srv := ctlsock.NewHTTPServer(serve.PageHandler(arrays, pc), slog.Default())
	go srv.Serve(ln)
	fmt.Printf("agent status page http://%s/\n", ln.Addr())
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	}, nil
}

// FenceCmd is `ddraid fence`: tell an agent to refuse a slot's old epochs.
type FenceCmd struct {
	Agent string `required:"" type:"path" help:"The agent's control socket (STATE_DIR/agent/agent.sock)." placeholder:"SOCKET"`
	Array string `required:"" help:"Array UUID (ddraid status shows it)."`
	Slot  uint32 `help:"Node slot to fence." default:"0"`
	Epoch uint64 `required:"" help:"Minimum valid epoch: writers of the slot with an older epoch are refused."`
}

// Run sends the fence.
func (c *FenceCmd) Run() error {
	msg, err := member.DialControl(c.Agent).Fence(member.FenceRequest{Array: c.Array, Slot: c.Slot, Epoch: c.Epoch})
	if err != nil {
		return fmt.Errorf("fence: %w", err)
	}
	fmt.Println(msg)
	return nil
}

// WriterFlags are this node's writer identity for agent members.
type WriterFlags struct {
	Slot  uint32 `help:"This node's writer slot, sent to agent members." default:"0"`
	Epoch uint64 `help:"This node's fencing epoch, sent to agent members; they refuse it once fenced." default:"0"`
}

func (w WriterFlags) writer() raid.Writer { return raid.Writer{Slot: w.Slot, Epoch: w.Epoch} }
