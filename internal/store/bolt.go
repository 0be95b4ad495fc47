package store

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"os"
	"path/filepath"
	"runtime/debug"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	"go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"

	"github.com/raftkit/raftkit/internal/sentinel"
)

// The BoltDB format (raft-boltdb/v2, Dir/raft.db), behind store.go:
// opening it, its integrity checks, and the checks of a log against the
// snapshots raft will start from, which both log stores share.

// openBolt opens raft.db after checking that it can be trusted: not held by
// another node, not empty or damaged, and not missing while snapshots exist
// (a lost log would forget the node's term and vote, and a node that forgets
// its vote can vote twice in one term). readOnly opens it without write
// access and under a shared lock, for offline tools.
func openBolt(path string, snaps raft.SnapshotStore, readOnly bool) (*boltStore, error) {
	fi, err := os.Stat(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		if snaps == nil {
			return nil, fmt.Errorf("raftkit: open log store %s: %w", path, err)
		}
		if list, lerr := snaps.List(); lerr == nil && len(list) > 0 {
			return nil, fmt.Errorf("%w: %s is missing but %d snapshot(s) exist: the node's term and vote are lost; "+
				"restore raft.db, or remove the whole directory to rejoin as a new node", sentinel.ErrCorruptStore, path, len(list))
		}
		if !readOnly {
			if err := createBolt(path); err != nil {
				return nil, err
			}
		}
	case err != nil:
		return nil, fmt.Errorf("raftkit: open log store %s: %w", path, err)
	case fi.IsDir():
		return nil, fmt.Errorf("%w: %s is a directory, not a BoltDB file", sentinel.ErrCorruptStore, path)
	case fi.Size() == 0:
		return nil, fmt.Errorf("%w: %s is empty (0 bytes); raftkit will not start it as a fresh node. "+
			"Remove the whole directory to rejoin as a new node", sentinel.ErrCorruptStore, path)
	default:
		if err := checkBoltFile(path, readOnly); err != nil {
			return nil, err
		}
	}
	var store *boltStore
	err = safely(func() error {
		var err error
		store, err = newBoltStore(path, boltOptions(readOnly))
		return err
	})
	if err != nil {
		return nil, boltError(path, err)
	}
	return store, nil
}

// checkLogAgainstSnapshots checks what raft will read at start-up, so that
// damage is an sentinel.ErrCorruptStore error here rather than a panic or a silent
// loss later: raft restores the newest snapshot that passes its CRC check
// (falling back to older ones), then reads every log entry after it, and
// panics on one it cannot read. So at least one snapshot must be readable
// if any exist, and the log must hold every entry from the restored
// snapshot on, each one decodable. A snapshot's state file is read in full
// for its CRC, so start-up reads it twice.
func checkLogAgainstSnapshots(path string, logs raft.LogStore, snaps raft.SnapshotStore, logger hclog.Logger) error {
	return safely(func() error {
		list, err := snaps.List()
		if err != nil {
			return fmt.Errorf("%w: listing snapshots: %v", sentinel.ErrCorruptStore, err)
		}
		var snapIndex uint64
		usable := false
		for i, meta := range list {
			_, rc, err := snaps.Open(meta.ID)
			if err != nil {
				logger.Warn("snapshot cannot be read; raft will fall back to an older one", "snapshot", meta.ID, "error", err)
				continue
			}
			rc.Close()
			if i > 0 {
				logger.Warn("starting from an older snapshot: newer ones are damaged", "snapshot", meta.ID)
			}
			snapIndex, usable = meta.Index, true
			break
		}
		if len(list) > 0 && !usable {
			return fmt.Errorf("%w: none of the %d snapshot(s) in %s can be read (see the log for each one's error); "+
				"remove the whole directory to rejoin as a new node", sentinel.ErrCorruptStore, len(list), filepath.Join(filepath.Dir(path), SnapshotDir))
		}
		first, err := logs.FirstIndex()
		if err != nil {
			return fmt.Errorf("%w: %s: reading the first log index: %v", sentinel.ErrCorruptStore, path, err)
		}
		last, err := logs.LastIndex()
		if err != nil {
			return fmt.Errorf("%w: %s: reading the last log index: %v", sentinel.ErrCorruptStore, path, err)
		}
		if last <= snapIndex {
			return nil // the snapshot covers the whole log
		}
		if first > snapIndex+1 {
			return fmt.Errorf("%w: %s starts at entry %d but the newest readable snapshot ends at entry %d: "+
				"entries in between are lost (missing or damaged snapshots)", sentinel.ErrCorruptStore, path, first, snapIndex)
		}
		var entry raft.Log
		for i := snapIndex + 1; i <= last; i++ {
			if err := logs.GetLog(i, &entry); err != nil {
				return fmt.Errorf("%w: %s: log entry %d (of %d to %d) cannot be read: %v", sentinel.ErrCorruptStore, path, i, snapIndex+1, last, err)
			}
		}
		return nil
	})
}

// checkBoltFile checks an existing BoltDB file before anything maps it:
// its size against its meta page, then every page. readOnly opens it
// without write access, under a shared lock.
func checkBoltFile(path string, readOnly bool) error {
	if err := checkBoltSize(path); err != nil {
		return err
	}
	return checkBolt(path, readOnly)
}

// boltOptions are the options raftkit opens raft.db with. bbolt's
// NoFreelistSync (no free-page list written at each commit) would save
// about a sixth of the bytes a small commit writes, but then bbolt rebuilds
// the list at every open by walking the file, and on a damaged file that
// walk panics in a goroutine of bbolt's own, where no recover reaches: a
// damaged raft.db would crash the process instead of failing with
// sentinel.ErrCorruptStore.
func boltOptions(readOnly bool) *bbolt.Options {
	return &bbolt.Options{Timeout: lockTimeout, ReadOnly: readOnly}
}

// checkBolt walks every page of an existing BoltDB file so that damage
// shows up as an error now rather than as a panic deep inside raft later.
func checkBolt(path string, readOnly bool) error {
	return safely(func() error {
		db, err := bbolt.Open(path, 0o600, boltOptions(readOnly))
		if err != nil {
			return boltError(path, err)
		}
		defer db.Close()
		return db.View(func(tx *bbolt.Tx) error {
			for cerr := range tx.Check() {
				return fmt.Errorf("%w: %s failed its consistency check: %v", sentinel.ErrCorruptStore, path, cerr)
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
		return fmt.Errorf("%w: %s has no valid BoltDB meta page", sentinel.ErrCorruptStore, path)
	}
	if need := int64(best.pgid) * int64(best.pageSize); best.pageSize == 0 || fi.Size() < need {
		return fmt.Errorf("%w: %s is truncated: %d bytes, its meta page needs %d", sentinel.ErrCorruptStore, path, fi.Size(), need)
	}
	return nil
}

func boltError(path string, err error) error {
	switch {
	case errors.Is(err, sentinel.ErrCorruptStore), errors.Is(err, sentinel.ErrDataDirLocked):
		return err
	case errors.Is(err, berrors.ErrTimeout):
		return fmt.Errorf("%w: %s is held by another process or node (waited %s for its lock)", sentinel.ErrDataDirLocked, path, lockTimeout)
	case errors.Is(err, berrors.ErrInvalid), errors.Is(err, berrors.ErrChecksum),
		errors.Is(err, berrors.ErrVersionMismatch), errors.Is(err, berrors.ErrInvalidMapping):
		return fmt.Errorf("%w: %s: %v", sentinel.ErrCorruptStore, path, err)
	case errors.Is(err, os.ErrPermission):
		return fmt.Errorf("raftkit: open log store %s: %w", path, err)
	case isIOError(err):
		return ioError(path, err)
	}
	// bbolt reports short files and bad pages with plain errors.
	return fmt.Errorf("%w: %s cannot be opened: %v", sentinel.ErrCorruptStore, path, err)
}

// ioError names a failure of the disk under path (full, failing,
// read-only) as such: the files are not known to be damaged.
func ioError(path string, err error) error {
	return fmt.Errorf("raftkit: log store %s: I/O error, not damage (free space or mend the disk, then start again): %w", path, err)
}

// createBolt creates a new, empty raft.db at path: under a temporary name,
// renamed into place only once BoltDB has initialised it and its buckets
// exist, so that a failure part-way (a full disk, a crash) never leaves a
// file at path that a later start would take for a damaged log. The
// directory is synced so that the new name survives a power cut.
func createBolt(path string) error {
	tmp := path + ".new"
	_ = os.Remove(tmp) // left by a failed creation
	s, err := newBoltStore(tmp, boltOptions(false))
	if err == nil {
		err = s.Close()
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err == nil {
		err = syncDir(filepath.Dir(path))
	}
	if err != nil {
		_ = os.Remove(tmp)
		if isIOError(err) {
			return ioError(path, err)
		}
		return fmt.Errorf("raftkit: create log store %s: %w", path, err)
	}
	return nil
}

// syncDir fsyncs a directory, so that names created or renamed in it are
// durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// safely turns a panic in fn (bbolt panics on some damaged files) into an
// sentinel.ErrCorruptStore error. Memory faults in fn's goroutine (a damaged file
// that bbolt maps) become panics too, rather than killing the process.
func safely(fn func() error) (err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("%w: reading it panicked: %v", sentinel.ErrCorruptStore, p)
		}
	}()
	return fn()
}
