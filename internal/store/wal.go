package store

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"

	"github.com/raftkit/raftkit/internal/sentinel"
)

// raft-wal is linked into a program only when it imports package
// github.com/raftkit/raftkit/walstore, which registers its opener here
// (RegisterWAL). This package does the raft-wal-independent part of opening
// Dir/wal (the directory, raftkit's lock, the checks of wal-meta.db); the
// opener does the rest. So a program on BoltDB compiles none of raft-wal's
// dependencies (coreos/etcd's fileutil, go-systemd, capnslog).

// WALImport is the import that links raft-wal into a program.
const WALImport = `import _ "github.com/raftkit/raftkit/walstore"`

// ErrWALNotLinked is opening a raft-wal log in a program that does not
// import package walstore.
var ErrWALNotLinked = errors.New("raftkit: raft-wal (LogStoreWAL) is not linked into this program; add " + WALImport)

// WALLog is an open raft-wal log: its log and stable store; IsMonotonic,
// which tells raft (through the log cache) to empty the log rather than
// truncate it when a snapshot is installed; and Close, which closes
// everything the opener opened (but not raftkit's directory lock, which
// this package releases).
type WALLog interface {
	raft.LogStore
	raft.StableStore
	raft.MonotonicLogStore
	Close() error
}

// WALOpener opens (or creates) raft-wal's log in wdir, a directory that
// exists and that raftkit has locked, and whose metadata file
// (WALMetaFile), if present, passed raftkit's checks. Errors it returns that
// match neither sentinel.ErrCorruptStore nor os.ErrPermission are reported
// as damage; a panic is reported as damage too.
type WALOpener func(wdir string, logger hclog.Logger) (WALLog, error)

var walOpener atomic.Pointer[WALOpener]

// RegisterWAL makes open the opener of raft-wal logs. Package walstore
// calls it when it is initialised.
func RegisterWAL(open WALOpener) { walOpener.Store(&open) }

// WALLinked reports whether package walstore is linked in (RegisterWAL was
// called).
func WALLinked() bool { return walOpener.Load() != nil }

// walStore is an open raft-wal log with the directory lock raftkit holds
// for it.
type walStore struct {
	WALLog
	lock *dirLock
}

// Close closes the log, then releases the directory.
func (w *walStore) Close() error {
	return errors.Join(w.WALLog.Close(), w.lock.release())
}

// openWAL opens (or creates) Dir/wal. Like openBolt it refuses a directory
// held by another node (ErrDataDirLocked), a damaged or empty metadata file,
// and a missing log beside existing snapshots (sentinel.ErrCorruptStore).
// Without package walstore it fails with ErrWALNotLinked, before it
// creates or locks anything.
func openWAL(dir string, snaps raft.SnapshotStore, logger hclog.Logger) (*walStore, error) {
	open := walOpener.Load()
	if open == nil {
		return nil, fmt.Errorf("%w (%s holds or is to hold a raft-wal log)", ErrWALNotLinked, dir)
	}
	wdir := filepath.Join(dir, WALDir)
	if err := os.MkdirAll(wdir, 0o700); err != nil {
		return nil, fmt.Errorf("raftkit: create log directory %s: %w", wdir, err)
	}
	lock, err := lockDir(filepath.Join(dir, walLockFile))
	if err != nil {
		return nil, err
	}
	w, err := openWALLocked(wdir, *open, snaps, logger)
	if err != nil {
		_ = lock.release()
		return nil, err
	}
	return &walStore{WALLog: w, lock: lock}, nil
}

func openWALLocked(wdir string, open WALOpener, snaps raft.SnapshotStore, logger hclog.Logger) (WALLog, error) {
	meta := filepath.Join(wdir, WALMetaFile)
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
	var w WALLog
	err = safely(func() error {
		var err error
		w, err = open(wdir, logger.Named("wal"))
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
