package serve

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/ddraid/ddraid/cluster/coord"
	"github.com/ddraid/ddraid/internal/ctlsock"
)

// ArrayStatus is one served array as `ddraid cluster status` shows it.
type ArrayStatus struct {
	Name   string `json:"name"`
	URL    string `json:"url"`
	State  string `json:"state"` // assembling, serving, fenced, stopped
	UUID   string `json:"uuid,omitempty"`
	Events uint64 `json:"events,omitempty"`
	// Coord is the coordinator's state: slot, epoch, quorum, halts,
	// resync windows, takeovers in progress (absent while assembling).
	Coord *coord.Status `json:"coord,omitempty"`
	// ResyncedRegions and ResyncedBytes count what this node resynced
	// for slots it took over (its own slot's leftovers at join included).
	ResyncedRegions int64 `json:"resynced_regions"`
	ResyncedBytes   int64 `json:"resynced_bytes"`
	// Resynced are the ranges resynced (the first 4096).
	Resynced []Range `json:"resynced,omitempty"`
	// Rejoins counts how often this node lost its slot and assembled the
	// array again.
	Rejoins int    `json:"rejoins"`
	Error   string `json:"error,omitempty"`
}

// Status returns the served arrays in the order they were given.
func (s *Server) Status() []ArrayStatus {
	s.mu.Lock()
	arrays := s.arrays
	s.mu.Unlock()
	out := make([]ArrayStatus, 0, len(arrays))
	for _, sv := range arrays {
		sv.mu.Lock()
		st := ArrayStatus{Name: sv.spec.Name, URL: sv.spec.URL(), State: sv.state, Rejoins: sv.rejoins}
		if sv.lastErr != nil {
			st.Error = sv.lastErr.Error()
		}
		run, local := sv.asm, sv.local
		sv.mu.Unlock()
		if run != nil {
			cs := run.Coordinator.Status()
			st.Coord = &cs
			if local != nil {
				st.ResyncedRegions, st.ResyncedBytes = local.regions.Load(), local.bytes.Load()
				st.Resynced = local.resynced()
			}
			sb := run.Array.Superblock()
			st.UUID, st.Events = sb.UUID.String(), sb.Events
			if st.State == StateServing && (run.Array.Fenced() || cs.Lost != "") {
				st.State = StateFenced
				if cs.Lost != "" {
					st.Error = cs.Lost
				}
			}
		}
		out = append(out, st)
	}
	return out
}

// ControlPattern is the agent control API route Handler serves:
// GET /v1/arrays → []ArrayStatus.
const ControlPattern = "GET /v1/arrays"

// Handler serves ControlPattern.
func (s *Server) Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		ctlsock.WriteJSON(w, http.StatusOK, s.Status())
	})
}

// Arrays asks the agent at the control socket path for its served arrays
// (empty without --serve); an agent not in cluster mode is an error.
func Arrays(ctx context.Context, path string) ([]ArrayStatus, error) {
	var out []ArrayStatus
	err := ctlsock.Dial(path).Do(ctx, http.MethodGet, "/v1/arrays", nil, &out)
	if ctlsock.IsStatus(err, http.StatusNotFound) {
		return nil, fmt.Errorf("agent at %s does not run in cluster mode (start it with --nodes)", path)
	}
	return out, err
}

// WriteStatus prints the served arrays, one block each, mdstat-like.
func WriteStatus(w io.Writer, arrays []ArrayStatus) error {
	var b strings.Builder
	for _, a := range arrays {
		fmt.Fprintf(&b, "array %s: %s at %s", a.Name, a.State, a.URL)
		if a.UUID != "" {
			fmt.Fprintf(&b, " (uuid %s, events %d)", a.UUID, a.Events)
		}
		b.WriteString("\n")
		if c := a.Coord; c != nil {
			quorum := "quorum"
			if !c.Quorum {
				quorum = "NO QUORUM"
			}
			fmt.Fprintf(&b, "  writer slot %d of %d, epoch %d, %s", c.Slot, c.Slots, c.Epoch, quorum)
			if c.Halted != "" {
				fmt.Fprintf(&b, ", writes halted: %s", c.Halted)
			}
			b.WriteString("\n")
			for _, t := range c.Takeovers {
				fmt.Fprintf(&b, "  takeover of slot %d: RESYNC in progress\n", t)
			}
			for _, j := range c.Jobs {
				fmt.Fprintf(&b, "  %s\n", j)
			}
			for _, win := range c.Windows {
				of := fmt.Sprintf("slot %d", win.Slot)
				if job := win.Job(); job != "" {
					of = "job " + job
				}
				fmt.Fprintf(&b, "  window of %s (%s) [%d, %d): writes there PENDING\n", win.Owner, of, win.Lo, win.Hi)
			}
			fmt.Fprintf(&b, "  resynced for takeovers: %d regions, %d bytes\n", a.ResyncedRegions, a.ResyncedBytes)
			if c.Lost != "" {
				fmt.Fprintf(&b, "  slot lost: %s\n", c.Lost)
			}
			if c.LastError != "" {
				fmt.Fprintf(&b, "  last takeover scan: %s\n", c.LastError)
			}
		}
		if a.Error != "" {
			fmt.Fprintf(&b, "  error: %s\n", a.Error)
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}
