package raftkit

import (
	"errors"
	"fmt"
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
