package lockd

import (
	"go/ast"
	"go/parser"
	"go/token"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// driverFiles may use time, goroutines and locks: they drive the core.
var driverFiles = map[string]bool{"node.go": true}

var forbiddenImports = map[string]bool{
	"time": true, "net": true, "os": true, "math/rand": true, "math/rand/v2": true,
	"crypto/rand": true, "sync": true, "sync/atomic": true, "syscall": true,
}

// TestCoreIsDeterministic keeps the state machine pure: no clock, network, files, random
// numbers, locks or goroutines in any non-test file except the driver.
func TestCoreIsDeterministic(t *testing.T) {
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	checked := 0
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") || driverFiles[f] {
			continue
		}
		checked++
		fset := token.NewFileSet()
		af, err := parser.ParseFile(fset, f, nil, parser.SkipObjectResolution)
		if err != nil {
			t.Fatal(err)
		}
		for _, im := range af.Imports {
			p, _ := strconv.Unquote(im.Path.Value)
			if forbiddenImports[p] || strings.HasPrefix(p, "net/") {
				t.Errorf("%s: imports %q; the core must stay deterministic (move it to the driver)", fset.Position(im.Pos()), p)
			}
		}
		ast.Inspect(af, func(n ast.Node) bool {
			if g, ok := n.(*ast.GoStmt); ok {
				t.Errorf("%s: go statement in the core", fset.Position(g.Pos()))
			}
			return true
		})
	}
	if checked < 4 {
		t.Fatalf("checked only %d files; is the test running in the package directory?", checked)
	}
}
