package raftkit

import (
	"context"
	"errors"
	"fmt"

	"github.com/hashicorp/raft"
	"github.com/raftkit/raftkit/internal/chunk"
)

// Snapshot asks raft to snapshot the FSM now and compact the log, and waits
// for it or for ctx. A node with nothing new since its last snapshot returns
// nil. If ctx ends first, the snapshot still completes in the background.
// While the node's FSM holds part of a command larger than 256 KiB (its
// chunks are applied one by one, the command once the last arrives), a
// snapshot would cut through it: Snapshot then tries again until the
// command is complete or ctx ends.
func (n *RaftNode) Snapshot(ctx context.Context) error {
	if err := n.checkOpen(); err != nil {
		return err
	}
	_, err := n.userSnapshot(ctx)
	if errors.Is(err, raft.ErrNothingNewToSnapshot) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("raftkit: snapshot: %w", n.closedOr(err))
	}
	return nil
}

// userSnapshot takes a user snapshot and waits for it within ctx, trying
// again while the FSM defers it because a chunked command is half applied
// (chunk.ErrInProgress). If ctx ends after such a refusal, the error says so
// and wraps ctx's.
func (n *RaftNode) userSnapshot(ctx context.Context) (raft.SnapshotFuture, error) {
	var deferred error
	for {
		f := n.raft.Snapshot()
		err := n.waitFuture(ctx, f)
		if !chunk.IsInProgress(err) {
			if deferred != nil && ctx.Err() != nil && errors.Is(err, ctx.Err()) {
				return f, fmt.Errorf("%v: %w", deferred, err)
			}
			return f, err
		}
		deferred = err
		// Ask again once the command is complete (or dropped), not
		// before: raft logs every refused snapshot at ERROR.
		for attempt := 0; attempt == 0 || n.fsm.chunks.PendingTerm() != 0; attempt++ {
			if !n.backoff(ctx, attempt) {
				if err := n.checkOpen(); err != nil {
					return f, err
				}
				return f, fmt.Errorf("%v: %w", deferred, ctx.Err())
			}
		}
	}
}
