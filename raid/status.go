package raid

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"

	"github.com/ddraid/ddraid/raid/meta"
)

// Array states reported by Describe.
const (
	ArrayClean    = "clean"    // every member active
	ArrayDegraded = "degraded" // members lost, within the level's tolerance
	ArrayFailed   = "failed"   // more members lost than the level tolerates
)

// Status is what `ddraid status` reports for one array.
type Status struct {
	Name      string         `json:"name"`
	UUID      string         `json:"uuid"`
	Level     string         `json:"level"`
	State     string         `json:"state"`
	Size      int64          `json:"size"`
	BlockSize int            `json:"block_size"`
	Parity    string         `json:"parity,omitempty"`
	Events    uint64         `json:"events"`
	Members   []MemberStatus `json:"members"`
	Spares    []MemberStatus `json:"spares,omitempty"`
	Serving   *RunInfo       `json:"serving,omitempty"`
	// InitialSync is set until the initial sync finished.
	InitialSync bool `json:"initial_sync,omitempty"`
}

// MemberStatus is one member's line in Status.
type MemberStatus struct {
	Role  int    `json:"role"`
	Path  string `json:"path"`
	State string `json:"state"`
	UUID  string `json:"uuid"`
}

// Describe summarises a superblock (and whether a live process serves it).
func Describe(stateDir string, a *meta.Array) Status {
	s := Status{Name: a.Name, UUID: a.UUID.String(), Level: a.Level, Size: a.Size,
		BlockSize: a.BlockSize, Parity: a.Parity, Events: a.Events, State: ArrayClean}
	for _, m := range a.Spares {
		s.Spares = append(s.Spares, MemberStatus{Role: -1, Path: m.Path, State: m.State, UUID: m.UUID.String()})
	}
	s.InitialSync = a.InitialSync
	lost := 0
	for _, m := range a.Members {
		s.Members = append(s.Members, MemberStatus{Role: m.Role, Path: m.Path, State: m.State, UUID: m.UUID.String()})
		if m.State != meta.StateActive {
			lost++
		}
	}
	if lost > 0 {
		s.State = ArrayDegraded
		if level, err := ParseLevel(a.Level); err != nil || lost > Tolerance(level, len(a.Members)) {
			s.State = ArrayFailed
		}
	}
	if ri, err := ReadRunInfo(stateDir, a.Name); err == nil {
		s.Serving = ri
	}
	return s
}

// RunInfo records a live `ddraid serve` of an array, in
// STATE_DIR/run/NAME.json, so status can say where it is served.
type RunInfo struct {
	PID    int      `json:"pid"`
	Listen []string `json:"listen"`
	// Control is the control socket of the serving process.
	Control string `json:"control,omitempty"`
}

func runPath(stateDir, name string) string { return filepath.Join(stateDir, "run", name+".json") }

// WriteRunInfo records that this process serves the array.
func WriteRunInfo(stateDir, name string, ri RunInfo) error {
	if err := os.MkdirAll(filepath.Join(stateDir, "run"), 0o750); err != nil {
		return fmt.Errorf("run info: %w", err)
	}
	b, _ := json.Marshal(ri)
	tmp := runPath(stateDir, name) + ".tmp"
	if err := os.WriteFile(tmp, b, 0o640); err != nil {
		return fmt.Errorf("run info: %w", err)
	}
	return os.Rename(tmp, runPath(stateDir, name))
}

// RemoveRunInfo removes the record written by WriteRunInfo.
func RemoveRunInfo(stateDir, name string) { os.Remove(runPath(stateDir, name)) }

// ReadRunInfo returns the record of a live server of the array; a record
// left by a dead process is reported as not found.
func ReadRunInfo(stateDir, name string) (*RunInfo, error) {
	b, err := os.ReadFile(runPath(stateDir, name))
	if err != nil {
		return nil, err
	}
	var ri RunInfo
	if err := json.Unmarshal(b, &ri); err != nil {
		return nil, fmt.Errorf("run info %s: %w", name, err)
	}
	if ri.PID <= 0 || syscall.Kill(ri.PID, 0) != nil && !errors.Is(syscall.Kill(ri.PID, 0), syscall.EPERM) {
		return nil, os.ErrNotExist
	}
	return &ri, nil
}
