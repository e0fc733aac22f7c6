package coord

import (
	"strings"
	"testing"

	"github.com/ddraid/ddraid/blockdev/remote"
	"github.com/ddraid/ddraid/raid/array"
	"github.com/ddraid/ddraid/raid/meta"
)

// The running array and the gate fit each other's interfaces.
var (
	_ RunningArray    = (*array.Array)(nil)
	_ array.WriteGate = (*WriteGate)(nil)
)

func TestAgentHosts(t *testing.T) {
	sb := *testSuperblock()
	sb.Members[0].Path = "10.0.0.1:10810:/dev/sdb"
	sb.Members[1].Path = "10.0.0.2:10810:/dev/sdb"
	sb.Members[2].Path = "/dev/sdc"
	sb.Members[2].State = meta.StateFailed
	hosts, err := AgentHosts(sb, remote.Config{})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, h := range hosts {
		names = append(names, h.Name())
	}
	if strings.Join(names, " ") != "10.0.0.1:10810:/dev/sdb 10.0.0.2:10810:/dev/sdb" {
		t.Errorf("hosts %v: want the two agent members in use (the failed local one left out)", names)
	}
	sb.Members[2].State = meta.StateActive
	if _, err := AgentHosts(sb, remote.Config{}); err == nil || !strings.Contains(err.Error(), "member 2 (/dev/sdc) is not hosted by a ddraid agent") {
		t.Errorf("a local member in use: %v", err)
	}
}
