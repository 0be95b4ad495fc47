package raftkit

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
)

// snapshotDir is the folder under Config.Dir that holds snapshots.
const snapshotDir = "snapshots"

// openSnapshotStore opens the file snapshot store under dir/snapshots.
func openSnapshotStore(dir string, retain int, logger hclog.Logger) (raft.SnapshotStore, error) {
	snaps, err := raft.NewFileSnapshotStoreWithLogger(dir, retain, logger.Named("snapshots"))
	if err != nil {
		return nil, fmt.Errorf("raftkit: open snapshot store %s: %w", filepath.Join(dir, snapshotDir), err)
	}
	return snaps, nil
}

// Snapshot asks raft to snapshot the FSM now and compact the log, and waits
// for it or for ctx. A node with nothing new since its last snapshot returns
// nil. If ctx ends first, the snapshot still completes in the background.
func (n *RaftNode) Snapshot(ctx context.Context) error {
	if err := n.checkOpen(); err != nil {
		return err
	}
	err := waitFuture(ctx, n.raft.Snapshot())
	if errors.Is(err, raft.ErrNothingNewToSnapshot) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("raftkit: snapshot: %w", n.closedOr(err))
	}
	return nil
}
