package main

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"
)

// troubleshootingPackages are the packages whose errors reach an operator
// through the CLI; docs/troubleshooting.md must explain each of their
// messages. Paths are relative to the top of the tree.
var troubleshootingPackages = []string{
	"cmd/ddraid",
	"internal/config",
	"internal/certs",
	"internal/procs",
	"raid",
	"raid/array",
	"raid/meta",
	"cluster/serve",
}

// minStemLen is the shortest stem the test asks for: shorter ones
// ("assemble", "open %s") are context that wraps another message.
const minStemLen = 12

// notPrinted are sentinels the CLI never prints: run() exits 1 without a
// message for them, the details having been printed already.
var notPrinted = []string{
	"errors reported",  // config check printed each error
	"mismatches found", // check printed the mismatch count
}

// maxWrapperWords: a format that ends in %w and has at most this many
// words outside its verbs ("raid35: flush: %w", "certs: write %s: %w",
// "assemble %s: %w") only names the step that failed; the message it
// wraps is the one the doc explains.
const maxWrapperWords = 3

// TestTroubleshootingListsEveryMessage keeps docs/troubleshooting.md
// complete: every message made with fmt.Errorf or errors.New in the
// packages above must appear there. The part of the message that is
// compared is its stem: the literal up to its first verb (%s, %d, %w,
// %v, %q, ...), trimmed. A message that starts with a verb ("%s is too
// small: ...") is compared by its longest literal piece instead. Skipped:
// stems shorter than minStemLen, pure wrappers (maxWrapperWords) and the
// sentinels in notPrinted.
//
// If it fails after you added an error: add a row to the matching table
// of docs/troubleshooting.md whose message column holds the stem as the
// code writes it (variable parts in CAPITALS after it are fine), with
// its cause and what the operator should do.
func TestTroubleshootingListsEveryMessage(t *testing.T) {
	root := filepath.Join("..", "..")
	doc, err := os.ReadFile(filepath.Join(root, "docs", "troubleshooting.md"))
	if err != nil {
		t.Fatal(err)
	}
	text := normalizeDoc(string(doc))

	stems := map[string][]string{} // stem -> where it is made
	for _, pkg := range troubleshootingPackages {
		for stem, pos := range messageStems(t, filepath.Join(root, pkg)) {
			stems[stem] = append(stems[stem], pos...)
		}
	}
	if len(stems) < 50 {
		t.Fatalf("found only %d message stems: is the parser still finding them?", len(stems))
	}
	var missing []string
	for stem, pos := range stems {
		if !strings.Contains(text, stem) {
			slices.Sort(pos)
			missing = append(missing, strconv.Quote(stem)+"  ("+strings.Join(pos, ", ")+")")
		}
	}
	slices.Sort(missing)
	if len(missing) > 0 {
		t.Errorf("docs/troubleshooting.md does not explain %d messages; add a row for each "+
			"(the stem as written, its cause, what to do):\n\t%s",
			len(missing), strings.Join(missing, "\n\t"))
	}
}

// normalizeDoc collapses runs of white space to one space and drops the
// markdown escapes a table needs (\|), so a stem matches however the doc
// wraps or quotes it. Backticks are kept: stems are searched as substrings,
// so `a stem` contains the stem.
func normalizeDoc(s string) string {
	s = strings.ReplaceAll(s, `\|`, "|")
	return strings.Join(strings.Fields(s), " ")
}

// messageStems returns the stems of the messages made in the non-test Go
// files of dir, each with the file:line positions that make it.
func messageStems(t *testing.T, dir string) map[string][]string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(dir, "*.go"))
	if err != nil {
		t.Fatal(err)
	}
	fset := token.NewFileSet()
	out := map[string][]string{}
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		file, err := parser.ParseFile(fset, f, nil, parser.SkipObjectResolution)
		if err != nil {
			t.Fatal(err)
		}
		ast.Inspect(file, func(n ast.Node) bool {
			call, ok := n.(*ast.CallExpr)
			if !ok || len(call.Args) == 0 || !isMessageCall(call.Fun) {
				return true
			}
			lit, ok := stringLiteral(call.Args[0])
			if !ok {
				return true
			}
			if isWrapper(lit) {
				return true
			}
			stem := messageStem(lit)
			if utf8.RuneCountInString(stem) < minStemLen {
				stem = longestPiece(lit)
			}
			if utf8.RuneCountInString(stem) < minStemLen || slices.Contains(notPrinted, stem) {
				return true
			}
			p := fset.Position(call.Pos())
			rel := filepath.ToSlash(filepath.Join(filepath.Base(filepath.Dir(p.Filename)), filepath.Base(p.Filename)))
			out[stem] = append(out[stem], rel+":"+strconv.Itoa(p.Line))
			return true
		})
	}
	return out
}

// pieces splits a format at its verbs into its literal pieces, each with
// white space collapsed and trimmed of the punctuation that joins it to
// the verbs around it. %% stands for a literal percent sign.
func pieces(format string) []string {
	var out []string
	var b strings.Builder
	flush := func() {
		s := strings.Join(strings.Fields(b.String()), " ")
		s = strings.Trim(s, " :;,()[]=+-\"'")
		if s != "" {
			out = append(out, s)
		}
		b.Reset()
	}
	for i := 0; i < len(format); i++ {
		c := format[i]
		if c != '%' {
			b.WriteByte(c)
			continue
		}
		if i+1 < len(format) && format[i+1] == '%' {
			b.WriteByte('%')
			i++
			continue
		}
		flush()
		// Skip the verb: flags, width, precision, then its letter.
		for i+1 < len(format) && strings.IndexByte("+-# 0123456789.*[]", format[i+1]) >= 0 {
			i++
		}
		i++ // the verb letter
	}
	flush()
	return out
}

// isWrapper reports a format that only names the step whose error it
// wraps (see maxWrapperWords).
func isWrapper(format string) bool {
	if !strings.HasSuffix(strings.TrimSpace(format), "%w") {
		return false
	}
	words := 0
	for _, p := range pieces(format) {
		words += len(strings.Fields(p))
	}
	return words <= maxWrapperWords
}

// longestPiece is the longest literal piece of a format: the stem of a
// message that starts with a verb ("%s is too small: ...").
func longestPiece(format string) string {
	best := ""
	for _, p := range pieces(format) {
		if len(p) > len(best) {
			best = p
		}
	}
	return best
}

// isMessageCall reports fmt.Errorf and errors.New.
func isMessageCall(fun ast.Expr) bool {
	sel, ok := fun.(*ast.SelectorExpr)
	if !ok {
		return false
	}
	pkg, ok := sel.X.(*ast.Ident)
	if !ok {
		return false
	}
	return (pkg.Name == "fmt" && sel.Sel.Name == "Errorf") ||
		(pkg.Name == "errors" && sel.Sel.Name == "New")
}

// stringLiteral returns the value of a string literal, or of literals
// joined with +.
func stringLiteral(e ast.Expr) (string, bool) {
	switch e := e.(type) {
	case *ast.BasicLit:
		if e.Kind != token.STRING {
			return "", false
		}
		s, err := strconv.Unquote(e.Value)
		return s, err == nil
	case *ast.BinaryExpr:
		if e.Op != token.ADD {
			return "", false
		}
		a, ok1 := stringLiteral(e.X)
		b, ok2 := stringLiteral(e.Y)
		return a + b, ok1 && ok2
	case *ast.ParenExpr:
		return stringLiteral(e.X)
	}
	return "", false
}

// messageStem is a format's text up to its first verb, trimmed of white
// space and of the punctuation that joins it to the verb ("x: %w" -> "x").
// %% stands for a literal percent sign. White space inside is collapsed
// as the doc's is.
func messageStem(format string) string {
	var b strings.Builder
	for i := 0; i < len(format); i++ {
		if format[i] != '%' {
			b.WriteByte(format[i])
			continue
		}
		if i+1 < len(format) && format[i+1] == '%' {
			b.WriteByte('%')
			i++
			continue
		}
		break
	}
	s := strings.Join(strings.Fields(b.String()), " ")
	return strings.TrimRight(s, " :;,(=\"'")
}

func TestMessageStem(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"assemble %s: %w", "assemble"},
		{"no such array", "no such array"},
		{"block size %d must be a power of two", "block size"},
		{"100%% full: %v", "100% full"},
		{"member timeout %v: want at least 1ms", "member timeout"},
		{"bad value (%q)", "bad value"},
		{"%s belongs to array %q", ""},
		{"two\n  lines: %w", "two lines"},
	} {
		if got := messageStem(tc.in); got != tc.want {
			t.Errorf("messageStem(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestMessageWrappersAndPieces(t *testing.T) {
	for _, tc := range []struct {
		in      string
		wrapper bool
		longest string
	}{
		{"raid35: flush: %w", true, "raid35: flush"},
		{"open metadata %s: %w: %v", false, "open metadata"},
		{"certs: write %s: %w", true, "certs: write"},
		{"array %s: rebuild member %d %d+%d: %w", true, "rebuild member"},
		{"%w: %s is too small: %d bytes, array %s needs %d", false, "is too small"},
		{"header version %d, this ddraid reads %d: %w", false, "this ddraid reads"},
		{"no such array", false, "no such array"},
	} {
		if got := isWrapper(tc.in); got != tc.wrapper {
			t.Errorf("isWrapper(%q) = %v, want %v", tc.in, got, tc.wrapper)
		}
		if got := longestPiece(tc.in); got != tc.longest {
			t.Errorf("longestPiece(%q) = %q, want %q", tc.in, got, tc.longest)
		}
	}
}
