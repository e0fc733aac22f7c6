// Package certs makes the small X.509 public key infrastructure a ddraid
// cluster runs on: a certificate authority (CA) and leaf certificates issued
// by it, all with ECDSA P-256 keys, and PEM files to keep them in.
//
// A node certificate names its node in a DNS subject alternative name (SAN)
// and as its common name; it is valid both for serving (server auth) and for
// dialling (client auth), because every agent does both. Peers are told
// apart by the SAN: crypto/tls matches names against SANs only, and so does
// every ddraid component that checks a peer's identity.
//
// The package serves tests (throw-away CAs in memory) and operators (a CA
// written once to disk, node certificates issued from it) alike.
package certs

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"net"
	"time"
)

// Usage says what a leaf certificate may be used for.
type Usage int

const (
	// Server certificates authenticate a listener to its clients.
	Server Usage = 1 << iota
	// Client certificates authenticate a dialler to a server that asks
	// for one (mutual TLS).
	Client
	// Node is both: a cluster agent listens and dials with one
	// certificate.
	Node = Server | Client
)

// DefaultValidity is how long certificates are valid when a request does
// not say: ten years for a CA, one year for a leaf.
const (
	DefaultCAValidity   = 10 * 365 * 24 * time.Hour
	DefaultLeafValidity = 365 * 24 * time.Hour
)

// backdate moves NotBefore into the past so that clocks a little behind the
// issuer's accept a fresh certificate.
const backdate = time.Hour

// KeyPair is a certificate and its private key.
type KeyPair struct {
	Cert *x509.Certificate
	Key  *ecdsa.PrivateKey
}

// CA is a certificate authority: a self-signed CA certificate and its key.
type CA struct {
	KeyPair
}

// Request describes a leaf certificate to issue.
type Request struct {
	// CommonName is the subject's common name; when DNSNames and IPs are
	// both empty it is also the one SAN (an IP SAN if it parses as an IP
	// address, else a DNS SAN).
	CommonName string
	// DNSNames and IPs are the subject alternative names.
	DNSNames []string
	IPs      []net.IP
	// Usage defaults to Node.
	Usage Usage
	// NotBefore defaults to an hour before now; ValidFor to
	// DefaultLeafValidity.
	NotBefore time.Time
	ValidFor  time.Duration
}

// NewCA makes a self-signed CA named commonName, valid for validFor from an
// hour ago (DefaultCAValidity when validFor is 0).
func NewCA(commonName string, validFor time.Duration) (*CA, error) {
	if commonName == "" {
		return nil, errors.New("certs: CA needs a common name")
	}
	if validFor <= 0 {
		validFor = DefaultCAValidity
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("certs: CA key: %w", err)
	}
	sn, err := serialNumber()
	if err != nil {
		return nil, err
	}
	notBefore := time.Now().Add(-backdate)
	tmpl := &x509.Certificate{
		SerialNumber:          sn,
		Subject:               pkix.Name{CommonName: commonName, Organization: []string{"ddraid"}},
		NotBefore:             notBefore,
		NotAfter:              notBefore.Add(validFor),
		IsCA:                  true,
		BasicConstraintsValid: true,
		MaxPathLenZero:        true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
	}
	cert, err := create(tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("certs: CA %q: %w", commonName, err)
	}
	return &CA{KeyPair{Cert: cert, Key: key}}, nil
}

// Issue makes a new key and a leaf certificate for it signed by the CA.
func (ca *CA) Issue(req Request) (*KeyPair, error) {
	if req.CommonName == "" && len(req.DNSNames) == 0 && len(req.IPs) == 0 {
		return nil, errors.New("certs: a certificate needs a common name or a subject alternative name")
	}
	dns, ips := req.DNSNames, req.IPs
	if len(dns) == 0 && len(ips) == 0 && req.CommonName != "" {
		// The common name becomes the one SAN: an IP SAN when it is an
		// address, since that is what hostname checks compare then.
		if ip := net.ParseIP(req.CommonName); ip != nil {
			ips = []net.IP{ip}
		} else {
			dns = []string{req.CommonName}
		}
	}
	usage := req.Usage
	if usage == 0 {
		usage = Node
	}
	var ext []x509.ExtKeyUsage
	if usage&Server != 0 {
		ext = append(ext, x509.ExtKeyUsageServerAuth)
	}
	if usage&Client != 0 {
		ext = append(ext, x509.ExtKeyUsageClientAuth)
	}
	if len(ext) == 0 {
		return nil, fmt.Errorf("certs: unknown usage %d", usage)
	}
	validFor := req.ValidFor
	if validFor <= 0 {
		validFor = DefaultLeafValidity
	}
	notBefore := req.NotBefore
	if notBefore.IsZero() {
		notBefore = time.Now().Add(-backdate)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("certs: key for %q: %w", req.CommonName, err)
	}
	sn, err := serialNumber()
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          sn,
		Subject:               pkix.Name{CommonName: req.CommonName},
		NotBefore:             notBefore,
		NotAfter:              notBefore.Add(validFor),
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           ext,
		DNSNames:              dns,
		IPAddresses:           ips,
	}
	cert, err := create(tmpl, ca.Cert, &key.PublicKey, ca.Key)
	if err != nil {
		return nil, fmt.Errorf("certs: issue %q: %w", req.CommonName, err)
	}
	return &KeyPair{Cert: cert, Key: key}, nil
}

// IssueNode issues a Node certificate for a cluster agent called name (the
// common name and the one DNS SAN).
func (ca *CA) IssueNode(name string) (*KeyPair, error) {
	return ca.Issue(Request{CommonName: name, Usage: Node})
}

// Pool returns a certificate pool holding only the CA certificate, for
// tls.Config.RootCAs and ClientCAs.
func (ca *CA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.Cert)
	return p
}

// TLSCertificate returns the pair in the form tls.Config.Certificates
// wants.
func (kp *KeyPair) TLSCertificate() tls.Certificate {
	return tls.Certificate{Certificate: [][]byte{kp.Cert.Raw}, PrivateKey: kp.Key, Leaf: kp.Cert}
}

func create(tmpl, parent *x509.Certificate, pub crypto.PublicKey, signer crypto.Signer) (*x509.Certificate, error) {
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, signer)
	if err != nil {
		return nil, err
	}
	return x509.ParseCertificate(der)
}

// serialNumber draws a random positive 127-bit serial number (RFC 5280
// allows up to 20 octets; random serials keep reissued certificates apart).
func serialNumber() (*big.Int, error) {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("certs: serial number: %w", err)
	}
	return n.Add(n, big.NewInt(1)), nil
}
