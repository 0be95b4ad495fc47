package store

import (
	"errors"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"go.etcd.io/bbolt"
)

func openTestBolt(tb testing.TB, noSync bool) *boltStore {
	tb.Helper()
	s, err := newBoltStore(filepath.Join(tb.TempDir(), "raft.db"), &bbolt.Options{Timeout: time.Second, NoSync: noSync})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = s.Close() })
	return s
}

// fillLog stores entries from..to of size bytes each, in batches of 1,000.
func fillLog(tb testing.TB, s raft.LogStore, from, to uint64, size int) {
	tb.Helper()
	data := make([]byte, size)
	for lo := from; lo <= to; lo += 1000 {
		var logs []*raft.Log
		for i := lo; i <= to && i < lo+1000; i++ {
			logs = append(logs, &raft.Log{Index: i, Term: 1, Type: raft.LogCommand, Data: data})
		}
		if err := s.StoreLogs(logs); err != nil {
			tb.Fatal(err)
		}
	}
}

func checkSpan(t *testing.T, s raft.LogStore, first, last uint64) {
	t.Helper()
	f, _ := s.FirstIndex()
	l, _ := s.LastIndex()
	if f != first || l != last {
		t.Fatalf("log holds %d-%d, want %d-%d", f, l, first, last)
	}
	var e raft.Log
	for i := first; i <= last; i++ {
		if err := s.GetLog(i, &e); err != nil || e.Index != i {
			t.Fatalf("entry %d: %v (index %d)", i, err, e.Index)
		}
	}
}

// A compaction or a truncation larger than one transaction removes
// exactly its range, batch after batch, and the log stays contiguous
// between the batches: upwards from the first entry, downwards from the
// last.
func TestBoltDeleteRangeInBatchesKeepsTheLogContiguous(t *testing.T) {
	s := openTestBolt(t, true)
	total := 5*deleteBatch + 500
	fillLog(t, s, 1, total, 16)

	var spans []string
	betweenDeletes = func() {
		f, _ := s.FirstIndex()
		l, _ := s.LastIndex()
		spans = append(spans, fmt.Sprintf("%d-%d", f, l))
	}
	defer func() { betweenDeletes = nil }()

	// Compaction: from the first entry up to 2.5 batches in.
	upTo := 2*deleteBatch + deleteBatch/2
	if err := s.DeleteRange(1, upTo); err != nil {
		t.Fatal(err)
	}
	want := []string{fmt.Sprintf("%d-%d", deleteBatch+1, total), fmt.Sprintf("%d-%d", 2*deleteBatch+1, total)}
	if fmt.Sprint(spans) != fmt.Sprint(want) {
		t.Fatalf("log between compaction's transactions: %v, want %v", spans, want)
	}
	checkSpan(t, s, upTo+1, total)

	// Truncation of a suffix longer than a batch: downwards.
	spans = nil
	from := upTo + 100
	if err := s.DeleteRange(from, total); err != nil {
		t.Fatal(err)
	}
	if len(spans) == 0 || spans[0] != fmt.Sprintf("%d-%d", upTo+1, total-deleteBatch) {
		t.Fatalf("log between truncation's transactions: %v, want first %d-%d", spans, upTo+1, total-deleteBatch)
	}
	checkSpan(t, s, upTo+1, from-1)
	var e raft.Log
	if err := s.GetLog(from, &e); !errors.Is(err, raft.ErrLogNotFound) {
		t.Fatalf("truncated entry %d: %v", from, err)
	}
}

// Raft stores new entries while a long compaction runs: the write waits
// for one batch's transaction, not for the whole range.
func TestBoltCompactionLetsWritesIn(t *testing.T) {
	s := openTestBolt(t, true)
	total := 4 * deleteBatch
	fillLog(t, s, 1, total, 16)

	stored := make(chan error, 1)
	started := false
	betweenDeletes = func() {
		if started {
			return
		}
		started = true
		go func() {
			stored <- s.StoreLogs([]*raft.Log{{Index: total + 1, Term: 1, Type: raft.LogCommand, Data: []byte("new")}})
		}()
		// The next batch's transaction waits until the write is in, so a
		// single transaction over the whole range would never get here.
		if err := <-stored; err != nil {
			t.Error(err)
		}
	}
	defer func() { betweenDeletes = nil }()
	if err := s.DeleteRange(1, total-10); err != nil {
		t.Fatal(err)
	}
	if !started {
		t.Fatal("compaction of 4 batches ran in one transaction")
	}
	checkSpan(t, s, total-9, total+1)
}

// BenchmarkBoltDeleteRange compacts logs of 10k to 1M entries of 128
// bytes: time per entry stays flat (linear in the range).
func BenchmarkBoltDeleteRange(b *testing.B) {
	for _, n := range []uint64{10_000, 100_000, 1_000_000} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				s := openTestBolt(b, true)
				fillLog(b, s, 1, n+100, 128)
				b.StartTimer()
				if err := s.DeleteRange(1, n); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(uint64(b.N)*n), "ns/entry")
		})
	}
}
