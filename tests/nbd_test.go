package tests

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// End-to-end tests of the NBD front end of `ddraid serve`: structured
// replies and block status over real arrays, fast zero, TLS, systemd
// socket activation, and hostile clients.

// qemuIO runs qemu-io commands against uri and fails on any failure.
func qemuIO(t *testing.T, uri string, cmds ...string) string {
	t.Helper()
	args := []string{"-f", "raw"}
	for _, c := range cmds {
		args = append(args, "-c", c)
	}
	out := run(t, "qemu-io", append(args, uri)...)
	if strings.Contains(out, "Pattern verification failed") || strings.Contains(out, "failed:") {
		t.Fatalf("qemu-io %v:\n%s", cmds, out)
	}
	return out
}

// qemuMap is one entry of `qemu-img map --output=json`.
type qemuMap struct {
	Start, Length int64
	Zero, Data    bool
}

func imgMap(t *testing.T, uri string) []qemuMap {
	t.Helper()
	out := run(t, "qemu-img", "map", "--output=json", "-f", "raw", uri)
	var m []qemuMap
	if err := json.Unmarshal([]byte(out), &m); err != nil {
		t.Fatalf("qemu-img map: %v\n%s", err, out)
	}
	return m
}

// dataIn returns the bytes the map marks as data within [off, off+n).
func dataIn(m []qemuMap, off, n int64) int64 {
	var d int64
	for _, e := range m {
		if !e.Data {
			continue
		}
		lo, hi := max(e.Start, off), min(e.Start+e.Length, off+n)
		if hi > lo {
			d += hi - lo
		}
	}
	return d
}

func TestNBDSocketActivation(t *testing.T) {
	needTools(t, "nbdinfo")
	a := newArray(t, "raid35", 5, "32MiB")
	cmd := []string{"--", "[", ddraidBin, "serve", a.name, "--state-dir=" + a.stateDir, "]"}
	c := exec.Command("nbdinfo", append([]string{"--json"}, cmd...)...)
	var stderr bytes.Buffer
	c.Stderr = &stderr
	stdout, err := c.Output()
	if err != nil {
		t.Fatalf("nbdinfo --json -- [ ddraid serve ]: %v\n%s", err, stderr.String())
	}
	out := string(stdout)
	var info struct {
		Structured bool `json:"structured"`
		Exports    []struct {
			Name     string   `json:"export-name"`
			Size     int64    `json:"export-size"`
			Contexts []string `json:"contexts"`
			FastZero bool     `json:"can_fast_zero"`
		} `json:"exports"`
	}
	// stdout must be nbdinfo's JSON alone: the server writes to stderr.
	if err := json.Unmarshal(stdout, &info); err != nil {
		t.Fatalf("nbdinfo --json -- [ ddraid serve ]: %v\n%s", err, out)
	}
	if !info.Structured || len(info.Exports) != 1 || info.Exports[0].Name != a.name || info.Exports[0].Size <= 0 ||
		len(info.Exports[0].Contexts) != 1 || info.Exports[0].Contexts[0] != "base:allocation" || !info.Exports[0].FastZero {
		t.Fatalf("nbdinfo through socket activation: %+v\n%s", info, out)
	}
	mapOut := run(t, "nbdinfo", append([]string{"--map"}, cmd...)...)
	if !strings.Contains(mapOut, "3  hole,zero") {
		t.Errorf("map of a fresh array through socket activation:\n%s", mapOut)
	}
	// The process exited cleanly: the array can be served again.
	run(t, "nbdinfo", append([]string{"--size"}, cmd...)...)
}

func TestNBDBlockStatusOnArrays(t *testing.T) {
	needTools(t, "qemu-io", "qemu-img", "nbdinfo")
	for _, l := range []layout{
		{name: "raid35x5", level: "raid35", members: 5},
		{name: "raid35x3", level: "raid35", members: 3},
		{name: "mirror2", level: "mirror", members: 2},
		{name: "linear2", level: "linear", members: 2},
		{name: "raid35x5-degraded", level: "raid35", members: 5, degraded: true},
	} {
		t.Run(l.name, func(t *testing.T) {
			_, s := l.start(t, "32MiB")
			qemuIO(t, s.uri, "write -P 0x5a 8M 1M", "flush")
			m := imgMap(t, s.uri)
			if got := dataIn(m, 8<<20, 1<<20); got != 1<<20 {
				t.Errorf("map shows %d data bytes in the written MiB, want all:\n%v", got, m)
			}
			var size int64
			for _, e := range m {
				size = max(size, e.Start+e.Length)
			}
			outside := dataIn(m, 0, 8<<20) + dataIn(m, 9<<20, size-9<<20)
			if l.degraded {
				// A member is missing: nothing is known, all is data.
				if outside != size-1<<20 {
					t.Errorf("degraded map: %d data bytes outside the written MiB, want all %d:\n%v", outside, size-1<<20, m)
				}
				return
			}
			if outside != 0 {
				t.Errorf("map shows %d data bytes outside the written MiB:\n%v", outside, m)
			}
			// Punch the written MiB out again: it turns back into a hole.
			qemuIO(t, s.uri, "write -z -u 8M 1M", "read -P 0 8M 1M")
			if got := dataIn(imgMap(t, s.uri), 0, size); got != 0 {
				t.Errorf("%d data bytes after zeroing with unmap", got)
			}
			if out := run(t, "nbdinfo", "--map", "--totals", s.uri); !strings.Contains(out, "100.0%") {
				t.Errorf("nbdinfo --map --totals of an all-hole array:\n%s", out)
			}
		})
	}
}

func TestNBDWriteZeroesOnArrays(t *testing.T) {
	needTools(t, "qemu-io")
	for _, l := range []layout{
		{name: "raid35x5", level: "raid35", members: 5},
		{name: "linear1", level: "linear", members: 1},
	} {
		t.Run(l.name, func(t *testing.T) {
			_, s := l.start(t, "32MiB")
			qemuIO(t, s.uri, "write -P 0xab 0 1M")
			// FAST_ZERO that may punch holes: fast on sparse members.
			qemuIO(t, s.uri, "write -z -u -n 0 256k", "read -P 0 0 256k", "read -P 0xab 256k 768k")
			// FAST_ZERO that must keep the range allocated: raid35 cannot
			// do that fast and refuses at once; linear passes it down to
			// the file (FALLOC_FL_ZERO_RANGE).
			args := []string{"-f", "raw", "-c", "write -z -n 256k 256k", s.uri}
			out, _ := runErr("qemu-io", args...)
			if l.level == "raid35" {
				if !strings.Contains(out, "Operation not supported") {
					t.Fatalf("raid35 NO_HOLE|FAST_ZERO:\n%s", out)
				}
				qemuIO(t, s.uri, "read -P 0xab 256k 256k") // untouched
			} else if strings.Contains(out, "failed") {
				t.Fatalf("linear NO_HOLE|FAST_ZERO:\n%s", out)
			}
			// Without FAST_ZERO both work (zeroes are written if need be).
			qemuIO(t, s.uri, "write -z 256k 256k", "read -P 0 0 512k", "read -P 0xab 512k 512k")
			// A burst of asynchronous writes, all in flight at once.
			var burst []string
			for i := 0; i < 64; i++ {
				burst = append(burst, fmt.Sprintf("aio_write -P %d %dk 4k", i+1, 2048+12*i))
			}
			burst = append(burst, "aio_flush")
			for i := 0; i < 64; i++ {
				burst = append(burst, fmt.Sprintf("read -P %d %dk 4k", i+1, 2048+12*i))
			}
			qemuIO(t, s.uri, burst...)
		})
	}
}

func TestNBDCopySparseIntoArray(t *testing.T) {
	needTools(t, "nbdcopy", "nbdinfo", "cmp")
	dir := t.TempDir()
	src := filepath.Join(dir, "in.img")
	const size = 64 << 20
	f, err := os.Create(src)
	if err != nil {
		t.Fatal(err)
	}
	f.Truncate(size)
	chunk := make([]byte, 1<<20)
	rand.Read(chunk)
	for _, at := range []int64{0, 10 << 20, 40 << 20} {
		f.WriteAt(chunk, at)
	}
	f.Close()
	a := newArray(t, "raid35", 5, "32MiB")
	s := a.serve(t)
	// Dirty the array first so that the copy has to zero the holes.
	qemuIO(t, s.uri, "write -P 0xee 20M 2M")
	run(t, "nbdcopy", "-C", "4", "-R", "32", "--flush", src, s.uri)
	out := filepath.Join(dir, "out.img")
	run(t, "nbdcopy", "-C", "4", s.uri, out)
	run(t, "cmp", "-n", fmt.Sprint(size), src, out)
	m := imgMap(t, s.uri)
	if got := dataIn(m, 0, size); got > 4<<20 {
		t.Errorf("after copying a sparse image, %d bytes of the array are data, want at most 4 MiB:\n%v", got, m)
	}
}

// testCerts writes a CA, a server certificate for 127.0.0.1 and a client
// certificate in dir, and a client directory in libnbd/qemu layout.
func testCerts(t *testing.T, dir string) (caFile, certFile, keyFile, clientDir string) {
	t.Helper()
	key := func() *ecdsa.PrivateKey {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	write := func(path, typ string, der []byte) string {
		if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	writeKey := func(path string, k *ecdsa.PrivateKey) string {
		der, err := x509.MarshalPKCS8PrivateKey(k)
		if err != nil {
			t.Fatal(err)
		}
		return write(path, "PRIVATE KEY", der)
	}
	caKey := key()
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "e2e CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	leaf := func(serial int64, name string, usage x509.ExtKeyUsage) ([]byte, *ecdsa.PrivateKey) {
		k := key()
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: name},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage},
			DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &k.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		return der, k
	}
	srvDER, srvKey := leaf(2, "server", x509.ExtKeyUsageServerAuth)
	cliDER, cliKey := leaf(3, "client", x509.ExtKeyUsageClientAuth)
	caFile = write(filepath.Join(dir, "ca.pem"), "CERTIFICATE", caDER)
	certFile = write(filepath.Join(dir, "server.pem"), "CERTIFICATE", srvDER)
	keyFile = writeKey(filepath.Join(dir, "server-key.pem"), srvKey)
	clientDir = filepath.Join(dir, "client")
	os.Mkdir(clientDir, 0o700)
	write(filepath.Join(clientDir, "ca-cert.pem"), "CERTIFICATE", caDER)
	write(filepath.Join(clientDir, "client-cert.pem"), "CERTIFICATE", cliDER)
	writeKey(filepath.Join(clientDir, "client-key.pem"), cliKey)
	return caFile, certFile, keyFile, clientDir
}

func TestNBDTLS(t *testing.T) {
	needTools(t, "nbdinfo", "qemu-io", "qemu-img")
	a := newArray(t, "raid35", 5, "32MiB")
	caFile, certFile, keyFile, clientDir := testCerts(t, t.TempDir())
	port := freePort(t)
	s := a.serve(t, "--listen=127.0.0.1:"+port, "--tls=require", "--tls-cert="+certFile, "--tls-key="+keyFile, "--tls-ca="+caFile)

	uri := fmt.Sprintf("nbds://127.0.0.1:%s/%s?tls-certificates=%s", port, a.name, clientDir)
	out := run(t, "nbdinfo", uri)
	if !strings.Contains(out, "with TLS") {
		t.Errorf("nbdinfo over TLS:\n%s", out)
	}
	opts := fmt.Sprintf("driver=nbd,host=127.0.0.1,port=%s,export=%s,tls-creds=tls0", port, a.name)
	tlsObj := "tls-creds-x509,id=tls0,endpoint=client,dir=" + clientDir
	out = run(t, "qemu-io", "--object", tlsObj, "--image-opts", "-c", "write -P 0x77 1M 64k", "-c", "read -P 0x77 1M 64k", opts)
	if strings.Contains(out, "fail") {
		t.Fatalf("qemu-io over TLS:\n%s", out)
	}
	run(t, "qemu-img", "info", "--object", tlsObj, "--image-opts", opts)

	// Plaintext is refused, on TCP and on the unix socket alike.
	for _, plain := range []string{"nbd://127.0.0.1:" + port + "/" + a.name, s.uri} {
		if out, err := runErr("nbdinfo", plain); err == nil {
			t.Errorf("plaintext client got in through %s:\n%s", plain, out)
		}
	}
	if out, err := runErr("qemu-img", "info", "nbd://127.0.0.1:"+port+"/"+a.name); err == nil {
		t.Errorf("plaintext qemu-img got in:\n%s", out)
	}

	// Flag mistakes are one-line errors.
	fails(t, "--tls=on or --tls=require", "serve", a.name, "--state-dir="+a.stateDir, "--tls-cert="+certFile, "--listen=127.0.0.1:"+freePort(t))
	fails(t, "certificate and a key", "serve", a.name, "--state-dir="+a.stateDir, "--tls=on", "--listen=127.0.0.1:"+freePort(t))
}

// rawNBD is a minimal raw client for hostile-client tests.
type rawNBD struct{ net.Conn }

func dialRaw(t *testing.T, sock string) rawNBD {
	t.Helper()
	c, err := net.DialTimeout("unix", sock, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(30 * time.Second))
	t.Cleanup(func() { c.Close() })
	return rawNBD{c}
}

// goHandshake negotiates export name with NBD_OPT_GO and skips the replies.
func (r rawNBD) goHandshake(name string) error {
	var greet [18]byte
	if _, err := io.ReadFull(r, greet[:]); err != nil {
		return err
	}
	msg := binary.BigEndian.AppendUint32(nil, 3) // FIXED_NEWSTYLE | NO_ZEROES
	msg = binary.BigEndian.AppendUint64(msg, 0x49484156454F5054)
	msg = binary.BigEndian.AppendUint32(msg, 7) // NBD_OPT_GO
	msg = binary.BigEndian.AppendUint32(msg, uint32(4+len(name)+2))
	msg = binary.BigEndian.AppendUint32(msg, uint32(len(name)))
	msg = append(msg, name...)
	msg = binary.BigEndian.AppendUint16(msg, 0)
	if _, err := r.Write(msg); err != nil {
		return err
	}
	var h [20]byte
	for {
		if _, err := io.ReadFull(r, h[:]); err != nil {
			return err
		}
		if _, err := io.CopyN(io.Discard, r, int64(binary.BigEndian.Uint32(h[16:]))); err != nil {
			return err
		}
		switch typ := binary.BigEndian.Uint32(h[12:]); {
		case typ == 1:
			return nil
		case typ&(1<<31) != 0:
			return fmt.Errorf("NBD_OPT_GO refused: %#x", typ)
		}
	}
}

// request sends a request header.
func (r rawNBD) request(typ uint16, off uint64, length uint32) error {
	b := binary.BigEndian.AppendUint32(nil, 0x25609513)
	b = binary.BigEndian.AppendUint16(b, 0)
	b = binary.BigEndian.AppendUint16(b, typ)
	b = binary.BigEndian.AppendUint64(b, 1)
	b = binary.BigEndian.AppendUint64(b, off)
	b = binary.BigEndian.AppendUint32(b, length)
	_, err := r.Write(b)
	return err
}

func TestNBDHostileClients(t *testing.T) {
	needTools(t, "nbdcopy", "cmp")
	a := newArray(t, "raid35", 5, "32MiB")
	s := a.serve(t)
	sock := strings.TrimPrefix(s.uri[strings.Index(s.uri, "socket=")+len("socket="):], "")

	// A good client copies data in and out over four connections while
	// the others misbehave.
	dir := t.TempDir()
	src := filepath.Join(dir, "in.img")
	buf := make([]byte, 32<<20)
	rand.Read(buf)
	if err := os.WriteFile(src, buf, 0o600); err != nil {
		t.Fatal(err)
	}
	copied := make(chan string, 1)
	go func() {
		out, err := runErr("nbdcopy", "-C", "4", "--flush", src, s.uri)
		if err != nil {
			copied <- out
			return
		}
		copied <- ""
	}()

	var wg sync.WaitGroup
	for i := 0; i < 100; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := dialRaw(t, sock)
			switch i % 4 {
			case 0: // random bytes instead of a handshake
				junk := make([]byte, 1000)
				rand.Read(junk)
				io.ReadFull(r, make([]byte, 18))
				r.Write(junk)
			case 1: // random bytes as requests
				if r.goHandshake(a.name) != nil {
					return
				}
				junk := make([]byte, 1000)
				rand.Read(junk)
				r.Write(junk)
			case 2: // a 4 GiB write announced
				if r.goHandshake(a.name) != nil {
					return
				}
				r.request(1, 0, 0xffffffff)
				r.Write(bytes.Repeat([]byte{0xee}, 4096))
			case 3: // disconnect in the middle of a write payload
				if r.goHandshake(a.name) != nil {
					return
				}
				r.request(1, 0, 1<<20)
				r.Write(bytes.Repeat([]byte{0xee}, 100<<10))
				return
			}
			// The server closes the connection.
			if n, _ := io.Copy(io.Discard, r); n > 64<<10 {
				t.Errorf("hostile client %d got %d bytes", i, n)
			}
		}()
	}
	wg.Wait()
	if out := <-copied; out != "" {
		t.Fatalf("the good client failed while others misbehaved:\n%s", out)
	}
	out := filepath.Join(dir, "out.img")
	run(t, "nbdcopy", s.uri, out)
	run(t, "cmp", "-n", fmt.Sprint(32<<20), src, out)

	// The server is up and logged the offenders, rate-limited.
	log := s.output()
	if n := strings.Count(log, "level=WARN msg=\"nbd:"); n == 0 || n > 40 {
		t.Errorf("%d warnings for 100 hostile clients, want 1..40:\n%s", n, log)
	}
	if strings.Contains(log, "panic") {
		t.Errorf("the server panicked:\n%s", log)
	}
}
