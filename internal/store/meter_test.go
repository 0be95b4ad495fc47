package store

import (
	"fmt"
	"testing"

	"github.com/hashicorp/raft"
)

func storeSized(t *testing.T, m *Meter, from, to uint64, size int) {
	t.Helper()
	var logs []*raft.Log
	for i := from; i <= to; i++ {
		logs = append(logs, &raft.Log{Index: i, Term: 1, Type: raft.LogCommand, Data: make([]byte, size)})
	}
	if err := m.StoreLogs(logs); err != nil {
		t.Fatal(err)
	}
}

// The meter counts a log's bytes as raft stores, compacts and truncates
// it, and tells how many of the newest entries fit in a byte budget.
func TestMeterCountsTheLogInBytes(t *testing.T) {
	m, err := NewMeter(raft.NewInmemStore())
	if err != nil {
		t.Fatal(err)
	}
	// 100 small entries one by one, then 40 entries of 1 MiB, 4 a batch.
	for i := uint64(1); i <= 100; i++ {
		storeSized(t, m, i, i, 100)
	}
	for i := uint64(101); i <= 140; i += 4 {
		storeSized(t, m, i, i+3, 1<<20)
	}
	if got, want := m.Bytes(), uint64(100*100+40<<20); got != want {
		t.Fatalf("Bytes %d, want %d", got, want)
	}
	if len(m.marks) > 50 {
		t.Fatalf("%d marks for 110 batches: marks of small batches are not merged", len(m.marks))
	}
	// 10 MiB of budget: the last 10 entries (to a batch's resolution).
	if n, ok := m.Trailing(10 << 20); !ok || n < 8 || n > 10 {
		t.Fatalf("Trailing(10 MiB) = %d, %v; want 8-10 entries", n, ok)
	}
	// A budget larger than the whole log: extrapolated from the log's
	// average entry (41,963,520 bytes over 140 entries).
	if n, ok := m.Trailing(1 << 40); !ok || n < 3_600_000 || n > 3_700_000 {
		t.Fatalf("Trailing(1 TiB) = %d, %v; want about 3.6M entries of the log's average size", n, ok)
	}
	empty, _ := NewMeter(raft.NewInmemStore())
	if _, ok := empty.Trailing(1 << 20); ok {
		t.Fatal("a meter that knows no entries says how many fit")
	}
	// Compaction of 1..110 (counted to the batch: 109..140 remain in the
	// count), then of 111..120, leaves 20 MiB (of the entries 121..140):
	// the second starts above the marks' base, and is still a compaction.
	if err := m.DeleteRange(1, 110); err != nil {
		t.Fatal(err)
	}
	if got := m.Bytes(); got != 32<<20 {
		t.Fatalf("Bytes after compaction %d, want %d", got, 32<<20)
	}
	if err := m.DeleteRange(111, 120); err != nil {
		t.Fatal(err)
	}
	if got := m.Bytes(); got != 20<<20 {
		t.Fatalf("Bytes after a second compaction %d, want %d", got, 20<<20)
	}
	// Truncation of 133..140 (two batches): 12 MiB left.
	if err := m.DeleteRange(133, 140); err != nil {
		t.Fatal(err)
	}
	if got := m.Bytes(); got != 12<<20 {
		t.Fatalf("Bytes after truncation %d, want %d", got, 12<<20)
	}
	storeSized(t, m, 133, 133, 1<<20)
	if got := m.Bytes(); got != 13<<20 {
		t.Fatalf("Bytes after a new entry %d, want %d", got, 13<<20)
	}
	if last, _ := m.LastIndex(); last != 133 {
		t.Fatalf("LastIndex %d through the meter, want 133", last)
	}
}

type batchSizes struct {
	raft.LogStore
	batches []int
}

func (b *batchSizes) StoreLogs(logs []*raft.Log) error {
	b.batches = append(b.batches, len(logs))
	return b.LogStore.StoreLogs(logs)
}

// With MaxBatchBytes, a large batch reaches the store in consecutive
// batches of at most that many bytes, one entry at least, all stored.
func TestMeterSplitsLargeBatches(t *testing.T) {
	under := &batchSizes{LogStore: raft.NewInmemStore()}
	m, err := NewMeter(under)
	if err != nil {
		t.Fatal(err)
	}
	m.MaxBatchBytes = 1 << 20
	stored := 0
	m.Stored = func() { stored++ }
	storeSized(t, m, 1, 10, 300<<10)  // 3 entries per batch of 1 MiB
	storeSized(t, m, 11, 11, 2<<20)   // one entry over the limit: alone
	storeSized(t, m, 12, 20, 100<<10) // 900 KiB: one batch
	if got, want := fmt.Sprint(under.batches), "[3 3 3 1 1 9]"; got != want {
		t.Fatalf("batches reaching the store: %s, want %s", got, want)
	}
	if stored != 3 {
		t.Fatalf("Stored called %d times for 3 batches, want 3", stored)
	}
	checkSpan(t, m, 1, 20)
	if got, want := m.Bytes(), uint64(10*300<<10+2<<20+9*100<<10); got != want {
		t.Fatalf("Bytes %d, want %d", got, want)
	}
}
