package raftkit

// Where a node keeps its log and stable state: the log store's kind, the
// storage settings, and MemStorage for in-memory nodes.

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/hashicorp/raft"

	"github.com/raftkit/raftkit/internal/store"
)

// LogStoreKind selects the on-disk store of a node's raft log and stable
// state (term and vote); see Config.LogStore.
type LogStoreKind int

const (
	// LogStoreBolt keeps the log and stable state in one BoltDB file,
	// Dir/raft.db, in hashicorp/raft-boltdb/v2's file format (raftkit
	// writes it with its own encoder; see internal/store). It is the default: one file,
	// inspectable with bbolt's tools, checked page by page at start. Every
	// commit costs two fsyncs (BoltDB's data and meta pages), and the file
	// does not shrink after snapshots truncate the log.
	LogStoreBolt LogStoreKind = iota

	// LogStoreWAL keeps the log in append-only segment files under
	// Dir/wal (hashicorp/raft-wal), with its metadata and stable state in
	// Dir/wal/wal-meta.db. A commit costs one fsync, so sequential writes
	// commit about twice as fast as with BoltDB, and truncated segments are
	// deleted, so disk use follows the log. raft-wal checks commit
	// checksums only when it recovers the last, unsealed segment at start;
	// damage inside an older, sealed segment is found only when raft reads
	// those entries (as a decode error), or not at all for flipped payload
	// bits.
	//
	// A program that uses it imports package
	// github.com/raftkit/raftkit/walstore (import _ "…/walstore"), which
	// links raft-wal in; without that import a node with LogStoreWAL fails
	// to start with a *ConfigError for LogStore that names the import.
	LogStoreWAL

	// LogStoreMemory keeps the log, stable state (term and vote) and
	// snapshots in memory, in Config.Storage (default: a new MemStorage),
	// while the node talks to its peers over TCP like any other: the
	// -inmem mode of development setups and tests that want real sockets
	// without disks. Dir must be empty: nothing is written to disk.
	//
	// Everything is lost when the process exits. A node restarted with an
	// empty store is a new, empty node under the old ID, but its cluster
	// still counts it as the voter it was, and raft's safety rests on a
	// voter never forgetting its log and its vote: such a node can vote a
	// second time in a term it already voted in (two leaders in one term),
	// and a write acknowledged by a majority that included it can be lost if
	// another node of that majority fails. raftkit cannot tell this restart
	// from a first start. So restart a LogStoreMemory node only as a new
	// member: remove it first (RemoveServer), then start it with Join (or
	// under a new ID); or restart the whole cluster, all empty, together.
	// Never mix LogStoreMemory nodes into a cluster whose data matters.
	LogStoreMemory
)

// String returns the kind's name as written in Go, e.g. "LogStoreWAL".
func (k LogStoreKind) String() string {
	switch k {
	case LogStoreBolt:
		return "LogStoreBolt"
	case LogStoreWAL:
		return "LogStoreWAL"
	case LogStoreMemory:
		return "LogStoreMemory"
	}
	return "LogStoreKind(" + strconv.Itoa(int(k)) + ")"
}

func validateLogStore(k LogStoreKind) error {
	if k != LogStoreBolt && k != LogStoreWAL && k != LogStoreMemory {
		return configErr("LogStore", "LogStoreKind("+strconv.Itoa(int(k))+")", "is not LogStoreBolt, LogStoreWAL or LogStoreMemory")
	}
	return nil
}

// settleStores checks the snapshot settings, the log store and where the
// node keeps its state: Dir on disk, or a MemStorage in memory (InMemory,
// or LogStoreMemory over TCP).
func settleStores(c Config) (Config, error) {
	if c.SnapshotRetain < 0 {
		return c, configErr("SnapshotRetain", strconv.Itoa(c.SnapshotRetain), "must be at least 1")
	}
	if c.SnapshotRetain == 0 {
		c.SnapshotRetain = DefaultSnapshotRetain
	}
	if c.SnapshotThreshold == 0 {
		c.SnapshotThreshold = DefaultSnapshotThreshold
	}
	for _, f := range []struct {
		name  string
		value *int64
		def   int64
	}{{"TrailingLogBytes", &c.TrailingLogBytes, DefaultTrailingLogBytes}, {"SnapshotThresholdBytes", &c.SnapshotThresholdBytes, DefaultSnapshotThresholdBytes}} {
		if *f.value < 0 {
			return c, configErr(f.name, strconv.FormatInt(*f.value, 10), "must not be negative (0 means the default, %d)", f.def)
		}
		if *f.value == 0 {
			*f.value = f.def
		}
	}
	if err := validateLogStore(c.LogStore); err != nil {
		return c, err
	}
	if c.InMemory {
		if c.Storage == nil {
			c.Storage = NewMemStorage()
		}
		return c, nil
	}
	if c.LogStore == LogStoreMemory {
		if c.Dir != "" {
			return c, configErr("Dir", c.Dir, "must be empty with LogStoreMemory, which writes nothing to disk")
		}
		if c.Storage == nil {
			c.Storage = NewMemStorage()
		}
		return c, nil
	}
	if c.LogStore == LogStoreWAL && !store.WALLinked() {
		return c, configErr("LogStore", c.LogStore.String(), "needs raft-wal linked into the program: add %s", store.WALImport)
	}
	if c.Storage != nil {
		return c, configErr("Storage", "", "only nodes that keep their state in memory use a MemStorage; set InMemory or LogStore: LogStoreMemory, or leave Storage nil")
	}
	if strings.TrimSpace(c.Dir) == "" {
		return c, configErr("Dir", c.Dir, "required (or set InMemory, or LogStore: LogStoreMemory, for a node without disk)")
	}
	if fi, err := os.Stat(c.Dir); err == nil && !fi.IsDir() {
		return c, configErr("Dir", c.Dir, "is a file, not a directory")
	}
	c.Dir = filepath.Clean(c.Dir)
	return c, nil
}

// MemStorage is the state of a node that keeps it in memory
// (Config.Storage, with InMemory or LogStoreMemory): its log, stable store
// and snapshots. Giving a new node the MemStorage of a closed
// one restarts it with the state it had, as after a process crash. One
// MemStorage must not be used by two running nodes at once.
type MemStorage struct {
	mem store.Memory
}

// NewMemStorage returns empty in-memory storage.
func NewMemStorage() *MemStorage {
	return &MemStorage{mem: store.Memory{Logs: raft.NewInmemStore(), Snaps: &store.MemSnapshots{}}}
}

// storeOptions are what store.Open opens for this node.
func (s *settled) storeOptions() store.Options {
	o := store.Options{Dir: s.Dir, Kind: store.Bolt, SnapshotRetain: s.SnapshotRetain, Logger: s.Logger}
	if s.LogStore == LogStoreWAL {
		o.Kind = store.WAL
	}
	if s.memoryStore() {
		o.Memory = &s.Storage.mem
	}
	return o
}

// memoryStore reports whether the node keeps its state in a MemStorage
// rather than in Dir.
func (s *settled) memoryStore() bool { return s.InMemory || s.LogStore == LogStoreMemory }
