package admin

import (
	"bufio"
	"fmt"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/raftkit/raftkit"
	fsmexample "github.com/raftkit/raftkit/fsm_example"
	"github.com/raftkit/raftkit/prom"
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
func newMetricsCluster(t *testing.T, m *prom.Metrics) *testCluster {
	t.Helper()
	return newTCPCluster(t, 3, func(c *raftkit.Config) { c.Metrics = m })
}

func TestMetricsExposeRaftBoltAndRaftkitSeries(t *testing.T) {
	m := prom.NewMetrics()
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
