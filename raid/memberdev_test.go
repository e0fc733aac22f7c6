package raid

import (
	"strings"
	"testing"

	"github.com/ddraid/ddraid/raid/meta"
)

func TestAgentMemberSyntax(t *testing.T) {
	cases := []struct {
		in    string
		agent bool
		canon string // MemberPath for agent members
		uri   string
	}{
		{"node1:/dev/sdb", true, "node1:10810:/dev/sdb", "nbd://node1:10810//dev/sdb"},
		{"node1:10900:/dev/sdb", true, "node1:10900:/dev/sdb", "nbd://node1:10900//dev/sdb"},
		{"10.0.0.5:/srv/disk//a/../b", true, "10.0.0.5:10810:/srv/disk/b", "nbd://10.0.0.5:10810//srv/disk/b"},
		{"[::1]:/dev/sdc", true, "[::1]:10810:/dev/sdc", "nbd://[::1]:10810//dev/sdc"},
		{"[::1]:7:/dev/sdc", true, "[::1]:7:/dev/sdc", "nbd://[::1]:7//dev/sdc"},
		{"/dev/sdb", false, "", ""},
		{"./a:/b", false, "", ""},
		{"dir/x:/y", false, "", ""},
		{"m0", false, "", ""},
		{"nbd://h:1/x", false, "", ""},
		{"node1:0:/dev/sdb", false, "", ""},
		{"node1:99999:/dev/sdb", false, "", ""},
		{"node1:x:/dev/sdb", false, "", ""},
		{":/dev/sdb", false, "", ""},
		{"[::1:/dev/sdb", false, "", ""},
		{"[::1]x:/dev/sdb", false, "", ""},
		{"a b:/dev/sdb", false, "", ""},
		{"[.]:/x", false, "", ""},
		{"[10.0.0.1]:/x", false, "", ""},
		{"-h:/x", false, "", ""},
		{"h..x:/x", false, "", ""},
		{"my_host-2.lan:/x", true, "my_host-2.lan:10810:/x", "nbd://my_host-2.lan:10810//x"},
	}
	for _, c := range cases {
		m, ok := parseAgentMember(c.in)
		if ok != c.agent || IsAgentMember(c.in) != c.agent {
			t.Errorf("parseAgentMember(%q) ok = %v, want %v", c.in, ok, c.agent)
			continue
		}
		if !ok {
			continue
		}
		if !IsRemote(c.in) {
			t.Errorf("IsRemote(%q) = false", c.in)
		}
		if got, err := MemberPath(c.in); err != nil || got != c.canon {
			t.Errorf("MemberPath(%q) = %q %v, want %q", c.in, got, err, c.canon)
		}
		if got := m.uri(false); got != c.uri {
			t.Errorf("uri(%q) = %q, want %q", c.in, got, c.uri)
		}
		// The canonical form parses to itself.
		if again, err := MemberPath(c.canon); err != nil || again != c.canon {
			t.Errorf("MemberPath(%q) = %q %v, not stable", c.canon, again, err)
		}
	}
}

func TestWriterIdentity(t *testing.T) {
	members := func(n int) []meta.Member { return make([]meta.Member, n) }
	cases := []struct {
		name   string
		a      meta.Array
		region uint64
	}{
		{"raid35 of 5", meta.Array{Level: "raid35", RegionSize: 4 << 20, Members: members(5)}, 1 << 20},
		{"raid35 of 3", meta.Array{Level: "raid35", RegionSize: 1 << 20, Members: members(3)}, 512 << 10},
		{"raid35 default region", meta.Array{Level: "raid35", Members: members(9)}, 512 << 10},
		{"mirror", meta.Array{Level: "mirror", RegionSize: 1 << 20, Members: members(2)}, 1 << 20},
		{"linear has no marks", meta.Array{Level: "linear", RegionSize: 1 << 20, Members: members(2)}, 0},
	}
	for _, c := range cases {
		c.a.UUID = meta.UUID{7}
		c.a.DataOffset = meta.DataOffset
		w := WriterIdentity(&c.a, Writer{Slot: 2, Epoch: 9})
		if w.RegionSize != c.region || w.Slot != 2 || w.Epoch != 9 || w.Array != [16]byte(c.a.UUID) || w.DataOffset != meta.DataOffset {
			t.Errorf("%s: %+v, want region %d", c.name, w, c.region)
		}
	}
}

func TestCreateRegionSizeForAgents(t *testing.T) {
	five := []string{"h1:/d", "h2:/d", "h3:/d", "h4:/d", "h5:/d"}
	cases := []struct {
		level   Level
		members []string
		region  int64
		ok      bool
	}{
		{LevelRaid35, five, 128 << 10, false},
		{LevelRaid35, five, 256 << 10, true},
		{LevelRaid35, five, 4 << 30, true},
		{LevelRaid35, five, 8 << 30, false},
		{LevelMirror, five[:2], 64 << 10, true},
		{LevelMirror, five[:2], 2 << 30, false},
		{LevelLinear, five[:2], 4 << 30, true},
		{LevelRaid35, []string{"/f1", "/f2", "/f3", "/f4", "/f5"}, 128 << 10, true},
	}
	for _, c := range cases {
		o := CreateOptions{Name: "a", Level: c.level, RegionSize: c.region, Members: c.members}
		err := o.validate()
		if (err == nil) != c.ok || (err != nil && !strings.Contains(err.Error(), "does not suit agent members")) {
			t.Errorf("%s over %v with %d-byte regions: %v, want ok %v", c.level, c.members, c.region, err, c.ok)
		}
	}
}

// FuzzAgentMember: the member syntax parser never panics, and what it
// accepts has a canonical form that parses back to itself.
func FuzzAgentMember(f *testing.F) {
	for _, s := range []string{"node1:/dev/sdb", "[::1]:7:/x", "h:0:/x", "./a:/b", "nbd://h/x", "a:b:c:/d", "[:/", ":/"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		m, ok := parseAgentMember(s)
		if !ok {
			return
		}
		canon := m.String()
		again, ok := parseAgentMember(canon)
		if !ok || again != m || again.String() != canon {
			t.Fatalf("%q: canonical %q parses to %+v (%v), want %+v", s, canon, again, ok, m)
		}
	})
}
