package raftkit

import (
	"errors"
	"io"
	"slices"
	"sync/atomic"

	"github.com/hashicorp/raft"

	"github.com/raftkit/raftkit/internal/chunk"
)

// trackedFSM wraps the application's FSM to learn how far the FSM has
// really applied the log. raft's own AppliedIndex moves when entries are
// handed to its FSM goroutine, before the FSM has applied them, so a read
// barrier that trusted it could read state that lacks an acknowledged
// write.
//
// It is a raft.BatchingFSM whatever the application's FSM is, so that it
// sees command and configuration entries, and hands them on exactly as raft
// would have: in batches to a BatchingFSM; one by one to Apply (commands)
// and StoreConfiguration (configurations, if implemented) otherwise.
type trackedFSM struct {
	fsm      raft.FSM
	batching raft.BatchingFSM        // nil unless fsm is one
	configs  raft.ConfigurationStore // nil unless fsm is one

	// applied is the index of the last entry the FSM has finished with.
	applied atomic.Uint64
	// restored is called after a snapshot was restored; it returns the
	// index that snapshot covers.
	restored func() uint64
	// configured, if set, is told of every configuration entry after the
	// application's FSM has had it.
	configured func(index uint64, conf raft.Configuration)

	// chunks assembles chunked commands (see internal/chunk). Only raft's
	// FSM goroutine feeds it (ApplyBatch, Snapshot and Restore all run
	// there); the leader's abort loop reads its pending term.
	chunks *chunk.Assembler

	// deferred is set when Snapshot refused because a chunked command was
	// half applied; completed, if set, is called once that command is
	// complete, so that the snapshot is taken then (see compactor).
	// restores counts successful Restores (Status.SnapshotsRestored).
	restores atomic.Uint64

	deferred    atomic.Bool
	snapshotDue atomic.Bool
	completed   func()
}

func newTrackedFSM(fsm raft.FSM) *trackedFSM {
	t := &trackedFSM{fsm: fsm, chunks: chunk.NewAssembler()}
	t.batching, _ = fsm.(raft.BatchingFSM)
	t.configs, _ = fsm.(raft.ConfigurationStore)
	return t
}

var _ raft.BatchingFSM = (*trackedFSM)(nil)

func (t *trackedFSM) Apply(l *raft.Log) any {
	return t.ApplyBatch([]*raft.Log{l})[0]
}

func (t *trackedFSM) ApplyBatch(logs []*raft.Log) []any {
	if len(logs) == 0 {
		return nil
	}
	var out []any
	if !t.chunks.Pending() && !chunk.HasChunks(logs) {
		out = t.handOn(logs)
	} else {
		out = t.applyChunks(logs)
	}
	t.applied.Store(logs[len(logs)-1].Index)
	if t.configured != nil {
		for _, l := range logs {
			if l.Type == raft.LogConfiguration {
				t.configured(l.Index, raft.DecodeConfiguration(l.Data))
			}
		}
	}
	if t.deferred.Load() && !t.chunks.Pending() {
		t.deferred.Store(false)
		t.snapshotDue.Store(true)
		if t.completed != nil {
			t.completed()
		}
	}
	return out
}

// handOn gives logs to the application's FSM as raft would have, each
// entry's AppendedAt in one form on every node (see logTime).
func (t *trackedFSM) handOn(logs []*raft.Log) []any {
	logs = logTime(logs)
	if t.batching != nil {
		return t.batching.ApplyBatch(logs)
	}
	out := make([]any, len(logs))
	for i, l := range logs {
		switch l.Type {
		case raft.LogCommand:
			out[i] = t.fsm.Apply(l)
		case raft.LogConfiguration:
			if t.configs != nil {
				t.configs.StoreConfiguration(l.Index, raft.DecodeConfiguration(l.Data))
			}
		}
	}
	return out
}

// applyChunks is ApplyBatch for a batch that holds chunks or meets a
// pending sequence: chunks go to the sequence, a completed command and
// every other entry to the application's FSM, in log order. A chunk's
// response is nil, or chunk.ErrIncomplete; a completed command's is the
// FSM's, at its final chunk's position.
func (t *trackedFSM) applyChunks(logs []*raft.Log) []any {
	out := make([]any, len(logs))
	pass := make([]*raft.Log, 0, len(logs)) // for the application's FSM
	at := make([]int, 0, len(logs))         // pass[j] answers out[at[j]]
	for i, l := range logs {
		if l.Type != raft.LogCommand || !chunk.Is(l.Extensions) {
			t.chunks.Drop()
			pass, at = append(pass, l), append(at, i)
			continue
		}
		whole, resp := t.chunks.Take(l)
		out[i] = resp
		if whole != nil {
			pass, at = append(pass, whole), append(at, i)
		}
	}
	if len(pass) > 0 {
		for j, r := range t.handOn(pass) {
			out[at[j]] = r
		}
	}
	return out
}

// Snapshot refuses while a chunked command is half applied: the snapshot
// would cover chunks the application's FSM has not seen, and a node
// restored from it could never complete that command. The node takes the
// snapshot as soon as the command is complete (see compactor);
// RaftNode.Snapshot and Backup wait for it.
func (t *trackedFSM) Snapshot() (raft.FSMSnapshot, error) {
	if t.chunks.Pending() {
		t.deferred.Store(true)
		return nil, chunk.ErrInProgress
	}
	return t.fsm.Snapshot()
}

// deferredDone reports, once, that a snapshot the FSM deferred can now be
// taken.
func (t *trackedFSM) deferredDone() bool { return t.snapshotDue.Swap(false) }

func (t *trackedFSM) Restore(rc io.ReadCloser) error {
	t.chunks.Drop()
	if err := t.fsm.Restore(rc); err != nil {
		return err
	}
	if t.restored != nil {
		t.applied.Store(t.restored())
	}
	t.restores.Add(1)
	return nil
}

// fsmCaughtUp reports whether the FSM has applied every command and
// configuration entry up to index. raft hands the FSM only those two kinds
// (no-op and barrier entries stop at raft), so the FSM is caught up when it
// has applied the last such entry at or below index.
func (n *RaftNode) fsmCaughtUp(index uint64) bool {
	applied := n.fsm.applied.Load()
	if applied >= index {
		return true
	}
	if n.raft.AppliedIndex() < index {
		return false // not even handed over yet
	}
	var l raft.Log
	for i := index; i > applied; i-- {
		if err := n.stores.Log.GetLog(i, &l); err != nil {
			if errors.Is(err, raft.ErrLogNotFound) {
				// Compacted: a snapshot of applied state covers it.
				return true
			}
			return false
		}
		if l.Type == raft.LogCommand || l.Type == raft.LogConfiguration {
			return false // the FSM has yet to apply entry i
		}
	}
	return true
}

// appliedIndexes returns raft's applied index (entries handed to the FSM)
// and the FSM's own: the highest index up to which the FSM has applied
// every entry it is given, which is raft's once the FSM has caught up.
func (n *RaftNode) appliedIndexes() (raftApplied, fsmApplied uint64) {
	raftApplied = n.raft.AppliedIndex()
	if n.fsmCaughtUp(raftApplied) {
		return raftApplied, raftApplied
	}
	return raftApplied, min(n.fsm.applied.Load(), raftApplied)
}

// logTime returns logs with every AppendedAt as wall-clock time in UTC.
// The leader stamps AppendedAt with time.Now, which carries Go's monotonic
// clock reading and the local time zone; followers decode it without the
// reading, maybe in another zone. So an FSM that keeps the time (a lease's
// expiry, say) would hold values that compare unequal across nodes
// (reflect.DeepEqual) and subtract differently (time.Sub); in one form
// they do not. Entries that need it are copied: raft's own stay as they
// are.
func logTime(logs []*raft.Log) []*raft.Log {
	var out []*raft.Log
	for i, l := range logs {
		t := l.AppendedAt.Round(0).UTC()
		if t == l.AppendedAt {
			continue
		}
		if out == nil {
			out = slices.Clone(logs)
		}
		c := *l
		c.AppendedAt = t
		out[i] = &c
	}
	if out == nil {
		return logs
	}
	return out
}
