// Package prom exports raftkit's and hashicorp/raft's metrics to
// Prometheus: Metrics is a raftkit.MetricsSink (Config.Metrics) and a
// prometheus.Collector, and Handler serves a registry in Prometheus' text
// format, for example as admin.Options.Metrics. It is the only raftkit
// package that imports Prometheus' client library: an application that
// uses raftkit and raftkit/admin without it compiles no Prometheus.
package prom

import (
	"fmt"
	"net/http"
	"sync"
	"time"

	gometrics "github.com/hashicorp/go-metrics/compat"
	gmprometheus "github.com/hashicorp/go-metrics/compat/prometheus"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/raftkit/raftkit"
)

// Metrics gathers a process's raft metrics for Prometheus. It is a
// prometheus.Collector: register it with the application's own registry
// (prometheus.NewRegistry, or the default one if the application uses
// that); raftkit never registers anything on its own. One Metrics may serve
// any number of nodes.
//
// It carries two kinds of metrics:
//
//   - raftkit's own, per node (label node_id), for every node whose
//     Config.Metrics is this Metrics: raftkit_apply_duration_seconds,
//     raftkit_forwarded_writes_total, raftkit_read_barrier_duration_seconds,
//     raftkit_leader_changes_total, raftkit_fsm_apply_errors_total, and
//     gauges read at scrape time (raftkit_term, raftkit_commit_index,
//     raftkit_applied_index, raftkit_last_log_index, raftkit_is_leader,
//     raftkit_last_contact_seconds). These involve no global state.
//
//   - hashicorp/raft's and raft-boltdb's own metrics (raft_apply,
//     raft_commitTime, raft_boltdb_storeLogs, ...). Those libraries emit
//     them only to go-metrics' process-wide global sink, through
//     github.com/hashicorp/go-metrics/compat; they reach a Metrics only
//     after InstallGlobal. They are not labelled by node: with several
//     nodes in one process they add up.
//
// raft's series go through go-metrics' own Prometheus sink (package
// github.com/hashicorp/go-metrics/compat/prometheus): go-metrics counters
// become Prometheus counters and gauges become gauges, both named after the
// key ("raft.apply" is raft_apply); samples (timers, in go-metrics'
// milliseconds) become summaries with the 0.5, 0.9 and 0.99 quantiles over
// the last 10 seconds, plus _sum and _count. Series never expire.
type Metrics struct {
	applyDuration *prometheus.HistogramVec
	readBarrier   *prometheus.HistogramVec
	forwarded     *prometheus.CounterVec
	leaderChanges *prometheus.CounterVec
	fsmErrors     *prometheus.CounterVec

	// sink receives go-metrics' series (raft's own) once installed.
	sink *gmprometheus.PrometheusSink

	mu    sync.Mutex
	nodes map[*raftkit.RaftNode]struct{}
}

var latencyBuckets = []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}

// NewMetrics returns an empty Metrics. Register it with a
// prometheus.Registerer, and pass it to nodes in Config.Metrics.
func NewMetrics() *Metrics {
	node := []string{"node_id"}
	return &Metrics{
		applyDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "raftkit_apply_duration_seconds",
			Help:    "Time RaftNode.Apply took, by path (local on the leader, forwarded from a follower) and outcome (ok, error; FSM errors count as errors).",
			Buckets: latencyBuckets,
		}, []string{"node_id", "path", "outcome"}),
		readBarrier: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "raftkit_read_barrier_duration_seconds",
			Help:    "Time RaftNode.LinearizableRead took, by outcome (ok, error).",
			Buckets: latencyBuckets,
		}, []string{"node_id", "outcome"}),
		forwarded: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "raftkit_forwarded_writes_total",
			Help: "Writes this node forwarded to the leader, by outcome (ok, error).",
		}, []string{"node_id", "outcome"}),
		leaderChanges: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "raftkit_leader_changes_total",
			Help: "Times this node learned of a new leader (including the first one it saw).",
		}, node),
		fsmErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "raftkit_fsm_apply_errors_total",
			Help: "Commands applied through this node as leader whose FSM response was an error.",
		}, node),
		nodes: map[*raftkit.RaftNode]struct{}{},
		sink:  newGoMetricsSink(),
	}
}

// newGoMetricsSink returns go-metrics' Prometheus sink for raft's series.
// The sink registers itself with a registry of its own, used for nothing
// else: the application registers the Metrics, whose Collect includes the
// sink's series.
func newGoMetricsSink() *gmprometheus.PrometheusSink {
	sink, err := gmprometheus.NewPrometheusSinkFrom(gmprometheus.PrometheusOpts{
		Registerer: prometheus.NewRegistry(),
		Name:       "raftkit_gometrics_sink",
		Expiration: 0, // rare counters (elections) must not vanish between events
	})
	if err != nil {
		// Registering with a fresh, empty registry cannot fail.
		panic(fmt.Sprintf("raftkit prom: go-metrics Prometheus sink: %v", err))
	}
	return sink
}

// Describe sends nothing: the set of go-metrics series is only known as
// raft emits them, so Metrics is an unchecked collector.
func (m *Metrics) Describe(chan<- *prometheus.Desc) {}

// Collect sends every metric's current value; the registry calls it on
// each scrape.
func (m *Metrics) Collect(ch chan<- prometheus.Metric) {
	m.applyDuration.Collect(ch)
	m.readBarrier.Collect(ch)
	m.forwarded.Collect(ch)
	m.leaderChanges.Collect(ch)
	m.fsmErrors.Collect(ch)

	m.mu.Lock()
	nodes := make([]*raftkit.RaftNode, 0, len(m.nodes))
	for n := range m.nodes {
		nodes = append(nodes, n)
	}
	m.mu.Unlock()

	for _, n := range nodes {
		m.collectNode(ch, n)
	}
	m.sink.Collect(ch)
}

var nodeGauges = map[string]string{
	"raftkit_term":                 "The node's current raft term.",
	"raftkit_commit_index":         "The last log index the node knows to be committed.",
	"raftkit_applied_index":        "The last log index applied to the node's FSM.",
	"raftkit_last_log_index":       "The last index in the node's log.",
	"raftkit_is_leader":            "1 while the node is the leader, else 0.",
	"raftkit_last_contact_seconds": "Seconds since a follower last heard from the leader; 0 on the leader, -1 if never.",
	"raftkit_ready":                "1 while the node is ready (raftkit.RaftNode.Ready), else 0.",
	"raftkit_protocol":             "The node protocol the node speaks (raftkit.ProtocolVersion).",
}

// peerProtocol is the protocol each peer speaks, as a node learned it.
var peerProtocol = prometheus.NewDesc("raftkit_peer_protocol",
	"The node protocol a peer speaks, as the node learned it on the node port; -1 while the two refuse each other as incompatible.",
	[]string{"node_id", "peer"}, nil)

func (m *Metrics) collectNode(ch chan<- prometheus.Metric, n *raftkit.RaftNode) {
	st := n.Status()
	contact := -1.0
	switch {
	case st.State == "Leader":
		contact = 0
	case !st.LastContact.IsZero():
		contact = time.Since(st.LastContact).Seconds()
	}
	leader := 0.0
	if st.State == "Leader" {
		leader = 1
	}
	values := map[string]float64{
		"raftkit_term":                 float64(st.Term),
		"raftkit_commit_index":         float64(st.CommitIndex),
		"raftkit_applied_index":        float64(st.AppliedIndex),
		"raftkit_last_log_index":       float64(st.LastLogIndex),
		"raftkit_is_leader":            leader,
		"raftkit_last_contact_seconds": contact,
		"raftkit_ready":                0,
		"raftkit_protocol":             float64(st.Protocol),
	}
	if st.Ready {
		values["raftkit_ready"] = 1
	}
	for name, help := range nodeGauges {
		desc := prometheus.NewDesc(name, help, []string{"node_id"}, nil)
		ch <- prometheus.MustNewConstMetric(desc, prometheus.GaugeValue, values[name], st.ID)
	}
	for _, p := range st.Peers {
		v := float64(p.Protocol)
		if p.Refused != "" {
			v = -1
		}
		ch <- prometheus.MustNewConstMetric(peerProtocol, prometheus.GaugeValue, v, st.ID, p.Addr)
	}
}

var _ raftkit.MetricsSink = (*Metrics)(nil)

// AddNode makes n's own metrics part of m until RemoveNode; a node calls
// it when it starts (Config.Metrics).
func (m *Metrics) AddNode(n *raftkit.RaftNode) {
	m.mu.Lock()
	m.nodes[n] = struct{}{}
	m.mu.Unlock()
}

// RemoveNode ends AddNode; a node calls it when it closes.
func (m *Metrics) RemoveNode(n *raftkit.RaftNode) {
	m.mu.Lock()
	delete(m.nodes, n)
	m.mu.Unlock()
}

// outcome is the outcome label: "ok" or "error" (FSM errors included;
// raftkit_fsm_apply_errors_total counts those on the leader).
func outcome(err error) string {
	if err == nil {
		return "ok"
	}
	return "error"
}

// Applied records one Apply on node id; path is "local" or "forwarded".
func (m *Metrics) Applied(id, path string, d time.Duration, err error) {
	o := outcome(err)
	m.applyDuration.WithLabelValues(id, path, o).Observe(d.Seconds())
	if path == "forwarded" {
		m.forwarded.WithLabelValues(id, o).Inc()
	}
}

// ReadBarrier records one LinearizableRead on node id.
func (m *Metrics) ReadBarrier(id string, d time.Duration, err error) {
	m.readBarrier.WithLabelValues(id, outcome(err)).Observe(d.Seconds())
}

// LeaderChanged records that node id learned of a new leader.
func (m *Metrics) LeaderChanged(id string) { m.leaderChanges.WithLabelValues(id).Inc() }

// FSMError records an FSM error on node id, as leader.
func (m *Metrics) FSMError(id string) { m.fsmErrors.WithLabelValues(id).Inc() }

// InstallGlobal makes m's go-metrics sink (GoMetricsSink) go-metrics'
// process-wide sink, so that the metrics hashicorp/raft and raft-boltdb
// emit reach m. This is the one piece of global state raftkit touches, and
// only when asked: those libraries emit nowhere else. It goes through
// github.com/hashicorp/go-metrics/compat, the package raft v1.7.3 uses, so
// it captures raft's metrics whether or not the binary is built with
// -tags hashicorpmetrics.
//
// InstallGlobal replaces any sink installed before (to feed several, build
// a compat.FanoutSink with GoMetricsSink as one of them and install that
// yourself). The returned uninstall function replaces it with a sink that
// discards everything; call it when the process stops exporting, or at the
// end of a test. Hostname prefixes and runtime metrics are off.
func (m *Metrics) InstallGlobal() (uninstall func(), err error) {
	if _, err := gometrics.NewGlobal(globalMetricsConfig(), m.sink); err != nil {
		return nil, fmt.Errorf("raftkit: install go-metrics sink: %w", err)
	}
	return func() { _, _ = gometrics.NewGlobal(globalMetricsConfig(), &gometrics.BlackholeSink{}) }, nil
}

// GoMetricsSink returns the go-metrics sink whose series m exports: go-metrics'
// own Prometheus sink. InstallGlobal installs it; use it directly to put it
// into a compat.FanoutSink with sinks of your own.
func (m *Metrics) GoMetricsSink() gometrics.MetricSink { return m.sink }

func globalMetricsConfig() *gometrics.Config {
	c := gometrics.DefaultConfig("")
	c.EnableHostname = false
	c.EnableHostnameLabel = false
	c.EnableRuntimeMetrics = false // would start a goroutine that never stops
	return c
}

var _ prometheus.Collector = (*Metrics)(nil)

// Handler serves g in Prometheus' text format: what an application mounts
// on GET /metrics, or passes as admin.Options.Metrics. A collector that
// fails leaves its series out; the rest are still served.
func Handler(g prometheus.Gatherer) http.Handler {
	return promhttp.HandlerFor(g, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError})
}
