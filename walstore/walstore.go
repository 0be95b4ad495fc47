// Package walstore links hashicorp/raft-wal into a program, as the log
// store raftkit.LogStoreWAL. Import it for its side effect, in the program
// (or test) that runs nodes with Config.LogStore = LogStoreWAL or opens
// their data directories offline:
//
//	import _ "github.com/raftkit/raftkit/walstore"
//
// Without it, such a node fails to start with an error (matching
// raftkit.ErrInvalidConfig) that names this import, and an offline tool
// fails on a raft-wal directory with one that names it too. A program whose
// nodes keep their log in BoltDB (the default) does not import it, and so
// compiles none of raft-wal's dependencies (among them coreos/etcd's
// fileutil, go-systemd's journal and capnslog).
//
// It must never import package raftkit: the root package's own tests
// import it.
package walstore

import (
	"errors"

	"github.com/hashicorp/go-hclog"
	wal "github.com/hashicorp/raft-wal"
	"github.com/hashicorp/raft-wal/metadb"

	"github.com/raftkit/raftkit/internal/store"
)

func init() { store.RegisterWAL(open) }

// walLog is raft-wal's log with the metadata file it opened.
type walLog struct {
	*wal.WAL
	meta *metadb.BoltMetaDB
}

// Close closes the log, then its metadata file, which raft-wal v0.4.0's
// own Close leaves open, holding its lock.
func (w *walLog) Close() error {
	return errors.Join(w.WAL.Close(), w.meta.Close())
}

// open opens raft-wal's log in wdir (see store.WALOpener).
func open(wdir string, logger hclog.Logger) (store.WALLog, error) {
	meta := &metadb.BoltMetaDB{}
	opened := false
	defer func() {
		if !opened { // an error, or a panic that raftkit reports as damage
			_ = meta.Close()
		}
	}()
	w, err := wal.Open(wdir, wal.WithLogger(logger), wal.WithMetaStore(meta))
	if err != nil {
		return nil, err
	}
	opened = true
	return &walLog{WAL: w, meta: meta}, nil
}
