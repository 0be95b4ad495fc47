// Package store is the storage door of a raftkit node: it knows which
// files make up a node's state in its data directory, tells the two log
// stores apart, locks the directory, runs the integrity checks and opens
// the stores, for a running node (Open) or for an offline tool on a
// stopped node's directory (OpenStopped). Behind the door: raftkit's
// BoltDB store (raft-boltdb v2's format), the door to raft-wal (which
// package walstore links in; see wal.go), raft's
// snapshot files, the log cache and the in-memory snapshot store.
//
// It must never import package raftkit or raftkit's network packages
// (internal/port, internal/peer): it knows disks, not nodes.
//
// A data directory holds
//
//	raft.db                 Bolt: log and stable store (raft-boltdb v2's format)
//	wal/, wal.lock          WAL: segments and wal-meta.db (raft-wal), raftkit's lock
//	snapshots/              raft's file snapshot store
//	peers.json[.applied]    a recovery configuration (package raftkit's offline.go)
package store

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"

	"github.com/raftkit/raftkit/internal/sentinel"
)

// Kind is a log store: where a node keeps its log and stable state.
type Kind int

const (
	// Bolt is raft.db, in raft-boltdb v2's format.
	Bolt Kind = iota
	// WAL is hashicorp/raft-wal under wal/.
	WAL
)

const (
	// BoltFile is the log and stable store inside a data directory.
	BoltFile = "raft.db"
	// WALDir is raft-wal's directory inside a data directory.
	WALDir = "wal"
	// WALMetaFile is raft-wal's metadata and stable store inside WALDir
	// (raft-wal's metadb.FileName; package walstore's tests check it).
	WALMetaFile = "wal-meta.db"
	// walLockFile is the lock raftkit holds while a node uses WALDir.
	// raft-wal's own lock (on wal-meta.db) waits forever when held.
	walLockFile = "wal.lock"
	// SnapshotDir is the folder under a data directory that holds
	// snapshots.
	SnapshotDir = "snapshots"
	// lockTimeout bounds the wait for raft.db's file lock.
	lockTimeout = time.Second
	// logCacheSize is how many recent log entries are kept in memory, so
	// that replication to followers a few batches behind reads no disk. It
	// covers two full AppendEntries batches (raftkit's MaxAppendEntries,
	// 512).
	logCacheSize = 1024
	// logCacheBytes bounds the cached entries' bytes: 1,024 commands of
	// up to 8 KiB, or fewer larger ones (see logCache).
	logCacheBytes = 8 << 20
)

// Keys of raft's stable store (hashicorp/raft's raft.go).
var (
	KeyCurrentTerm  = []byte("CurrentTerm")
	KeyLastVoteTerm = []byte("LastVoteTerm")
	KeyLastVoteCand = []byte("LastVoteCand")
)

// Detect reports which log store holds dir's state; found is false for a
// directory that holds neither (a new node's). A directory holding both is
// damaged: raftkit never creates one.
func Detect(dir string) (kind Kind, found bool, err error) {
	bolt := exists(filepath.Join(dir, BoltFile))
	wal := exists(filepath.Join(dir, WALDir, WALMetaFile))
	switch {
	case bolt && wal:
		return 0, false, fmt.Errorf("%w: %s holds both a BoltDB log (%s) and a raft-wal log (%s/); "+
			"raftkit never writes both: keep the one the node used and move the other away", sentinel.ErrCorruptStore, dir, BoltFile, WALDir)
	case bolt:
		return Bolt, true, nil
	case wal:
		return WAL, true, nil
	}
	return Bolt, false, nil
}

// KindError is a data directory opened with the other log store than the
// one that holds its state: the node would start with an empty log and
// forget its term and vote.
type KindError struct {
	Dir        string
	Want, Have Kind
}

func (e *KindError) Error() string {
	if e.Have == Bolt {
		return fmt.Sprintf("%s holds a BoltDB log (%s); keep LogStoreBolt for this directory, or start a new node in an empty one", e.Dir, BoltFile)
	}
	msg := fmt.Sprintf("%s holds a raft-wal log (%s/); set LogStoreWAL for this directory, or start a new node in an empty one", e.Dir, WALDir)
	if !WALLinked() {
		msg += " (LogStoreWAL needs " + WALImport + ")"
	}
	return msg
}

// checkKind refuses to open a data directory with the other store than
// the one that holds its state.
func checkKind(dir string, want Kind) error {
	kind, found, err := Detect(dir)
	if err != nil || !found || kind == want {
		return err
	}
	return &KindError{Dir: dir, Want: want, Have: kind}
}

func exists(path string) bool {
	_, err := os.Lstat(path)
	return err == nil
}

// Options say which stores Open opens.
type Options struct {
	// Dir is the data directory; unused with Memory.
	Dir string
	// Kind is the log store to open in Dir.
	Kind Kind
	// SnapshotRetain is how many file snapshots raft keeps.
	SnapshotRetain int
	// Logger receives the stores' lines.
	Logger hclog.Logger
	// Memory, if set, holds an in-memory node's state instead of Dir.
	Memory *Memory
}

// Memory is an in-memory node's log, stable store and snapshots.
type Memory struct {
	Logs  *raft.InmemStore
	Snaps *MemSnapshots
}

// Stores are what a node keeps its raft state in.
type Stores struct {
	Log    raft.LogStore
	Stable raft.StableStore
	Snaps  raft.SnapshotStore
	// Cache is the log cache in front of an on-disk log (nil in memory).
	Cache *LogCache
	close func() error // nil in memory
}

// Close closes the stores and releases the directory.
func (s *Stores) Close() error {
	if s.close == nil {
		return nil
	}
	return s.close()
}

// Open opens (or creates) the stores o asks for, with the directory
// locked for as long as they are open. Errors match sentinel.ErrCorruptStore
// or sentinel.ErrDataDirLocked where those apply; a Dir that cannot be
// created is a *sentinel.FieldError, a store of the other kind a
// *KindError.
func Open(o Options) (*Stores, error) {
	if o.Memory != nil {
		return &Stores{Log: o.Memory.Logs, Stable: o.Memory.Logs, Snaps: o.Memory.Snaps}, nil
	}
	if err := mkdirDurable(o.Dir); err != nil {
		return nil, sentinel.Field("Dir", o.Dir, "cannot be created: %v", err)
	}
	snaps, err := openSnapshotStore(o.Dir, o.SnapshotRetain, o.Logger)
	if err != nil {
		return nil, err
	}
	if err := checkKind(o.Dir, o.Kind); err != nil {
		return nil, err
	}
	logs, stable, closer, logPath, err := openLogStore(o.Dir, o.Kind, false, snaps, o.Logger)
	if err != nil {
		return nil, err
	}
	// The names snapshots/ and wal/ (made just now if new) must survive
	// a power cut before anything is written under them.
	if err := syncDir(o.Dir); err != nil {
		closer()
		return nil, fmt.Errorf("raftkit: sync data directory %s: %w", o.Dir, err)
	}
	// With the log store's lock held, no other node writes snapshots here.
	removeTempSnapshots(o.Dir, o.Logger)
	if err := checkLogAgainstSnapshots(logPath, logs, snaps, o.Logger); err != nil {
		closer()
		return nil, err
	}
	cache := newLogCache(logs, logCacheSize, logCacheBytes)
	return &Stores{Log: cache, Stable: stable, Snaps: snaps, Cache: cache, close: closer}, nil
}

// openLogStore locks dir and opens its log and stable store of the given
// kind, after the integrity checks of that kind's files. readOnly (BoltDB
// only) opens raft.db without write access, under a shared lock that a
// running node's exclusive one excludes. snaps may be nil where the files
// are known to exist. path names the store in error messages.
func openLogStore(dir string, kind Kind, readOnly bool, snaps raft.SnapshotStore, logger hclog.Logger) (
	logs raft.LogStore, stable raft.StableStore, closer func() error, path string, err error) {
	if kind == WAL {
		path = filepath.Join(dir, WALDir)
		w, err := openWAL(dir, snaps, logger)
		if err != nil {
			return nil, nil, nil, path, err
		}
		return w, w, w.Close, path, nil
	}
	path = filepath.Join(dir, BoltFile)
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
		return nil, fmt.Errorf("raftkit: open snapshot store %s: %w", filepath.Join(dir, SnapshotDir), err)
	}
	return &syncedSnapshots{SnapshotStore: snaps, dir: filepath.Join(dir, SnapshotDir)}, nil
}

// Stopped is a stopped node's data directory, locked and opened for an
// offline tool. While it is open no node can start on the directory.
type Stopped struct {
	Dir  string
	Kind Kind
	// Path is the log store's file or directory.
	Path   string
	Logs   raft.LogStore
	Stable raft.StableStore
	close  func() error
}

// OpenStopped opens a stopped node's data directory after the checks a
// node's start makes on its log store files. A directory that holds no
// node's state fails with an error matching fs.ErrNotExist; one in use by a
// running node with sentinel.ErrDataDirLocked; a damaged one with sentinel.ErrCorruptStore.
//
// With write false nothing is written to a BoltDB directory (raft.db is
// opened read-only). A raft-wal directory is opened by raft-wal itself,
// which on open recovers its tail segment as at a node's start and deletes
// segment files that a crash left unreferenced; the log's content and the
// stable store are not changed.
func OpenStopped(dir string, write bool) (*Stopped, error) {
	kind, found, err := Detect(dir)
	if err != nil {
		return nil, err
	}
	if !found {
		return nil, fmt.Errorf("raftkit: %s is not a node's data directory: neither %s nor %s exists: %w",
			dir, BoltFile, filepath.Join(WALDir, WALMetaFile), fs.ErrNotExist)
	}
	logs, stable, closer, path, err := openLogStore(dir, kind, !write, nil, hclog.NewNullLogger())
	if err != nil {
		return nil, err
	}
	return &Stopped{Dir: dir, Kind: kind, Path: path, Logs: logs, Stable: stable, close: closer}, nil
}

// Close closes the stores and releases the directory. Later calls do
// nothing.
func (d *Stopped) Close() error {
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

// Vote is the term and vote in a stable store.
type Vote struct {
	CurrentTerm  uint64
	LastVoteTerm uint64
	LastVoteCand string
}

// Vote reads the stored term and vote.
func (d *Stopped) Vote() (v Vote, err error) {
	err = safely(func() error { v, err = d.readVote(); return err })
	return v, err
}

func (d *Stopped) readVote() (Vote, error) {
	var v Vote
	var err error
	if v.CurrentTerm, err = stableUint64(d.Stable, KeyCurrentTerm); err != nil {
		return v, fmt.Errorf("%w: %s: reading the current term: %v", sentinel.ErrCorruptStore, d.Path, err)
	}
	if v.LastVoteTerm, err = stableUint64(d.Stable, KeyLastVoteTerm); err != nil {
		return v, fmt.Errorf("%w: %s: reading the last vote's term: %v", sentinel.ErrCorruptStore, d.Path, err)
	}
	cand, err := stableBytes(d.Stable, KeyLastVoteCand)
	if err != nil {
		return v, fmt.Errorf("%w: %s: reading the last vote: %v", sentinel.ErrCorruptStore, d.Path, err)
	}
	v.LastVoteCand = string(cand)
	return v, nil
}

// LogInfo is what the log says about itself: its bounds, the term of its
// last entry, and the latest configuration entry in it (if any).
type LogInfo struct {
	First, Last, LastTerm uint64
	Conf                  *raft.Configuration
	ConfIndex             uint64
}

// ReadLog reads the log's bounds and walks it back from its end to the
// latest configuration entry.
func (d *Stopped) ReadLog() (LogInfo, error) {
	var out LogInfo
	err := safely(func() error {
		var err error
		if out.First, err = d.Logs.FirstIndex(); err != nil {
			return fmt.Errorf("%w: %s: reading the first log index: %v", sentinel.ErrCorruptStore, d.Path, err)
		}
		if out.Last, err = d.Logs.LastIndex(); err != nil {
			return fmt.Errorf("%w: %s: reading the last log index: %v", sentinel.ErrCorruptStore, d.Path, err)
		}
		if out.Last == 0 {
			return nil
		}
		for i := out.Last; i >= out.First && i > 0; i-- {
			var entry raft.Log
			err := d.Logs.GetLog(i, &entry)
			if errors.Is(err, raft.ErrLogNotFound) && i != out.Last {
				// A hole raft leaves on purpose: a user restore bumps the
				// last index past a snapshot without writing an entry.
				continue
			}
			if err != nil {
				return fmt.Errorf("%w: %s: log entry %d cannot be read: %v", sentinel.ErrCorruptStore, d.Path, i, err)
			}
			if i == out.Last {
				out.LastTerm = entry.Term
			}
			if entry.Type == raft.LogConfiguration {
				cfg := raft.DecodeConfiguration(entry.Data) // panics on damage; safely reports it
				out.Conf, out.ConfIndex = &cfg, entry.Index
				return nil
			}
		}
		return nil
	})
	return out, err
}

// MaxSaneTerm is the highest term a stable store may hold. A term at or
// above it did not come from this cluster's elections (they count up by
// one from 1) but from a stranger's RPC; raft then cannot elect anyone:
// a candidate's term+1 wraps around to 0 at 2^64-1.
const MaxSaneTerm = math.MaxUint64 >> 1 // 2^63 - 1

// NoVote is the candidate that ResetPoisonedTerm records as voted for in
// the reset term: no server's ID, so the node grants no vote in that term.
const NoVote = "raftkit-recover:no-vote"

// TermReset says what ResetPoisonedTerm changed.
type TermReset struct {
	From, To uint64
}

// ResetPoisonedTerm repairs a stable store whose current term (or last
// vote's term) is above MaxSaneTerm: it sets the current term to the
// highest term in the node's log and snapshots, and records the vote in
// that term as cast for NoVote, so that the node will not vote in that term
// again and takes part in elections from the next term on. It changes
// nothing when the terms are sane. See WriteRecovery for why this is safe
// offline.
func (d *Stopped) ResetPoisonedTerm() (*TermReset, error) {
	snapshotTerm := maxSnapshotTerm(filepath.Join(d.Dir, SnapshotDir))
	v, err := d.Vote()
	if err != nil {
		return nil, err
	}
	if v.CurrentTerm <= MaxSaneTerm && v.LastVoteTerm <= MaxSaneTerm {
		return nil, nil
	}
	l, err := d.ReadLog()
	if err != nil {
		return nil, err
	}
	to := max(l.LastTerm, snapshotTerm)
	if to > MaxSaneTerm {
		return nil, fmt.Errorf("%w: %s: the log or a snapshot holds term %d, above %d: entries with such a term "+
			"cannot come from this cluster's elections, and raftkit cannot repair them", sentinel.ErrCorruptStore, d.Path, to, uint64(MaxSaneTerm))
	}
	if to == 0 {
		to = 1 // a bootstrapped node starts in term 1
	}
	// Three transactions, in an order that leaves every state in between
	// (a crash, a power cut) still poisoned, so that the next attempt
	// repairs it, and never sane with the old vote's candidate in the
	// reset term, which could grant a second vote in that term.
	for _, set := range []func() error{
		func() error { return d.Stable.Set(KeyLastVoteCand, []byte(NoVote)) },
		func() error { return d.Stable.SetUint64(KeyLastVoteTerm, to) },
		func() error { return d.Stable.SetUint64(KeyCurrentTerm, to) },
	} {
		if err := set(); err != nil {
			return nil, fmt.Errorf("raftkit: %s: resetting the current term: %w", d.Path, err)
		}
	}
	return &TermReset{From: v.CurrentTerm, To: to}, nil
}

// CheckSnapshots checks the log against the snapshots as a node's start
// does (see Open): a directory that fails it could not be started.
func (d *Stopped) CheckSnapshots() error {
	snaps, err := openSnapshotStore(d.Dir, 1<<20, hclog.NewNullLogger())
	if err != nil {
		return err
	}
	return checkLogAgainstSnapshots(d.Path, d.Logs, snaps, hclog.NewNullLogger())
}

// Snapshots lists and checks the snapshot files, newest first.
func (d *Stopped) Snapshots(ctx context.Context) ([]SnapshotFile, error) {
	return readSnapshots(ctx, filepath.Join(d.Dir, SnapshotDir))
}

// SnapshotConfiguration is the configuration in snapshot id's metadata
// and the index it was written at.
func (d *Stopped) SnapshotConfiguration(id string) (raft.Configuration, uint64, bool) {
	m, err := readSnapshotMeta(filepath.Join(d.Dir, SnapshotDir, id))
	if err != nil {
		return raft.Configuration{}, 0, false
	}
	return m.Configuration, m.ConfigurationIndex, true
}
