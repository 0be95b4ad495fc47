package raftkit

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"os"
	"path/filepath"
	"time"

	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	"go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

const (
	// boltFile is the log and stable store inside Config.Dir.
	boltFile = "raft.db"
	// lockTimeout bounds the wait for raft.db's file lock.
	lockTimeout = time.Second
	// logCacheSize is how many recent log entries are kept in memory, so
	// that replication to followers a few batches behind reads no disk. It
	// covers two full AppendEntries batches (raftMaxAppendEntries).
	logCacheSize = 1024
)

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

// openStores opens (or creates) the stores a node's Config asks for.
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
	var (
		logs   raft.LogStore
		stable raft.StableStore
		closer func() error
	)
	if s.LogStore == LogStoreWAL {
		w, err := openWAL(s.Dir, snaps, s.Logger)
		if err != nil {
			return nil, err
		}
		logs, stable, closer = w.wal, w.wal, w.Close
	} else {
		bolt, err := openBolt(filepath.Join(s.Dir, boltFile), snaps)
		if err != nil {
			return nil, err
		}
		logs, stable, closer = bolt, bolt, bolt.Close
	}
	cache, err := raft.NewLogCache(logCacheSize, logs)
	if err != nil {
		closer()
		return nil, fmt.Errorf("raftkit: log cache: %w", err)
	}
	return &nodeStores{log: cache, stable: stable, snaps: snaps, close: closer}, nil
}

// openBolt opens raft.db after checking that it can be trusted: not held by
// another node, not empty or damaged, and not missing while snapshots exist
// (a lost log would forget the node's term and vote, and a node that forgets
// its vote can vote twice in one term).
func openBolt(path string, snaps raft.SnapshotStore) (*raftboltdb.BoltStore, error) {
	fi, err := os.Stat(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		if list, lerr := snaps.List(); lerr == nil && len(list) > 0 {
			return nil, fmt.Errorf("%w: %s is missing but %d snapshot(s) exist: the node's term and vote are lost; "+
				"restore raft.db, or remove the whole directory to rejoin as a new node", ErrCorruptStore, path, len(list))
		}
	case err != nil:
		return nil, fmt.Errorf("raftkit: open log store %s: %w", path, err)
	case fi.IsDir():
		return nil, fmt.Errorf("%w: %s is a directory, not a BoltDB file", ErrCorruptStore, path)
	case fi.Size() == 0:
		return nil, fmt.Errorf("%w: %s is empty (0 bytes); raftkit will not start it as a fresh node. "+
			"Remove the whole directory to rejoin as a new node", ErrCorruptStore, path)
	default:
		if err := checkBolt(path); err != nil {
			return nil, err
		}
	}
	var store *raftboltdb.BoltStore
	err = safely(func() error {
		var err error
		store, err = raftboltdb.New(raftboltdb.Options{
			Path:        path,
			BoltOptions: &bbolt.Options{Timeout: lockTimeout},
		})
		return err
	})
	if err != nil {
		return nil, boltError(path, err)
	}
	return store, nil
}

// checkBolt walks every page of an existing raft.db so that damage shows up
// as an error now rather than as a panic deep inside raft later.
func checkBolt(path string) error {
	if err := checkBoltSize(path); err != nil {
		return err
	}
	return safely(func() error {
		db, err := bbolt.Open(path, 0o600, &bbolt.Options{Timeout: lockTimeout})
		if err != nil {
			return boltError(path, err)
		}
		defer db.Close()
		return db.View(func(tx *bbolt.Tx) error {
			for cerr := range tx.Check() {
				return fmt.Errorf("%w: %s failed its consistency check: %v", ErrCorruptStore, path, cerr)
			}
			return nil
		})
	})
}

// checkBoltSize reads a BoltDB file's two meta pages and refuses a file
// shorter than the pages its newest valid meta page claims: bbolt maps the
// file into memory, and touching a page past its end kills the process
// with SIGBUS, which no recover can catch.
func checkBoltSize(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("raftkit: open log store %s: %w", path, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("raftkit: open log store %s: %w", path, err)
	}
	const (
		pageHeader = 16
		metaSize   = 64 // magic, version, page size, flags, root (16), freelist, pgid, txid, checksum
		boltMagic  = 0xED0CDAED
	)
	var best struct {
		txid, pgid uint64
		pageSize   uint32
		ok         bool
	}
	buf := make([]byte, pageHeader+metaSize)
	for _, off := range []int64{0, -1} {
		if off < 0 {
			if !best.ok {
				// Without a valid first meta page, the second one's offset is
				// unknown; bbolt tries 4 KiB, as do we.
				off = 4096
			} else {
				off = int64(best.pageSize)
			}
		}
		if _, err := f.ReadAt(buf, off); err != nil {
			continue
		}
		m := buf[pageHeader:]
		if binary.LittleEndian.Uint32(m[0:4]) != boltMagic {
			continue
		}
		h := fnv.New64a()
		h.Write(m[:56])
		if h.Sum64() != binary.LittleEndian.Uint64(m[56:64]) {
			continue
		}
		txid := binary.LittleEndian.Uint64(m[48:56])
		if !best.ok || txid > best.txid {
			best.txid, best.pgid, best.pageSize, best.ok = txid, binary.LittleEndian.Uint64(m[40:48]), binary.LittleEndian.Uint32(m[8:12]), true
		}
	}
	if !best.ok {
		return fmt.Errorf("%w: %s has no valid BoltDB meta page", ErrCorruptStore, path)
	}
	if need := int64(best.pgid) * int64(best.pageSize); best.pageSize == 0 || fi.Size() < need {
		return fmt.Errorf("%w: %s is truncated: %d bytes, its meta page needs %d", ErrCorruptStore, path, fi.Size(), need)
	}
	return nil
}

func boltError(path string, err error) error {
	switch {
	case errors.Is(err, ErrCorruptStore), errors.Is(err, ErrDataDirLocked):
		return err
	case errors.Is(err, berrors.ErrTimeout):
		return fmt.Errorf("%w: %s is held by another process or node (waited %s for its lock)", ErrDataDirLocked, path, lockTimeout)
	case errors.Is(err, berrors.ErrInvalid), errors.Is(err, berrors.ErrChecksum),
		errors.Is(err, berrors.ErrVersionMismatch), errors.Is(err, berrors.ErrInvalidMapping):
		return fmt.Errorf("%w: %s: %v", ErrCorruptStore, path, err)
	case errors.Is(err, os.ErrPermission):
		return fmt.Errorf("raftkit: open log store %s: %w", path, err)
	}
	// bbolt reports short files and bad pages with plain errors.
	return fmt.Errorf("%w: %s cannot be opened: %v", ErrCorruptStore, path, err)
}

// safely turns a panic in fn (bbolt panics on some damaged files) into an
// ErrCorruptStore error.
func safely(fn func() error) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("%w: reading it panicked: %v", ErrCorruptStore, p)
		}
	}()
	return fn()
}

// MemStorage is the state of an in-memory node (Config.Storage): its log,
// stable store and snapshots. Giving a new node the MemStorage of a closed
// one restarts it with the state it had, as after a process crash. One
// MemStorage must not be used by two running nodes at once.
type MemStorage struct {
	logs  *raft.InmemStore
	snaps *raft.InmemSnapshotStore
}

// NewMemStorage returns empty in-memory storage.
func NewMemStorage() *MemStorage {
	return &MemStorage{logs: raft.NewInmemStore(), snaps: raft.NewInmemSnapshotStore()}
}
