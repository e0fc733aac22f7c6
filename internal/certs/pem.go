package certs

import (
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
)

// PEM block types written and read by this package.
const (
	certBlock = "CERTIFICATE"
	keyBlock  = "PRIVATE KEY" // PKCS #8
)

// EncodeCert returns the certificate as one PEM block.
func EncodeCert(cert *x509.Certificate) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: certBlock, Bytes: cert.Raw})
}

// EncodeKey returns the private key as one PKCS #8 PEM block.
func EncodeKey(key *ecdsa.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("certs: encode key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: keyBlock, Bytes: der}), nil
}

// ParseCert parses the first CERTIFICATE block of PEM data.
func ParseCert(data []byte) (*x509.Certificate, error) {
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			return nil, errors.New("certs: no CERTIFICATE block in PEM data")
		}
		if b.Type != certBlock {
			continue
		}
		cert, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("certs: parse certificate: %w", err)
		}
		return cert, nil
	}
}

// ParseKey parses the first PRIVATE KEY (PKCS #8) or EC PRIVATE KEY (SEC 1)
// block of PEM data; the key must be ECDSA.
func ParseKey(data []byte) (*ecdsa.PrivateKey, error) {
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			return nil, errors.New("certs: no PRIVATE KEY block in PEM data")
		}
		switch b.Type {
		case keyBlock:
			k, err := x509.ParsePKCS8PrivateKey(b.Bytes)
			if err != nil {
				return nil, fmt.Errorf("certs: parse key: %w", err)
			}
			ek, ok := k.(*ecdsa.PrivateKey)
			if !ok {
				return nil, fmt.Errorf("certs: key is %T, want ECDSA", k)
			}
			return ek, nil
		case "EC PRIVATE KEY":
			k, err := x509.ParseECPrivateKey(b.Bytes)
			if err != nil {
				return nil, fmt.Errorf("certs: parse key: %w", err)
			}
			return k, nil
		}
	}
}

// WriteFiles writes the certificate (mode 0644) and the key (mode 0600) as
// PEM files. It refuses to overwrite either file, so a CA or a node identity
// is never replaced by accident; on error nothing is left behind.
func (kp *KeyPair) WriteFiles(certPath, keyPath string) error {
	keyPEM, err := EncodeKey(kp.Key)
	if err != nil {
		return err
	}
	if err := writeNew(keyPath, keyPEM, 0o600); err != nil {
		return err
	}
	if err := writeNew(certPath, EncodeCert(kp.Cert), 0o644); err != nil {
		os.Remove(keyPath)
		return err
	}
	return nil
}

func writeNew(path string, data []byte, mode os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return fmt.Errorf("certs: %w", err)
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path)
		return fmt.Errorf("certs: write %s: %w", path, err)
	}
	return nil
}

// LoadKeyPair reads a certificate and its key from PEM files and checks that
// they belong together.
func LoadKeyPair(certPath, keyPath string) (*KeyPair, error) {
	cdata, err := os.ReadFile(certPath)
	if err != nil {
		return nil, fmt.Errorf("certs: %w", err)
	}
	cert, err := ParseCert(cdata)
	if err != nil {
		return nil, fmt.Errorf("%w (%s)", err, certPath)
	}
	kdata, err := os.ReadFile(keyPath)
	if err != nil {
		return nil, fmt.Errorf("certs: %w", err)
	}
	key, err := ParseKey(kdata)
	if err != nil {
		return nil, fmt.Errorf("%w (%s)", err, keyPath)
	}
	if !key.PublicKey.Equal(cert.PublicKey) {
		return nil, fmt.Errorf("certs: key %s does not belong to certificate %s", keyPath, certPath)
	}
	return &KeyPair{Cert: cert, Key: key}, nil
}

// LoadCA reads a CA certificate and key written by WriteFiles; the
// certificate must be a CA certificate.
func LoadCA(certPath, keyPath string) (*CA, error) {
	kp, err := LoadKeyPair(certPath, keyPath)
	if err != nil {
		return nil, err
	}
	if !kp.Cert.IsCA {
		return nil, fmt.Errorf("certs: %s is not a CA certificate", certPath)
	}
	return &CA{*kp}, nil
}

// LoadPool reads a PEM bundle of CA certificates into a pool for
// tls.Config.RootCAs and ClientCAs.
func LoadPool(path string) (*x509.CertPool, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("certs: %w", err)
	}
	p := x509.NewCertPool()
	if !p.AppendCertsFromPEM(data) {
		return nil, fmt.Errorf("certs: %s holds no PEM certificate", path)
	}
	return p, nil
}
