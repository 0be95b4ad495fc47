// Package snapshot offers the raft.FSMSnapshot that most FSMs write by
// hand: one that persists a byte slice, or whatever a function writes.
//
//	func (s *Store) Snapshot() (raft.FSMSnapshot, error) {
//		s.mu.Lock()
//		defer s.mu.Unlock()
//		b, err := json.Marshal(s.data) // copied under the lock
//		if err != nil {
//			return nil, err
//		}
//		return snapshot.Bytes(b), nil
//	}
//
// raft calls an FSM's Snapshot on its FSM goroutine, between commands, and
// Persist later on a goroutine of its own while commands go on being
// applied: capture the state in Snapshot (a copy, or an immutable view),
// never read the live state in Persist.
//
// The package imports only hashicorp/raft, so that an FSM package can use
// it without importing raftkit.
package snapshot

import (
	"io"

	"github.com/hashicorp/raft"
)

// Bytes returns a snapshot whose Persist writes b to the sink and closes
// it. b must not change afterwards.
func Bytes(b []byte) raft.FSMSnapshot {
	return Func(func(w io.Writer) error {
		_, err := w.Write(b)
		return err
	})
}

// Func returns a snapshot whose Persist calls write with the sink, then
// closes the sink, or cancels it if write fails (raft then discards the
// snapshot and keeps its log). write runs on raft's snapshot goroutine,
// concurrently with the FSM's Apply: it must write state captured when
// the FSM's Snapshot ran.
func Func(write func(w io.Writer) error) raft.FSMSnapshot { return funcSnapshot(write) }

type funcSnapshot func(w io.Writer) error

// Persist writes the snapshot to sink and closes it, or cancels it on a
// failure.
func (f funcSnapshot) Persist(sink raft.SnapshotSink) error {
	if err := f(sink); err != nil {
		_ = sink.Cancel()
		return err
	}
	return sink.Close()
}

// Release does nothing: the snapshot holds no resources.
func (f funcSnapshot) Release() {}
