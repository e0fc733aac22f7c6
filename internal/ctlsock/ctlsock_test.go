package ctlsock

import (
	"context"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestRoundTrip(t *testing.T) {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/thing", func(w http.ResponseWriter, r *http.Request) {
		WriteJSON(w, http.StatusOK, map[string]int{"n": 7})
	})
	mux.HandleFunc("POST /v1/echo", func(w http.ResponseWriter, r *http.Request) {
		var in map[string]string
		if err := DecodeRequest(r, &in); err != nil {
			WriteError(w, http.StatusBadRequest, "bad request: "+err.Error())
			return
		}
		WriteJSON(w, http.StatusOK, in)
	})
	mux.HandleFunc("GET /v1/busy", func(w http.ResponseWriter, r *http.Request) {
		WriteError(w, http.StatusConflict, "array data is busy")
	})
	mux.HandleFunc("GET /v1/plain", func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "oops", http.StatusInternalServerError)
	})
	path := filepath.Join(t.TempDir(), "ctl.sock")
	if err := os.WriteFile(path, nil, 0o644); err != nil { // a stale file is replaced
		t.Fatal(err)
	}
	srv, err := Listen(path, mux, nil)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket %v, %v: want a socket with mode 0600", fi, err)
	}
	c := Dial(path)
	ctx := context.Background()

	var got map[string]int
	if err := c.Do(ctx, http.MethodGet, "/v1/thing", nil, &got); err != nil || got["n"] != 7 {
		t.Fatalf("GET: %v, %v", got, err)
	}
	var echo map[string]string
	if err := c.Do(ctx, http.MethodPost, "/v1/echo", map[string]string{"a": "b"}, &echo); err != nil || echo["a"] != "b" {
		t.Fatalf("POST: %v, %v", echo, err)
	}
	for _, tc := range []struct {
		path string
		code int
		msg  string
	}{
		{"/v1/busy", http.StatusConflict, "array data is busy"},
		{"/v1/plain", http.StatusInternalServerError, "500 Internal Server Error"},
		{"/v1/none", http.StatusNotFound, "404 Not Found"},
	} {
		err := c.Do(ctx, http.MethodGet, tc.path, nil, nil)
		if !IsStatus(err, tc.code) || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("%s: %v, want status %d and %q", tc.path, err, tc.code, tc.msg)
		}
	}
	c.CloseIdle()
	if err := srv.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket file left after Close: %v", err)
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := c.Do(ctx, http.MethodGet, "/v1/thing", nil, nil); err == nil || !strings.Contains(err.Error(), path) {
		t.Errorf("request to a closed socket: %v, want an error naming it", err)
	}
	c.CloseIdle()
}

func TestListenRefusals(t *testing.T) {
	if _, err := Listen(filepath.Join(t.TempDir(), "no", "such", "dir", "s.sock"), http.NewServeMux(), nil); err == nil ||
		!strings.Contains(err.Error(), "control socket") {
		t.Errorf("socket in a missing directory: %v", err)
	}
}
