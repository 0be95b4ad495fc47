package raftkit

import (
	"io"
	"strconv"
	"sync/atomic"

	"github.com/hashicorp/raft"
)

// raft's AppliedIndex counts entries handed to the FSM goroutine, not
// entries the FSM has applied: right after it moves, the FSM may still be
// working through (or not yet have started) the batch. A read barrier that
// waited for AppliedIndex alone let reads see state older than the index
// it promised. appliedFSM wraps the application's FSM and records how far
// the FSM has really got.
type appliedFSM struct {
	fsm     raft.FSM
	batch   raft.BatchingFSM // nil if fsm does not batch
	applied atomic.Uint64    // index of the last entry whose Apply returned
}

// appliedConfigFSM is appliedFSM for FSMs that also implement
// raft.ConfigurationStore, which raft must keep seeing.
type appliedConfigFSM struct {
	*appliedFSM
	store raft.ConfigurationStore
}

func (f *appliedConfigFSM) StoreConfiguration(index uint64, c raft.Configuration) {
	f.store.StoreConfiguration(index, c)
}

// wrapFSM returns the FSM raft is given and the tracker behind it.
func wrapFSM(fsm raft.FSM) (raft.FSM, *appliedFSM) {
	a := &appliedFSM{fsm: fsm}
	a.batch, _ = fsm.(raft.BatchingFSM)
	if cs, ok := fsm.(raft.ConfigurationStore); ok {
		return &appliedConfigFSM{appliedFSM: a, store: cs}, a
	}
	return a, a
}

func (f *appliedFSM) Apply(l *raft.Log) any {
	res := f.fsm.Apply(l)
	f.applied.Store(l.Index)
	return res
}

// ApplyBatch is what raft calls, since appliedFSM is a BatchingFSM: raft
// sends commands and configuration entries. An FSM that does not batch
// gets each command through Apply, as raft would have done.
func (f *appliedFSM) ApplyBatch(logs []*raft.Log) []any {
	if len(logs) == 0 {
		return nil
	}
	var out []any
	if f.batch != nil {
		out = f.batch.ApplyBatch(logs)
	} else {
		out = make([]any, len(logs))
		for i, l := range logs {
			if l.Type == raft.LogCommand {
				out[i] = f.fsm.Apply(l)
			}
		}
	}
	f.applied.Store(logs[len(logs)-1].Index)
	return out
}

func (f *appliedFSM) Snapshot() (raft.FSMSnapshot, error) { return f.fsm.Snapshot() }

func (f *appliedFSM) Restore(rc io.ReadCloser) error { return f.fsm.Restore(rc) }

// fsmReflects reports whether this node's FSM state includes every log
// entry up to index.
func (n *RaftNode) fsmReflects(index uint64) bool {
	// Entries up to AppliedIndex are committed, so the local log holds the
	// committed entries (or they are in a snapshot).
	if n.raft.AppliedIndex() < index {
		return false
	}
	done := n.applied.applied.Load()
	if done >= index {
		return true
	}
	// A restored or taken snapshot is state the FSM already has.
	if s, err := strconv.ParseUint(n.raft.Stats()["last_snapshot_index"], 10, 64); err == nil && s > done {
		done = s
	}
	if done >= index {
		return true
	}
	// No-ops and barriers never reach the FSM and do not change its state.
	var l raft.Log
	for i := done + 1; i <= index; i++ {
		if err := n.stores.log.GetLog(i, &l); err != nil {
			return false
		}
		if l.Type == raft.LogCommand || l.Type == raft.LogConfiguration {
			return false
		}
	}
	return true
}
