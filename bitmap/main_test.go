package bitmap

import (
	"io"
	"log/slog"
	"os"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	if dir := os.Getenv(crashEnv); dir != "" {
		crashChild(dir) // returns only if the writers stop on an error
		os.Exit(1)
	}
	goleak.VerifyTestMain(m)
}

// quietLogger drops everything; tests that check logging make their own.
func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// openStore opens a store in a fresh directory and closes it at the end of
// the test.
func openStore(t testing.TB) (*Store, string) {
	t.Helper()
	dir := t.TempDir() + "/bitmap"
	s, err := OpenStore(dir, StoreConfig{Logger: quietLogger()})
	if err != nil {
		t.Fatalf("OpenStore: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s, dir
}
