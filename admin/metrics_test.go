package admin

import (
	"bufio"
	"fmt"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	gometrics "github.com/hashicorp/go-metrics/compat"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/raftkit/raftkit"
	fsmexample "github.com/raftkit/raftkit/fsm_example"
)

// scrape renders g in Prometheus' text format and returns every sample as
// "name{labels}" -> value.
func scrape(t testing.TB, g prometheus.Gatherer) map[string]float64 {
	t.Helper()
	rec := httptest.NewRecorder()
	promhttp.HandlerFor(g, promhttp.HandlerOpts{ErrorHandling: promhttp.HTTPErrorOnError}).ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if rec.Code != 200 {
		t.Fatalf("scrape: HTTP %d: %s", rec.Code, rec.Body)
	}
	return parseMetrics(t, rec.Body.String())
}

func parseMetrics(t testing.TB, text string) map[string]float64 {
	t.Helper()
	out := map[string]float64{}
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("metric line %q: %v", line, err)
		}
		out[line[:i]] = v
	}
	return out
}

// newMetricsCluster is a 3-node TCP cluster whose nodes report to m.
func newMetricsCluster(t *testing.T, m *Metrics) *testCluster {
	t.Helper()
	return newTCPCluster(t, 3, func(c *raftkit.Config) { c.Metrics = m })
}

func TestMetricsExposeRaftBoltAndRaftkitSeries(t *testing.T) {
	m := NewMetrics()
	uninstall, err := m.InstallGlobal()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(uninstall)
	reg := prometheus.NewRegistry()
	reg.MustRegister(m)

	c := newMetricsCluster(t, m)
	l := c.leader()
	f := (l + 1) % 3
	leader, follower := c.nodes[l], c.nodes[f]
	ctx := ctxTimeout(t, 10*time.Second)
	if _, err := leader.Apply(ctx, fsmexample.Set("a", []byte("1"))); err != nil {
		t.Fatal(err)
	}
	if _, err := follower.Apply(ctx, fsmexample.Set("b", []byte("2"))); err != nil {
		t.Fatal(err)
	}
	if _, err := follower.Apply(ctx, []byte{0xff}); err == nil {
		t.Fatal("a bad command was accepted")
	}
	if err := follower.LinearizableRead(ctx); err != nil {
		t.Fatal(err)
	}

	lid, fid := leader.ID(), follower.ID()
	got := scrape(t, reg)
	want := map[string]float64{
		fmt.Sprintf(`raftkit_forwarded_writes_total{node_id="%s",outcome="ok"}`, fid):                        1,
		fmt.Sprintf(`raftkit_forwarded_writes_total{node_id="%s",outcome="error"}`, fid):                     1,
		fmt.Sprintf(`raftkit_apply_duration_seconds_count{node_id="%s",outcome="ok",path="local"}`, lid):     1,
		fmt.Sprintf(`raftkit_apply_duration_seconds_count{node_id="%s",outcome="ok",path="forwarded"}`, fid): 1,
		fmt.Sprintf(`raftkit_fsm_apply_errors_total{node_id="%s"}`, lid):                                     1,
		fmt.Sprintf(`raftkit_read_barrier_duration_seconds_count{node_id="%s",outcome="ok"}`, fid):           1,
		fmt.Sprintf(`raftkit_is_leader{node_id="%s"}`, lid):                                                  1,
		fmt.Sprintf(`raftkit_is_leader{node_id="%s"}`, fid):                                                  0,
		fmt.Sprintf(`raftkit_term{node_id="%s"}`, lid):                                                       float64(leader.Status().Term),
		fmt.Sprintf(`raftkit_protocol{node_id="%s"}`, fid):                                                   float64(raftkit.ProtocolVersion),
		fmt.Sprintf(`raftkit_peer_protocol{node_id="%s",peer="%s"}`, fid, leader.Addr()):                     float64(raftkit.ProtocolVersion),
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %v, want %v", k, got[k], v)
		}
	}
	for _, n := range c.nodes {
		if k := fmt.Sprintf(`raftkit_leader_changes_total{node_id="%s"}`, n.ID()); got[k] < 1 {
			t.Errorf("%s = %v, want >= 1", k, got[k])
		}
	}
	// raft's and raft-boltdb's own metrics, through go-metrics' global
	// sink; timers as summaries with quantiles. scrape fails on any
	// inconsistent series, so this also shows that raft's label sets suit
	// go-metrics' Prometheus sink.
	for _, k := range []string{"raft_apply", "raft_commitTime_count", "raft_boltdb_storeLogs_count"} {
		if got[k] < 1 {
			t.Errorf("%s = %v, want >= 1 (raft's go-metrics did not arrive)", k, got[k])
		}
	}
	for _, q := range []string{"0.5", "0.9", "0.99"} {
		if k := fmt.Sprintf(`raft_commitTime{quantile="%s"}`, q); got[k] <= 0 {
			t.Errorf("%s = %v, want a positive duration", k, got[k])
		}
	}
	if t.Failed() {
		t.Logf("scraped: %v", got)
	}

	// A closed node's own gauges disappear.
	c.stop(f)
	if _, ok := scrape(t, reg)[fmt.Sprintf(`raftkit_is_leader{node_id="%s"}`, fid)]; ok {
		t.Fatal("a closed node still reports gauges")
	}
}

func TestGoMetricsSinkExportsCountersGaugesAndQuantiles(t *testing.T) {
	m := NewMetrics()
	reg := prometheus.NewRegistry()
	reg.MustRegister(m)
	sink := m.GoMetricsSink()
	sink.IncrCounter([]string{"x", "hits"}, 2)
	sink.IncrCounter([]string{"x", "hits"}, 3)
	sink.SetGauge([]string{"x", "level"}, 7)
	sink.SetGauge([]string{"x", "level"}, 4)
	for _, v := range []float32{10, 20, 30} {
		sink.AddSample([]string{"x", "lat-ms"}, v)
	}
	sink.SetGaugeWithLabels([]string{"x", "peer"}, 1, []gometrics.Label{{Name: "peer_id", Value: "n2"}})
	got := scrape(t, reg)
	want := map[string]float64{
		"x_hits":                    5,
		"x_level":                   4,
		"x_lat_ms_count":            3,
		"x_lat_ms_sum":              60,
		`x_lat_ms{quantile="0.5"}`:  20,
		`x_lat_ms{quantile="0.99"}`: 30,
		`x_peer{peer_id="n2"}`:      1,
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %v, want %v (all: %v)", k, got[k], v, got)
		}
	}
}

func TestInstallGlobalRoutesGoMetricsUntilUninstalled(t *testing.T) {
	m := NewMetrics()
	reg := prometheus.NewRegistry()
	reg.MustRegister(m)
	uninstall, err := m.InstallGlobal()
	if err != nil {
		t.Fatal(err)
	}
	gometrics.IncrCounter([]string{"raftkit_test", "probe"}, 1)
	gometrics.SetGauge([]string{"raftkit_test", "gauge"}, 3) // no hostname prefix
	uninstall()
	gometrics.IncrCounter([]string{"raftkit_test", "probe"}, 1)
	got := scrape(t, reg)
	if got["raftkit_test_probe"] != 1 || got["raftkit_test_gauge"] != 3 {
		t.Fatalf("probe = %v (want 1: one before uninstall), gauge = %v (want 3)", got["raftkit_test_probe"], got["raftkit_test_gauge"])
	}
}
