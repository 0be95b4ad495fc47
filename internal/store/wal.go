package store

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	wal "github.com/hashicorp/raft-wal"
	"github.com/hashicorp/raft-wal/metadb"

	"github.com/raftkit/raftkit/internal/sentinel"
)

// walStore is an open raft-wal log with the directory lock raftkit holds
// for it.
type walStore struct {
	wal  *wal.WAL
	meta *metadb.BoltMetaDB
	lock *dirLock
}

// Close closes the log, then its metadata file (which raft-wal v0.4.0's
// own Close leaves open, holding its lock), then releases the directory.
func (w *walStore) Close() error {
	return errors.Join(w.wal.Close(), w.meta.Close(), w.lock.release())
}

// openWAL opens (or creates) Dir/wal. Like openBolt it refuses a directory
// held by another node (ErrDataDirLocked), a damaged or empty metadata file,
// and a missing log beside existing snapshots (sentinel.ErrCorruptStore).
func openWAL(dir string, snaps raft.SnapshotStore, logger hclog.Logger) (*walStore, error) {
	wdir := filepath.Join(dir, WALDir)
	if err := os.MkdirAll(wdir, 0o700); err != nil {
		return nil, fmt.Errorf("raftkit: create log directory %s: %w", wdir, err)
	}
	lock, err := lockDir(filepath.Join(dir, walLockFile))
	if err != nil {
		return nil, err
	}
	meta := &metadb.BoltMetaDB{}
	w, err := openWALLocked(wdir, meta, snaps, logger)
	if err != nil {
		_ = meta.Close()
		_ = lock.release()
		return nil, err
	}
	return &walStore{wal: w, meta: meta, lock: lock}, nil
}

func openWALLocked(wdir string, metaDB *metadb.BoltMetaDB, snaps raft.SnapshotStore, logger hclog.Logger) (*wal.WAL, error) {
	meta := filepath.Join(wdir, metadb.FileName)
	fi, err := os.Stat(meta)
	switch {
	case errors.Is(err, os.ErrNotExist):
		if snaps == nil {
			return nil, fmt.Errorf("raftkit: open log store %s: %w", meta, err)
		}
		if list, lerr := snaps.List(); lerr == nil && len(list) > 0 {
			return nil, fmt.Errorf("%w: %s is missing but %d snapshot(s) exist: the node's term and vote are lost; "+
				"restore it, or remove the whole directory to rejoin as a new node", sentinel.ErrCorruptStore, meta, len(list))
		}
	case err != nil:
		return nil, fmt.Errorf("raftkit: open log store %s: %w", meta, err)
	case fi.IsDir():
		return nil, fmt.Errorf("%w: %s is a directory, not a BoltDB file", sentinel.ErrCorruptStore, meta)
	case fi.Size() == 0:
		return nil, fmt.Errorf("%w: %s is empty (0 bytes); raftkit will not start it as a fresh node. "+
			"Remove the whole directory to rejoin as a new node", sentinel.ErrCorruptStore, meta)
	default:
		// raft-wal opens this file without a lock timeout; checking it first
		// turns damage and a foreign holder into errors instead of a panic
		// or a hang.
		if err := checkBoltFile(meta, false); err != nil {
			return nil, err
		}
	}
	var w *wal.WAL
	err = safely(func() error {
		var err error
		w, err = wal.Open(wdir, wal.WithLogger(logger.Named("wal")), wal.WithMetaStore(metaDB))
		return err
	})
	switch {
	case err == nil:
		return w, nil
	case errors.Is(err, sentinel.ErrCorruptStore):
		return nil, err
	case errors.Is(err, os.ErrPermission):
		return nil, fmt.Errorf("raftkit: open log store %s: %w", wdir, err)
	}
	// Anything else raft-wal refuses (bad segment headers, a missing
	// segment, an unknown codec, unparsable metadata) is damage.
	return nil, fmt.Errorf("%w: %s cannot be opened: %v", sentinel.ErrCorruptStore, wdir, err)
}
