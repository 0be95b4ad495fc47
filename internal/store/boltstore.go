package store

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	gometrics "github.com/hashicorp/go-metrics/compat"
	"github.com/hashicorp/go-msgpack/v2/codec"
	"github.com/hashicorp/raft"
	"go.etcd.io/bbolt"

	"github.com/raftkit/raftkit/internal/sentinel"
)

// boltStore is a node's log and stable store in raft.db. The file is
// raft-boltdb v2's, byte for byte: a bucket "logs" of msgpack-encoded
// raft.Log values under big-endian uint64 indexes, a bucket "conf" of the
// stable store's keys, and entries encoded as raft-boltdb v2 encodes them
// by default (time.Time through its binary form), so that raft-boltdb
// reads what raftkit wrote and the other way round (boltstore_test.go
// checks both). raftkit writes it itself for one reason: raft-boltdb
// builds a new msgpack handle for every entry it stores, and a fresh handle
// looks up how to encode raft.Log each time, about three times the CPU and
// twenty times the allocations of an encoder whose handle lives on. On a
// leader that work sits between taking a batch of commands and writing it
// to disk, and followers do it again for every entry they receive.
//
// It emits raft-boltdb's metrics for batches (raft.boltdb.storeLogs,
// logsPerBatch, logBatchSize, writeCapacity) and reads (getLog) through
// go-metrics, as raft-boltdb does, but not its per-entry logSize sample.
type boltStore struct {
	db *bbolt.DB
}

// boltFillPercent is how full bbolt fills the log's pages when it splits
// them: raft only appends, so full pages, where bbolt's default (0.5, as
// raft-boltdb leaves it) left every page half empty and a commit wrote
// about 40 % more bytes.
const boltFillPercent = 1.0

var (
	boltLogs = []byte("logs")
	boltConf = []byte("conf")

	// boltEncode and boltDecode are the handles raft-boltdb v2 uses with
	// its default options; handles are safe for concurrent use.
	boltEncode = func() *codec.MsgpackHandle {
		h := &codec.MsgpackHandle{}
		h.TimeNotBuiltin = true
		return h
	}()
	boltDecode = &codec.MsgpackHandle{}

	// errBoltKeyNotFound is the stable store's answer for a missing key.
	// raft matches it by its text, "not found", as raft-boltdb's.
	errBoltKeyNotFound = errors.New("not found")
)

var (
	_ raft.LogStore    = (*boltStore)(nil)
	_ raft.StableStore = (*boltStore)(nil)
)

// newBoltStore opens (or creates) the BoltDB file at path with opts and
// makes sure its buckets exist, unless it is opened read-only.
func newBoltStore(path string, opts *bbolt.Options) (*boltStore, error) {
	db, err := bbolt.Open(path, 0o600, opts)
	if err != nil {
		return nil, err
	}
	if opts.ReadOnly {
		err = db.View(func(tx *bbolt.Tx) error {
			if tx.Bucket(boltLogs) == nil || tx.Bucket(boltConf) == nil {
				return fmt.Errorf("%w: %s holds no raft log (its buckets %q and %q are missing)", sentinel.ErrCorruptStore, path, boltLogs, boltConf)
			}
			return nil
		})
	} else {
		err = db.Update(func(tx *bbolt.Tx) error {
			if _, err := tx.CreateBucketIfNotExists(boltLogs); err != nil {
				return err
			}
			_, err := tx.CreateBucketIfNotExists(boltConf)
			return err
		})
	}
	if err != nil {
		db.Close()
		return nil, err
	}
	return &boltStore{db: db}, nil
}

// Close closes the file.
func (s *boltStore) Close() error { return s.db.Close() }

func boltKey(idx uint64) []byte { return binary.BigEndian.AppendUint64(nil, idx) }

// FirstIndex returns the lowest index in the log, 0 if it is empty.
func (s *boltStore) FirstIndex() (uint64, error) { return s.edge(true) }

// LastIndex returns the highest index in the log, 0 if it is empty.
func (s *boltStore) LastIndex() (uint64, error) { return s.edge(false) }

func (s *boltStore) edge(first bool) (idx uint64, err error) {
	err = s.db.View(func(tx *bbolt.Tx) error {
		c := tx.Bucket(boltLogs).Cursor()
		k, _ := c.Last()
		if first {
			k, _ = c.First()
		}
		if len(k) == 8 {
			idx = binary.BigEndian.Uint64(k)
		}
		return nil
	})
	return idx, err
}

// GetLog reads entry idx into l, or returns raft.ErrLogNotFound.
func (s *boltStore) GetLog(idx uint64, l *raft.Log) error {
	defer gometrics.MeasureSince([]string{"raft", "boltdb", "getLog"}, time.Now())
	return s.db.View(func(tx *bbolt.Tx) error {
		v := tx.Bucket(boltLogs).Get(boltKey(idx))
		if v == nil {
			return raft.ErrLogNotFound
		}
		// v lives only as long as tx: decoding through a reader copies
		// the entry's byte slices out of it.
		return codec.NewDecoder(bytes.NewReader(v), boltDecode).Decode(l)
	})
}

// StoreLog stores one entry.
func (s *boltStore) StoreLog(l *raft.Log) error { return s.StoreLogs([]*raft.Log{l}) }

// StoreLogs stores logs in one transaction: one commit, whatever their
// number.
func (s *boltStore) StoreLogs(logs []*raft.Log) error {
	start := time.Now()
	// Encode every entry first, back to back in one buffer sized for the
	// batch (so that a batch of 256 KiB chunks is not copied again and
	// again as a buffer grows): bbolt needs keys and values to stay put
	// until the commit.
	size := 0
	for _, l := range logs {
		// the entry's bytes and its fields' names and values around them
		size += len(l.Data) + len(l.Extensions) + 128
	}
	keys := make([]byte, 8*len(logs))
	vals := make([][]byte, len(logs))
	space := make([]byte, 0, size)
	enc := codec.NewEncoderBytes(&space, boltEncode)
	total := 0
	for i, l := range logs {
		binary.BigEndian.PutUint64(keys[8*i:], l.Index)
		rest := space[len(space):cap(space)]
		v := rest[:0]
		enc.ResetBytes(&v)
		if err := enc.Encode(l); err != nil {
			return err
		}
		vals[i] = v
		total += len(v)
		if len(v) > 0 && len(v) <= len(rest) && &v[0] == &rest[0] {
			space = space[:len(space)+len(v)] // encoded in place
		}
	}
	tx, err := s.db.Begin(true)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	b := tx.Bucket(boltLogs)
	// raft only appends: keys grow, so bbolt may fill each page it splits
	// off whole. At its default of half, every leaf page stayed half
	// empty, and a commit wrote more pages (see boltFillPercent).
	b.FillPercent = boltFillPercent
	for i, v := range vals {
		if err := b.Put(keys[8*i:8*i+8], v); err != nil {
			return err
		}
	}
	gometrics.AddSample([]string{"raft", "boltdb", "logsPerBatch"}, float32(len(logs)))
	gometrics.AddSample([]string{"raft", "boltdb", "logBatchSize"}, float32(total))
	err = tx.Commit()
	gometrics.AddSample([]string{"raft", "boltdb", "writeCapacity"}, float32(len(logs))*1e9/float32(max(time.Since(start).Nanoseconds(), 1)))
	gometrics.MeasureSince([]string{"raft", "boltdb", "storeLogs"}, start)
	return err
}

// deleteBatch is how many entries one of DeleteRange's transactions
// removes. BoltDB has one write transaction at a time, so a compaction of
// hundreds of thousands of entries in one would hold the node's log writes
// for its whole length; in batches, raft stores new entries between them.
const deleteBatch uint64 = 8192

// DeleteRange deletes the entries from lo to hi, inclusive, in
// transactions of at most deleteBatch entries, each in time linear in its
// entries. It deletes from the end of the range that touches the rest of
// the log, so that a crash between two transactions leaves a log without
// a hole: raft's compaction (lo is the first index) deletes upwards, its
// truncation of a conflicting suffix (hi is the last) downwards.
//
// Each transaction first reads the keys it will delete with a cursor and
// then deletes them by key: bbolt's Cursor.Delete leaves the cursor on the
// element after the deleted one, so that Next would skip it, and seeking
// from lo again after each delete walks past every leaf the transaction
// has emptied (quadratic in the entries deleted).
func (s *boltStore) DeleteRange(lo, hi uint64) error {
	if lo > hi {
		return nil
	}
	first, err := s.FirstIndex()
	if err != nil {
		return err
	}
	upwards := lo <= first
	idxs := make([]uint64, 0, min(deleteBatch, hi-lo+1))
	key := make([]byte, 8)
	for {
		idxs = idxs[:0]
		err := s.db.Update(func(tx *bbolt.Tx) error {
			b := tx.Bucket(boltLogs)
			c := b.Cursor()
			if upwards {
				for k, _ := c.Seek(boltKey(lo)); k != nil && binary.BigEndian.Uint64(k) <= hi && uint64(len(idxs)) < deleteBatch; k, _ = c.Next() {
					idxs = append(idxs, binary.BigEndian.Uint64(k))
				}
			} else {
				k, _ := c.Seek(boltKey(hi))
				if k == nil || binary.BigEndian.Uint64(k) > hi {
					k, _ = c.Prev()
				}
				for ; k != nil && binary.BigEndian.Uint64(k) >= lo && uint64(len(idxs)) < deleteBatch; k, _ = c.Prev() {
					idxs = append(idxs, binary.BigEndian.Uint64(k))
				}
			}
			for _, idx := range idxs {
				binary.BigEndian.PutUint64(key, idx)
				if err := b.Delete(key); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil || uint64(len(idxs)) < deleteBatch {
			return err
		}
		if betweenDeletes != nil {
			betweenDeletes()
		}
	}
}

// betweenDeletes, set only by tests, runs between two of DeleteRange's
// transactions.
var betweenDeletes func()

// Set stores a stable store value.
func (s *boltStore) Set(k, v []byte) error {
	return s.db.Update(func(tx *bbolt.Tx) error { return tx.Bucket(boltConf).Put(k, v) })
}

// Get reads a stable store value, or returns an error whose text is "not
// found".
func (s *boltStore) Get(k []byte) (v []byte, err error) {
	err = s.db.View(func(tx *bbolt.Tx) error {
		got := tx.Bucket(boltConf).Get(k)
		if got == nil {
			return errBoltKeyNotFound
		}
		v = bytes.Clone(got)
		return nil
	})
	return v, err
}

// SetUint64 stores a stable store value as 8 big-endian bytes.
func (s *boltStore) SetUint64(k []byte, v uint64) error {
	return s.Set(k, binary.BigEndian.AppendUint64(nil, v))
}

// GetUint64 reads a value SetUint64 stored.
func (s *boltStore) GetUint64(k []byte) (uint64, error) {
	v, err := s.Get(k)
	if err != nil {
		return 0, err
	}
	if len(v) != 8 {
		return 0, fmt.Errorf("raftkit: stable store key %q holds %d bytes, not a uint64's 8", k, len(v))
	}
	return binary.BigEndian.Uint64(v), nil
}
