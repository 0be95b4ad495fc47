package main

import (
	"strings"
	"testing"
	"time"

	"github.com/raftkit/raftkit"
)

// TestBenchSmoke runs a few scenarios for a moment on both kinds of
// cluster: it checks that the program works, not how fast anything is.
func TestBenchSmoke(t *testing.T) {
	if testing.Short() {
		t.Skip("builds clusters over TCP")
	}
	o := options{
		scenarios:  map[string]bool{"seq": true, "fwd1": true, "read-leader": true, "startup": true, "memory": true, "large": true, "handover": true},
		largeSizes: []int{64 << 10}, largeBytes: 256 << 10,
		variants: []clusterSpec{
			{kind: "plain", name: "plain raft"},
			// raft's own timeouts: on a busy machine (and under -race)
			// TimingLAN's 200 ms leases were lost often enough to leave a
			// 100 ms scenario without one successful call.
			{kind: "raftkit", name: "raftkit defaults", timing: raftkit.TimingDefault},
		},
		duration: 100 * time.Millisecond, warmup: 20 * time.Millisecond, size: 64, rounds: 1,
		failovers: 1, every: 200 * time.Millisecond, loadConns: 2, dir: t.TempDir(),
	}
	tb := newTable("bolt", o.variants)
	if err := runAll(o, "bolt", tb); err != nil {
		t.Fatal(err)
	}
	for _, want := range []struct{ sc, metric string }{
		{"seq", "ops/s"}, {"fwd1", "ops/s"}, {"read-leader", "ops/s"}, {"startup", "start"}, {"handover", "leader Close"},
		{"memory", "goroutines per node"}, {"large", "64 KiB: MB/s"}, {"large", "64 KiB: disk write+fsync MB/s"},
	} {
		r := tb.find(want.sc, want.metric)
		if r == nil {
			t.Fatalf("no %s %s row", want.sc, want.metric)
		}
		if v, ok := r.value("raftkit defaults"); !ok || v <= 0 {
			t.Errorf("%s %s: raftkit figure %v, %v", want.sc, want.metric, v, ok)
		}
	}
	// Heap and RSS differences may be anything, even below zero, in a
	// short run; the rows must be there.
	for _, metric := range []string{"Go heap per node", "anonymous RSS per node"} {
		if tb.find("memory", metric) == nil {
			t.Errorf("no memory %s row", metric)
		}
	}
	for _, n := range tb.notes {
		if strings.Contains(n, "errors") {
			t.Errorf("load saw errors: %s", n)
		}
	}
}

// TestRoundRatios checks the round-by-round ratios printed next to a
// verdict on medians.
func TestRoundRatios(t *testing.T) {
	tb := newTable("bolt", nil)
	for _, v := range []struct {
		sc, variant string
		ops         float64
	}{
		{"c64", "raftkit", 100}, {"fwd64", "raftkit", 80},
		{"c64", "raftkit", 200}, {"fwd64", "raftkit", 190},
		{"c64", "raftkit", 50}, {"fwd64", "raftkit", 35},
	} {
		tb.addNum(v.sc, "ops/s", v.variant, v.ops, higherBetter)
	}
	got := tb.roundRatios("fwd64", "raftkit", "c64", "raftkit")
	want := []float64{0.8, 0.95, 0.7}
	if len(got) != len(want) {
		t.Fatalf("ratios %v, want %v", got, want)
	}
	for i := range want {
		if d := got[i] - want[i]; d > 1e-9 || d < -1e-9 {
			t.Fatalf("ratios %v, want %v", got, want)
		}
	}
	if rs := tb.roundRatios("fwd64", "raftkit", "c256", "raftkit"); rs != nil {
		t.Errorf("ratios against a scenario not measured: %v, want none", rs)
	}
	tb.addNum("c256", "ops/s", "raftkit", 10, higherBetter)
	if rs := tb.roundRatios("fwd64", "raftkit", "c256", "raftkit"); rs != nil {
		t.Errorf("ratios over unequal rounds: %v, want none", rs)
	}
}
