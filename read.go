package raftkit

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/hashicorp/raft"

	"github.com/raftkit/raftkit/internal/peer"
)

// LinearizableRead is a read barrier. When it returns nil, this node's FSM
// reflects every write that was acknowledged (on any node) before the call
// began, so a read of the local FSM that follows is linearizable. It works
// on any node and costs no log write in steady state:
//
//   - on the leader, it notes the commit index, confirms with a majority
//     that it still leads, and waits until that index is applied here;
//   - on a follower, it asks the leader for such an index over the node's
//     port (ReadIndex), then waits until this node has applied it.
//
// Concurrent calls share the work: all calls that arrive while one
// leadership check (or one ReadIndex request) is under way are answered by
// the next one, which starts after they arrived, so N concurrent reads cost
// about two checks rather than N.
//
// A read that cannot complete (no leader, leadership moving, a node cut
// off from the majority) is retried until ctx ends; its error then
// matches ErrNotApplied (a read has no unknown outcome), or ErrClosed. A
// stale read is never let through. The wait is bounded by ctx's deadline,
// else by Config.ApplyTimeout; a ctx that has already ended reads nothing.
func (n *RaftNode) LinearizableRead(ctx context.Context) (err error) {
	if err := n.checkOpen(); err != nil {
		return err
	}
	if err := n.callMemberErr(ctx); err != nil {
		return notApplied("linearizable read", err)
	}
	if err := doneErr(ctx, "linearizable read"); err != nil {
		return err
	}
	defer func(start time.Time) { n.metrics.readBarrierDone(n.id, start, err) }(time.Now())
	ctx, cancel := n.bound(ctx)
	defer cancel()
	for attempt := 0; ; attempt++ {
		err = n.readOnce(ctx)
		switch Classify(err) {
		case Applied, Closed, Invalid, NotAuthorized:
			return err
		}
		if !n.backoff(ctx, attempt) {
			if err := n.checkOpen(); err != nil {
				return err
			}
			return notApplied("linearizable read", err)
		}
	}
}

// readOnce is one try of LinearizableRead.
func (n *RaftNode) readOnce(ctx context.Context) error {
	var index uint64
	var err error
	if n.IsLeader() {
		index, err = n.leaderReads.wait(ctx)
	} else {
		index, err = n.followerReads.wait(ctx)
	}
	if err != nil {
		return err
	}
	return n.waitApplied(ctx, index)
}

// remoteReadIndex asks the leader for a read index (the follower side of
// LinearizableRead).
func (n *RaftNode) remoteReadIndex(ctx context.Context) (uint64, error) {
	leader, err := n.leaderAddr(ctx)
	if err != nil {
		return 0, err
	}
	if leader == n.addr {
		return 0, n.notLeader()
	}
	return n.readIndexFrom(ctx, "linearizable read", leader)
}

// readIndexFrom asks the leader at addr for a read index, for what.
func (n *RaftNode) readIndexFrom(ctx context.Context, what, addr string) (uint64, error) {
	var resp peer.ReadIndexResponse
	err := n.forwardTo(ctx, what, addr, peer.MethodReadIndex, &peer.ReadIndexRequest{Timeout: int64(n.timeLeft(ctx))}, &resp)
	if err == nil {
		err = n.fromWire(addr, resp.Err)
	}
	return resp.Index, err
}

// leaderReadIndex returns an index at which a read on any node is
// linearizable, after confirming leadership with a majority. A leader that
// has not yet committed an entry of its own term first commits a barrier:
// until then its commit index may lag behind writes its predecessor
// acknowledged. Callers go through n.leaderReads, which shares one call
// among concurrent readers.
func (n *RaftNode) leaderReadIndex(ctx context.Context) (uint64, error) {
	if err := n.checkOpen(); err != nil {
		return 0, err
	}
	if !n.IsLeader() {
		return 0, n.notLeader()
	}
	term := n.raft.CurrentTerm()
	if n.readyTerm.Load() != term {
		if err := n.waitFuture(ctx, n.raft.Barrier(0)); err != nil {
			return 0, n.readError(err)
		}
		n.readyTerm.Store(term)
	}
	index := n.raft.CommitIndex()
	if err := n.waitFuture(ctx, n.raft.VerifyLeader()); err != nil {
		return 0, n.readError(err)
	}
	return index, nil
}

// readBatcher shares one read-index request among concurrent readers. A
// reader may only use a request that started after it arrived (an earlier
// one may have read the commit index before the reader's write was
// acknowledged), so at most one request runs at a time and the readers
// that arrive meanwhile wait for the next one, which starts as soon as the
// running one ends.
type readBatcher struct {
	// fetch gets a read index; ctx is bounded by the node's ApplyTimeout.
	fetch   func(ctx context.Context) (uint64, error)
	timeout time.Duration
	wg      *sync.WaitGroup // the node's: Close waits for running requests

	mu      sync.Mutex
	stopped bool
	running bool
	next    *readRound // gathers readers while a request runs
}

// readRound is one read-index request and the readers it answers.
type readRound struct {
	done    chan struct{}
	waiters int // readers answered by this round
	index   uint64
	err     error
}

// wait returns a read index from a request that started after the call.
func (b *readBatcher) wait(ctx context.Context) (uint64, error) {
	b.mu.Lock()
	if b.stopped {
		b.mu.Unlock()
		return 0, ErrClosed
	}
	r := b.next
	if r == nil {
		r = &readRound{done: make(chan struct{})}
		b.next = r
	}
	r.waiters++
	if !b.running {
		b.running = true
		b.next = nil
		b.wg.Add(1)
		go b.run(r)
	}
	b.mu.Unlock()
	select {
	case <-r.done:
		return r.index, r.err
	case <-ctx.Done():
		return 0, wrapErr(ErrNoLeader, "could not confirm leadership", ctx.Err())
	}
}

// stop makes later calls of wait fail with ErrClosed; after it, the
// node's WaitGroup sees no new requests.
func (b *readBatcher) stop() {
	b.mu.Lock()
	b.stopped = true
	b.mu.Unlock()
}

// run answers round r, then every round that gathered readers meanwhile.
func (b *readBatcher) run(r *readRound) {
	defer b.wg.Done()
	for r != nil {
		// Close ends a running fetch: raft resolves its futures at shutdown
		// and the request pool fails its calls when closed.
		ctx, cancel := context.WithTimeout(context.Background(), b.timeout)
		r.index, r.err = b.fetch(ctx)
		cancel()
		close(r.done)
		b.mu.Lock()
		r = b.next
		b.next = nil
		if r == nil {
			b.running = false
		}
		b.mu.Unlock()
	}
}

func (n *RaftNode) readError(err error) error {
	switch {
	case errors.Is(err, raft.ErrNotLeader), errors.Is(err, raft.ErrLeadershipLost):
		return n.notLeader()
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		return wrapErr(ErrNoLeader, "could not confirm leadership", err)
	case errors.Is(err, raft.ErrRaftShutdown):
		return ErrClosed
	}
	return notApplied("linearizable read", err)
}

// waitApplied waits until this node's FSM has applied index (not merely
// received it: see trackedFSM).
func (n *RaftNode) waitApplied(ctx context.Context, index uint64) error {
	delay := 50 * time.Microsecond
	for !n.fsmCaughtUp(index) {
		if err := n.checkOpen(); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return notApplied("linearizable read", fmt.Errorf("waiting to apply index %d (applied %d): %w", index, n.fsm.applied.Load(), ctx.Err()))
		case <-time.After(delay):
		}
		delay = min(2*delay, 5*time.Millisecond)
	}
	return nil
}
