package store

import (
	"fmt"
	"sync"

	"github.com/hashicorp/raft"
)

// LogCache keeps the most recent log entries in memory, as raft.LogCache
// does, within a count (its ring's slots) and a byte budget (the entries'
// Data and Extensions). raft.LogCache bounds only the count, so that 1,024
// entries of a few MiB each would keep GiBs on every node; here the oldest
// entries leave the cache once their bytes pass the budget (but for the
// batch stored last, which stays whole up to four times the budget; see
// trim), and an entry larger than the whole budget is not cached. Entries
// that left are read from the store, as raft.LogCache reads a miss.
//
// The ring holds copies of the raft.Log structs, not the pointers raft
// stores: on the leader those point into raft's apply futures, on
// followers into the decoded request, and a cached pointer kept the whole
// of either alive. The entries' Data and Extensions are shared, not
// copied: replication reads them from here, so they must never change,
// and they do not: a leader's commands are raftkit's own copies (Apply
// copies the caller's bytes before raft sees them; see ownedCmd), and a
// follower's are decoded into buffers of their own. An empty slot has
// Index 0 (raft's indexes start at 1).
type LogCache struct {
	store    raft.LogStore
	maxBytes int
	// OnStored, if set before raft starts, is told of the last entry of
	// every batch stored: a leader paces a large command's chunks by it.
	OnStored func(last *raft.Log)

	mu    sync.RWMutex
	ring  []raft.Log
	bytes int    // cached entries' size
	first uint64 // no entry below this index is cached (0: none is)
}

func newLogCache(store raft.LogStore, entries, maxBytes int) *LogCache {
	return &LogCache{store: store, maxBytes: maxBytes, ring: make([]raft.Log, entries)}
}

func entrySize(l *raft.Log) int { return len(l.Data) + len(l.Extensions) }

// IsMonotonic passes the store's raft.MonotonicLogStore answer through, as
// raft.LogCache does: raft-wal's log must be emptied, not truncated, when a
// snapshot is installed.
func (c *LogCache) IsMonotonic() bool {
	m, ok := c.store.(raft.MonotonicLogStore)
	return ok && m.IsMonotonic()
}

func (c *LogCache) GetLog(idx uint64, l *raft.Log) error {
	c.mu.RLock()
	e := &c.ring[idx%uint64(len(c.ring))]
	if idx != 0 && e.Index == idx {
		*l = *e
		c.mu.RUnlock()
		return nil
	}
	c.mu.RUnlock()
	// l may hold a cached entry's bytes from an earlier hit: the store
	// must decode into fresh ones, not over those.
	*l = raft.Log{}
	return c.store.GetLog(idx, l)
}

func (c *LogCache) StoreLog(l *raft.Log) error { return c.StoreLogs([]*raft.Log{l}) }

func (c *LogCache) StoreLogs(logs []*raft.Log) error {
	if err := c.store.StoreLogs(logs); err != nil {
		return fmt.Errorf("unable to store logs within log store: %w", err)
	}
	if len(logs) == 0 {
		return nil
	}
	c.mu.Lock()
	for _, l := range logs {
		c.put(l)
	}
	c.trim(logs[0].Index, logs[len(logs)-1].Index)
	c.mu.Unlock()
	if c.OnStored != nil {
		c.OnStored(logs[len(logs)-1])
	}
	return nil
}

// lastBatchFactor bounds the cache while it keeps the batch stored last
// past its budget: at most this many times maxBytes in all.
const lastBatchFactor = 4

// trim evicts the oldest entries while the cache holds more than
// maxBytes, but not the batch just stored (from index keep to newest):
// on a leader, replication reads that batch right after it is stored, and
// a batch of a large command's chunks can be larger than the budget (raft
// holds the batch in memory anyway until it is committed). Past
// lastBatchFactor times the budget, the batch's oldest entries go too. The
// next batch lets it go; until then (on an idle node, say) the cache may
// hold up to lastBatchFactor times its budget.
func (c *LogCache) trim(keep, newest uint64) {
	n := uint64(len(c.ring))
	evict := func() {
		if e := &c.ring[c.first%n]; e.Index == c.first {
			c.bytes -= entrySize(e)
			*e = raft.Log{}
		}
		c.first++
	}
	for c.bytes > c.maxBytes && c.first != 0 && c.first < keep {
		evict()
	}
	for c.bytes > lastBatchFactor*c.maxBytes && c.first != 0 && c.first < newest {
		evict()
	}
}

// put caches l, unless it is larger than the whole budget, and drops what
// its index pushes out of the ring's range.
func (c *LogCache) put(l *raft.Log) {
	n := uint64(len(c.ring))
	slot := &c.ring[l.Index%n]
	if slot.Index != 0 {
		c.bytes -= entrySize(slot)
		*slot = raft.Log{}
	}
	size := entrySize(l)
	if size > c.maxBytes || l.Index == 0 {
		return
	}
	*slot = *l
	c.bytes += size
	if c.first == 0 || l.Index < c.first {
		c.first = l.Index
	} else if l.Index >= n && c.first <= l.Index-n {
		// The ring holds indexes from lowest up: drop what is below. When
		// the log grows by one entry, that is the slot just overwritten,
		// so the loop runs once; only a jump past the whole ring scans it.
		lowest := l.Index - n + 1
		if lowest-c.first >= n {
			for i := range c.ring {
				if e := &c.ring[i]; e.Index != 0 && e.Index < lowest {
					c.bytes -= entrySize(e)
					*e = raft.Log{}
				}
			}
		} else {
			for i := c.first; i < lowest; i++ {
				if e := &c.ring[i%n]; e.Index == i {
					c.bytes -= entrySize(e)
					*e = raft.Log{}
				}
			}
		}
		c.first = lowest
	}
}

func (c *LogCache) FirstIndex() (uint64, error) { return c.store.FirstIndex() }

func (c *LogCache) LastIndex() (uint64, error) { return c.store.LastIndex() }

// Clear empties the cache: an idle node gives its memory back, and the
// entries are read from the store if they are asked for later.
func (c *LogCache) Clear() {
	c.mu.Lock()
	clear(c.ring)
	c.bytes, c.first = 0, 0
	c.mu.Unlock()
}

// Bytes returns the bytes of the entries cached.
func (c *LogCache) Bytes() int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.bytes
}

func (c *LogCache) DeleteRange(lo, hi uint64) error {
	c.Clear()
	return c.store.DeleteRange(lo, hi)
}
