package raftkittest

import (
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/raft"

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
