package main

import (
	"bytes"
	"testing"
	"time"
)

// TestHostileShort runs every attack briefly, at a tenth of its size, on
// fresh kvserver processes, and checks the targets that do not depend on
// how busy the machine is: the term is never taken from the attacker and a
// leader is there afterwards, resident memory grows at most 64 MiB, every
// connection a member opened during the attack was answered, and writes
// went on during it. The full run, with the throughput targets, is
// cd tools && go run ./cmd/raftkit-hostile -check.
func TestHostileShort(t *testing.T) {
	o := options{
		before: 500 * time.Millisecond, during: 2 * time.Second, after: 500 * time.Millisecond,
		scale: 0.1, clusters: []string{"plain", "mtls"}, maxCommand: 1 << 20, dir: t.TempDir(),
		only: map[string]bool{"term-overflow": true, "claim-64MiB": true, "frames-64MiB": true, "raft-tag-silent": true, "silent": true, "tls-stall": true, "large-commands": true, "slow-http-bodies": true},
	}
	var out bytes.Buffer
	results, err := run(o, &out)
	t.Log("\n" + out.String())
	if err != nil {
		t.Fatal(err)
	}
	if len(results) != 13 {
		t.Fatalf("%d attacks ran, want 13 (7 plain, 6 mTLS)", len(results))
	}
	for _, r := range results {
		if !r.leaderAfter || r.finalTerm >= 1<<63 {
			t.Errorf("%s on %s: leader after %v, term %d", r.attack, r.cluster, r.leaderAfter, r.finalTerm)
		}
		if r.rssGrowth > 64<<20 {
			t.Errorf("%s on %s: resident memory grew %d MiB", r.attack, r.cluster, r.rssGrowth>>20)
		}
		if r.legitTotal == 0 || r.legitOK < r.legitTotal {
			t.Errorf("%s on %s: %d of %d member connections answered", r.attack, r.cluster, r.legitOK, r.legitTotal)
		}
		if r.during <= 0 {
			t.Errorf("%s on %s: no write succeeded during the attack", r.attack, r.cluster)
		}
	}
}
