package array

import (
	"bytes"
	_ "embed"
	"fmt"
	"html/template"
	"net/http"
	"os"
	"time"

	"github.com/ddraid/ddraid/blockdev"
	"github.com/ddraid/ddraid/cluster"
	"github.com/ddraid/ddraid/internal/units"
	"github.com/ddraid/ddraid/raid"
)

//go:embed web/page.html
var pageHTML string

var pageTmpl = template.Must(template.New("page").Funcs(template.FuncMap{
	"size": units.FormatSize,
	"rate": func(r float64) int64 { return int64(r) },
	"eta":  func(s float64) string { return (time.Duration(s) * time.Second).Round(time.Second).String() },
	"stateClass": func(s string) string {
		switch s {
		case raid.ArrayClean, "serving":
			return "ok"
		case raid.ArrayFailed, "fenced":
			return "bad"
		case "stopped":
			return "idle"
		}
		return "warn"
	},
	"memberClass": func(s string) string {
		switch raid.MemberState(s) {
		case raid.MemberActive:
			return "ok"
		case raid.MemberRecovering:
			return "warn"
		}
		return "bad"
	},
	"nodeClass": func(s string) string {
		switch s {
		case cluster.StateAlive:
			return "ok"
		case cluster.StateFailed:
			return "bad"
		}
		return "idle"
	},
	"index1": func(io []blockdev.IOStats, i int) *blockdev.IOStats {
		if i < 0 || i >= len(io) {
			return nil
		}
		return &io[i]
	},
}).Parse(pageHTML))

// Page is what a read-only status page shows: the page of `ddraid serve
// --http` (arrays only) and of `ddraid agent --http` (the arrays it serves
// in cluster mode, the member disks it hosts, the cluster's nodes).
type Page struct {
	// Title follows "ddraid" in the heading ("on HOST" when empty).
	Title  string
	Arrays []PageArray
	// Exports are the member disks the process serves to writers (the
	// section is left out when there are none).
	Exports []PageExport
	// Cluster is the cluster as this node sees it (what the agent's
	// GET /v1/cluster returns); nil outside cluster mode.
	Cluster *cluster.Status
}

// PageArray is one array on the page: its status (only Name and State
// are set while a cluster array is not assembled yet) and, for an array
// an agent serves in cluster mode, the writer's part.
type PageArray struct {
	Status
	Served *PageServed
}

// PageServed is the cluster part of an array an agent serves.
type PageServed struct {
	State     string // assembling, serving, fenced, stopped
	URL       string // the NBD export
	Slot      int    // writer slot; -1: none yet
	Epoch     uint64
	Quorum    bool
	Halted    string // why writes wait, if they do
	Windows   []PageWindow
	Takeovers []uint32 // slots this node is taking over
	Rejoins   int
	Error     string
}

// PageWindow is a resync window writes to [Lo, Hi) wait for.
type PageWindow struct {
	Owner  string
	Slot   uint32
	Lo, Hi int64
}

// PageExport is a member disk the process hosts.
type PageExport struct {
	Path string
	// Addresses are where writers reach it (HOST:PORT or unix:/PATH).
	Addresses []string
}

// pageData is the template's input.
type pageData struct {
	Page
	Host    string
	Time    string
	Refresh int
}

// RenderPage writes the read-only status page; it refreshes itself every
// two seconds.
func RenderPage(w http.ResponseWriter, p Page, now time.Time) {
	host, _ := os.Hostname()
	if p.Title == "" {
		p.Title = "on " + host
	}
	var b bytes.Buffer
	err := pageTmpl.Execute(&b, pageData{Page: p, Host: host, Time: now.UTC().Format(time.DateTime + " UTC"), Refresh: 2})
	if err != nil {
		http.Error(w, fmt.Sprintf("status page: %v", err), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.Write(b.Bytes())
}

// renderPage writes the page of a serve process's arrays.
func renderPage(w http.ResponseWriter, arrays []Status, now time.Time) {
	p := Page{Arrays: make([]PageArray, 0, len(arrays))}
	for _, a := range arrays {
		p.Arrays = append(p.Arrays, PageArray{Status: a})
	}
	RenderPage(w, p, now)
}
