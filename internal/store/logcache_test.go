package store

import (
	"bytes"
	"testing"

	"github.com/hashicorp/raft"
)

// countingStore counts the reads that reach the store behind a cache.
type countingStore struct {
	*raft.InmemStore
	reads int
}

func (s *countingStore) GetLog(idx uint64, l *raft.Log) error {
	s.reads++
	return s.InmemStore.GetLog(idx, l)
}

// storeEntries stores entries from..to through c one StoreLogs call each.
func storeEntries(t *testing.T, c *LogCache, from, to uint64, size int) {
	t.Helper()
	for i := from; i <= to; i++ {
		storeBatch(t, c, i, i, size)
	}
}

// storeBatch stores entries from..to through c in one StoreLogs call, as
// raft stores a batch.
func storeBatch(t *testing.T, c *LogCache, from, to uint64, size int) {
	t.Helper()
	var batch []*raft.Log
	for i := from; i <= to; i++ {
		batch = append(batch, &raft.Log{Index: i, Term: 1, Data: bytes.Repeat([]byte{byte(i)}, size)})
	}
	if err := c.StoreLogs(batch); err != nil {
		t.Fatal(err)
	}
}

// readAll reads entries from..to through c and returns how many reached
// the store; each must come back whole.
func readAll(t *testing.T, c *LogCache, s *countingStore, from, to uint64, size int) int {
	t.Helper()
	before := s.reads
	for i := from; i <= to; i++ {
		var l raft.Log
		if err := c.GetLog(i, &l); err != nil {
			t.Fatalf("GetLog(%d): %v", i, err)
		}
		if l.Index != i || len(l.Data) != size || l.Data[0] != byte(i) {
			t.Fatalf("GetLog(%d) = index %d, %d bytes", i, l.Index, len(l.Data))
		}
	}
	return s.reads - before
}

func TestLogCacheKeepsSmallEntriesUpToItsCount(t *testing.T) {
	s := &countingStore{InmemStore: raft.NewInmemStore()}
	c := newLogCache(s, 16, 1<<20)
	storeEntries(t, c, 1, 40, 100)
	if n := readAll(t, c, s, 25, 40, 100); n != 0 {
		t.Fatalf("%d of the last 16 entries were read from the store", n)
	}
	if n := readAll(t, c, s, 1, 24, 100); n != 24 {
		t.Fatalf("%d of 24 entries older than the ring came from the store", n)
	}
}

func TestLogCacheKeepsLargeEntriesWithinItsBytes(t *testing.T) {
	s := &countingStore{InmemStore: raft.NewInmemStore()}
	c := newLogCache(s, 1024, 10<<10)
	storeEntries(t, c, 1, 100, 4<<10)
	if c.bytes > 10<<10 {
		t.Fatalf("cache holds %d bytes, budget %d", c.bytes, 10<<10)
	}
	// The two newest 4 KiB entries fit the 10 KiB budget.
	if n := readAll(t, c, s, 99, 100, 4<<10); n != 0 {
		t.Fatalf("%d of the newest entries were read from the store", n)
	}
	if n := readAll(t, c, s, 1, 98, 4<<10); n != 98 {
		t.Fatalf("%d of 98 evicted entries came from the store", n)
	}
	// An entry larger than the budget is stored, not cached.
	storeEntries(t, c, 101, 101, 20<<10)
	if n := readAll(t, c, s, 101, 101, 20<<10); n != 1 {
		t.Fatal("an entry over the budget was served from the cache")
	}
	if c.bytes > 10<<10 {
		t.Fatalf("cache holds %d bytes, budget %d", c.bytes, 10<<10)
	}
}

func TestLogCacheForgetsDeletedAndSkippedEntries(t *testing.T) {
	s := &countingStore{InmemStore: raft.NewInmemStore()}
	c := newLogCache(s, 8, 1<<20)
	storeEntries(t, c, 1, 8, 100)
	if err := c.DeleteRange(5, 8); err != nil {
		t.Fatal(err)
	}
	if c.bytes != 0 {
		t.Fatalf("cache holds %d bytes after DeleteRange", c.bytes)
	}
	var l raft.Log
	if err := c.GetLog(6, &l); err != raft.ErrLogNotFound {
		t.Fatalf("GetLog of a deleted entry: %v, want ErrLogNotFound", err)
	}
	// An index far past the ring (after a snapshot install) drops what
	// the ring held, from its byte count too.
	storeEntries(t, c, 5, 8, 100)
	storeEntries(t, c, 1000, 1000, 100)
	if c.bytes != 100 {
		t.Fatalf("cache counts %d bytes, holds one 100-byte entry", c.bytes)
	}
}

type monotonicStore struct{ *raft.InmemStore }

func (monotonicStore) IsMonotonic() bool { return true }

func TestLogCacheTellsRaftWhetherItsStoreIsMonotonic(t *testing.T) {
	if newLogCache(raft.NewInmemStore(), 8, 1<<20).IsMonotonic() {
		t.Fatal("InmemStore reported monotonic")
	}
	if !newLogCache(monotonicStore{raft.NewInmemStore()}, 8, 1<<20).IsMonotonic() {
		t.Fatal("a monotonic store (as raft-wal's) reported not monotonic")
	}
}

// The cache keeps copies of the entries, so that it does not keep alive
// what raft's pointers point into (the leader's apply futures).
func TestLogCacheKeepsCopiesNotRaftsPointers(t *testing.T) {
	s := &countingStore{InmemStore: raft.NewInmemStore()}
	c := newLogCache(s, 8, 1<<20)
	l := &raft.Log{Index: 1, Term: 1, Data: []byte("a")}
	if err := c.StoreLogs([]*raft.Log{l}); err != nil {
		t.Fatal(err)
	}
	l.Term, l.Data = 9, []byte("changed")
	var got raft.Log
	if err := c.GetLog(1, &got); err != nil {
		t.Fatal(err)
	}
	if s.reads != 0 || got.Term != 1 || string(got.Data) != "a" {
		t.Fatalf("cached entry = term %d %q (%d store reads), want term 1 %q from the cache", got.Term, got.Data, s.reads, "a")
	}
}

func TestLogCacheCountsBytesOfWhatItHolds(t *testing.T) {
	s := &countingStore{InmemStore: raft.NewInmemStore()}
	c := newLogCache(s, 16, 1<<20)
	storeEntries(t, c, 1, 100, 100)
	if c.bytes != 16*100 || c.first != 85 {
		t.Fatalf("after 100 entries through a 16-slot ring: %d bytes from index %d, want 1600 from 85", c.bytes, c.first)
	}
	// A gap shorter than the ring drops the entries it pushed out of the
	// ring's range and keeps the rest.
	storeEntries(t, c, 105, 105, 100)
	if c.bytes != 12*100 || c.first != 90 {
		t.Fatalf("after a gap: %d bytes from index %d, want 1200 from 90", c.bytes, c.first)
	}
	if n := readAll(t, c, s, 90, 100, 100); n != 0 {
		t.Fatalf("%d of the entries within the ring's range came from the store", n)
	}
	if n := readAll(t, c, s, 85, 89, 100); n != 5 {
		t.Fatalf("%d of 5 dropped entries came from the store", n)
	}
}

// A batch larger than the byte budget (the chunks of a large command) is
// what replication reads next on a leader: it stays cached whole until the
// next batch, which brings the cache back within its budget.
func TestLogCacheKeepsTheLastBatchWholePastItsBytes(t *testing.T) {
	s := &countingStore{InmemStore: raft.NewInmemStore()}
	c := newLogCache(s, 1024, 10<<10)
	storeEntries(t, c, 1, 4, 1<<10)
	storeBatch(t, c, 5, 12, 4<<10)
	if n := readAll(t, c, s, 5, 12, 4<<10); n != 0 {
		t.Fatalf("%d of the last batch's 8 entries were read from the store", n)
	}
	if n := readAll(t, c, s, 1, 4, 1<<10); n != 4 {
		t.Fatalf("%d of 4 older entries came from the store; the budget should have evicted them", n)
	}
	storeEntries(t, c, 13, 13, 1<<10)
	if c.bytes > 10<<10 {
		t.Fatalf("after the next batch the cache holds %d bytes, budget %d", c.bytes, 10<<10)
	}
	if n := readAll(t, c, s, 13, 13, 1<<10); n != 0 {
		t.Fatal("the newest entry was read from the store")
	}
}

// The batch kept past the budget is bounded, and a next batch of entries
// too large to cache still lets it go.
func TestLogCacheBoundsTheLastBatch(t *testing.T) {
	s := &countingStore{InmemStore: raft.NewInmemStore()}
	c := newLogCache(s, 1024, 10<<10)
	storeBatch(t, c, 1, 16, 4<<10) // 64 KiB: over 4 times the 10 KiB budget
	if c.bytes > lastBatchFactor*10<<10 {
		t.Fatalf("cache holds %d bytes, bound %d", c.bytes, lastBatchFactor*10<<10)
	}
	// The newest 10 of the 16 entries fit 40 KiB.
	if n := readAll(t, c, s, 7, 16, 4<<10); n != 0 {
		t.Fatalf("%d of the batch's newest entries were read from the store", n)
	}
	if n := readAll(t, c, s, 1, 6, 4<<10); n != 6 {
		t.Fatalf("%d of the batch's 6 oldest entries came from the store", n)
	}
	// An entry over the budget is not cached, but its batch ends the
	// exception for the one before.
	storeEntries(t, c, 17, 17, 20<<10)
	if c.bytes > 10<<10 {
		t.Fatalf("after the next batch the cache holds %d bytes, budget %d", c.bytes, 10<<10)
	}
}

// A raft.Log that a cache hit filled shares the cached entry's bytes; if
// its caller reuses it for a miss, the store must not decode into those
// bytes and so rewrite the cached entry.
func TestLogCacheHitIsNotRewrittenByALaterMissIntoTheSameLog(t *testing.T) {
	s := openTestBolt(t, true)
	c := newLogCache(s, 16, 1<<20)
	if err := c.StoreLogs([]*raft.Log{{Index: 1, Term: 1, Type: raft.LogCommand, Data: []byte("cached-1")}}); err != nil {
		t.Fatal(err)
	}
	// Entry 2 reaches the store without the cache: reading it is a miss.
	if err := s.StoreLogs([]*raft.Log{{Index: 2, Term: 1, Type: raft.LogCommand, Data: []byte("stored-2")}}); err != nil {
		t.Fatal(err)
	}
	var l raft.Log
	if err := c.GetLog(1, &l); err != nil {
		t.Fatal(err)
	}
	if err := c.GetLog(2, &l); err != nil || string(l.Data) != "stored-2" {
		t.Fatalf("miss read %q, %v", l.Data, err)
	}
	var again raft.Log
	if err := c.GetLog(1, &again); err != nil || string(again.Data) != "cached-1" {
		t.Fatalf("cached entry 1 reads %q after a miss decoded into the Log its hit filled", again.Data)
	}
}
