package raftkit

import (
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	fsmexample "github.com/raftkit/raftkit/fsm_example"
)

func TestReadinessReasons(t *testing.T) {
	member := []ServerInfo{{ID: "a"}}
	cases := []struct {
		name string
		st   Status
		ok   bool
	}{
		{"follower", Status{ID: "a", State: "Follower", LeaderID: "b", Servers: member}, true},
		{"leader", Status{ID: "a", State: "Leader", LeaderID: "a", Servers: member}, true},
		{"no leader", Status{ID: "a", State: "Follower", Servers: member}, false},
		{"candidate", Status{ID: "a", State: "Candidate", LeaderID: "b", Servers: member}, false},
		{"not a member", Status{ID: "a", State: "Follower", LeaderID: "b", Servers: []ServerInfo{{ID: "b"}}}, false},
		{"joining", Status{ID: "a", State: "Follower", LeaderID: "b", Servers: member, Joining: true}, false},
		{"shut down", Status{ID: "a", State: "Shutdown", LeaderID: "b", Servers: member}, false},
	}
	for _, tc := range cases {
		err := readiness(tc.st)
		if (err == nil) != tc.ok {
			t.Errorf("%s: %v, want ready=%v", tc.name, err, tc.ok)
		}
		if err != nil && Classify(err) != NotApplied {
			t.Errorf("%s: %v has class %v, want NotApplied", tc.name, err, Classify(err))
		}
	}
}

// A follower restarted after missing writes is not ready (Ready, Status,
// WaitForLeader) until it has applied what the leader had committed: it
// never reports ready with an FSM that lacks acknowledged writes.
func TestRestartedFollowerIsReadyOnlyOnceCaughtUp(t *testing.T) {
	for _, kind := range logStores {
		t.Run(kind.String(), func(t *testing.T) {
			c := newTCPCluster(t, 3, withLogStore(kind))
			l := c.leader()
			write := func(i int) {
				t.Helper()
				if _, err := c.nodes[l].Apply(ctxTimeout(t, 10*time.Second), fsmexample.Set(fmt.Sprintf("k%03d", i), []byte("v"))); err != nil {
					t.Fatal(err)
				}
			}
			for i := 0; i < 80; i++ {
				write(i)
			}
			f := (l + 1) % 3
			c.stop(f)
			for i := 80; i < 120; i++ {
				write(i)
			}
			target := c.nodes[l].Status().CommitIndex
			// The restarted node's FSM is slow, so that replaying and
			// receiving what it missed takes a while.
			kv := fsmexample.New()
			n, err := NewRaftNode(c.config(f), &slowFSM{Store: kv, delay: 3 * time.Millisecond})
			if err != nil {
				t.Fatal(err)
			}
			c.nodes[f], c.fsms[f] = n, kv
			sawNotReady := false
			waitFor(t, 20*time.Second, "the restarted follower to be ready", func() bool {
				st := n.Status()
				if !st.Ready {
					sawNotReady = true
					if err := n.Ready(); err != nil && !errors.Is(err, ErrNotReady) && !errors.Is(err, ErrNotApplied) {
						t.Fatalf("not ready: %v, want an error matching ErrNotReady", err)
					}
					return false
				}
				if st.AppliedIndex < target {
					t.Fatalf("ready with applied index %d, below the %d the leader had committed before the restart", st.AppliedIndex, target)
				}
				return true
			})
			if !sawNotReady {
				t.Fatal("the follower was ready at once, with 120 commands to apply at 3 ms each")
			}
			if _, ok := c.fsms[f].Get("k119"); !ok {
				t.Fatal("ready, but the last acknowledged write is missing")
			}
			if _, err := n.WaitForLeader(ctxTimeout(t, 5*time.Second)); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// slowFSM is a key/value store that takes delay per command.
type slowFSM struct {
	*fsmexample.Store
	delay time.Duration
}

func (f *slowFSM) Apply(l *raft.Log) any {
	time.Sleep(f.delay) // an expensive command, not synchronisation
	return f.Store.Apply(l)
}

func (f *slowFSM) ApplyBatch(logs []*raft.Log) []any {
	time.Sleep(time.Duration(len(logs)) * f.delay)
	return f.Store.ApplyBatch(logs)
}

// A follower removed from the configuration keeps running (hashicorp/raft
// shuts down only a leader that removes itself). Added back without a
// restart, it must not say it is ready before it has applied what its
// leader had committed once the re-add committed: readiness follows
// membership, not only the node's run.
func TestReaddedFollowerIsReadyOnlyOnceCaughtUp(t *testing.T) {
	c := startCluster(t, NewMemNetwork(), []string{"mem0", "mem1", "mem2"}, nil, nil)
	l := c.leader()
	f := (l + 1) % 3
	// The follower gets an FSM that can be slowed down, so that catching
	// up after the re-add takes a while.
	c.stop(f)
	fsm := &throttledFSM{Store: fsmexample.New()}
	n, err := NewRaftNode(c.config(f), fsm)
	if err != nil {
		t.Fatal(err)
	}
	c.nodes[f], c.fsms[f] = n, fsm.Store
	leader := c.nodes[l]
	// Sets are idempotent: one whose outcome is unknown (the two voters
	// left may lose their leader under load) is set again.
	write := func(i int) {
		t.Helper()
		waitFor(t, 20*time.Second, "a write to succeed", func() bool {
			_, err := c.nodes[c.leader()].Apply(ctxTimeout(t, 5*time.Second), fsmexample.Set(fmt.Sprintf("k%03d", i), []byte("v")))
			return err == nil
		})
	}
	for i := 0; i < 50; i++ {
		write(i)
	}
	if _, err := n.WaitForLeader(ctxTimeout(t, 10*time.Second)); err != nil {
		t.Fatal(err)
	}
	// raft sends a removed follower the configuration that removes it only
	// while that entry is not yet committed; on a loaded machine the
	// leader may commit it with the other follower's answer first and
	// stop replicating to this one, which then never hears of it. Such a
	// removal is tried again after adding the node back.
	for attempt := 1; ; attempt++ {
		if err := leader.RemoveServer(ctxTimeout(t, 10*time.Second), n.ID()); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(5 * time.Second)
		for !errors.Is(n.Ready(), ErrRemoved) && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		if errors.Is(n.Ready(), ErrRemoved) {
			break
		}
		if attempt == 3 {
			t.Fatal("the removed follower never said it was removed, in 3 removals")
		}
		t.Logf("removal %d: the follower did not hear of it; adding it back to try again", attempt)
		if err := leader.AddVoter(ctxTimeout(t, 20*time.Second), n.ID(), n.Addr()); err != nil {
			t.Fatal(err)
		}
	}
	if st := n.Status(); st.State == raft.Shutdown.String() {
		t.Fatalf("the removed follower's raft shut down: %+v", st)
	}
	for i := 50; i < 350; i++ {
		write(i)
	}
	fsm.delay.Store(int64(2 * time.Millisecond))
	if err := leader.AddVoter(ctxTimeout(t, 10*time.Second), n.ID(), n.Addr()); err != nil {
		t.Fatal(err)
	}
	target := c.nodes[c.leader()].Status().CommitIndex
	sawNotReady := false
	waitFor(t, 30*time.Second, "the re-added follower to be ready", func() bool {
		// Ready first, then the applied index: a node that was ready
		// at the first call has applied at least as much at the second.
		ready := n.Ready()
		applied := n.Status().AppliedIndex
		if ready != nil {
			sawNotReady = true
			return false
		}
		if applied < target {
			t.Fatalf("re-added follower ready with applied index %d, below the %d its leader had committed at the re-add", applied, target)
		}
		return true
	})
	if !sawNotReady {
		t.Fatal("the re-added follower was ready at once, with 300 commands to apply at 2 ms each")
	}
	if _, ok := fsm.Get("k349"); !ok {
		t.Fatal("ready, but the last write before the re-add is missing")
	}
}

// throttledFSM is a key/value store whose commands take delay each, from
// when delay is set.
type throttledFSM struct {
	*fsmexample.Store
	delay atomic.Int64 // a time.Duration
}

func (f *throttledFSM) Apply(l *raft.Log) any {
	time.Sleep(time.Duration(f.delay.Load())) // an expensive command, not synchronisation
	return f.Store.Apply(l)
}

func (f *throttledFSM) ApplyBatch(logs []*raft.Log) []any {
	time.Sleep(time.Duration(len(logs)) * time.Duration(f.delay.Load()))
	return f.Store.ApplyBatch(logs)
}

// readyState's bookkeeping: a configuration without the node, stored or
// applied, resets readiness; only an applied configuration that lists the
// node again (or the truncation of an unapplied removal) lets it learn a
// new target; a target learned across a reset is dropped.
func TestReadyStateFollowsMembership(t *testing.T) {
	all := func(uint64) bool { return true }
	r := newReadyState()
	want := func(what string, wanted, caughtUp bool) {
		t.Helper()
		if w, _ := r.wanted(); w != wanted {
			t.Fatalf("%s: wanted %v, want %v", what, w, wanted)
		}
		if c := r.caughtUp(all); c != caughtUp {
			t.Fatalf("%s: caughtUp %v, want %v", what, c, caughtUp)
		}
	}
	want("at start", true, false)
	_, epoch := r.wanted()
	r.learn(epoch, 10)
	want("target learned", false, true)
	r.configuration(20, false, false) // the removal, stored
	want("removal stored", false, false)
	r.configuration(25, true, false) // the re-add, stored only
	want("re-add stored", false, false)
	r.configuration(20, false, true) // the removal, applied
	want("removal applied", false, false)
	r.configuration(25, true, true) // the re-add, applied
	want("re-add applied", true, false)
	_, stale := r.wanted()
	r.configuration(30, false, false)
	r.learn(stale, 40) // learned across the reset
	if r.target() != 0 {
		t.Fatalf("target %d learned across a reset", r.target())
	}
	r.truncated(28, 35) // the unapplied removal goes
	want("unapplied removal truncated", true, false)
	_, epoch = r.wanted()
	r.learn(epoch, 50)
	want("new target", false, true)
	r.configuration(60, false, true)
	r.truncated(55, 65) // compaction of an applied removal: still out
	want("applied removal compacted", false, false)
}
