package prom

import (
	"bufio"
	"errors"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"

	gometrics "github.com/hashicorp/go-metrics/compat"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// The metrics of nodes in a cluster, scraped through admin's handler, are
// tested in package admin (TestMetricsExposeRaftBoltAndRaftkitSeries),
// beside the cluster helpers.

// scrape renders g in Prometheus' text format and returns every sample as
// "name{labels}" -> value.
func scrape(t testing.TB, g prometheus.Gatherer) map[string]float64 {
	t.Helper()
	rec := httptest.NewRecorder()
	promhttpStrict(g).ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
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

// A Handler keeps serving the series of healthy collectors when one fails.
func TestHandlerServesWhatCollectsWhenACollectorFails(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := NewMetrics()
	reg.MustRegister(m, failing{})
	m.LeaderChanged("n1")
	rec := httptest.NewRecorder()
	Handler(reg).ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	got := parseMetrics(t, rec.Body.String())
	if rec.Code != 200 || got[`raftkit_leader_changes_total{node_id="n1"}`] != 1 {
		t.Fatalf("HTTP %d, body %q", rec.Code, rec.Body)
	}
}

// failing is a collector whose every collection fails.
type failing struct{}

var failingDesc = prometheus.NewDesc("raftkit_test_failing", "always fails", nil, nil)

func (failing) Describe(ch chan<- *prometheus.Desc) { ch <- failingDesc }
func (failing) Collect(ch chan<- prometheus.Metric) {
	ch <- prometheus.NewInvalidMetric(failingDesc, errFailing)
}

var errFailing = errors.New("collection failed")

// promhttpStrict serves g and fails on any collection error, so that a
// scrape in these tests sees every inconsistency.
func promhttpStrict(g prometheus.Gatherer) http.Handler {
	return promhttp.HandlerFor(g, promhttp.HandlerOpts{ErrorHandling: promhttp.HTTPErrorOnError})
}
