package serve

import (
	"net/http"
	"time"

	"github.com/ddraid/ddraid/cluster"
	"github.com/ddraid/ddraid/raid/array"
)

// PageConfig is what the agent's status page shows besides the served
// arrays.
type PageConfig struct {
	// Title follows "ddraid" in the heading, e.g. "agent n1".
	Title string
	// Cluster returns the cluster as this node sees it (cluster.Node's
	// Status, what GET /v1/cluster returns); nil outside cluster mode.
	Cluster func() cluster.Status
	// Exports returns the member disks the agent hosts. Optional.
	Exports func() []array.PageExport
}

// PageHandler serves the agent's read-only status page (the page of
// `ddraid serve --http`, raid/array.RenderPage) at GET /: the cluster's
// nodes, the arrays this server serves (s may be nil: an agent that serves
// none, or one outside cluster mode) with their members, jobs, writer
// slots, epochs and resync windows, and the member disks the agent hosts. Other paths are 404; nothing on it
// changes anything.
func PageHandler(s *Server, pc PageConfig) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, _ *http.Request) {
		p := array.Page{Title: pc.Title, Arrays: []array.PageArray{}}
		if pc.Cluster != nil {
			st := pc.Cluster()
			p.Cluster = &st
		}
		if s != nil {
			p.Arrays = s.pageArrays()
		}
		if pc.Exports != nil {
			p.Exports = pc.Exports()
		}
		array.RenderPage(w, p, time.Now())
	})
	return mux
}

// pageArrays are the served arrays as the page shows them: Status's
// cluster part and, once assembled, the running array's own status.
func (s *Server) pageArrays() []array.PageArray {
	running := map[string]*array.Array{}
	s.mu.Lock()
	arrays := s.arrays
	s.mu.Unlock()
	for _, sv := range arrays {
		sv.mu.Lock()
		if sv.asm != nil && sv.asm.Array != nil {
			running[sv.spec.Name] = sv.asm.Array
		}
		sv.mu.Unlock()
	}
	var out []array.PageArray
	for _, st := range s.Status() {
		pa := array.PageArray{Served: &array.PageServed{State: st.State, URL: st.URL, Slot: -1, Rejoins: st.Rejoins, Error: st.Error}}
		if a := running[st.Name]; a != nil {
			pa.Status = a.Status()
		}
		pa.Name = st.Name
		if c := st.Coord; c != nil {
			ps := pa.Served
			ps.Slot, ps.Epoch, ps.Quorum, ps.Halted, ps.Takeovers = c.Slot, c.Epoch, c.Quorum, c.Halted, c.Takeovers
			for _, w := range c.Windows {
				ps.Windows = append(ps.Windows, array.PageWindow{Owner: string(w.Owner), Slot: w.Slot, Lo: w.Lo, Hi: w.Hi})
			}
		}
		out = append(out, pa)
	}
	return out
}
