package raftkit

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"
)

// leaseRun is one start of a RunWhileLeader function, as the tests see it.
type leaseRun struct {
	node  string
	lease *Lease
	start time.Time
	end   time.Time // zero while fn runs
	cause error     // context.Cause when fn saw its context end
}

// leaseRecorder runs RunWhileLeader on nodes with a function that records
// each run and, after its context ends, takes finish to end its last unit.
type leaseRecorder struct {
	mu      sync.Mutex
	runs    []*leaseRun
	returns map[string]time.Time // when RunWhileLeader returned, by node
	wg      sync.WaitGroup
}

func recordLeases(ctx context.Context, nodes []*RaftNode, finish time.Duration) *leaseRecorder {
	rec := &leaseRecorder{returns: map[string]time.Time{}}
	for _, n := range nodes {
		rec.wg.Add(1)
		go func() {
			defer rec.wg.Done()
			n.RunWhileLeader(ctx, func(fctx context.Context) {
				run := &leaseRun{node: n.ID(), lease: LeaseFromContext(fctx), start: time.Now()}
				rec.mu.Lock()
				rec.runs = append(rec.runs, run)
				rec.mu.Unlock()
				<-fctx.Done()
				cause := context.Cause(fctx)
				time.Sleep(finish) // the last unit of work
				rec.mu.Lock()
				run.cause, run.end = cause, time.Now()
				rec.mu.Unlock()
			})
			rec.mu.Lock()
			rec.returns[n.ID()] = time.Now()
			rec.mu.Unlock()
		}()
	}
	return rec
}

// running returns the run in progress on a node that leads, or nil.
func (r *leaseRecorder) running() *leaseRun {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i := len(r.runs) - 1; i >= 0; i-- {
		if r.runs[i].end.IsZero() && r.runs[i].cause == nil && r.runs[i].lease.Valid() {
			return r.runs[i]
		}
	}
	return nil
}

func (r *leaseRecorder) snapshot() []leaseRun {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]leaseRun, len(r.runs))
	for i, run := range r.runs {
		out[i] = *run
	}
	return out
}

func TestLeaseTermIsTheLeadershipsFencingToken(t *testing.T) {
	nodes, _ := newMemCluster(t, NewMemNetwork(), 3)
	ctx, cancel := context.WithCancel(context.Background())
	rec := recordLeases(ctx, nodes, 0)
	defer rec.wg.Wait()
	defer cancel()
	var first *leaseRun
	waitFor(t, 15*time.Second, "fn to run on the leader", func() bool { first = rec.running(); return first != nil })
	var leader *RaftNode
	for _, n := range nodes {
		if n.ID() == first.node {
			leader = n
		}
	}
	if got, want := first.lease.Term(), leader.raft.CurrentTerm(); got != want {
		t.Fatalf("lease term %d, leader's term %d", got, want)
	}
	wctx, wcancel := context.WithCancel(context.Background())
	defer wcancel()
	if l := <-leader.WatchLeadership(wctx); !l.IsLeader || l.Term != first.lease.Term() {
		t.Fatalf("WatchLeadership on the leader says %+v, want IsLeader and term %d", l, first.lease.Term())
	}
	if err := leader.TransferLeadership(ctxTimeout(t, 10*time.Second), ""); err != nil {
		t.Fatal(err)
	}
	var second *leaseRun
	waitFor(t, 15*time.Second, "fn to run on the next leader", func() bool {
		second = rec.running()
		return second != nil && second.node != first.node
	})
	if second.lease.Term() <= first.lease.Term() {
		t.Fatalf("next leader's term %d is not above %d", second.lease.Term(), first.lease.Term())
	}
	if first.lease.Valid() {
		t.Fatal("the first leader's lease is still valid after it handed over")
	}
	if err := first.lease.Verify(ctxTimeout(t, 5*time.Second)); err == nil {
		t.Fatal("Verify of a handed-over lease succeeded")
	}
	if err := second.lease.Verify(ctxTimeout(t, 5*time.Second)); err != nil {
		t.Fatalf("Verify on the leader: %v", err)
	}
}

// At most one lease is valid at any moment: a leader cut off from the rest
// has seen its lease expire, by the one clock of this process, before its
// successor's lease begins.
func TestLeasesNeverOverlapWhenTheLeaderIsCutOff(t *testing.T) {
	if overlap := leaseOverlapAfterCutOff(t, nil); overlap > 0 {
		t.Fatalf("the old leader's lease outlived the start of its successor's by %s", overlap)
	}
}

// The negative control of the test above: a lease longer than a follower's
// heartbeat timeout overlaps its successor's, and the check sees it.
func TestLeaseOverlapCheckCatchesALeaseLongerThanTheHeartbeatTimeout(t *testing.T) {
	long := func(d time.Duration) time.Duration { return 20 * d }
	if overlap := leaseOverlapAfterCutOff(t, long); overlap <= 0 {
		t.Fatal("a lease 20 times too long did not overlap its successor's")
	}
}

// leaseOverlapAfterCutOff isolates the leader while it runs fn and returns
// how long its lease outlived the start of its successor's.
func leaseOverlapAfterCutOff(t *testing.T, length func(time.Duration) time.Duration) time.Duration {
	t.Helper()
	net := NewMemNetwork()
	c := startClusterHooks(t, net, []string{"mem0", "mem1", "mem2"}, nil, nil, func(int) *nodeHooks { return &nodeHooks{leaseLength: length} })
	ctx, cancel := context.WithCancel(context.Background())
	rec := recordLeases(ctx, c.nodes, 0)
	defer rec.wg.Wait()
	defer cancel()
	var old *leaseRun
	waitFor(t, 15*time.Second, "fn to run on the leader", func() bool { old = rec.running(); return old != nil })
	net.Isolate(old.node)
	var next *leaseRun
	waitFor(t, 15*time.Second, "fn to run on a new leader", func() bool {
		next = rec.running()
		return next != nil && next.node != old.node
	})
	net.Heal()
	if next.lease.Term() <= old.lease.Term() {
		t.Fatalf("successor's term %d is not above %d", next.lease.Term(), old.lease.Term())
	}
	return time.Duration(old.lease.expiry.Load() - next.lease.since)
}

func TestRunWhileLeaderSaysWhyFnStopped(t *testing.T) {
	net := NewMemNetwork()
	nodes, _ := newMemCluster(t, net, 3)
	ctx, cancel := context.WithCancel(context.Background())
	rec := recordLeases(ctx, nodes, 0)
	byID := map[string]*RaftNode{}
	for _, n := range nodes {
		byID[n.ID()] = n
	}
	current := func(what string) *leaseRun {
		var run *leaseRun
		waitFor(t, 15*time.Second, what, func() bool { run = rec.running(); return run != nil })
		return run
	}
	ended := func(run *leaseRun) error {
		var cause error
		waitFor(t, 15*time.Second, "fn on "+run.node+" to end", func() bool {
			rec.mu.Lock()
			defer rec.mu.Unlock()
			cause = run.cause
			return !run.end.IsZero()
		})
		return cause
	}

	run := current("fn to run on the first leader")
	if err := byID[run.node].TransferLeadership(ctxTimeout(t, 10*time.Second), ""); err != nil {
		t.Fatal(err)
	}
	if cause := ended(run); !errors.Is(cause, ErrHandover) {
		t.Fatalf("after a transfer the cause is %v, want ErrHandover", cause)
	}

	run = current("fn to run on the second leader")
	net.Isolate(run.node)
	if cause := ended(run); !errors.Is(cause, ErrLeadershipLost) {
		t.Fatalf("after a cut-off the cause is %v, want ErrLeadershipLost", cause)
	}
	net.Heal()

	run = current("fn to run on the third leader")
	if err := byID[run.node].Close(); err != nil {
		t.Fatal(err)
	}
	if cause := ended(run); !errors.Is(cause, ErrClosed) {
		t.Fatalf("after Close the cause is %v, want ErrClosed", cause)
	}

	run = current("fn to run on the fourth leader")
	cancel()
	if cause := ended(run); !errors.Is(cause, context.Canceled) {
		t.Fatalf("after the parent context ended the cause is %v, want context.Canceled", cause)
	}
	rec.wg.Wait()
}

// Close is how a process handles SIGTERM. A job that needs a second to end
// its last unit of work finishes before the successor starts, and
// RunWhileLeader returns only after it.
func TestCloseWaitsForTheLeaderJobBeforeHandingOver(t *testing.T) {
	runs, returned := closeWithSlowJob(t, 0)
	old, next := runs[0], runs[1]
	if next.start.Before(old.end) {
		t.Fatalf("the successor started %s before the old leader's job ended", old.end.Sub(next.start))
	}
	if !errors.Is(old.cause, ErrClosed) {
		t.Fatalf("the job's cause is %v, want ErrClosed", old.cause)
	}
	if returned.Before(old.end) {
		t.Fatalf("RunWhileLeader returned %s before its fn did", old.end.Sub(returned))
	}
}

// The negative control of the test above: with a grace shorter than the
// job needs, Close hands over while the job still runs, and the test sees
// the overlap.
func TestCloseWithAShortGraceHandsOverWhileTheJobRuns(t *testing.T) {
	runs, _ := closeWithSlowJob(t, 50*time.Millisecond)
	if old, next := runs[0], runs[1]; !next.start.Before(old.end) {
		t.Fatal("a 50 ms grace did not let the successor start before a 1 s job ended")
	}
}

// closeWithSlowJob closes the leader of three nodes whose job takes a
// second to end, waits for the successor's job, and returns the two runs
// and when the old leader's RunWhileLeader returned.
func closeWithSlowJob(t *testing.T, grace time.Duration) ([]leaseRun, time.Time) {
	t.Helper()
	nodes, _ := newMemCluster(t, NewMemNetwork(), 3, func(c *Config) { c.LeaderJobGrace = grace })
	ctx, cancel := context.WithCancel(context.Background())
	rec := recordLeases(ctx, nodes, time.Second)
	defer rec.wg.Wait()
	defer cancel()
	var old *leaseRun
	waitFor(t, 15*time.Second, "fn to run on the leader", func() bool { old = rec.running(); return old != nil })
	for _, n := range nodes {
		if n.ID() == old.node {
			if err := n.Close(); err != nil {
				t.Fatal(err)
			}
		}
	}
	waitFor(t, 15*time.Second, "fn to run on a new leader", func() bool {
		r := rec.running()
		return r != nil && r.node != old.node
	})
	waitFor(t, 15*time.Second, "the old leader's RunWhileLeader to return", func() bool {
		rec.mu.Lock()
		defer rec.mu.Unlock()
		_, ok := rec.returns[old.node]
		return ok
	})
	runs := rec.snapshot()
	rec.mu.Lock()
	returned := rec.returns[old.node]
	rec.mu.Unlock()
	if len(runs) != 2 || runs[0].node != old.node {
		t.Fatalf("want the old leader's run then its successor's, got %d runs", len(runs))
	}
	return runs, returned
}

// After a planned stop the lease holds until fn returns, so that fn can
// finish its work under the same guard; then it is invalid for good.
func TestLeaseHoldsThroughAPlannedStopUntilFnReturns(t *testing.T) {
	node := newMemNode(t, "solo")
	ctx, cancel := context.WithCancel(context.Background())
	leases := make(chan *Lease, 1)
	stopping, finish := make(chan struct{}), make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- node.RunWhileLeader(ctx, func(fctx context.Context) {
			leases <- LeaseFromContext(fctx)
			<-fctx.Done()
			close(stopping)
			<-finish
		})
	}()
	l := <-leases
	if !l.Valid() || l.Remaining() <= 0 {
		t.Fatal("a fresh lease on a single node is not valid")
	}
	cancel()
	<-stopping
	// Longer than the lease: the renewals go on.
	deadline := time.Now().Add(3 * l.length)
	for time.Now().Before(deadline) {
		if !l.Valid() {
			t.Fatal("the lease lapsed while fn finished after a planned stop")
		}
		time.Sleep(l.length / 10)
	}
	close(finish)
	<-done
	if l.Valid() {
		t.Fatal("the lease is valid after fn returned")
	}
	if err := l.Verify(context.Background()); !errors.Is(err, ErrLeadershipLost) {
		t.Fatalf("Verify after fn returned: %v, want ErrLeadershipLost", err)
	}
	if LeaseFromContext(context.Background()) != nil {
		t.Fatal("a context outside RunWhileLeader has a lease")
	}
}
