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
		case raid.ArrayClean:
			return "ok"
		case raid.ArrayFailed:
			return "bad"
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
	"index1": func(io []blockdev.IOStats, i int) *blockdev.IOStats {
		if i < 0 || i >= len(io) {
			return nil
		}
		return &io[i]
	},
}).Parse(pageHTML))

// pageData is what the status page shows.
type pageData struct {
	Host    string
	Time    string
	Refresh int
	Arrays  []Status
}

// renderPage writes the read-only status page of arrays.
func renderPage(w http.ResponseWriter, arrays []Status, now time.Time) {
	host, _ := os.Hostname()
	var b bytes.Buffer
	err := pageTmpl.Execute(&b, pageData{Host: host, Time: now.UTC().Format(time.DateTime + " UTC"), Refresh: 2, Arrays: arrays})
	if err != nil {
		http.Error(w, fmt.Sprintf("status page: %v", err), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.Write(b.Bytes())
}
