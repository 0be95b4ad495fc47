package main

import (
	"strings"
	"testing"
	"time"
)

// TestBenchSmoke runs a few scenarios for a moment on both kinds of
// cluster: it checks that the program works, not how fast anything is.
func TestBenchSmoke(t *testing.T) {
	if testing.Short() {
		t.Skip("builds clusters over TCP")
	}
	o := options{
		scenarios: map[string]bool{"seq": true, "fwd1": true, "read-leader": true, "startup": true, "handover": true},
		variants: []clusterSpec{
			{kind: "plain", name: "plain raft"},
			{kind: "raftkit", name: "raftkit defaults"},
		},
		duration: 100 * time.Millisecond, warmup: 20 * time.Millisecond, size: 64, rounds: 1,
		failovers: 1, every: 200 * time.Millisecond, loadConns: 2, dir: t.TempDir(),
	}
	tb := newTable(o.variants)
	if err := runAll(o, "bolt", tb); err != nil {
		t.Fatal(err)
	}
	for _, want := range []struct{ sc, metric string }{
		{"seq", "ops/s"}, {"fwd1", "ops/s"}, {"read-leader", "ops/s"}, {"startup", "start"}, {"handover", "leader Close"},
	} {
		r := tb.find(want.sc, want.metric)
		if r == nil {
			t.Fatalf("no %s %s row", want.sc, want.metric)
		}
		if v, ok := r.value("raftkit defaults"); !ok || v <= 0 {
			t.Errorf("%s %s: raftkit figure %v, %v", want.sc, want.metric, v, ok)
		}
	}
	for _, n := range tb.notes {
		if strings.Contains(n, "errors") {
			t.Errorf("load saw errors: %s", n)
		}
	}
}
