package chunk

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
)

const (
	// Group is how many chunks (1 MiB) a leader submits before it
	// waits for its log store to take them.
	Group = 4
	// GroupWait bounds that wait: past it (raft lost leadership,
	// say), the rest of the command is submitted at once.
	GroupWait = time.Second
)

// Stored is the chunk a node's log store took last: the log cache tells
// it the last entry of every batch stored (store.LogCache.OnStored). A
// leader feeds raft a large command's chunks a group at a time, each once
// the group before is stored, so that it writes a group while its
// followers write the one before.
type Stored struct {
	batches atomic.Uint64 // batches stored that ended in a chunk

	mu    sync.Mutex
	id    uint64
	index uint32
	wake  chan struct{} // closed at the next chunk stored
}

// NewStored returns a Stored that has seen no chunk.
func NewStored() *Stored { return &Stored{wake: make(chan struct{})} }

// Note records last if it is a chunk.
func (s *Stored) Note(last *raft.Log) {
	if !Is(last.Extensions) {
		return
	}
	h, err := ParseHeader(last.Extensions)
	if err != nil || h.Abort {
		return
	}
	s.batches.Add(1)
	s.mu.Lock()
	s.id, s.index = h.ID, h.Index
	close(s.wake)
	s.wake = make(chan struct{})
	s.mu.Unlock()
}

// Batches counts the batches stored that ended in a chunk.
func (s *Stored) Batches() uint64 { return s.batches.Load() }

// Wait waits until chunk index of sequence id, or a later one of it, is
// stored, for at most limit or until stop closes; it reports whether the
// chunk was stored.
func (s *Stored) Wait(id uint64, index uint32, limit time.Duration, stop <-chan struct{}) bool {
	var timer *time.Timer
	for {
		s.mu.Lock()
		done, wake := s.id == id && s.index >= index, s.wake
		s.mu.Unlock()
		if done {
			return true
		}
		if timer == nil {
			timer = time.NewTimer(limit)
			defer timer.Stop()
		}
		select {
		case <-wake:
		case <-timer.C:
			return false
		case <-stop:
			return false
		}
	}
}
