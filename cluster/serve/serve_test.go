package serve

import (
	"context"
	"errors"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"github.com/ddraid/ddraid/cluster"
	"github.com/ddraid/ddraid/cluster/coord"
	"github.com/ddraid/ddraid/lockd"
	"github.com/ddraid/ddraid/raid"
	"github.com/ddraid/ddraid/raid/meta"
)

func TestParseSpec(t *testing.T) {
	for _, c := range []struct {
		in   string
		want Spec
		url  string
		err  bool
	}{
		{in: "data=unix:/run/d.sock", want: Spec{"data", "unix:/run/d.sock"}, url: "nbd+unix:///data?socket=/run/d.sock"},
		{in: "data=127.0.0.1:10900", want: Spec{"data", "127.0.0.1:10900"}, url: "nbd://127.0.0.1:10900/data"},
		{in: "data", want: Spec{"data", DefaultListen}, url: "nbd://" + DefaultListen + "/data"},
		{in: "data=", err: true},
		{in: "=unix:/x", err: true},
		{in: "a/b=unix:/x", err: true},
	} {
		got, err := ParseSpec(c.in)
		if (err != nil) != c.err {
			t.Errorf("ParseSpec(%q): err %v, want error %v", c.in, err, c.err)
			continue
		}
		if err == nil && (got != c.want || got.URL() != c.url) {
			t.Errorf("ParseSpec(%q) = %+v (%s), want %+v (%s)", c.in, got, got.URL(), c.want, c.url)
		}
	}
}

// newPair makes two servers on a MemNet: a holds the superblock of array
// "data" in its state directory, b holds nothing.
func newPair(t *testing.T) (a, b *Server, sb *meta.Array) {
	t.Helper()
	dir := t.TempDir()
	quiet := slog.New(slog.DiscardHandler)
	net := cluster.NewMemNet(quiet)
	t.Cleanup(net.Close)
	mk := func(name string) *Server {
		s, err := New(Config{StateDir: filepath.Join(dir, name), Node: lockd.NodeID(name), Messenger: net.Messenger(lockd.NodeID(name)),
			Timeout: time.Second, Retry: 20 * time.Millisecond, Logger: quiet})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	a, b = mk("a"), mk("b")
	err := meta.View(a.cfg.StateDir, func(s *meta.Store) error {
		var err error
		sb, err = raid.Create(s, raid.CreateOptions{Name: "data", Level: raid.LevelRaid35, CreateSize: 4 << 20, AssumeClean: true,
			Members: []string{filepath.Join(dir, "m0"), filepath.Join(dir, "m1"), filepath.Join(dir, "m2")}})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return a, b, sb
}

// TestFetchSuperblock: a node without the superblock gets it from the
// peer that has it and stores it; a name nobody has fails with
// ErrNoSuperblock at the timeout.
func TestFetchSuperblock(t *testing.T) {
	_, b, sb := newPair(t)
	got, err := b.superblock(context.Background(), "data")
	if err != nil {
		t.Fatal(err)
	}
	if got.UUID != sb.UUID || got.Events != sb.Events {
		t.Fatalf("fetched %s event %d, want %s event %d", got.UUID, got.Events, sb.UUID, sb.Events)
	}
	stored, err := b.stored("data")
	if err != nil || stored.UUID != sb.UUID {
		t.Fatalf("not stored on the fetching node: %v", err)
	}
	if _, err := b.superblock(context.Background(), "other"); !errors.Is(err, ErrNoSuperblock) {
		t.Fatalf("superblock of an array nobody has: %v, want ErrNoSuperblock", err)
	}
}

// TestStoreUnserved: a broadcast superblock replaces an older stored one,
// is ignored when not newer or for an unknown array, and refused for
// another array of the same name.
func TestStoreUnserved(t *testing.T) {
	a, _, sb := newPair(t)
	enc := func(x meta.Array) []byte {
		b, err := coord.EncodeSuperblock(&x)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	newer := *sb
	newer.Events = sb.Events + 3
	if err := a.storeUnserved(enc(newer)); err != nil {
		t.Fatal(err)
	}
	if cur, _ := a.stored("data"); cur.Events != newer.Events {
		t.Fatalf("stored event %d, want %d", cur.Events, newer.Events)
	}
	if err := a.storeUnserved(enc(*sb)); err != nil {
		t.Fatal(err)
	}
	if cur, _ := a.stored("data"); cur.Events != newer.Events {
		t.Fatalf("an older superblock replaced the newer one: event %d", cur.Events)
	}
	other := newer
	other.UUID = meta.NewUUID()
	other.Events++
	if err := a.storeUnserved(enc(other)); err == nil {
		t.Fatal("a superblock of another array with the same name was accepted")
	}
	unknown := newer
	unknown.Name = "else"
	if err := a.storeUnserved(enc(unknown)); err != nil {
		t.Fatal(err)
	}
	if _, err := a.stored("else"); !errors.Is(err, meta.ErrNotFound) {
		t.Fatalf("an unknown array's superblock was stored: %v", err)
	}
	if err := a.storeUnserved([]byte("{")); err == nil {
		t.Fatal("a body that does not decode was accepted")
	}
}

// TestNewerSuperblockWins: a node whose stored superblock is older than a
// peer's assembles from the peer's (stored first); a newer local one is
// kept.
func TestNewerSuperblockWins(t *testing.T) {
	a, b, sb := newPair(t)
	if err := meta.View(b.cfg.StateDir, func(s *meta.Store) error { return s.Put(sb) }); err != nil {
		t.Fatal(err)
	}
	newer := *sb
	newer.Events = sb.Events + 2
	if err := meta.View(a.cfg.StateDir, func(s *meta.Store) error { return s.Put(&newer) }); err != nil {
		t.Fatal(err)
	}
	got, err := b.superblock(context.Background(), "data")
	if err != nil {
		t.Fatal(err)
	}
	if got.Events != newer.Events {
		t.Fatalf("assembled from event %d, want the peer's %d", got.Events, newer.Events)
	}
	if cur, _ := b.stored("data"); cur.Events != newer.Events {
		t.Fatalf("the peer's newer superblock was not stored: event %d", cur.Events)
	}
	if got, err := a.superblock(context.Background(), "data"); err != nil || got.Events != newer.Events {
		t.Fatalf("the node with the newest kept %v, %v", got, err)
	}
}
