package raftkittest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"

	"github.com/raftkit/raftkit"
	fsmexample "github.com/raftkit/raftkit/fsm_example"
)

// kvState is the WithState view of fsmexample's store.
func kvState(s *fsmexample.Store) any { return s.All() }

func newKVCluster(t testing.TB, n int, opts ...Option) *Cluster[*fsmexample.Store] {
	opts = append([]Option{WithState(kvState), WithLogLevel(logLevel())}, opts...)
	return NewCluster(t, n, fsmexample.New, opts...)
}

// logLevel keeps raft's lines for -v runs only: tb.Log under the race
// detector is not free.
func logLevel() hclog.Level {
	if testing.Verbose() {
		return hclog.Info
	}
	return hclog.Off
}

func ctxFor(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func mustSet(t testing.TB, n *raftkit.RaftNode, key, value string) {
	t.Helper()
	if _, err := n.Apply(ctxFor(t, 10*time.Second), fsmexample.Set(key, []byte(value))); err != nil {
		t.Fatalf("set %s on %s: %v", key, n.ID(), err)
	}
}

func TestClusterElectsLeaderAndReplicatesFromAnyNode(t *testing.T) {
	c := newKVCluster(t, 3)
	leader := c.WaitForLeader()
	if got := len(c.Followers()); got != 2 {
		t.Fatalf("%d followers, want 2", got)
	}
	for i, n := range c.Nodes() {
		mustSet(t, n, fmt.Sprintf("k%d", i), "v")
	}
	c.AssertConsistent()
	if got := c.FSM(leader).Len(); got != 3 {
		t.Fatalf("leader has %d keys, want 3", got)
	}
}

func TestCrashedLeaderIsReplacedAndRestartKeepsItsState(t *testing.T) {
	c := newKVCluster(t, 3)
	old := c.WaitForLeader()
	mustSet(t, old, "before", "1")
	c.Crash(old)
	if c.Node(old.ID()) != nil {
		t.Fatal("crashed node is still listed as running")
	}
	next := c.WaitForLeader()
	if next.ID() == old.ID() {
		t.Fatal("crashed node still leads")
	}
	mustSet(t, next, "during", "2")
	back := c.Restart(old)
	if back == old || back.ID() != old.ID() {
		t.Fatalf("Restart returned %v, want a new node with ID %s", back, old.ID())
	}
	c.AssertConsistent()
	for _, k := range []string{"before", "during"} {
		if _, ok := c.FSM(back).Get(k); !ok {
			t.Fatalf("restarted node lacks %q", k)
		}
	}
}

func TestCrashHandsNothingOver(t *testing.T) {
	// With 2s election timeouts, a leader that Close()d would hand over
	// within a few heartbeats; a crashed one leaves the followers without
	// a leader until they time out.
	slow := WithConfig(func(cfg *raftkit.Config) {
		cfg.RaftConfig = func(rc *raft.Config) {
			rc.HeartbeatTimeout, rc.ElectionTimeout, rc.LeaderLeaseTimeout = 2*time.Second, 2*time.Second, time.Second
		}
	})
	c := newKVCluster(t, 3, slow)
	old := c.WaitForLeader()
	c.Crash(old)
	crashed := time.Now()
	c.WaitForLeader()
	if took := time.Since(crashed); took < time.Second {
		t.Fatalf("a new leader came %s after the crash: leadership was handed over", took)
	}
}

func TestPartitionedMinorityCannotWriteAndMajorityCan(t *testing.T) {
	c := newKVCluster(t, 5)
	leader := c.WaitForLeader()
	var others []*raftkit.RaftNode
	for _, n := range c.Nodes() {
		if n != leader {
			others = append(others, n)
		}
	}
	minority := []*raftkit.RaftNode{leader, others[0]}
	majority := others[1:]
	c.Partition(minority, majority)
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	_, err := leader.Apply(ctx, fsmexample.Set("lost", []byte("x")))
	if err == nil {
		t.Fatal("the old leader, now in the minority, acknowledged a write")
	}
	if !errors.Is(err, raftkit.ErrUnknownOutcome) && !errors.Is(err, raft.ErrNotLeader) && !errors.Is(err, raftkit.ErrNoLeader) {
		t.Fatalf("minority write: %v", err)
	}
	var newLeader *raftkit.RaftNode
	waitUntil(t, 20*time.Second, "a leader in the majority", func() bool {
		for _, n := range majority {
			if n.IsLeader() {
				newLeader = n
				return true
			}
		}
		return false
	})
	mustSet(t, newLeader, "kept", "y")
	c.Heal()
	c.AssertConsistent()
	if _, ok := c.FSM(leader).Get("kept"); !ok {
		t.Fatal("old leader did not catch up after Heal")
	}
}

func TestIsolatedNodeCatchesUpAfterHeal(t *testing.T) {
	c := newKVCluster(t, 3)
	leader := c.WaitForLeader()
	f := c.Followers()[0]
	c.Isolate(f)
	for i := 0; i < 20; i++ {
		mustSet(t, leader, fmt.Sprintf("k%d", i), "v")
	}
	if c.FSM(f).Len() != 0 {
		t.Fatal("isolated follower received writes")
	}
	c.Heal()
	c.AssertConsistent()
}

func TestWipedNodeRejoinsAsNewMember(t *testing.T) {
	c := newKVCluster(t, 3)
	leader := c.WaitForLeader()
	mustSet(t, leader, "a", "1")
	victim := c.Followers()[0]
	c.Wipe(victim)
	if srv := voters(t, c.WaitForLeader()); srv[victim.ID()] {
		t.Fatalf("wiped %s is still a voter: %v", victim.ID(), srv)
	}
	back := c.Restart(victim)
	c.AssertConsistent()
	if v, ok := c.FSM(back).Get("a"); !ok || string(v) != "1" {
		t.Fatal("wiped node did not catch up")
	}
	if srv := voters(t, c.WaitForLeader()); !srv[victim.ID()] {
		t.Fatalf("wiped %s did not rejoin as a voter: %v", victim.ID(), srv)
	}
}

func voters(t testing.TB, n *raftkit.RaftNode) map[string]bool {
	out := map[string]bool{}
	for _, s := range n.Status().Servers {
		if s.Voter {
			out[s.ID] = true
		}
	}
	return out
}

func TestAddAndRemoveNodes(t *testing.T) {
	c := newKVCluster(t, 3)
	leader := c.WaitForLeader()
	mustSet(t, leader, "a", "1")
	added := c.AddNode()
	if added.ID() != "node3" {
		t.Fatalf("added node is %s, want node3", added.ID())
	}
	c.AssertConsistent()
	if _, ok := c.FSM(added).Get("a"); !ok {
		t.Fatal("added node did not catch up")
	}
	c.RemoveNode(c.WaitForLeader())
	l := c.WaitForLeader()
	if got := len(voters(t, l)); got != 3 {
		t.Fatalf("%d voters after add and remove, want 3", got)
	}
	mustSet(t, l, "b", "2")
	c.AssertConsistent()
}

// fakeTB records Fatalf instead of ending the test, so that tests can check
// that the cluster's assertions fail when they should. Fatalf ends the
// goroutine that called it, as testing's does.
type fakeTB struct {
	testing.TB
	mu    sync.Mutex
	fatal string
}

func (f *fakeTB) Helper() {}
func (f *fakeTB) Fatalf(format string, args ...any) {
	f.mu.Lock()
	f.fatal = fmt.Sprintf(format, args...)
	f.mu.Unlock()
	runtime.Goexit()
}

func (f *fakeTB) failure() string { f.mu.Lock(); defer f.mu.Unlock(); return f.fatal }

// runFake runs fn with a fakeTB in its own goroutine and returns the
// Fatalf message, if any.
func runFake(t *testing.T, fn func(tb testing.TB)) string {
	fake := &fakeTB{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		fn(fake)
	}()
	<-done
	return fake.failure()
}

// forgetful is an FSM with a bug: the instance built first drops writes.
type forgetful struct {
	*fsmexample.Store
	drop bool
}

func (f *forgetful) Apply(l *raft.Log) any {
	if f.drop {
		return nil
	}
	return f.Store.Apply(l)
}

// ApplyBatch hides the store's: raft prefers it to Apply.
func (f *forgetful) ApplyBatch(logs []*raft.Log) []any {
	if f.drop {
		return make([]any, len(logs))
	}
	return f.Store.ApplyBatch(logs)
}

func TestAssertConsistentCatchesDivergingFSM(t *testing.T) {
	var built atomic.Int32
	newFSM := func() *forgetful { return &forgetful{Store: fsmexample.New(), drop: built.Add(1) == 1} }
	c := NewCluster(t, 3, newFSM, WithState(func(f *forgetful) any { return f.All() }), WithLogLevel(logLevel()))
	mustSet(t, c.WaitForLeader(), "a", "1")
	msg := runFake(t, func(tb testing.TB) {
		c.tb = tb
		c.AssertConsistent()
	})
	c.tb = t
	if !strings.Contains(msg, "differ") || !strings.Contains(msg, `a="1"`) {
		t.Fatalf("AssertConsistent on diverging FSMs reported %q, want a difference naming a=\"1\"", msg)
	}
}

func TestAssertConsistentComparesSnapshotsByDefault(t *testing.T) {
	// Snapshot bytes of a one-key fsmexample store are deterministic.
	var built atomic.Int32
	newFSM := func() *forgetful { return &forgetful{Store: fsmexample.New(), drop: built.Add(1) == 2} }
	c := NewCluster(t, 3, newFSM, WithLogLevel(logLevel()))
	mustSet(t, c.WaitForLeader(), "a", "1")
	msg := runFake(t, func(tb testing.TB) {
		c.tb = tb
		c.AssertConsistent()
	})
	c.tb = t
	if !strings.Contains(msg, "snapshot bytes") {
		t.Fatalf("AssertConsistent reported %q, want a snapshot difference", msg)
	}
}

func TestLogsStopAtTheEndOfTheTest(t *testing.T) {
	var c *Cluster[*fsmexample.Store]
	t.Run("inner", func(t *testing.T) {
		c = NewCluster(t, 1, fsmexample.New, WithLogLevel(hclog.Debug))
		c.WaitForLeader()
	})
	// testing panics on Log after a test has ended; the cluster's writer
	// must have stopped forwarding.
	if _, err := io.WriteString(c.logs, "late line from a raft goroutine\n"); err != nil {
		t.Fatal(err)
	}
	if len(c.Nodes()) != 0 {
		t.Fatal("cleanup left nodes running")
	}
}

func TestDroppedAndDelayedMessagesStillCommit(t *testing.T) {
	c := newKVCluster(t, 3)
	c.WaitForLeader()
	c.SetDropRate(0.02)
	c.SetDelay(time.Millisecond)
	acked := 0
	deadline := time.Now().Add(20 * time.Second)
	for i := 0; acked < 10 && time.Now().Before(deadline); i++ {
		n := c.Nodes()[i%3]
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		if _, err := n.Apply(ctx, fsmexample.Set(fmt.Sprintf("k%d", i), []byte("v"))); err == nil {
			acked++
		}
		cancel()
	}
	if acked < 10 {
		t.Fatalf("only %d writes acknowledged over a lossy network", acked)
	}
	c.SetDropRate(0)
	c.SetDelay(0)
	c.AssertConsistent()
}

func waitUntil(t testing.TB, limit time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", limit, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestWithConfigComposesWithFastTimeouts(t *testing.T) {
	c := newKVCluster(t, 1,
		WithConfig(func(cfg *raftkit.Config) {
			cfg.RaftConfig = func(rc *raft.Config) { rc.TrailingLogs = 7 }
		}),
		WithConfig(func(cfg *raftkit.Config) { cfg.SnapshotThreshold = 99 }))
	rc := c.WaitForLeader().Raft().ReloadableConfig()
	var fast raft.Config
	FastTimeouts(&fast)
	if rc.HeartbeatTimeout != fast.HeartbeatTimeout || rc.ElectionTimeout != fast.ElectionTimeout {
		t.Fatalf("timeouts %s/%s: the application's RaftConfig hook replaced the harness's %s/%s",
			rc.HeartbeatTimeout, rc.ElectionTimeout, fast.HeartbeatTimeout, fast.ElectionTimeout)
	}
	if rc.TrailingLogs != 7 || rc.SnapshotThreshold != 99 {
		t.Fatalf("TrailingLogs %d, SnapshotThreshold %d: want both WithConfig options applied (7, 99)", rc.TrailingLogs, rc.SnapshotThreshold)
	}
}

// isolations is how many times TestWaitForLeaderNeverReturnsAnIsolatedLeader
// isolates a leader.
const isolations = 50

// Under load, WaitForLeader after Isolate(leader) returns the majority's
// new leader, never the node just cut off (which still believes it leads
// until its lease runs out). With raft's VerifyLeader in place of the
// barrier, a user saw the old leader returned in 1 of 8 runs; the race (an
// answer to an AppendEntries sent before the cut) is too narrow to show
// here on demand, so this test pins the behaviour rather than the bug.
func TestWaitForLeaderNeverReturnsAnIsolatedLeader(t *testing.T) {
	c := newKVCluster(t, 3)
	stop := make(chan struct{})
	var writers sync.WaitGroup
	for w := 0; w < 4; w++ {
		writers.Add(1)
		go func() {
			defer writers.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				nodes := c.Nodes()
				n := nodes[(w+i)%len(nodes)]
				ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
				_, _ = n.Apply(ctx, fsmexample.Set(fmt.Sprint("k", w), []byte(fmt.Sprint(i))))
				cancel()
			}
		}()
	}
	defer func() { close(stop); writers.Wait() }()
	for i := 0; i < isolations; i++ {
		old := c.WaitForLeader()
		c.Isolate(old)
		if l := c.WaitForLeader(); l == old {
			t.Fatalf("isolation %d: WaitForLeader returned %s, the leader just isolated", i+1, old.ID())
		}
		c.Heal()
	}
}
