package raftkit

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	fsmexample "github.com/raftkit/raftkit/fsm_example"
)

func TestConcurrentReadsShareOneLeadershipCheck(t *testing.T) {
	nodes, _ := newMemCluster(t, NewMemNetwork(), 3)
	leader := nodes[memLeader(t, nodes)]
	// Once every node is ready, no node asks the leader for a read index
	// of its own accord (see awaitCatchUp): the reads below are all.
	waitFor(t, 10*time.Second, "every node to be ready", func() bool {
		for _, n := range nodes {
			if !n.Status().Ready {
				return false
			}
		}
		return true
	})
	b := leader.leaderReads
	var fetches atomic.Int32
	started := make(chan struct{}, 1)
	release := make(chan struct{})
	var releaseOnce sync.Once
	unblock := func() { releaseOnce.Do(func() { close(release) }) }
	t.Cleanup(unblock) // before the nodes close, should the test fail early
	real := b.fetch
	b.fetch = func(ctx context.Context) (uint64, error) {
		if fetches.Add(1) == 1 {
			started <- struct{}{}
			<-release // hold the first check until the others queue up
		}
		return real(ctx)
	}
	const readers = 64
	errs := make(chan error, readers)
	go func() { errs <- leader.LinearizableRead(ctxTimeout(t, 10*time.Second)) }()
	<-started
	for i := 1; i < readers; i++ {
		go func() { errs <- leader.LinearizableRead(ctxTimeout(t, 10*time.Second)) }()
	}
	waitFor(t, 10*time.Second, "readers to queue for the next check", func() bool {
		b.mu.Lock()
		defer b.mu.Unlock()
		return b.next != nil && b.next.waiters == readers-1
	})
	unblock()
	for i := 0; i < readers; i++ {
		if err := <-errs; err != nil {
			t.Fatalf("read %d: %v", i, err)
		}
	}
	if got := fetches.Load(); got != 2 {
		t.Fatalf("%d concurrent reads made %d leadership checks, want 2 (the running one and one for all who queued)", readers, got)
	}
}

func TestBatchedReadsSeeEveryAcknowledgedWrite(t *testing.T) {
	// A writer bumps a counter; readers on every node note the last
	// acknowledged value, read through LinearizableRead, and must see at
	// least that value.
	nodes, kvs := newMemCluster(t, NewMemNetwork(), 3)
	l := memLeader(t, nodes)
	waitFor(t, 10*time.Second, "followers to know the leader", func() bool {
		for _, n := range nodes {
			if n.GetLeaderAddr() == "" {
				return false
			}
		}
		return true
	})
	var acked atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := int64(1); i <= 300; i++ {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := nodes[l].Apply(ctxTimeout(t, 5*time.Second), fsmexample.Set("ctr", []byte(strconv.FormatInt(i, 10)))); err != nil {
				t.Errorf("write %d: %v", i, err)
				return
			}
			acked.Store(i)
		}
	}()
	errs := make(chan error, 32)
	for r := 0; r < 24; r++ {
		wg.Add(1)
		go func(r int) {
			defer wg.Done()
			idx := r % 3
			for k := 0; k < 40; k++ {
				want := acked.Load()
				if err := nodes[idx].LinearizableRead(ctxTimeout(t, 5*time.Second)); err != nil {
					errs <- fmt.Errorf("reader %d on node %d: %w", r, idx, err)
					return
				}
				v, _ := kvs[idx].Get("ctr")
				got, _ := strconv.ParseInt(string(v), 10, 64)
				if got < want {
					errs <- fmt.Errorf("reader %d on node %d saw %d after %d was acknowledged", r, idx, got, want)
					return
				}
			}
		}(r)
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case err := <-errs:
		close(stop)
		<-done
		t.Fatal(err)
	case <-done:
	}
}

func TestConcurrentForwardedWritesGetTheirOwnResults(t *testing.T) {
	// Forwarded writes travel in batches; each caller must still get its
	// own command's response, FSM errors included, whether raft buffers
	// its apply channel or not (the leader submits a batch differently).
	for _, batchApplyCh := range []bool{true, false} {
		t.Run(fmt.Sprintf("BatchApplyCh=%v", batchApplyCh), func(t *testing.T) {
			testForwardedResults(t, batchApplyCh)
		})
	}
}

func testForwardedResults(t *testing.T, batchApplyCh bool) {
	nodes, _ := newMemCluster(t, NewMemNetwork(), 3, func(c *Config) {
		c.RaftConfig = func(rc *raft.Config) {
			fastRaft(rc)
			rc.BatchApplyCh = batchApplyCh
		}
	})
	l := memLeader(t, nodes)
	f := nodes[(l+1)%3]
	waitFor(t, 10*time.Second, "follower to know the leader", func() bool { return f.GetLeaderAddr() != "" })
	const writers = 96
	for i := 0; i < writers; i += 2 {
		if _, err := nodes[l].Apply(ctxTimeout(t, 5*time.Second), fsmexample.Set(fmt.Sprintf("k%d", i), []byte("v"))); err != nil {
			t.Fatal(err)
		}
	}
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for i := 0; i < writers; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			ctx := ctxTimeout(t, 10*time.Second)
			if i%16 == 5 {
				_, err := f.Apply(ctx, []byte{0xff})
				var fe *FSMError
				if !errors.As(err, &fe) {
					errs <- fmt.Errorf("bad command %d: %v, want an *FSMError", i, err)
				}
				return
			}
			// Deleting k<i> reports whether it existed: only even keys do.
			res, err := f.Apply(ctx, fsmexample.Delete(fmt.Sprintf("k%d", i)))
			if err != nil {
				errs <- fmt.Errorf("delete %d: %v", i, err)
				return
			}
			if res != (i%2 == 0) {
				errs <- fmt.Errorf("delete k%d answered %v, want %v: a result went to the wrong caller", i, res, i%2 == 0)
			}
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}
