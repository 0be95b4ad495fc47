package raftkit

import (
	"io"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

// timeFSM records the AppendedAt of every command it applies.
type timeFSM struct{ times []time.Time }

func (f *timeFSM) Apply(l *raft.Log) any {
	f.times = append(f.times, l.AppendedAt)
	return nil
}
func (f *timeFSM) Snapshot() (raft.FSMSnapshot, error) { return nil, nil }
func (f *timeFSM) Restore(rc io.ReadCloser) error      { return rc.Close() }

// The leader's entries carry time.Now (a monotonic reading, the local
// zone), a follower's the decoded wall clock: the FSM gets both in one
// form, wall clock in UTC, equal with == and reflect.DeepEqual.
func TestFSMGetsAppendedAtInOneForm(t *testing.T) {
	leaderTime := time.Now().In(time.FixedZone("somewhere", 3600))
	followerTime := time.Unix(0, leaderTime.UnixNano()) // no monotonic reading, local zone
	for _, at := range []time.Time{leaderTime, followerTime} {
		fsm := &timeFSM{}
		orig := &raft.Log{Index: 1, Term: 1, Type: raft.LogCommand, Data: []byte("x"), AppendedAt: at}
		newTrackedFSM(fsm).ApplyBatch([]*raft.Log{orig})
		got := fsm.times[0]
		if got != got.Round(0) || got.Location() != time.UTC || !got.Equal(at) {
			t.Fatalf("FSM got AppendedAt %v (location %v) for %v, want the same instant in UTC without a monotonic reading", got, got.Location(), at)
		}
		if orig.AppendedAt != at {
			t.Fatal("raft's own entry was changed")
		}
	}
	want := leaderTime.Round(0).UTC()
	if got := followerTime.Round(0).UTC(); got != want {
		t.Fatalf("the same instant differs between leader and follower: %v != %v", got, want)
	}
}
