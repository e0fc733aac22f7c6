package nbd

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// testPKI is a CA with a server and a client certificate, written as PEM
// files in the layout libnbd (tls-certificates=DIR) and qemu
// (tls-creds-x509,dir=DIR) read: ca-cert.pem, client-cert.pem,
// client-key.pem.
type testPKI struct {
	dir string
	// ServerCert, ServerKey and CA are paths for LoadTLSConfig.
	ServerCert, ServerKey, CA string
	// ClientDir holds the CA and a client certificate; CAOnlyDir only the
	// CA; RogueDir a client certificate from another CA.
	ClientDir, CAOnlyDir, RogueDir string
}

// newTestPKI makes the certificates with crypto/x509. The server
// certificate is valid for 127.0.0.1, ::1 and localhost.
func newTestPKI(t *testing.T) *testPKI {
	t.Helper()
	dir := t.TempDir()
	p := &testPKI{dir: dir}
	ca, caKey := makeCA(t, "ddraid test CA")
	rogue, rogueKey := makeCA(t, "rogue CA")
	srv, srvKey := makeLeaf(t, ca, caKey, "server", x509.ExtKeyUsageServerAuth)
	cli, cliKey := makeLeaf(t, ca, caKey, "client", x509.ExtKeyUsageClientAuth)
	rcli, rcliKey := makeLeaf(t, rogue, rogueKey, "rogue client", x509.ExtKeyUsageClientAuth)

	p.CA = writePEM(t, dir, "ca-cert.pem", "CERTIFICATE", ca.Raw)
	p.ServerCert = writePEM(t, dir, "server-cert.pem", "CERTIFICATE", srv.Raw)
	p.ServerKey = writeKey(t, dir, "server-key.pem", srvKey)

	p.ClientDir = filepath.Join(dir, "client")
	p.CAOnlyDir = filepath.Join(dir, "ca-only")
	p.RogueDir = filepath.Join(dir, "rogue")
	for _, d := range []string{p.ClientDir, p.CAOnlyDir, p.RogueDir} {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
		writePEM(t, d, "ca-cert.pem", "CERTIFICATE", ca.Raw)
	}
	writePEM(t, p.ClientDir, "client-cert.pem", "CERTIFICATE", cli.Raw)
	writeKey(t, p.ClientDir, "client-key.pem", cliKey)
	writePEM(t, p.RogueDir, "client-cert.pem", "CERTIFICATE", rcli.Raw)
	writeKey(t, p.RogueDir, "client-key.pem", rcliKey)
	return p
}

func newKey(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func serial(t *testing.T) *big.Int {
	t.Helper()
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func makeCA(t *testing.T, name string) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key := newKey(t)
	tmpl := &x509.Certificate{
		SerialNumber:          serial(t),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return cert, key
}

func makeLeaf(t *testing.T, ca *x509.Certificate, caKey *ecdsa.PrivateKey, name string, usage x509.ExtKeyUsage) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key := newKey(t)
	tmpl := &x509.Certificate{
		SerialNumber: serial(t),
		Subject:      pkix.Name{CommonName: name},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:  []x509.ExtKeyUsage{usage},
	}
	if usage == x509.ExtKeyUsageServerAuth {
		tmpl.DNSNames = []string{"localhost"}
		tmpl.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return cert, key
}

func writePEM(t *testing.T, dir, name, typ string, der []byte) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func writeKey(t *testing.T, dir, name string, key *ecdsa.PrivateKey) string {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return writePEM(t, dir, name, "PRIVATE KEY", der)
}
