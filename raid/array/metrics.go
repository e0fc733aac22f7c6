package array

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ddraid/ddraid/blockdev"
	"github.com/ddraid/ddraid/raid"
)

// Collector exports the arrays of one process as Prometheus metrics: IO
// counters and latency histograms for the array (what clients asked for)
// and for each member (what the engine did, resync IO included), the
// array's state, its members' states, the write-intent bitmap's dirty
// regions and the progress of the running resync or recovery.
type Collector struct {
	arrays func() []*Array
}

// NewCollector returns a collector over the arrays list returns at each
// scrape.
func NewCollector(list func() []*Array) *Collector { return &Collector{arrays: list} }

var (
	arrayLabels  = []string{"array"}
	memberLabels = []string{"array", "role", "member"}
	opLabels     = func(base []string) []string { return append(append([]string(nil), base...), "op") }

	descInfo = prometheus.NewDesc("ddraid_array_info",
		"The array's identity; always 1.", []string{"array", "uuid", "level", "parity"}, nil)
	descSize = prometheus.NewDesc("ddraid_array_size_bytes",
		"Usable size of the array.", arrayLabels, nil)
	descDegraded = prometheus.NewDesc("ddraid_array_degraded",
		"1 while the array runs with a member missing or failed.", arrayLabels, nil)
	descFailedMembers = prometheus.NewDesc("ddraid_array_failed_members",
		"Members of the array that are not in sync (failed, missing or rebuilding).", arrayLabels, nil)
	descState = prometheus.NewDesc("ddraid_array_state",
		"The array's state; 1 for the current one.", []string{"array", "state"}, nil)
	descEvents = prometheus.NewDesc("ddraid_array_events",
		"The superblock's event counter.", arrayLabels, nil)
	descDirty = prometheus.NewDesc("ddraid_bitmap_dirty_regions",
		"Regions marked dirty in the write-intent bitmap.", arrayLabels, nil)
	descRegion = prometheus.NewDesc("ddraid_bitmap_region_size_bytes",
		"Size of one write-intent bitmap region.", arrayLabels, nil)
	descJobDone = prometheus.NewDesc("ddraid_resync_done_bytes",
		"Bytes processed by the running resync, recovery or check.", []string{"array", "kind"}, nil)
	descJobTotal = prometheus.NewDesc("ddraid_resync_total_bytes",
		"Bytes the running resync, recovery or check has to process.", []string{"array", "kind"}, nil)
	descJobRate = prometheus.NewDesc("ddraid_resync_rate_bytes_per_second",
		"Speed of the running resync, recovery or check.", []string{"array", "kind"}, nil)
	descJobsQueued = prometheus.NewDesc("ddraid_resync_queued_jobs",
		"Jobs waiting behind the running one.", arrayLabels, nil)
	descReadsAround = prometheus.NewDesc("ddraid_array_reads_around_total",
		"Reads served around a busy member through parity (raid35) or by a copy other than the first (mirror).", arrayLabels, nil)
	descMemberState = prometheus.NewDesc("ddraid_member_state",
		"A member's state; 1 for the current one.", []string{"array", "role", "member", "state"}, nil)

	descOps     = prometheus.NewDesc("ddraid_array_io_ops_total", "Requests served by the array.", opLabels(arrayLabels), nil)
	descBytes   = prometheus.NewDesc("ddraid_array_io_bytes_total", "Bytes read and written through the array.", opLabels(arrayLabels), nil)
	descErrors  = prometheus.NewDesc("ddraid_array_io_errors_total", "Requests the array answered with an error.", arrayLabels, nil)
	descLatency = prometheus.NewDesc("ddraid_array_io_latency_seconds", "Time the array took to serve a request.", opLabels(arrayLabels), nil)

	descMOps     = prometheus.NewDesc("ddraid_member_io_ops_total", "Requests sent to a member.", opLabels(memberLabels), nil)
	descMBytes   = prometheus.NewDesc("ddraid_member_io_bytes_total", "Bytes read from and written to a member.", opLabels(memberLabels), nil)
	descMErrors  = prometheus.NewDesc("ddraid_member_io_errors_total", "Requests a member failed.", memberLabels, nil)
	descMLatency = prometheus.NewDesc("ddraid_member_io_latency_seconds", "Time a member took to answer a request.", opLabels(memberLabels), nil)
)

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descInfo, descSize, descDegraded, descFailedMembers, descState,
		descEvents, descDirty, descRegion, descJobDone, descJobTotal, descJobRate, descJobsQueued,
		descReadsAround, descMemberState, descOps, descBytes, descErrors, descLatency, descMOps, descMBytes, descMErrors,
		descMLatency} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	for _, a := range c.arrays() {
		collectArray(ch, a)
	}
}

func gauge(ch chan<- prometheus.Metric, d *prometheus.Desc, v float64, labels ...string) {
	ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
}

func counter(ch chan<- prometheus.Metric, d *prometheus.Desc, v int64, labels ...string) {
	ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
}

func collectArray(ch chan<- prometheus.Metric, a *Array) {
	st := a.Status()
	name := st.Name
	gauge(ch, descInfo, 1, name, st.UUID, st.Level, st.Parity)
	gauge(ch, descSize, float64(st.Size), name)
	gauge(ch, descState, 1, name, st.State)
	gauge(ch, descEvents, float64(st.Events), name)
	notInSync := 0
	for _, m := range st.Members {
		if m.State != string(raid.MemberActive) {
			notInSync++
		}
		gauge(ch, descMemberState, 1, name, strconv.Itoa(m.Role), m.Path, m.State)
	}
	gauge(ch, descFailedMembers, float64(notInSync), name)
	gauge(ch, descDegraded, b2f(notInSync > 0), name)
	if st.RegionSize > 0 {
		gauge(ch, descDirty, float64(st.DirtyRegions), name)
		gauge(ch, descRegion, float64(st.RegionSize), name)
	}
	if j := st.Job; j != nil {
		kind := string(j.Kind)
		gauge(ch, descJobDone, float64(j.Done), name, kind)
		gauge(ch, descJobTotal, float64(j.Total), name, kind)
		gauge(ch, descJobRate, j.Rate, name, kind)
	}
	gauge(ch, descJobsQueued, float64(st.Queued), name)
	if st.Level == string(raid.LevelRaid35) {
		counter(ch, descReadsAround, st.ReadsAround, name)
	}

	front, members := a.ioStats()
	collectIO(ch, front, descOps, descBytes, descErrors, descLatency, name)
	for role, s := range members {
		if s == nil || role >= len(st.Members) {
			continue
		}
		collectIO(ch, s, descMOps, descMBytes, descMErrors, descMLatency, name, strconv.Itoa(role), st.Members[role].Path)
	}
}

func collectIO(ch chan<- prometheus.Metric, s *blockdev.Stats, ops, bytes, errs, lat *prometheus.Desc, labels ...string) {
	io := s.Snapshot()
	with := func(op string) []string { return append(append([]string(nil), labels...), op) }
	counter(ch, ops, io.Reads, with("read")...)
	counter(ch, ops, io.Writes, with("write")...)
	counter(ch, ops, io.Zeroes, with("zero")...)
	counter(ch, ops, io.Flushes, with("flush")...)
	counter(ch, bytes, io.ReadBytes, with("read")...)
	counter(ch, bytes, io.WriteBytes, with("write")...)
	counter(ch, errs, io.Errors, labels...)
	r, w := s.Latency()
	ch <- histogram(lat, r, with("read"))
	ch <- histogram(lat, w, with("write"))
}

// histogram turns a latency snapshot into a Prometheus histogram with
// cumulative buckets.
func histogram(d *prometheus.Desc, h blockdev.Histogram, labels []string) prometheus.Metric {
	buckets := make(map[float64]uint64, len(blockdev.LatencyBounds))
	var cum uint64
	for i, bound := range blockdev.LatencyBounds {
		cum += uint64(h.Counts[i])
		buckets[bound.Seconds()] = cum
	}
	return prometheus.MustNewConstHistogram(d, uint64(h.Total()), h.Sum.Seconds(), buckets, labels...)
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// ioStats returns the counters of the array's foreground IO and of each
// member (nil for a role without a device).
func (a *Array) ioStats() (front *blockdev.Stats, members []*blockdev.Stats) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.fg, append([]*blockdev.Stats(nil), a.stats...)
}
