package main

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"path/filepath"

	"github.com/ddraid/ddraid/internal/certs"
)

// TLSCmd is `ddraid tls`: a small CA for TLS between agents and writers.
type TLSCmd struct {
	InitCA TLSInitCACmd `cmd:"" name:"init-ca" help:"Create a certificate authority (ECDSA P-256) in DIR: ca.crt and ca.key."`
	Issue  TLSIssueCmd  `cmd:"" help:"Issue a node certificate signed by the CA in DIR: NAME.crt and NAME.key (valid for serving and as a client)."`
}

// TLSInitCACmd is `ddraid tls init-ca`.
type TLSInitCACmd struct {
	Dir  string `required:"" type:"path" help:"Directory for the CA files." placeholder:"DIR"`
	Name string `help:"CA common name." default:"ddraid CA"`
}

// Run creates the CA; existing files are never overwritten.
func (c *TLSInitCACmd) Run() error {
	ca, err := certs.NewCA(c.Name, certs.DefaultCAValidity)
	if err != nil {
		return err
	}
	crt, key := filepath.Join(c.Dir, "ca.crt"), filepath.Join(c.Dir, "ca.key")
	if err := ca.WriteFiles(crt, key); errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("tls init-ca: %s or %s already exists; a CA is never overwritten (%w)", crt, key, err)
	} else if err != nil {
		return fmt.Errorf("tls init-ca: %w", err)
	}
	fmt.Printf("created CA %q: %s, %s (keep the key private)\n", c.Name, crt, key)
	return nil
}

// TLSIssueCmd is `ddraid tls issue`.
type TLSIssueCmd struct {
	Dir  string   `required:"" type:"path" help:"Directory holding ca.crt and ca.key; the certificate is written there." placeholder:"DIR"`
	Name string   `required:"" help:"Node name: the certificate's common name and a DNS name."`
	IP   []string `name:"ip" help:"IP address the node is reached at (repeatable)."`
	DNS  []string `name:"dns" help:"Further DNS name of the node (repeatable)."`
}

// Run issues the certificate.
func (c *TLSIssueCmd) Run() error {
	ca, err := certs.LoadCA(filepath.Join(c.Dir, "ca.crt"), filepath.Join(c.Dir, "ca.key"))
	if err != nil {
		return fmt.Errorf("tls issue: %w", err)
	}
	req := certs.Request{CommonName: c.Name, Usage: certs.Node}
	if ip := net.ParseIP(c.Name); ip != nil {
		req.IPs = append(req.IPs, ip) // a node named by its address
	} else {
		req.DNSNames = append(req.DNSNames, c.Name)
	}
	req.DNSNames = append(req.DNSNames, c.DNS...)
	for _, s := range c.IP {
		ip := net.ParseIP(s)
		if ip == nil {
			return fmt.Errorf("tls issue: --ip %q is not an IP address", s)
		}
		req.IPs = append(req.IPs, ip)
	}
	kp, err := ca.Issue(req)
	if err != nil {
		return fmt.Errorf("tls issue: %w", err)
	}
	crt, key := filepath.Join(c.Dir, c.Name+".crt"), filepath.Join(c.Dir, c.Name+".key")
	if err := kp.WriteFiles(crt, key); errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("tls issue: %s or %s already exists; certificates are never overwritten (%w)", crt, key, err)
	} else if err != nil {
		return fmt.Errorf("tls issue: %w", err)
	}
	fmt.Printf("issued %s: %s, %s\n", c.Name, crt, key)
	return nil
}

// MemberTLS are the writer's flags for TLS to agent members.
type MemberTLS struct {
	MemberTLSCert string `name:"member-tls-cert" type:"path" help:"Client certificate (PEM) for TLS to agent members; with --member-tls-key and --member-tls-ca." placeholder:"FILE"`
	MemberTLSKey  string `name:"member-tls-key" type:"path" help:"Private key (PEM) of --member-tls-cert." placeholder:"FILE"`
	MemberTLSCA   string `name:"member-tls-ca" type:"path" help:"CA (PEM) that signed the agents' certificates." placeholder:"FILE"`
}

// config returns the client TLS configuration, or nil when no flag is set.
func (m MemberTLS) config() (*tls.Config, error) {
	if m.MemberTLSCert == "" && m.MemberTLSKey == "" && m.MemberTLSCA == "" {
		return nil, nil
	}
	if m.MemberTLSCert == "" || m.MemberTLSKey == "" || m.MemberTLSCA == "" {
		return nil, errors.New("--member-tls-cert, --member-tls-key and --member-tls-ca go together")
	}
	kp, err := certs.LoadKeyPair(m.MemberTLSCert, m.MemberTLSKey)
	if err != nil {
		return nil, fmt.Errorf("member TLS: %w", err)
	}
	pool, err := certs.LoadPool(m.MemberTLSCA)
	if err != nil {
		return nil, fmt.Errorf("member TLS: %w", err)
	}
	return &tls.Config{Certificates: []tls.Certificate{kp.TLSCertificate()}, RootCAs: pool, MinVersion: tls.VersionTLS12}, nil
}
