package store

import (
	"path/filepath"

	"github.com/hashicorp/raft"
)

// syncedSnapshots is raft's FileSnapshotStore with one durability gap
// closed: raft v1.7.3's sink fsyncs state.bin, meta.json and the snapshots
// directory after renaming the new snapshot into place, but never the
// snapshot's own directory, so a power cut can keep the snapshot's name
// and lose the files in it after raft has already compacted the log up
// to it. The sink's Close here fsyncs that directory before it returns,
// which is before raft compacts.
type syncedSnapshots struct {
	raft.SnapshotStore
	dir string // Dir/snapshots
}

func (s *syncedSnapshots) Create(version raft.SnapshotVersion, index, term uint64, configuration raft.Configuration,
	configurationIndex uint64, trans raft.Transport) (raft.SnapshotSink, error) {
	sink, err := s.SnapshotStore.Create(version, index, term, configuration, configurationIndex, trans)
	if err != nil {
		return nil, err
	}
	return &syncedSink{SnapshotSink: sink, dir: filepath.Join(s.dir, sink.ID())}, nil
}

type syncedSink struct {
	raft.SnapshotSink
	dir string
}

func (s *syncedSink) Close() error {
	if err := s.SnapshotSink.Close(); err != nil {
		return err
	}
	return syncDir(s.dir)
}
