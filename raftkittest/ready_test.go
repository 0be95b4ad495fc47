package raftkittest

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/raftkit/raftkit"
	fsmexample "github.com/raftkit/raftkit/fsm_example"
)

// slowStore is a key/value store that takes delay per command.
type slowStore struct {
	*fsmexample.Store
	delay time.Duration
}

func (f *slowStore) Apply(l *raft.Log) any {
	time.Sleep(f.delay) // an expensive command, not synchronisation
	return f.Store.Apply(l)
}

func (f *slowStore) ApplyBatch(logs []*raft.Log) []any {
	time.Sleep(time.Duration(len(logs)) * f.delay)
	return f.Store.ApplyBatch(logs)
}

// A member restarted after missing writes is not ready until it has
// applied what the leader had committed: in a raftkittest cluster as on
// TCP.
func TestRestartedMemberIsReadyOnlyOnceCaughtUp(t *testing.T) {
	var slow atomic.Bool
	newFSM := func() *slowStore {
		s := &slowStore{Store: fsmexample.New()}
		if slow.Load() {
			s.delay = 3 * time.Millisecond
		}
		return s
	}
	c := NewCluster(t, 3, newFSM, WithLogLevel(logLevel()), WithState(func(s *slowStore) any { return s.All() }))
	leader := c.WaitForLeader()
	down := c.Followers()[0]
	c.Crash(down)
	for i := 0; i < 100; i++ {
		mustSet(t, leader, fmt.Sprintf("k%03d", i), "v")
	}
	target := leader.Status().CommitIndex
	slow.Store(true)
	n := c.Restart(down)
	sawNotReady := false
	c.waitFor("the restarted member to be ready", func() bool {
		st := n.Status()
		if !st.Ready {
			sawNotReady = true
			return false
		}
		if st.AppliedIndex < target {
			t.Fatalf("ready with applied index %d, below the %d the leader had committed before the restart", st.AppliedIndex, target)
		}
		return true
	})
	if !sawNotReady {
		t.Fatal("the member was ready at once, with 100 commands to apply at 3 ms each")
	}
	c.AssertConsistent()
}

// throttledStore is a key/value store whose commands take delay each,
// from when delay is set.
type throttledStore struct {
	*fsmexample.Store
	delay atomic.Int64 // a time.Duration
}

func (f *throttledStore) Apply(l *raft.Log) any {
	time.Sleep(time.Duration(f.delay.Load())) // an expensive command, not synchronisation
	return f.Store.Apply(l)
}

func (f *throttledStore) ApplyBatch(logs []*raft.Log) []any {
	time.Sleep(time.Duration(len(logs)) * time.Duration(f.delay.Load()))
	return f.Store.ApplyBatch(logs)
}

// The chaos histories' readiness oracle flags a node that says it is
// ready before it has applied what its leader had committed when it
// restarted or was added back (its latch skipped: the negative control),
// and does not flag raftkit's own nodes in the same scenarios.
// claimReadyEarly makes the oracle sample node id as ready whenever raft's
// latest configuration lists it and it knows a leader, however far behind:
// a node whose catch-up latch is skipped.
func claimReadyEarly(r *readyLog, id string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.ready = func(n *raftkit.RaftNode) error {
		if n.ID() != id {
			return n.Ready()
		}
		st := n.Status()
		for _, s := range st.Servers {
			if s.ID == id && st.LeaderID != "" {
				return nil
			}
		}
		return errors.New("not listed, or no leader")
	}
}

func TestReadinessOracleFlagsANodeReadyTooSoon(t *testing.T) {
	for _, tc := range []struct {
		name      string
		readd     bool
		skipLatch bool
		wantFlags bool
	}{
		{"restart", false, false, false},
		{"restart, latch skipped", false, true, true},
		{"re-add", true, false, false},
		{"re-add, latch skipped", true, true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var slowNew atomic.Bool
			newFSM := func() *throttledStore {
				s := &throttledStore{Store: fsmexample.New()}
				if slowNew.Load() {
					s.delay.Store(int64(3 * time.Millisecond))
				}
				return s
			}
			c := NewCluster(t, 3, newFSM, WithLogLevel(logLevel()), WithState(func(s *throttledStore) any { return s.All() }))
			c.WaitForLeader()
			stop := sampleReadiness(c)
			node := c.Followers()[0]
			if tc.readd {
				if !c.removeLive(node) {
					t.Fatal("the removed follower does not know it was removed")
				}
			} else {
				c.Crash(node)
			}
			for i := 0; i < 200; i++ {
				// Sets are idempotent: one whose outcome is unknown (a
				// two-voter cluster may lose its leader under load) is
				// set again.
				c.waitFor("a write to succeed", func() bool {
					ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
					defer cancel()
					_, err := c.WaitForLeader().Apply(ctx, fsmexample.Set(fmt.Sprintf("k%03d", i), []byte("v")))
					return err == nil
				})
			}
			if tc.readd {
				c.FSM(node).delay.Store(int64(3 * time.Millisecond))
				if tc.skipLatch {
					claimReadyEarly(c.ready, node.ID())
				}
				if !c.readd(node) {
					t.Fatal("the removed follower's raft shut down")
				}
			} else {
				slowNew.Store(true)
				if tc.skipLatch {
					claimReadyEarly(c.ready, node.ID())
				}
				node = c.Restart(node)
			}
			target := c.WaitForLeader().Status().CommitIndex
			c.waitFor(node.ID()+" to be ready and caught up", func() bool {
				return node.Ready() == nil && node.Status().AppliedIndex >= target
			})
			samples := stop()
			flags, first := c.ready.result()
			t.Logf("%d samples, %d flagged; first: %v", samples, flags, first)
			if (flags > 0) != tc.wantFlags {
				t.Fatalf("%d of %d samples flagged (first: %v), want flags: %v", flags, samples, first, tc.wantFlags)
			}
			c.AssertConsistent()
		})
	}
}
