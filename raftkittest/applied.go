package raftkittest

import (
	"fmt"
	"hash/fnv"
	"io"
	"slices"
	"sync"

	"github.com/hashicorp/raft"
)

// The divergence check. Every FSM of a Cluster sits behind a recorder that
// notes, for each command it receives, its index, its term and a hash of
// its bytes, in one record per cluster. Raft's safety means that every
// node applies the same command at the same index; a node that receives
// other bytes at an index than another node did (or than it did itself
// before a restart) has diverged, whatever its FSM's state looks like
// afterwards.

// Divergence describes the first index at which two nodes' FSMs received
// different commands.
type Divergence struct {
	// Index is the lowest log index at which two nodes differ.
	Index uint64
	// First and Second are the two nodes' views of that index: which node,
	// the entry's term and a hash of the command's bytes.
	First, Second AppliedEntry
}

// AppliedEntry is one command as a node's FSM received it.
type AppliedEntry struct {
	Node string
	Term uint64
	// Hash is the 64-bit FNV-1a hash of the command's bytes.
	Hash uint64
	// Size is the command's length in bytes.
	Size int
}

func (d *Divergence) Error() string {
	return fmt.Sprintf("raftkittest: nodes diverged at index %d: %s applied term %d, %d bytes (hash %016x); %s applied term %d, %d bytes (hash %016x)",
		d.Index, d.First.Node, d.First.Term, d.First.Size, d.First.Hash, d.Second.Node, d.Second.Term, d.Second.Size, d.Second.Hash)
}

// appliedLog is what a cluster's FSMs received, by index.
type appliedLog struct {
	mu      sync.Mutex
	entries map[uint64]AppliedEntry
	// indexes are the entries' indexes, ascending.
	indexes  []uint64
	compared int // applications checked against an earlier one
	first    *Divergence
}

func newAppliedLog() *appliedLog { return &appliedLog{entries: map[uint64]AppliedEntry{}} }

// note records that node's FSM received command l.
func (a *appliedLog) note(node string, l *raft.Log) {
	h := fnv.New64a()
	h.Write(l.Data)
	e := AppliedEntry{Node: node, Term: l.Term, Hash: h.Sum64(), Size: len(l.Data)}
	a.mu.Lock()
	defer a.mu.Unlock()
	prev, seen := a.entries[l.Index]
	if !seen {
		a.entries[l.Index] = e
		i, _ := slices.BinarySearch(a.indexes, l.Index)
		a.indexes = slices.Insert(a.indexes, i, l.Index)
		return
	}
	a.compared++
	if prev.Term != e.Term || prev.Hash != e.Hash || prev.Size != e.Size {
		if a.first == nil || l.Index < a.first.Index {
			a.first = &Divergence{Index: l.Index, First: prev, Second: e}
		}
	}
}

// lastCommand returns the highest index at or below index at which some
// FSM received a command, or 0.
func (a *appliedLog) lastCommand(index uint64) uint64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	i, found := slices.BinarySearch(a.indexes, index)
	switch {
	case found:
		return index
	case i == 0:
		return 0
	}
	return a.indexes[i-1]
}

// result returns the first divergence (nil if none) and how many
// applications were compared with an earlier one of the same index.
func (a *appliedLog) result() (*Divergence, int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.first, a.compared
}

// applyRecorder wraps a node's FSM: it notes every command before the FSM
// applies it. The wrapper types below keep the FSM's optional interfaces,
// which raftkit looks for (raft.BatchingFSM, raft.ConfigurationStore).
type applyRecorder struct {
	fsm  raft.FSM
	node string
	log  *appliedLog
	// fault, if set (tests of the check itself), replaces what this node's
	// FSM receives.
	fault func(node string, l *raft.Log) *raft.Log
	// ready is told of every configuration the FSM receives.
	ready *readyLog
}

func (r *applyRecorder) see(l *raft.Log) *raft.Log {
	if l.Type == raft.LogConfiguration && r.ready != nil {
		r.ready.configuration(r.node, raft.DecodeConfiguration(l.Data))
	}
	if l.Type != raft.LogCommand {
		return l
	}
	if r.fault != nil {
		l = r.fault(r.node, l)
	}
	r.log.note(r.node, l)
	return l
}

func (r *applyRecorder) Apply(l *raft.Log) any               { return r.fsm.Apply(r.see(l)) }
func (r *applyRecorder) Snapshot() (raft.FSMSnapshot, error) { return r.fsm.Snapshot() }
func (r *applyRecorder) Restore(rc io.ReadCloser) error      { return r.fsm.Restore(rc) }
func (r *applyRecorder) applyBatch(logs []*raft.Log) []any {
	return r.fsm.(raft.BatchingFSM).ApplyBatch(r.seeAll(logs))
}
func (r *applyRecorder) storeConfiguration(i uint64, c raft.Configuration) {
	r.fsm.(raft.ConfigurationStore).StoreConfiguration(i, c)
}

// seeAll notes logs; a fault's replacements go into a copy of the slice,
// which raft owns.
func (r *applyRecorder) seeAll(logs []*raft.Log) []*raft.Log {
	var out []*raft.Log
	for i, l := range logs {
		seen := r.see(l)
		if seen != l && out == nil {
			out = append([]*raft.Log(nil), logs...)
		}
		if out != nil {
			out[i] = seen
		}
	}
	if out == nil {
		return logs
	}
	return out
}

type batchingApplyRecorder struct{ *applyRecorder }

func (r batchingApplyRecorder) ApplyBatch(logs []*raft.Log) []any { return r.applyBatch(logs) }

type configApplyRecorder struct{ *applyRecorder }

func (r configApplyRecorder) StoreConfiguration(i uint64, c raft.Configuration) {
	if r.ready != nil {
		r.ready.configuration(r.node, c)
	}
	r.storeConfiguration(i, c)
}

type batchingConfigApplyRecorder struct{ *applyRecorder }

func (r batchingConfigApplyRecorder) ApplyBatch(logs []*raft.Log) []any { return r.applyBatch(logs) }
func (r batchingConfigApplyRecorder) StoreConfiguration(i uint64, c raft.Configuration) {
	r.storeConfiguration(i, c)
}

// record returns fsm behind a applyRecorder that notes into log as node,
// and tells ready of the configurations it receives.
func record(fsm raft.FSM, node string, log *appliedLog, ready *readyLog, fault func(string, *raft.Log) *raft.Log) raft.FSM {
	r := &applyRecorder{fsm: fsm, node: node, log: log, ready: ready, fault: fault}
	_, batching := fsm.(raft.BatchingFSM)
	_, configs := fsm.(raft.ConfigurationStore)
	switch {
	case batching && configs:
		return batchingConfigApplyRecorder{r}
	case batching:
		return batchingApplyRecorder{r}
	case configs:
		return configApplyRecorder{r}
	}
	return r
}
