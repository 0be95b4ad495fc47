package raftkit

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/hashicorp/raft"

	"github.com/raftkit/raftkit/internal/wire"
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
// A node cut off from the majority returns an error (ErrNoLeader, a
// *NotLeaderError, or ctx's error) instead of letting a stale read through.
// The wait is bounded by ctx's deadline, else by Config.ApplyTimeout.
func (n *RaftNode) LinearizableRead(ctx context.Context) (err error) {
	if err := n.checkOpen(); err != nil {
		return err
	}
	defer func(start time.Time) { n.metrics.readBarrierDone(n.id, start, err) }(time.Now())
	ctx, cancel, timeout := n.bound(ctx)
	defer cancel()
	var index uint64
	if n.IsLeader() {
		idx, err := n.leaderReadIndex(ctx)
		if err != nil {
			return fmt.Errorf("raftkit: linearizable read: %w", err)
		}
		index = idx
	} else {
		var resp wire.ReadIndexResponse
		err := n.forward(ctx, wire.MethodReadIndex, &wire.ReadIndexRequest{Timeout: int64(timeout)}, &resp, false)
		if errors.Is(err, errLeaderIsSelf) {
			if !n.IsLeader() {
				return fmt.Errorf("raftkit: linearizable read: %w", n.notLeader())
			}
			resp.Index, err = n.leaderReadIndex(ctx)
		}
		if err == nil {
			err = fromWire(resp.Err)
		}
		if err != nil {
			return fmt.Errorf("raftkit: linearizable read: %w", err)
		}
		index = resp.Index
	}
	return n.waitApplied(ctx, index)
}

// leaderReadIndex returns an index at which a read on any node is
// linearizable, after confirming leadership with a majority. A leader that
// has not yet committed an entry of its own term first commits a barrier:
// until then its commit index may lag behind writes its predecessor
// acknowledged.
func (n *RaftNode) leaderReadIndex(ctx context.Context) (uint64, error) {
	if err := n.checkOpen(); err != nil {
		return 0, err
	}
	if !n.IsLeader() {
		return 0, n.notLeader()
	}
	term := n.raft.CurrentTerm()
	if n.readyTerm.Load() != term {
		if err := waitFuture(ctx, n.raft.Barrier(0)); err != nil {
			return 0, n.readError(err)
		}
		n.readyTerm.Store(term)
	}
	index := n.raft.CommitIndex()
	if err := waitFuture(ctx, n.raft.VerifyLeader()); err != nil {
		return 0, n.readError(err)
	}
	return index, nil
}

func (n *RaftNode) readError(err error) error {
	switch {
	case errors.Is(err, raft.ErrNotLeader), errors.Is(err, raft.ErrLeadershipLost):
		return n.notLeader()
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		return fmt.Errorf("%w: could not confirm leadership: %w", ErrNoLeader, err)
	}
	return n.closedOr(err)
}

// waitApplied waits until this node's FSM has applied index (not merely
// been handed it: see appliedFSM).
func (n *RaftNode) waitApplied(ctx context.Context, index uint64) error {
	delay := 50 * time.Microsecond
	for !n.fsmReflects(index) {
		if err := n.checkOpen(); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("raftkit: linearizable read: waiting to apply index %d (applied %d): %w", index, n.raft.AppliedIndex(), ctx.Err())
		case <-time.After(delay):
		}
		delay = min(2*delay, 5*time.Millisecond)
	}
	return nil
}
