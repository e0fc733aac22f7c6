package lockd

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

var rewrite = flag.Bool("rewrite", false, "rewrite the expected output of transcript tests in testdata/")

// A transcript file is a list of blocks:
//
//	command args...
//	----
//	expected output
//	<blank line>
//
// Lines starting with # between blocks are comments. Run with -rewrite to regenerate the
// expected output after a deliberate change (and read the diff).
func TestTranscripts(t *testing.T) {
	files, err := filepath.Glob("testdata/*.txt")
	if err != nil || len(files) == 0 {
		t.Fatalf("no transcripts: %v", err)
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) { runTranscript(t, f) })
	}
}

type tblock struct {
	comments []string
	cmd      string
	want     string
}

func parseTranscript(t *testing.T, text string) []tblock {
	var out []tblock
	lines := strings.Split(text, "\n")
	var comments []string
	for i := 0; i < len(lines); i++ {
		l := lines[i]
		if strings.TrimSpace(l) == "" && len(comments) == 0 {
			continue
		}
		if strings.HasPrefix(l, "#") || strings.TrimSpace(l) == "" {
			comments = append(comments, l)
			continue
		}
		b := tblock{comments: comments, cmd: l}
		comments = nil
		i++
		if i >= len(lines) || lines[i] != "----" {
			t.Fatalf("line %d: want ---- after %q", i+1, l)
		}
		var want []string
		for i++; i < len(lines) && lines[i] != ""; i++ {
			want = append(want, lines[i])
		}
		if len(want) > 0 {
			b.want = strings.Join(want, "\n") + "\n"
		}
		out = append(out, b)
	}
	return out
}

func runTranscript(t *testing.T, path string) {
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	blocks := parseTranscript(t, string(raw))
	r := &runner{t: t}
	var rewritten strings.Builder
	for _, b := range blocks {
		got := r.run(b.cmd)
		if *rewrite {
			for _, c := range b.comments {
				rewritten.WriteString(c + "\n")
			}
			fmt.Fprintf(&rewritten, "%s\n----\n%s\n", b.cmd, got)
			continue
		}
		if got != b.want {
			t.Errorf("%s: %s\n--- got:\n%s--- want:\n%s", path, b.cmd, got, b.want)
		}
	}
	if *rewrite {
		if err := os.WriteFile(path, []byte(rewritten.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

type runner struct {
	t     *testing.T
	s     *sim
	out   strings.Builder
	names map[NodeID]map[uint64]string
	refs  map[string]struct {
		n  NodeID
		id uint64
	}
}

func (r *runner) name(n NodeID, id uint64) string {
	if nm := r.names[n][id]; nm != "" {
		return nm
	}
	return fmt.Sprintf("%s#%d", n, id)
}

func (r *runner) newCluster(nodes []string) {
	r.s = newSim(r.t, Config{}, nodes...)
	r.names = map[NodeID]map[uint64]string{}
	r.refs = map[string]struct {
		n  NodeID
		id uint64
	}{}
	r.s.onCompletion = func(n NodeID, cp Completion) {
		fmt.Fprintf(&r.out, "%s %s %v %v", n, r.name(n, cp.Lock), cp.Op, cp.Status)
		if cp.Mode.Valid() {
			fmt.Fprintf(&r.out, " %v token=%v", cp.Mode, cp.Token)
		}
		if cp.LVB != nil {
			fmt.Fprintf(&r.out, " lvb=%s seq=%d valid=%v", lvbText(cp.LVB), cp.LVBSeq, cp.LVBValid)
		}
		r.out.WriteString("\n")
	}
	r.s.onBlocking = func(n NodeID, b BlockingEvent) {
		fmt.Fprintf(&r.out, "%s %s blocking %v\n", n, r.name(n, b.Lock), b.Mode)
	}
}

func parseFlags(args []string) (Flags, []byte, string, error) {
	var f Flags
	var lvb []byte
	space := "ls"
	for _, a := range args {
		switch {
		case a == "NOQUEUE":
			f |= NoQueue
		case a == "VALBLK":
			f |= ValBlk
		case a == "IVVALBLK":
			f |= IvValBlk
		case a == "BAST":
			f |= Blocking
		case strings.HasPrefix(a, "lvb="):
			lvb = []byte(strings.TrimPrefix(a, "lvb="))
		case strings.HasPrefix(a, "space="):
			space = strings.TrimPrefix(a, "space=")
		default:
			return 0, nil, "", fmt.Errorf("unknown argument %q", a)
		}
	}
	return f, lvb, space, nil
}

func nodes(s string) []NodeID {
	var out []NodeID
	for _, x := range strings.Split(s, ",") {
		if x != "" {
			out = append(out, NodeID(x))
		}
	}
	return out
}

func (r *runner) run(cmd string) string {
	r.out.Reset()
	f := strings.Fields(cmd)
	err := r.exec(f[0], f[1:])
	if err != nil {
		fmt.Fprintf(&r.out, "error: %v\n", err)
	}
	return r.out.String()
}

func (r *runner) exec(verb string, args []string) error {
	if verb != "cluster" && r.s == nil {
		return fmt.Errorf("no cluster yet")
	}
	need := func(n int) error {
		if len(args) < n {
			return fmt.Errorf("%s needs %d arguments", verb, n)
		}
		return nil
	}
	ref := func(name string) (NodeID, uint64, error) {
		x, ok := r.refs[name]
		if !ok {
			return "", 0, fmt.Errorf("unknown lock %s", name)
		}
		if r.s.cores[x.n] == nil {
			return "", 0, fmt.Errorf("%s is down", x.n)
		}
		return x.n, x.id, nil
	}
	switch verb {
	case "cluster":
		// cluster n1 n2 n3: start, agree on all of them, settle.
		r.newCluster(args)
		r.s.setMembers(r.s.live(), r.s.live())
		r.s.stabilize(12)
		r.out.WriteString(r.s.dump(r.names))
	case "lock":
		// lock NODE NAME RESOURCE MODE [flags]
		if err := need(4); err != nil {
			return err
		}
		n := NodeID(args[0])
		mode, err := ParseMode(args[3])
		if err != nil {
			return err
		}
		fl, _, space, err := parseFlags(args[4:])
		if err != nil {
			return err
		}
		c := r.s.cores[n]
		if c == nil {
			return fmt.Errorf("%s is down", n)
		}
		id, err := c.Lock(space, args[2], mode, fl)
		if err != nil {
			return err
		}
		if r.names[n] == nil {
			r.names[n] = map[uint64]string{}
		}
		r.names[n][id] = args[1]
		r.refs[args[1]] = struct {
			n  NodeID
			id uint64
		}{n, id}
		r.s.deliverAll()
	case "convert":
		if err := need(2); err != nil {
			return err
		}
		n, id, err := ref(args[0])
		if err != nil {
			return err
		}
		mode, err := ParseMode(args[1])
		if err != nil {
			return err
		}
		fl, lvb, _, err := parseFlags(args[2:])
		if err != nil {
			return err
		}
		if err := r.s.cores[n].Convert(id, mode, fl, lvb); err != nil {
			return err
		}
		r.s.deliverAll()
	case "unlock":
		if err := need(1); err != nil {
			return err
		}
		n, id, err := ref(args[0])
		if err != nil {
			return err
		}
		fl, lvb, _, err := parseFlags(args[1:])
		if err != nil {
			return err
		}
		if err := r.s.cores[n].Unlock(id, fl, lvb); err != nil {
			return err
		}
		r.s.deliverAll()
	case "cancel":
		if err := need(1); err != nil {
			return err
		}
		n, id, err := ref(args[0])
		if err != nil {
			return err
		}
		if err := r.s.cores[n].Cancel(id); err != nil {
			return err
		}
		r.s.deliverAll()
	case "deliver":
		r.s.deliverAll()
	case "tick":
		k := 1
		if len(args) > 0 {
			k, _ = strconv.Atoi(args[0])
		}
		for range k {
			r.s.tick()
			r.s.deliverAll()
		}
	case "stabilize":
		k := 12
		if len(args) > 0 {
			k, _ = strconv.Atoi(args[0])
		}
		r.s.stabilize(k)
	case "members":
		// members n1,n2 [on=n1,n2]: what serf tells the nodes (default: every live node).
		if err := need(1); err != nil {
			return err
		}
		on := r.s.live()
		if len(args) > 1 && strings.HasPrefix(args[1], "on=") {
			on = nodes(strings.TrimPrefix(args[1], "on="))
		}
		r.s.setMembers(on, nodes(args[0]))
	case "crash":
		if err := need(1); err != nil {
			return err
		}
		r.s.crash(NodeID(args[0]))
	case "restart":
		if err := need(1); err != nil {
			return err
		}
		n := NodeID(args[0])
		r.s.start(n)
		delete(r.names, n)
	case "partition":
		// partition n1,n2 n3: cut every link between the groups.
		var groups [][]NodeID
		for _, g := range args {
			groups = append(groups, nodes(g))
		}
		r.s.partition(groups...)
	case "heal":
		r.s.heal()
	case "dump":
		r.out.WriteString(r.s.dump(r.names))
	case "locks":
		if err := need(1); err != nil {
			return err
		}
		n := NodeID(args[0])
		c := r.s.cores[n]
		if c == nil {
			return fmt.Errorf("%s is down", n)
		}
		for _, li := range c.Locks() {
			fmt.Fprintf(&r.out, "%s %s/%s granted=%v", r.name(n, li.ID), li.Space, li.Resource, li.Granted)
			if li.Pending != OpNone {
				fmt.Fprintf(&r.out, " pending=%v", li.Pending)
				if li.Requested.Valid() {
					fmt.Fprintf(&r.out, ":%v", li.Requested)
				}
			}
			fmt.Fprintf(&r.out, " token=%v", li.Token)
			if li.LVB != nil {
				fmt.Fprintf(&r.out, " lvb=%s seq=%d valid=%v", lvbText(li.LVB), li.LVBSeq, li.LVBValid)
			}
			r.out.WriteString("\n")
		}
	case "invariants":
		if err := r.s.checkInvariants(); err != nil {
			return err
		}
		r.out.WriteString("ok\n")
	default:
		return fmt.Errorf("unknown command %q", verb)
	}
	return nil
}

var _ = slices.Contains[[]int]
