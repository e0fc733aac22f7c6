package cluster

import (
	"github.com/prometheus/client_golang/prometheus"
)

// The agent's cluster metrics (GET /metrics on its control socket). All are
// read from the node at scrape time.
var (
	descQuorum = prometheus.NewDesc("ddraid_cluster_quorum",
		"1 if this node holds lockd's quorum lease and lockd is not recovering.", nil, nil)
	descEpoch = prometheus.NewDesc("ddraid_cluster_epoch",
		"lockd's membership epoch (each completed membership change adds at least one).", nil, nil)
	descVoters = prometheus.NewDesc("ddraid_cluster_voters",
		"Configured nodes (voters); quorum is a strict majority.", nil, nil)
	descMembers = prometheus.NewDesc("ddraid_cluster_members",
		"Nodes by gossip state (alive, failed, unknown).", []string{"state"}, nil)
	descEpochMembers = prometheus.NewDesc("ddraid_cluster_epoch_members",
		"Nodes in lockd's current epoch.", nil, nil)
	descMastered = prometheus.NewDesc("ddraid_lockd_mastered_resources",
		"Resources this node masters.", nil, nil)
	descQueued = prometheus.NewDesc("ddraid_lockd_queued_locks",
		"Locks in the queues of resources this node masters.", []string{"queue"}, nil)
	descOwn = prometheus.NewDesc("ddraid_lockd_node_locks",
		"Locks of this node: granted, or waiting for a grant or conversion.", []string{"state"}, nil)
	descFrames = prometheus.NewDesc("ddraid_cluster_transport_frames_total",
		"Transport frames: sent, received, dropped (send queue full).", []string{"kind"}, nil)
	descCalls = prometheus.NewDesc("ddraid_cluster_messenger_calls_total",
		"Messenger calls this node made (a broadcast counts one per peer), by result.", []string{"result"}, nil)
	descServed = prometheus.NewDesc("ddraid_cluster_messenger_requests_total",
		"Messenger requests this node received, by result (ok, error, refused, unknown_type).", []string{"result"}, nil)
)

// collector reads a started Node.
type collector struct{ n *Node }

// Collector returns a Prometheus collector of the node's metrics. Register
// it after Start.
func (n *Node) Collector() prometheus.Collector { return collector{n} }

func (collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descQuorum, descEpoch, descVoters, descMembers, descEpochMembers, descMastered,
		descQueued, descOwn, descFrames, descCalls, descServed} {
		ch <- d
	}
}

func (c collector) Collect(ch chan<- prometheus.Metric) {
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	st := c.n.Status()
	q := 0.0
	if st.Quorum {
		q = 1
	}
	gauge(descQuorum, q)
	gauge(descEpoch, float64(st.Epoch))
	gauge(descVoters, float64(len(st.Voters)))
	states := map[string]int{StateAlive: 0, StateFailed: 0, StateUnknown: 0}
	inEpoch := 0
	for _, m := range st.Members {
		states[m.State]++
		if m.Lockd {
			inEpoch++
		}
	}
	for s, k := range states {
		gauge(descMembers, float64(k), s)
	}
	gauge(descEpochMembers, float64(inEpoch))

	d := c.n.Locks().Dump()
	gauge(descMastered, float64(len(d.Resources)))
	var granted, converting, waiting int
	for _, r := range d.Resources {
		granted += len(r.Granted)
		converting += len(r.Converting)
		waiting += len(r.Waiting)
	}
	gauge(descQueued, float64(granted), "granted")
	gauge(descQueued, float64(converting), "converting")
	gauge(descQueued, float64(waiting), "waiting")
	var own, pending int
	for _, l := range d.Locks {
		if l.Granted.Valid() {
			own++
		}
		if l.Requested.Valid() {
			pending++
		}
	}
	gauge(descOwn, float64(own), "granted")
	gauge(descOwn, float64(pending), "waiting")

	ts := c.n.tr.Stats()
	counter(descFrames, ts.Sent, "sent")
	counter(descFrames, ts.Received, "received")
	counter(descFrames, ts.Dropped, "dropped")
	cs := &c.n.courier.stats
	counter(descCalls, cs.callsOK.Load(), "ok")
	counter(descCalls, cs.callsFailed.Load(), "error")
	counter(descServed, cs.servedOK.Load(), "ok")
	counter(descServed, cs.servedFailed.Load(), "error")
	counter(descServed, cs.refused.Load(), "refused")
	counter(descServed, cs.unknownType.Load(), "unknown_type")
}
