package raftkit

import (
	"context"
	"errors"
	"fmt"

	"github.com/hashicorp/raft"
)

// Snapshot asks raft to snapshot the FSM now and compact the log, and waits
// for it or for ctx. A node with nothing new since its last snapshot returns
// nil. If ctx ends first, the snapshot still completes in the background.
func (n *RaftNode) Snapshot(ctx context.Context) error {
	if err := n.checkOpen(); err != nil {
		return err
	}
	err := n.waitFuture(ctx, n.raft.Snapshot())
	if errors.Is(err, raft.ErrNothingNewToSnapshot) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("raftkit: snapshot: %w", n.closedOr(err))
	}
	return nil
}
