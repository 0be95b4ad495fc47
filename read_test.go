package raftkit

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	fsmexample "github.com/raftkit/raftkit/fsm_example"
)

func TestLinearizableReadOnFollowerSeesAcknowledgedWrite(t *testing.T) {
	c := newTCPCluster(t, 3)
	l := c.leader()
	a, b := (l+1)%3, (l+2)%3
	for i := 0; i < 50; i++ {
		k := fmt.Sprintf("k%d", i)
		// Write through one follower, read right after through the other.
		if _, err := c.nodes[a].Apply(ctxTimeout(t, 5*time.Second), fsmexample.Set(k, []byte("v"))); err != nil {
			t.Fatal(err)
		}
		if err := c.nodes[b].LinearizableRead(ctxTimeout(t, 5*time.Second)); err != nil {
			t.Fatalf("read %d: %v", i, err)
		}
		if _, ok := c.fsms[b].Get(k); !ok {
			t.Fatalf("follower missed %s acknowledged before its linearizable read", k)
		}
	}
	if err := c.nodes[l].LinearizableRead(ctxTimeout(t, 5*time.Second)); err != nil {
		t.Fatalf("read on leader: %v", err)
	}
}

func TestIsolatedNodeRefusesReadsAndNeverAcknowledgesWrites(t *testing.T) {
	for _, role := range []string{"leader", "follower"} {
		t.Run(role, func(t *testing.T) {
			net := NewMemNetwork()
			nodes, _ := newMemCluster(t, net, 3)
			l := memLeader(t, nodes)
			victim := nodes[l]
			if role == "follower" {
				victim = nodes[(l+1)%3]
			}
			net.Isolate(victim.Addr())
			for i := 0; i < 3; i++ {
				ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
				err := victim.LinearizableRead(ctx)
				cancel()
				if err == nil {
					t.Fatalf("isolated %s served a linearizable read", role)
				}
				ctx, cancel = context.WithTimeout(context.Background(), 300*time.Millisecond)
				_, err = victim.Apply(ctx, fsmexample.Set("lost", []byte("x")))
				cancel()
				if err == nil {
					t.Fatalf("isolated %s acknowledged a write", role)
				}
			}
		})
	}
}

func TestLinearizableReadRightAfterElection(t *testing.T) {
	// A new leader must not answer from a commit index that lags behind
	// what its predecessor acknowledged.
	net := NewMemNetwork()
	nodes, kvs := newMemCluster(t, net, 3)
	for round := 0; round < 3; round++ {
		l := memLeader(t, nodes)
		k := fmt.Sprintf("round-%d", round)
		if _, err := nodes[l].Apply(ctxTimeout(t, 5*time.Second), fsmexample.Set(k, []byte("v"))); err != nil {
			t.Fatal(err)
		}
		next := nodes[(l+1)%3]
		if err := nodes[l].TransferLeadership(ctxTimeout(t, 10*time.Second), next.ID()); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 10*time.Second, "new leader", next.IsLeader)
		if err := next.LinearizableRead(ctxTimeout(t, 5*time.Second)); err != nil {
			t.Fatal(err)
		}
		if _, ok := kvs[(l+1)%3].Get(k); !ok {
			t.Fatalf("new leader's linearizable read missed %s", k)
		}
	}
}

func TestApplyOnFollowerDuringLeaderLossIsNotSilentlyRetried(t *testing.T) {
	// The leader is cut off after a follower has forwarded to it: the
	// follower must report an outcome it can stand by, never a success it
	// did not see, and a timeout must read as unknown.
	net := NewMemNetwork()
	nodes, _ := newMemCluster(t, net, 3)
	l := memLeader(t, nodes)
	f := nodes[(l+1)%3]
	waitFor(t, 5*time.Second, "follower knows leader", func() bool { return f.GetLeaderAddr() != "" })
	net.Block(nodes[l].Addr(), nodes[(l+2)%3].Addr())
	net.Block(nodes[(l+2)%3].Addr(), nodes[l].Addr())
	net.Block(nodes[l].Addr(), f.Addr()) // the leader cannot replicate to f
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	_, err := f.Apply(ctx, fsmexample.Set("maybe", []byte("1")))
	if err == nil {
		t.Fatal("write acknowledged by a leader that cannot reach a majority")
	}
	if !errors.Is(err, ErrUnknownOutcome) && !errors.Is(err, raft.ErrNotLeader) && !errors.Is(err, ErrNoLeader) {
		t.Fatalf("error %v is neither unknown-outcome nor a known not-applied error", err)
	}
}

func TestRunWhileLeaderNeverOverlapsWhileLeadershipMoves(t *testing.T) {
	net := NewMemNetwork()
	nodes, _ := newMemCluster(t, net, 3)
	memLeader(t, nodes)
	var running, maxRunning, starts atomic.Int32
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for _, n := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			n.RunWhileLeader(ctx, func(ctx context.Context) {
				starts.Add(1)
				now := running.Add(1)
				for {
					old := maxRunning.Load()
					if now <= old || maxRunning.CompareAndSwap(old, now) {
						break
					}
				}
				if !n.IsLeader() {
					t.Errorf("fn started on %s, which does not lead", n.ID())
				}
				<-ctx.Done()
				running.Add(-1)
			})
		}()
	}
	for i := 0; i < 8; i++ {
		l := memLeader(t, nodes)
		waitFor(t, 10*time.Second, "fn to run on the leader", func() bool { return running.Load() == 1 })
		target := nodes[(l+1+i%2)%3]
		if err := nodes[l].TransferLeadership(ctxTimeout(t, 10*time.Second), target.ID()); err != nil {
			t.Fatalf("transfer %d: %v", i, err)
		}
		waitFor(t, 10*time.Second, "target to lead", target.IsLeader)
	}
	waitFor(t, 10*time.Second, "fn to run on the last leader", func() bool { return running.Load() == 1 })
	cancel()
	wg.Wait()
	if maxRunning.Load() != 1 {
		t.Fatalf("fn ran on %d nodes at once", maxRunning.Load())
	}
	if starts.Load() < 9 {
		t.Fatalf("fn started %d times over 9 leaderships", starts.Load())
	}
	if running.Load() != 0 {
		t.Fatal("fn still running after RunWhileLeader returned")
	}
}

func TestRunWhileLeaderStopsWhenLeadershipIsLost(t *testing.T) {
	net := NewMemNetwork()
	nodes, _ := newMemCluster(t, net, 3)
	l := memLeader(t, nodes)
	stopped := make(chan struct{})
	started := make(chan struct{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- nodes[l].RunWhileLeader(ctx, func(fctx context.Context) {
			close(started)
			<-fctx.Done()
			close(stopped)
		})
	}()
	<-started
	net.Isolate(nodes[l].Addr())
	select {
	case <-stopped:
	case <-time.After(10 * time.Second):
		t.Fatal("fn kept running after the leader was cut off")
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("RunWhileLeader returned %v, want context.Canceled", err)
	}
}

// raft never resolves a VerifyLeader still queued when it shuts down; Close
// must let raftkit's waits on such futures end first, or their goroutines
// leak (goleak in TestMain checks).
func TestCloseDuringReadsLeavesNoWaitingGoroutines(t *testing.T) {
	net := NewMemNetwork()
	nodes, _ := newMemCluster(t, net, 3)
	l := memLeader(t, nodes)
	net.Isolate(nodes[l].Addr())
	var wg sync.WaitGroup
	for i := 0; i < 20; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
			defer cancel()
			nodes[l].LinearizableRead(ctx)
		}()
	}
	wg.Wait()
	if err := nodes[l].Close(); err != nil {
		t.Fatal(err)
	}
	nodes[l].futureWaits.mu.Lock()
	n := nodes[l].futureWaits.n
	nodes[l].futureWaits.mu.Unlock()
	if n != 0 {
		t.Fatalf("%d goroutines still wait on raft futures after Close", n)
	}
}
