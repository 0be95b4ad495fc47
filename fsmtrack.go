package raftkit

import (
	"errors"
	"io"
	"sync/atomic"

	"github.com/hashicorp/raft"
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

	// pending is the chunked command being assembled (see chunk.go), nil
	// when none is. Only raft's FSM goroutine touches it (ApplyBatch,
	// Snapshot and Restore all run there).
	pending *chunkSeq
	// pendingTerm is pending's term, 0 when none is pending: for the
	// leader's check for a sequence an earlier leader abandoned.
	pendingTerm atomic.Uint64
	// checkChunks receives a value (without blocking) whenever a
	// sequence starts: the leader then checks whether it must abort one
	// (see abortAbandonedChunks).
	checkChunks chan struct{}
}

func newTrackedFSM(fsm raft.FSM) *trackedFSM {
	t := &trackedFSM{fsm: fsm, checkChunks: make(chan struct{}, 1)}
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
	if t.pending == nil && !hasChunks(logs) {
		out = t.handOn(logs)
	} else {
		out = t.applyChunks(logs)
	}
	t.applied.Store(logs[len(logs)-1].Index)
	return out
}

// handOn gives logs to the application's FSM as raft would have.
func (t *trackedFSM) handOn(logs []*raft.Log) []any {
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

func hasChunks(logs []*raft.Log) bool {
	for _, l := range logs {
		if l.Type == raft.LogCommand && isChunk(l.Extensions) {
			return true
		}
	}
	return false
}

// applyChunks is ApplyBatch for a batch that holds chunks or meets a
// pending sequence: chunks go to the sequence, a completed command and
// every other entry to the application's FSM, in log order. A chunk's
// response is nil, or errChunkIncomplete; a completed command's is the
// FSM's, at its final chunk's position.
func (t *trackedFSM) applyChunks(logs []*raft.Log) []any {
	out := make([]any, len(logs))
	pass := make([]*raft.Log, 0, len(logs)) // for the application's FSM
	at := make([]int, 0, len(logs))         // pass[j] answers out[at[j]]
	for i, l := range logs {
		if l.Type != raft.LogCommand || !isChunk(l.Extensions) {
			t.drop()
			pass, at = append(pass, l), append(at, i)
			continue
		}
		whole, resp := t.chunk(l)
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

// chunk takes one chunk entry. It returns the whole command as one entry
// at the final chunk's index and term once l completes it; otherwise nil
// and l's response: nil for an abort entry or a chunk taken into a
// sequence, errChunkIncomplete for a chunk that continues none.
func (t *trackedFSM) chunk(l *raft.Log) (*raft.Log, any) {
	h, err := parseChunkHeader(l.Extensions)
	if err == nil && h.abort && len(l.Data) == 0 {
		t.drop()
		return nil, nil
	}
	if err != nil || h.abort || len(l.Data) != h.chunkLen() {
		t.drop()
		return nil, errChunkIncomplete
	}
	p := t.pending
	if h.index == 0 {
		t.drop()
		p = &chunkSeq{id: h.id, term: l.Term, count: h.count, buf: make([]byte, 0, h.total)}
		t.pending = p
		t.pendingTerm.Store(l.Term)
		poke(t.checkChunks)
	} else if p == nil || p.id != h.id || p.term != l.Term || p.next != h.index ||
		p.count != h.count || uint64(cap(p.buf)) != h.total {
		t.drop()
		return nil, errChunkIncomplete
	}
	p.buf = append(p.buf, l.Data...)
	p.next++
	if p.next < p.count {
		return nil, nil
	}
	t.drop()
	return &raft.Log{Index: l.Index, Term: l.Term, Type: raft.LogCommand, Data: p.buf, AppendedAt: l.AppendedAt}, nil
}

// poke sends on ch, a channel of capacity 1, unless a value waits there.
func poke(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// drop forgets the pending sequence.
func (t *trackedFSM) drop() {
	if t.pending != nil {
		t.pending = nil
		t.pendingTerm.Store(0)
	}
}

// Snapshot refuses while a chunked command is half applied: the snapshot
// would cover chunks the application's FSM has not seen, and a node
// restored from it could never complete that command. raft keeps its log
// and tries again at its next interval; RaftNode.Snapshot and Backup retry
// sooner.
func (t *trackedFSM) Snapshot() (raft.FSMSnapshot, error) {
	if t.pending != nil {
		return nil, errChunkInProgress
	}
	return t.fsm.Snapshot()
}

func (t *trackedFSM) Restore(rc io.ReadCloser) error {
	t.drop()
	if err := t.fsm.Restore(rc); err != nil {
		return err
	}
	if t.restored != nil {
		t.applied.Store(t.restored())
	}
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
		if err := n.stores.log.GetLog(i, &l); err != nil {
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

// snapshotIndex is the index the newest stored snapshot covers: what a
// restore just brought the FSM to.
func snapshotIndex(snaps raft.SnapshotStore) uint64 {
	list, err := snaps.List()
	if err != nil || len(list) == 0 {
		return 0
	}
	return list[0].Index
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
