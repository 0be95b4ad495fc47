package port

import (
	"math"
	"testing"

	"github.com/hashicorp/raft"
)

func TestTermGuardChecks(t *testing.T) {
	g := &termGuard{}
	g.term.Store(100)
	entries := func(terms ...uint64) []*raft.Log {
		var out []*raft.Log
		for _, term := range terms {
			out = append(out, &raft.Log{Term: term})
		}
		return out
	}
	for _, tc := range []struct {
		name string
		cmd  any
		ok   bool
	}{
		{"vote next term", &raft.RequestVoteRequest{Term: 101, LastLogTerm: 100}, true},
		{"vote old term", &raft.RequestVoteRequest{Term: 3, LastLogTerm: 3}, true},
		{"vote 2^32 ahead", &raft.RequestVoteRequest{Term: 100 + 1<<32}, true},
		{"vote past 2^32 ahead", &raft.RequestVoteRequest{Term: 101 + 1<<32}, false},
		{"vote max", &raft.RequestVoteRequest{Term: math.MaxUint64}, false},
		{"vote 2^63", &raft.RequestVoteRequest{Term: 1 << 63}, false},
		{"vote log term above term", &raft.RequestVoteRequest{Term: 101, LastLogTerm: 102}, false},
		{"pre-vote max", &raft.RequestPreVoteRequest{Term: math.MaxUint64}, false},
		{"pre-vote next", &raft.RequestPreVoteRequest{Term: 101, LastLogTerm: 99}, true},
		{"append heartbeat", &raft.AppendEntriesRequest{Term: 100}, true},
		{"append max", &raft.AppendEntriesRequest{Term: math.MaxUint64}, false},
		{"append entries", &raft.AppendEntriesRequest{Term: 100, PrevLogTerm: 99, Entries: entries(99, 100)}, true},
		{"append entry above term", &raft.AppendEntriesRequest{Term: 100, Entries: entries(100, math.MaxUint64)}, false},
		{"append prev above term", &raft.AppendEntriesRequest{Term: 100, PrevLogTerm: 101}, false},
		{"snapshot max", &raft.InstallSnapshotRequest{Term: math.MaxUint64}, false},
		{"snapshot log above term", &raft.InstallSnapshotRequest{Term: 100, LastLogTerm: 200}, false},
		{"snapshot", &raft.InstallSnapshotRequest{Term: 100, LastLogTerm: 90}, true},
		{"timeout now", &raft.TimeoutNowRequest{}, true},
	} {
		err := g.check(tc.cmd)
		if (err == nil) != tc.ok {
			t.Errorf("%s: check = %v, want ok=%v", tc.name, err, tc.ok)
		}
	}
}
