package store

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	"go.etcd.io/bbolt"

	"github.com/raftkit/raftkit/internal/sentinel"
)

// boltTestLogs are entries with every field raft stores set.
func boltTestLogs(from, to uint64) []*raft.Log {
	var logs []*raft.Log
	at := time.Date(2026, 11, 25, 16, 0, 0, 123456789, time.UTC)
	for i := from; i <= to; i++ {
		l := &raft.Log{Index: i, Term: i/3 + 1, Type: raft.LogCommand, Data: []byte(fmt.Sprintf("command %d", i)), AppendedAt: at.Add(time.Duration(i) * time.Millisecond)}
		if i%4 == 0 {
			l.Extensions = []byte{byte(i), 0xff}
		}
		if i%5 == 0 {
			l.Type = raft.LogNoop
			l.Data = nil
		}
		logs = append(logs, l)
	}
	return logs
}

func sameLog(t *testing.T, got, want *raft.Log) {
	t.Helper()
	if got.Index != want.Index || got.Term != want.Term || got.Type != want.Type ||
		!bytes.Equal(got.Data, want.Data) || !bytes.Equal(got.Extensions, want.Extensions) || !got.AppendedAt.Equal(want.AppendedAt) {
		t.Fatalf("entry %d read back as %+v, want %+v", want.Index, got, want)
	}
}

// readsBack fails the test unless store holds every entry of logs as it
// was stored; who names the store in messages.
func readsBack(t *testing.T, who string, store raft.LogStore, logs []*raft.Log) {
	t.Helper()
	for _, want := range logs {
		var got raft.Log
		if err := store.GetLog(want.Index, &got); err != nil {
			t.Fatalf("%s reading entry %d: %v", who, want.Index, err)
		}
		sameLog(t, &got, want)
	}
}

// boltValues returns every value of raft.db's logs bucket by key.
func boltValues(t *testing.T, path string) map[string][]byte {
	t.Helper()
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{ReadOnly: true, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	out := map[string][]byte{}
	err = db.View(func(tx *bbolt.Tx) error {
		return tx.Bucket(boltLogs).ForEach(func(k, v []byte) error {
			out[string(k)] = bytes.Clone(v)
			return nil
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// raft-boltdb reads what raftkit's store wrote, raftkit's store reads what
// raft-boltdb wrote, and the two write the same bytes for the same entry.
func TestBoltStoreKeepsRaftBoltDBsFormat(t *testing.T) {
	dir := t.TempDir()
	ours, theirs := filepath.Join(dir, "ours.db"), filepath.Join(dir, "theirs.db")
	logs := boltTestLogs(1, 50)

	s, err := newBoltStore(ours, &bbolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.StoreLogs(logs[:30]); err != nil {
		t.Fatal(err)
	}
	for _, l := range logs[30:] {
		if err := s.StoreLog(l); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.SetUint64([]byte("CurrentTerm"), 7); err != nil {
		t.Fatal(err)
	}
	if err := s.Set([]byte("LastVoteCand"), []byte("node-2")); err != nil {
		t.Fatal(err)
	}
	s.Close()

	b, err := raftboltdb.NewBoltStore(theirs)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.StoreLogs(logs); err != nil {
		t.Fatal(err)
	}
	if err := b.SetUint64([]byte("CurrentTerm"), 7); err != nil {
		t.Fatal(err)
	}
	b.Close()

	mine, want := boltValues(t, ours), boltValues(t, theirs)
	if len(mine) != len(logs) || len(want) != len(logs) {
		t.Fatalf("%d and %d entries stored, want %d", len(mine), len(want), len(logs))
	}
	for k, v := range want {
		if !bytes.Equal(mine[k], v) {
			t.Fatalf("entry %x: raftkit wrote %x, raft-boltdb %x", k, mine[k], v)
		}
	}

	// raft-boltdb opens raftkit's file.
	b, err = raftboltdb.NewBoltStore(ours)
	if err != nil {
		t.Fatal(err)
	}
	readsBack(t, "raft-boltdb", b, logs)
	if term, err := b.GetUint64([]byte("CurrentTerm")); err != nil || term != 7 {
		t.Fatalf("raft-boltdb reads CurrentTerm as %d, %v", term, err)
	}
	if v, err := b.Get([]byte("LastVoteCand")); err != nil || string(v) != "node-2" {
		t.Fatalf("raft-boltdb reads LastVoteCand as %q, %v", v, err)
	}
	b.Close()

	// raftkit opens raft-boltdb's file.
	s, err = newBoltStore(theirs, &bbolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	readsBack(t, "raftkit's store, in raft-boltdb's file,", s, logs)
	if term, err := s.GetUint64([]byte("CurrentTerm")); err != nil || term != 7 {
		t.Fatalf("CurrentTerm reads as %d, %v", term, err)
	}
}

func TestBoltStoreLogAndStableStore(t *testing.T) {
	path := filepath.Join(t.TempDir(), "raft.db")
	s, err := newBoltStore(path, &bbolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if first, _ := s.FirstIndex(); first != 0 {
		t.Fatalf("empty log: FirstIndex %d", first)
	}
	if last, _ := s.LastIndex(); last != 0 {
		t.Fatalf("empty log: LastIndex %d", last)
	}
	var l raft.Log
	if err := s.GetLog(1, &l); !errors.Is(err, raft.ErrLogNotFound) {
		t.Fatalf("GetLog on an empty log: %v", err)
	}
	logs := boltTestLogs(10, 40)
	if err := s.StoreLogs(logs); err != nil {
		t.Fatal(err)
	}
	// A read's byte slices must not alias the transaction's pages.
	var held raft.Log
	if err := s.GetLog(12, &held); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteRange(10, 25); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteRange(35, 40); err != nil { // raft's truncation of a conflicting suffix
		t.Fatal(err)
	}
	sameLog(t, &held, logs[2])
	first, _ := s.FirstIndex()
	last, _ := s.LastIndex()
	if first != 26 || last != 34 {
		t.Fatalf("after deleting 10-25 and 35-40: entries %d-%d, want 26-34", first, last)
	}
	for i := uint64(10); i <= 40; i++ {
		err := s.GetLog(i, &l)
		switch kept := i >= 26 && i <= 34; {
		case kept && err != nil:
			t.Fatalf("entry %d: %v", i, err)
		case kept:
			sameLog(t, &l, logs[i-10])
		case !errors.Is(err, raft.ErrLogNotFound):
			t.Fatalf("deleted entry %d: %v, want ErrLogNotFound", i, err)
		}
	}

	// raft tells a missing stable key by the error's text.
	if _, err := s.Get([]byte("nope")); err == nil || err.Error() != "not found" {
		t.Fatalf("Get of a missing key: %v, want \"not found\"", err)
	}
	if _, err := s.GetUint64([]byte("nope")); err == nil || err.Error() != "not found" {
		t.Fatalf("GetUint64 of a missing key: %v, want \"not found\"", err)
	}
	if err := s.Set([]byte("odd"), []byte{1, 2, 3}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetUint64([]byte("odd")); err == nil {
		t.Fatal("GetUint64 of a 3-byte value: no error")
	}
}

func TestBoltStoreReadOnlyRefusesAFileWithoutARaftLog(t *testing.T) {
	path := filepath.Join(t.TempDir(), "raft.db")
	db, err := bbolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	db.Close()
	_, err = newBoltStore(path, &bbolt.Options{ReadOnly: true, Timeout: time.Second})
	if !errors.Is(err, sentinel.ErrCorruptStore) {
		t.Fatalf("read-only open of a BoltDB file without buckets: %v, want sentinel.ErrCorruptStore", err)
	}
}

// BenchmarkBoltStoreLogs stores batches of 64 entries of 128 bytes, with
// raftkit's store and with raft-boltdb's, without fsync (the encoding and
// bbolt's work, not the disk's): compare ns/op and allocs/op.
func BenchmarkBoltStoreLogs(b *testing.B) {
	batch := func(i int) []*raft.Log {
		logs := make([]*raft.Log, 64)
		for j := range logs {
			logs[j] = &raft.Log{Index: uint64(i*64 + j + 1), Term: 1, Type: raft.LogCommand, Data: make([]byte, 128), AppendedAt: time.Now()}
		}
		return logs
	}
	b.Run("raftkit", func(b *testing.B) {
		s, err := newBoltStore(filepath.Join(b.TempDir(), "raft.db"), &bbolt.Options{NoSync: true})
		if err != nil {
			b.Fatal(err)
		}
		defer s.Close()
		b.ReportAllocs()
		for i := 0; b.Loop(); i++ {
			if err := s.StoreLogs(batch(i)); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("raft-boltdb", func(b *testing.B) {
		s, err := raftboltdb.New(raftboltdb.Options{Path: filepath.Join(b.TempDir(), "raft.db"), NoSync: true})
		if err != nil {
			b.Fatal(err)
		}
		defer s.Close()
		b.ReportAllocs()
		for i := 0; b.Loop(); i++ {
			if err := s.StoreLogs(batch(i)); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// A batch of entries of every size, up to a chunk's 256 KiB, reads back
// whole: the encoder writes them back to back into one buffer.
func TestBoltStoreBatchOfMixedSizes(t *testing.T) {
	s, err := newBoltStore(filepath.Join(t.TempDir(), "raft.db"), &bbolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var logs []*raft.Log
	for i, size := range []int{0, 1, 31, 32, 255, 256, 65535, 65536, 70000, 256 << 10, 3, 256<<10 - 1} {
		data := bytes.Repeat([]byte{byte(i + 1)}, size)
		logs = append(logs, &raft.Log{Index: uint64(i + 1), Term: 2, Type: raft.LogCommand, Data: data, Extensions: data[:min(size, 40)], AppendedAt: time.Now()})
	}
	if err := s.StoreLogs(logs); err != nil {
		t.Fatal(err)
	}
	readsBack(t, "raftkit's store", s, logs)
}

// processWrites returns how many bytes this process has passed to write
// calls (Linux's /proc/self/io wchar), or -1 where that is not known.
func processWrites() int64 {
	b, err := os.ReadFile("/proc/self/io")
	if err != nil {
		return -1
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "wchar: "); ok {
			if n, err := strconv.ParseInt(v, 10, 64); err == nil {
				return n
			}
		}
	}
	return -1
}

// bytesPerCommit stores batches of 50 entries of 128 bytes, compacting the
// log as raft does (10,240 trailing entries, every 8,192), and returns the
// bytes written per commit once the log has been compacted a few times.
func bytesPerCommit(t *testing.T, s raft.LogStore) int64 {
	t.Helper()
	idx := uint64(1)
	data := make([]byte, 128)
	batch := func() {
		logs := make([]*raft.Log, 50)
		for i := range logs {
			logs[i] = &raft.Log{Index: idx, Term: 1, Type: raft.LogCommand, Data: data}
			idx++
		}
		if err := s.StoreLogs(logs); err != nil {
			t.Fatal(err)
		}
		if idx > 8192+10240 && idx%8192 < 50 {
			first, _ := s.FirstIndex()
			if err := s.DeleteRange(first, idx-10240); err != nil {
				t.Fatal(err)
			}
		}
	}
	for i := 0; i < 2000; i++ {
		batch()
	}
	before := processWrites()
	for i := 0; i < 500; i++ {
		batch()
	}
	return (processWrites() - before) / 500
}

// raftkit's store fills the log's pages whole: fewer bytes reach the disk
// per commit than with raft-boltdb's settings.
func TestBoltStoreWritesLessPerCommitThanRaftBoltDB(t *testing.T) {
	if processWrites() < 0 {
		t.Skip("needs /proc/self/io to count the bytes written")
	}
	dir := t.TempDir()
	theirs, err := raftboltdb.New(raftboltdb.Options{Path: filepath.Join(dir, "theirs.db")})
	if err != nil {
		t.Fatal(err)
	}
	defer theirs.Close()
	ours, err := newBoltStore(filepath.Join(dir, "ours.db"), boltOptions(false))
	if err != nil {
		t.Fatal(err)
	}
	defer ours.Close()
	t0, o := bytesPerCommit(t, theirs), bytesPerCommit(t, ours)
	t.Logf("bytes written per commit of 50 entries: raft-boltdb %d, raftkit %d", t0, o)
	if t0 <= 0 {
		t.Skip("/proc/self/io counted no bytes written")
	}
	if float64(o) > 0.8*float64(t0) {
		t.Fatalf("raftkit's store wrote %d bytes per commit, raft-boltdb's %d: want at most 0.8x", o, t0)
	}
}
