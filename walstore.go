package raftkit

import (
	"strconv"
)

// LogStoreKind selects the on-disk store of a node's raft log and stable
// state (term and vote); see Config.LogStore.
type LogStoreKind int

const (
	// LogStoreBolt keeps the log and stable state in one BoltDB file,
	// Dir/raft.db, in hashicorp/raft-boltdb/v2's file format (raftkit
	// writes it with its own encoder; see boltstore.go). It is the default: one file,
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
	LogStoreWAL
)

// String returns the kind's name as written in Go, e.g. "LogStoreWAL".
func (k LogStoreKind) String() string {
	switch k {
	case LogStoreBolt:
		return "LogStoreBolt"
	case LogStoreWAL:
		return "LogStoreWAL"
	}
	return "LogStoreKind(" + strconv.Itoa(int(k)) + ")"
}

func validateLogStore(k LogStoreKind) error {
	if k != LogStoreBolt && k != LogStoreWAL {
		return configErr("LogStore", k.String(), "is not LogStoreBolt or LogStoreWAL")
	}
	return nil
}
