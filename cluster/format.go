package cluster

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/ddraid/ddraid/lockd"
)

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

// WriteStatus prints st for `ddraid cluster status`.
func WriteStatus(w io.Writer, st Status) error {
	alive := 0
	for _, m := range st.Members {
		if m.Voter && m.State == StateAlive {
			alive++
		}
	}
	fmt.Fprintf(w, "node %s (incarnation %x)\n", st.Node, st.Incarnation)
	fmt.Fprintf(w, "quorum: %s  epoch: %d  phase: %s  voters alive: %d of %d (quorum needs %d)\n",
		yesNo(st.Quorum), st.Epoch, st.Phase, alive, len(st.Voters), len(st.Voters)/2+1)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tSTATE\tVOTER\tIN EPOCH\tINCARNATION\tGOSSIP\tRPC")
	for _, m := range st.Members {
		inc := "-"
		if m.Incarnation != 0 {
			inc = fmt.Sprintf("%x", m.Incarnation)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", m.Name, m.State, yesNo(m.Voter), yesNo(m.Lockd), inc, dash(m.Gossip), dash(m.RPC))
	}
	return tw.Flush()
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// WriteDump prints d for `ddraid locks`: the resources this node masters
// with their queues, then the locks this node holds or waits for.
func WriteDump(w io.Writer, d lockd.Dump) error {
	members := make([]string, len(d.Members))
	for i, m := range d.Members {
		members[i] = string(m)
	}
	fmt.Fprintf(w, "node %s  epoch %d  phase %s  quorum %s  members %s\n", d.Node, d.Epoch, d.Phase, yesNo(d.Quorum), strings.Join(members, ","))
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	if len(d.Resources) == 0 {
		fmt.Fprintln(w, "\nmastered here: none")
	} else {
		fmt.Fprintln(w, "\nmastered here:")
		fmt.Fprintln(tw, "LOCKSPACE\tRESOURCE\tLVB\tQUEUE\tNODE\tLOCK\tGRANTED\tREQUESTED\tTOKEN")
		for _, r := range d.Resources {
			lvb := fmt.Sprintf("seq %d", r.LVBSeq)
			if !r.LVBValid {
				lvb += " invalid"
			}
			rows := 0
			for _, q := range []struct {
				name string
				hs   []lockd.HolderDump
			}{{"granted", r.Granted}, {"converting", r.Converting}, {"waiting", r.Waiting}} {
				for _, h := range q.hs {
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s\n", r.Lockspace, r.Name, lvb, q.name, h.Node, h.Lock, h.Granted, h.Requested, h.Token)
					rows++
				}
			}
			if rows == 0 {
				fmt.Fprintf(tw, "%s\t%s\t%s\t-\t-\t-\t-\t-\t-\n", r.Lockspace, r.Name, lvb)
			}
		}
		tw.Flush()
	}
	if len(d.Locks) == 0 {
		fmt.Fprintln(w, "\nlocks of this node: none")
		return nil
	}
	fmt.Fprintln(w, "\nlocks of this node:")
	fmt.Fprintln(tw, "LOCKSPACE\tRESOURCE\tLOCK\tMASTER\tGRANTED\tPENDING\tREQUESTED\tTOKEN")
	for _, l := range d.Locks {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\t%s\t%s\n", l.Lockspace, l.Resource, l.ID, l.Master, l.Granted, dash(l.Pending), l.Requested, l.Token)
	}
	return tw.Flush()
}
