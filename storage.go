package raftkit

import (
	"errors"
	"fmt"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	"github.com/hashicorp/raft-wal/metadb"
)

// The storage layer. This file is the one door to a data directory: it
// knows which files make up a node's state, tells the two log stores apart,
// locks the directory, runs the integrity checks and opens the stores,
// either for a running node (openStores) or for an offline tool on a
// stopped node's directory (openStoppedDir: InspectDir, WriteRecovery).
// The formats themselves are handled beside it: BoltDB in stores.go,
// raft-wal in walstore.go, raft's snapshot files in snapfiles.go.
//
// A data directory holds
//
//	raft.db                 LogStoreBolt: log and stable store (raft-boltdb v2's format)
//	wal/, wal.lock          LogStoreWAL: segments and wal-meta.db (raft-wal), raftkit's lock
//	snapshots/              raft's file snapshot store
//	peers.json[.applied]    a recovery configuration (recover.go)

const (
	// boltFile is the log and stable store inside Config.Dir.
	boltFile = "raft.db"
	// walDir is raft-wal's directory inside Config.Dir.
	walDir = "wal"
	// walLockFile is the lock raftkit holds while a node uses walDir.
	// raft-wal's own lock (on wal-meta.db) waits forever when held.
	walLockFile = "wal.lock"
	// snapshotDir is the folder under Config.Dir that holds snapshots.
	snapshotDir = "snapshots"
	// lockTimeout bounds the wait for raft.db's file lock.
	lockTimeout = time.Second
	// logCacheSize is how many recent log entries are kept in memory, so
	// that replication to followers a few batches behind reads no disk. It
	// covers two full AppendEntries batches (raftMaxAppendEntries).
	logCacheSize = 1024
	// logCacheBytes bounds the cached entries' bytes: 1,024 commands of
	// up to 8 KiB, or fewer larger ones (see logCache).
	logCacheBytes = 8 << 20
)

// Keys of raft's stable store (hashicorp/raft's raft.go).
var (
	keyCurrentTerm  = []byte("CurrentTerm")
	keyLastVoteTerm = []byte("LastVoteTerm")
	keyLastVoteCand = []byte("LastVoteCand")
)

// detectLogStore reports which log store holds dir's state; found is false
// for a directory that holds neither (a new node's). A directory holding
// both is damaged: raftkit never creates one.
func detectLogStore(dir string) (kind LogStoreKind, found bool, err error) {
	bolt := exists(filepath.Join(dir, boltFile))
	wal := exists(filepath.Join(dir, walDir, metadb.FileName))
	switch {
	case bolt && wal:
		return 0, false, fmt.Errorf("%w: %s holds both a BoltDB log (%s) and a raft-wal log (%s/); "+
			"raftkit never writes both: keep the one the node used and move the other away", ErrCorruptStore, dir, boltFile, walDir)
	case bolt:
		return LogStoreBolt, true, nil
	case wal:
		return LogStoreWAL, true, nil
	}
	return LogStoreBolt, false, nil
}

// checkStoreKind refuses to open a data directory with the other store
// than the one that holds its state: the node would start with an empty
// log and forget its term and vote.
func checkStoreKind(dir string, want LogStoreKind) error {
	kind, found, err := detectLogStore(dir)
	if err != nil || !found || kind == want {
		return err
	}
	if kind == LogStoreBolt {
		return configErr("LogStore", want.String(), "but %s holds a BoltDB log (%s); "+
			"keep LogStoreBolt for this directory, or start a new node in an empty one", dir, boltFile)
	}
	return configErr("LogStore", want.String(), "but %s holds a raft-wal log (%s/); "+
		"set LogStoreWAL for this directory, or start a new node in an empty one", dir, walDir)
}

func exists(path string) bool {
	_, err := os.Lstat(path)
	return err == nil
}

// nodeStores is what a node keeps its raft state in.
type nodeStores struct {
	log    raft.LogStore
	stable raft.StableStore
	snaps  raft.SnapshotStore
	close  func() error // nil in memory
}

func (s *nodeStores) Close() error {
	if s.close == nil {
		return nil
	}
	return s.close()
}

// openStores opens (or creates) the stores a node's Config asks for, with
// the directory locked for as long as they are open.
func openStores(s *settled) (*nodeStores, error) {
	if s.InMemory {
		return &nodeStores{log: s.Storage.logs, stable: s.Storage.logs, snaps: s.Storage.snaps}, nil
	}
	if err := os.MkdirAll(s.Dir, 0o700); err != nil {
		return nil, configErr("Dir", s.Dir, "cannot be created: %v", err)
	}
	snaps, err := openSnapshotStore(s.Dir, s.SnapshotRetain, s.Logger)
	if err != nil {
		return nil, err
	}
	if err := checkStoreKind(s.Dir, s.LogStore); err != nil {
		return nil, err
	}
	logs, stable, closer, logPath, err := openLogStore(s.Dir, s.LogStore, false, snaps, s.Logger)
	if err != nil {
		return nil, err
	}
	// With the log store's lock held, no other node writes snapshots here.
	removeTempSnapshots(s.Dir, s.Logger)
	if err := checkLogAgainstSnapshots(logPath, logs, snaps, s.Logger); err != nil {
		closer()
		return nil, err
	}
	return &nodeStores{log: newLogCache(logs, logCacheSize, logCacheBytes), stable: stable, snaps: snaps, close: closer}, nil
}

// openLogStore locks dir and opens its log and stable store of the given
// kind, after the integrity checks of that kind's files. readOnly (BoltDB
// only) opens raft.db without write access, under a shared lock that a
// running node's exclusive one excludes. snaps may be nil where the files
// are known to exist. path names the store in error messages.
func openLogStore(dir string, kind LogStoreKind, readOnly bool, snaps raft.SnapshotStore, logger hclog.Logger) (
	logs raft.LogStore, stable raft.StableStore, closer func() error, path string, err error) {
	if kind == LogStoreWAL {
		path = filepath.Join(dir, walDir)
		w, err := openWAL(dir, snaps, logger)
		if err != nil {
			return nil, nil, nil, path, err
		}
		return w.wal, w.wal, w.Close, path, nil
	}
	path = filepath.Join(dir, boltFile)
	bolt, err := openBolt(path, snaps, readOnly)
	if err != nil {
		return nil, nil, nil, path, err
	}
	return bolt, bolt, bolt.Close, path, nil
}

// openSnapshotStore opens the file snapshot store under dir/snapshots.
func openSnapshotStore(dir string, retain int, logger hclog.Logger) (raft.SnapshotStore, error) {
	snaps, err := raft.NewFileSnapshotStoreWithLogger(dir, retain, logger.Named("snapshots"))
	if err != nil {
		return nil, fmt.Errorf("raftkit: open snapshot store %s: %w", filepath.Join(dir, snapshotDir), err)
	}
	return snaps, nil
}

// stoppedDir is a stopped node's data directory, locked and opened for an
// offline tool. While it is open no node can start on the directory.
type stoppedDir struct {
	dir    string
	kind   LogStoreKind
	path   string // the log store's file or directory
	logs   raft.LogStore
	stable raft.StableStore
	close  func() error
}

// openStoppedDir opens a stopped node's data directory after the checks a
// node's start makes on its log store files. A directory that holds no
// node's state fails with an error matching fs.ErrNotExist; one in use by a
// running node with ErrDataDirLocked; a damaged one with ErrCorruptStore.
//
// With write false nothing is written to a BoltDB directory (raft.db is
// opened read-only). A raft-wal directory is opened by raft-wal itself,
// which on open recovers its tail segment as at a node's start and deletes
// segment files that a crash left unreferenced; the log's content and the
// stable store are not changed.
func openStoppedDir(dir string, write bool) (*stoppedDir, error) {
	kind, found, err := detectLogStore(dir)
	if err != nil {
		return nil, err
	}
	if !found {
		return nil, fmt.Errorf("raftkit: %s is not a node's data directory: neither %s nor %s exists: %w",
			dir, boltFile, filepath.Join(walDir, metadb.FileName), fs.ErrNotExist)
	}
	logs, stable, closer, path, err := openLogStore(dir, kind, !write, nil, hclog.NewNullLogger())
	if err != nil {
		return nil, err
	}
	return &stoppedDir{dir: dir, kind: kind, path: path, logs: logs, stable: stable, close: closer}, nil
}

// Close closes the stores and releases the directory. Later calls do
// nothing.
func (d *stoppedDir) Close() error {
	if d.close == nil {
		return nil
	}
	err := d.close()
	d.close = nil
	return err
}

// stableUint64 reads a uint64 from the stable store, 0 when it is unset.
func stableUint64(st raft.StableStore, key []byte) (uint64, error) {
	v, err := st.GetUint64(key)
	if err != nil && err.Error() == "not found" { // raft-boltdb's ErrKeyNotFound, as raft matches it
		return 0, nil
	}
	return v, err
}

// stableBytes reads a value from the stable store, nil when it is unset.
func stableBytes(st raft.StableStore, key []byte) ([]byte, error) {
	v, err := st.Get(key)
	if err != nil && err.Error() == "not found" {
		return nil, nil
	}
	return v, err
}

// storedVote is the term and vote in a stable store.
type storedVote struct {
	currentTerm  uint64
	lastVoteTerm uint64
	lastVoteCand string
}

func (d *stoppedDir) vote() (v storedVote, err error) {
	err = safely(func() error { v, err = d.readVote(); return err })
	return v, err
}

func (d *stoppedDir) readVote() (storedVote, error) {
	var v storedVote
	var err error
	if v.currentTerm, err = stableUint64(d.stable, keyCurrentTerm); err != nil {
		return v, fmt.Errorf("%w: %s: reading the current term: %v", ErrCorruptStore, d.path, err)
	}
	if v.lastVoteTerm, err = stableUint64(d.stable, keyLastVoteTerm); err != nil {
		return v, fmt.Errorf("%w: %s: reading the last vote's term: %v", ErrCorruptStore, d.path, err)
	}
	cand, err := stableBytes(d.stable, keyLastVoteCand)
	if err != nil {
		return v, fmt.Errorf("%w: %s: reading the last vote: %v", ErrCorruptStore, d.path, err)
	}
	v.lastVoteCand = string(cand)
	return v, nil
}

// storedLog is what the log says about itself: its bounds, the term of its
// last entry, and the latest configuration entry in it (if any).
type storedLog struct {
	first, last, lastTerm uint64
	conf                  *raft.Configuration
	confIndex             uint64
}

// readLog reads the log's bounds and walks it back from its end to the
// latest configuration entry.
func (d *stoppedDir) readLog() (storedLog, error) {
	var out storedLog
	err := safely(func() error {
		var err error
		if out.first, err = d.logs.FirstIndex(); err != nil {
			return fmt.Errorf("%w: %s: reading the first log index: %v", ErrCorruptStore, d.path, err)
		}
		if out.last, err = d.logs.LastIndex(); err != nil {
			return fmt.Errorf("%w: %s: reading the last log index: %v", ErrCorruptStore, d.path, err)
		}
		if out.last == 0 {
			return nil
		}
		for i := out.last; i >= out.first && i > 0; i-- {
			var entry raft.Log
			err := d.logs.GetLog(i, &entry)
			if errors.Is(err, raft.ErrLogNotFound) && i != out.last {
				// A hole raft leaves on purpose: a user restore bumps the
				// last index past a snapshot without writing an entry.
				continue
			}
			if err != nil {
				return fmt.Errorf("%w: %s: log entry %d cannot be read: %v", ErrCorruptStore, d.path, i, err)
			}
			if i == out.last {
				out.lastTerm = entry.Term
			}
			if entry.Type == raft.LogConfiguration {
				cfg := raft.DecodeConfiguration(entry.Data) // panics on damage; safely reports it
				out.conf, out.confIndex = &cfg, entry.Index
				return nil
			}
		}
		return nil
	})
	return out, err
}

// maxSaneTerm is the highest term a stable store may hold. A term at or
// above it did not come from this cluster's elections (they count up by
// one from 1) but from a stranger's RPC; raft then cannot elect anyone:
// a candidate's term+1 wraps around to 0 at 2^64-1.
const maxSaneTerm = math.MaxUint64 >> 1 // 2^63 - 1

// noVote is the candidate that resetPoisonedTerm records as voted for in
// the reset term: no server's ID, so the node grants no vote in that term.
const noVote = "raftkit-recover:no-vote"

// termReset says what resetPoisonedTerm changed.
type termReset struct {
	from, to uint64
}

// resetPoisonedTerm repairs a stable store whose current term (or last
// vote's term) is above maxSaneTerm: it sets the current term to the
// highest term in the node's log and snapshots, and records the vote in
// that term as cast for noVote, so that the node will not vote in that term
// again and takes part in elections from the next term on. It changes
// nothing when the terms are sane. See WriteRecovery for why this is safe
// offline.
func (d *stoppedDir) resetPoisonedTerm(snapshotTerm uint64) (*termReset, error) {
	v, err := d.vote()
	if err != nil {
		return nil, err
	}
	if v.currentTerm <= maxSaneTerm && v.lastVoteTerm <= maxSaneTerm {
		return nil, nil
	}
	l, err := d.readLog()
	if err != nil {
		return nil, err
	}
	to := max(l.lastTerm, snapshotTerm)
	if to > maxSaneTerm {
		return nil, fmt.Errorf("%w: %s: the log or a snapshot holds term %d, above %d: entries with such a term "+
			"cannot come from this cluster's elections, and raftkit cannot repair them", ErrCorruptStore, d.path, to, uint64(maxSaneTerm))
	}
	if to == 0 {
		to = 1 // a bootstrapped node starts in term 1
	}
	for _, set := range []func() error{
		func() error { return d.stable.SetUint64(keyCurrentTerm, to) },
		func() error { return d.stable.SetUint64(keyLastVoteTerm, to) },
		func() error { return d.stable.Set(keyLastVoteCand, []byte(noVote)) },
	} {
		if err := set(); err != nil {
			return nil, fmt.Errorf("raftkit: %s: resetting the current term: %w", d.path, err)
		}
	}
	return &termReset{from: v.currentTerm, to: to}, nil
}
