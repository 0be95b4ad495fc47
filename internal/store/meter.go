package store

import (
	"math"
	"sort"
	"sync"

	"github.com/hashicorp/raft"
)

// Meter counts the bytes of the entries stored in a log, so that a node
// can bound its log in bytes where raft bounds it in entries
// (TrailingLogs, SnapshotThreshold). It keeps marks of the running total
// at the last index of stored batches, at most one per markBytes or
// markEntries of log, and drops them as the log is compacted: a few
// hundred marks for a log of any size that raft keeps.
//
// It counts only what was stored since it was made: a node that restarts
// with a long log learns its size as new entries arrive.
type Meter struct {
	raft.LogStore

	// Stored, if set before raft starts, is called after every batch is
	// stored. It must not block.
	Stored func()

	// MaxBatchBytes, if set before raft starts, splits a batch of more
	// bytes into consecutive batches of at most this many (at least one
	// entry each): raft-wal keeps a buffer the size of the largest batch
	// it has written until its segment is full (up to 512 chunks of 256
	// KiB in one batch). A crash between two such writes leaves a prefix
	// of the batch stored, which raft handles as it does a batch that
	// never arrived in full.
	MaxBatchBytes int

	mu    sync.Mutex
	marks []mark // ascending by index
	total uint64 // bytes of every entry stored since the meter was made
}

type mark struct {
	index uint64 // the last index the mark covers
	total uint64 // Meter.total once that index was stored
}

// A new mark starts once the last one covers this many bytes or entries.
const (
	markBytes   = 1 << 20
	markEntries = 256
)

// NewMeter counts what is stored through it in logs from now on.
func NewMeter(logs raft.LogStore) (*Meter, error) {
	last, err := logs.LastIndex()
	if err != nil {
		return nil, err
	}
	return &Meter{LogStore: logs, marks: []mark{{index: last}}}, nil
}

// IsMonotonic passes the store's raft.MonotonicLogStore answer through.
func (m *Meter) IsMonotonic() bool {
	mono, ok := m.LogStore.(raft.MonotonicLogStore)
	return ok && mono.IsMonotonic()
}

// StoreLog stores one entry.
func (m *Meter) StoreLog(l *raft.Log) error { return m.StoreLogs([]*raft.Log{l}) }

// StoreLogs stores logs and counts their bytes.
func (m *Meter) StoreLogs(logs []*raft.Log) error {
	for len(logs) > 0 {
		n, size := len(logs), uint64(0)
		for i, l := range logs {
			e := uint64(len(l.Data) + len(l.Extensions))
			if i > 0 && m.MaxBatchBytes > 0 && size+e > uint64(m.MaxBatchBytes) {
				n = i
				break
			}
			size += e
		}
		if err := m.LogStore.StoreLogs(logs[:n]); err != nil {
			return err
		}
		m.count(logs[n-1].Index, size)
		logs = logs[n:]
	}
	if m.Stored != nil {
		m.Stored()
	}
	return nil
}

// count marks size bytes stored up to index last.
func (m *Meter) count(last, size uint64) {
	m.mu.Lock()
	m.total += size
	switch k := len(m.marks); {
	case k >= 2 && m.marks[k-1].index < last && m.marks[k-1].total-m.marks[k-2].total < markBytes && m.marks[k-1].index-m.marks[k-2].index < markEntries:
		m.marks[k-1] = mark{index: last, total: m.total}
	default:
		m.marks = append(m.marks, mark{index: last, total: m.total})
	}
	m.mu.Unlock()
}

// DeleteRange deletes lo..hi and forgets the marks of what was deleted.
func (m *Meter) DeleteRange(lo, hi uint64) error {
	// raft deletes a prefix (compaction) or a suffix (a conflicting tail,
	// or the whole log before a snapshot is installed).
	first, ferr := m.LogStore.FirstIndex()
	last, lerr := m.LogStore.LastIndex()
	suffix := ferr == nil && lerr == nil && lo > first && hi >= last
	err := m.LogStore.DeleteRange(lo, hi)
	m.mu.Lock()
	defer m.mu.Unlock()
	switch {
	case !suffix:
		// Compaction: keep the last mark at or below hi as the base that
		// what remains is counted from.
		i := sort.Search(len(m.marks), func(i int) bool { return m.marks[i].index > hi })
		if i > 0 {
			m.marks = append(m.marks[:0], m.marks[i-1:]...)
		}
	default:
		// Truncation of a suffix: marks from lo on no longer hold.
		i := max(1, sort.Search(len(m.marks), func(i int) bool { return m.marks[i].index >= lo }))
		m.marks = m.marks[:i]
		m.total = m.marks[i-1].total
	}
	return err
}

// Bytes returns the bytes of the log stored since the meter was made,
// less what was compacted since (to the resolution of the marks).
func (m *Meter) Bytes() uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.total - m.marks[0].total
}

// Total returns the bytes stored through the meter since it was made.
func (m *Meter) Total() uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.total
}

// Trailing returns how many of the newest entries fit in budget bytes, to
// the resolution of the marks. Where the log the meter knows holds less
// than budget, it extrapolates from that log's average entry; it returns
// false only when it knows no entries at all.
func (m *Meter) Trailing(budget uint64) (uint64, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	k := len(m.marks)
	last := m.marks[k-1]
	// The oldest mark from which the newest entries hold at most budget.
	i := sort.Search(k, func(i int) bool { return last.total-m.marks[i].total <= budget })
	if i > 0 {
		return last.index - m.marks[i].index, true
	}
	entries, bytes := last.index-m.marks[0].index, last.total-m.marks[0].total
	switch {
	case entries == 0:
		return 0, false
	case bytes == 0:
		return math.MaxUint64, true // empty entries: any number fits
	}
	return uint64(float64(entries) * float64(budget) / float64(bytes)), true
}
