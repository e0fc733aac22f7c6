package certs

import (
	"crypto/x509"
	"errors"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func mustCA(t *testing.T, name string) *CA {
	t.Helper()
	ca, err := NewCA(name, 0)
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

func TestIssueVerifies(t *testing.T) {
	ca := mustCA(t, "test CA")
	other := mustCA(t, "other CA")
	tests := []struct {
		name    string
		req     Request
		host    string
		usage   x509.ExtKeyUsage
		roots   *CA
		wantErr bool
	}{
		{"node as server", Request{CommonName: "n1"}, "n1", x509.ExtKeyUsageServerAuth, ca, false},
		{"node as client", Request{CommonName: "n1"}, "n1", x509.ExtKeyUsageClientAuth, ca, false},
		{"other host name", Request{CommonName: "n1"}, "n2", x509.ExtKeyUsageServerAuth, ca, true},
		{"other CA", Request{CommonName: "n1"}, "n1", x509.ExtKeyUsageServerAuth, other, true},
		{"server only used as client", Request{CommonName: "n1", Usage: Server}, "n1", x509.ExtKeyUsageClientAuth, ca, true},
		{"client only used as server", Request{CommonName: "n1", Usage: Client}, "n1", x509.ExtKeyUsageServerAuth, ca, true},
		{"explicit SANs", Request{CommonName: "srv", DNSNames: []string{"localhost"}, IPs: []net.IP{net.IPv4(127, 0, 0, 1)}}, "127.0.0.1", x509.ExtKeyUsageServerAuth, ca, false},
		{"IP as common name", Request{CommonName: "10.0.0.7"}, "10.0.0.7", x509.ExtKeyUsageClientAuth, ca, false},
		{"IP common name is not another IP", Request{CommonName: "10.0.0.7"}, "10.0.0.8", x509.ExtKeyUsageClientAuth, ca, true},
		{"explicit SANs exclude CN", Request{CommonName: "srv", DNSNames: []string{"localhost"}}, "srv", x509.ExtKeyUsageServerAuth, ca, true},
		{"expired", Request{CommonName: "n1", NotBefore: time.Now().Add(-48 * time.Hour), ValidFor: time.Hour}, "n1", x509.ExtKeyUsageServerAuth, ca, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			kp, err := ca.Issue(tt.req)
			if err != nil {
				t.Fatal(err)
			}
			_, err = kp.Cert.Verify(x509.VerifyOptions{
				DNSName:   tt.host,
				Roots:     tt.roots.Pool(),
				KeyUsages: []x509.ExtKeyUsage{tt.usage},
			})
			if (err != nil) != tt.wantErr {
				t.Fatalf("verify: err = %v, want error %v", err, tt.wantErr)
			}
		})
	}
}

func TestIssueRejects(t *testing.T) {
	ca := mustCA(t, "test CA")
	for _, req := range []Request{{}, {CommonName: "x", Usage: 8}} {
		if _, err := ca.Issue(req); err == nil {
			t.Errorf("Issue(%+v) succeeded", req)
		}
	}
	if _, err := NewCA("", 0); err == nil {
		t.Error("NewCA without a name succeeded")
	}
}

func TestNodeCertificateShape(t *testing.T) {
	ca := mustCA(t, "test CA")
	kp, err := ca.IssueNode("node-7")
	if err != nil {
		t.Fatal(err)
	}
	c := kp.Cert
	if c.Subject.CommonName != "node-7" || len(c.DNSNames) != 1 || c.DNSNames[0] != "node-7" {
		t.Errorf("names: CN %q SANs %v", c.Subject.CommonName, c.DNSNames)
	}
	if c.IsCA {
		t.Error("leaf is a CA")
	}
	if err := c.CheckSignatureFrom(ca.Cert); err != nil {
		t.Errorf("signature: %v", err)
	}
	if c.SerialNumber.Cmp(ca.Cert.SerialNumber) == 0 {
		t.Error("leaf and CA share a serial number")
	}
	tc := kp.TLSCertificate()
	if tc.Leaf != c || len(tc.Certificate) != 1 {
		t.Errorf("TLSCertificate: %+v", tc)
	}
}

func TestFilesRoundTrip(t *testing.T) {
	dir := t.TempDir()
	ca := mustCA(t, "test CA")
	caCert, caKey := filepath.Join(dir, "ca.pem"), filepath.Join(dir, "ca-key.pem")
	if err := ca.WriteFiles(caCert, caKey); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(caKey)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("key mode %v, want 0600", st.Mode().Perm())
	}
	if err := ca.WriteFiles(caCert, filepath.Join(dir, "other-key.pem")); !errors.Is(err, fs.ErrExist) {
		t.Errorf("overwrite: err = %v, want ErrExist", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "other-key.pem")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("failed WriteFiles left its key behind: %v", err)
	}

	loaded, err := LoadCA(caCert, caKey)
	if err != nil {
		t.Fatal(err)
	}
	if !loaded.Cert.Equal(ca.Cert) || !loaded.Key.Equal(ca.Key) {
		t.Fatal("loaded CA differs")
	}
	// A CA loaded from disk issues certificates the original pool accepts.
	kp, err := loaded.IssueNode("n1")
	if err != nil {
		t.Fatal(err)
	}
	pool, err := LoadPool(caCert)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kp.Cert.Verify(x509.VerifyOptions{DNSName: "n1", Roots: pool}); err != nil {
		t.Errorf("verify against loaded pool: %v", err)
	}

	nCert, nKey := filepath.Join(dir, "n1.pem"), filepath.Join(dir, "n1-key.pem")
	if err := kp.WriteFiles(nCert, nKey); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadCA(nCert, nKey); err == nil || !strings.Contains(err.Error(), "not a CA") {
		t.Errorf("LoadCA(leaf): err = %v", err)
	}
	if _, err := LoadKeyPair(nCert, caKey); err == nil || !strings.Contains(err.Error(), "does not belong") {
		t.Errorf("mismatched key: err = %v", err)
	}
	if _, err := LoadKeyPair(nCert, nKey); err != nil {
		t.Errorf("LoadKeyPair: %v", err)
	}
}

func TestParseErrors(t *testing.T) {
	keyPEM, err := EncodeKey(mustCA(t, "x").Key)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		data string
		cert bool
	}{
		{"empty cert", "", true},
		{"garbage cert", "not pem at all", true},
		{"key given as cert", string(keyPEM), true},
		{"bad DER cert", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", true},
		{"empty key", "", false},
		{"bad DER key", "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var err error
			if tt.cert {
				_, err = ParseCert([]byte(tt.data))
			} else {
				_, err = ParseKey([]byte(tt.data))
			}
			if err == nil {
				t.Fatal("parsed")
			}
		})
	}
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.pem")
	if err := os.WriteFile(bad, []byte("nothing"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadPool(bad); err == nil {
		t.Error("LoadPool(garbage) succeeded")
	}
	if _, err := LoadPool(filepath.Join(dir, "missing.pem")); err == nil {
		t.Error("LoadPool(missing) succeeded")
	}
}

func FuzzParse(f *testing.F) {
	ca, err := NewCA("fuzz CA", 0)
	if err != nil {
		f.Fatal(err)
	}
	keyPEM, _ := EncodeKey(ca.Key)
	f.Add(EncodeCert(ca.Cert))
	f.Add(keyPEM)
	f.Add([]byte("-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		ParseCert(data)
		ParseKey(data)
	})
}
