package nbd

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
)

// TLSMode says whether and how a Server offers TLS (NBD_OPT_STARTTLS).
type TLSMode int

const (
	// TLSOff is the spec's NOTLS mode: NBD_OPT_STARTTLS is refused with
	// NBD_REP_ERR_POLICY and everything runs in plaintext.
	TLSOff TLSMode = iota
	// TLSOptional is SELECTIVETLS: a client may upgrade with
	// NBD_OPT_STARTTLS; exports with Export.TLSOnly set are only served to
	// clients that did (NBD_OPT_INFO and NBD_OPT_GO answer
	// NBD_REP_ERR_TLS_REQD, NBD_OPT_EXPORT_NAME disconnects, NBD_OPT_LIST
	// leaves them out).
	TLSOptional
	// TLSRequired is FORCEDTLS: before the upgrade every option except
	// NBD_OPT_STARTTLS and NBD_OPT_ABORT is answered with
	// NBD_REP_ERR_TLS_REQD, and NBD_OPT_EXPORT_NAME disconnects.
	TLSRequired
)

// String returns the mode's name as the ddraid CLI spells it.
func (m TLSMode) String() string {
	switch m {
	case TLSOff:
		return "off"
	case TLSOptional:
		return "on"
	case TLSRequired:
		return "require"
	}
	return fmt.Sprintf("TLSMode(%d)", int(m))
}

// ParseTLSMode parses "off", "on" or "require".
func ParseTLSMode(s string) (TLSMode, error) {
	switch strings.ToLower(s) {
	case "off", "":
		return TLSOff, nil
	case "on", "optional":
		return TLSOptional, nil
	case "require", "required":
		return TLSRequired, nil
	}
	return TLSOff, fmt.Errorf("nbd: TLS mode %q: want off, on or require", s)
}

// LoadTLSConfig builds a server TLS configuration from PEM files: the
// server certificate chain and its private key, and optionally a CA
// bundle (caFile != ""). With a CA every client must present a
// certificate signed by it. TLS 1.2 is the minimum version, as the NBD
// specification requires.
func LoadTLSConfig(certFile, keyFile, caFile string) (*tls.Config, error) {
	if certFile == "" || keyFile == "" {
		return nil, errors.New("nbd: TLS needs both a certificate and a key file")
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("nbd: loading TLS certificate %s and key %s: %w", certFile, keyFile, err)
	}
	cfg := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("nbd: reading TLS client CA: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("nbd: TLS client CA %s holds no PEM certificate", caFile)
		}
		cfg.ClientCAs = pool
		cfg.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return cfg, nil
}

// bufferedConn is a net.Conn whose reads go through a bufio.Reader that may
// already hold bytes read from it, so that switching to TLS loses nothing.
type bufferedConn struct {
	net.Conn
	r *bufio.Reader
}

func (b *bufferedConn) Read(p []byte) (int, error) { return b.r.Read(p) }
