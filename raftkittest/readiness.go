package raftkittest

import (
	"fmt"
	"sync"

	"github.com/hashicorp/raft"

	"github.com/raftkit/raftkit"
)

// The readiness oracle. raftkit promises that a node is ready (Ready,
// health, WaitForLeader) only once it has applied what its leader had
// committed when the node last started or (re)entered the configuration.
// The cluster keeps, for each member, a floor: a commit index that a
// ready node must have applied. Sampled through a history, a node that
// says it is ready with its applied index below its floor breaks the
// promise.
//
// A floor must never be above what a correct node owes, or correct nodes
// would be flagged: it is the highest commit index among the running
// nodes (every one of them committed; any later leader's read index covers
// it) read
//   - before a (re)start: the node can ask a leader only after it starts;
//   - before the call that adds a removed, still running node back (one
//     that knows it was removed: see removeLive);
//   - again when that node's FSM receives the first configuration that
//     lists it after one that did not: the re-add has committed, and the
//     node learns its new target only once its FSM has had that entry.

// readyLog holds each member's readiness floor and the violations seen.
type readyLog struct {
	mu sync.Mutex
	// nodes are the members' latest instances, for their commit indexes.
	nodes map[string]*raftkit.RaftNode
	floor map[string]uint64
	// out holds members removed while still running; excluded those of
	// them whose FSM has received a configuration without them since.
	out, excluded map[string]bool
	violations    []string
	// ready is the verdict sampled: RaftNode.Ready, or a stand-in that
	// claims readiness too early, for the oracle's negative control.
	ready func(*raftkit.RaftNode) error
	// applied tells which indexes hold commands (see sample).
	applied *appliedLog
}

func newReadyLog(applied *appliedLog) *readyLog {
	return &readyLog{nodes: map[string]*raftkit.RaftNode{}, floor: map[string]uint64{}, out: map[string]bool{}, excluded: map[string]bool{},
		ready: (*raftkit.RaftNode).Ready, applied: applied}
}

// highestCommitLocked is the highest commit index among the instances.
func (r *readyLog) highestCommitLocked() uint64 {
	var hi uint64
	for _, n := range r.nodes {
		hi = max(hi, n.Raft().CommitIndex())
	}
	return hi
}

// raise sets id's floor to the highest commit index now.
func (r *readyLog) raise(id string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.floor[id] = max(r.floor[id], r.highestCommitLocked())
}

// started records id's new instance.
func (r *readyLog) started(id string, n *raftkit.RaftNode) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.nodes[id] = n
}

// left records that id was removed from the configuration and runs on.
func (r *readyLog) left(id string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.out[id], r.excluded[id] = true, false
}

// configuration is told by id's recorder of each configuration its FSM
// receives, before the FSM has it.
func (r *readyLog) configuration(id string, conf raft.Configuration) {
	in := false
	for _, s := range conf.Servers {
		in = in || string(s.ID) == id
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	switch {
	case !r.out[id]:
	case !in:
		r.excluded[id] = true
	case r.excluded[id]:
		r.floor[id] = max(r.floor[id], r.highestCommitLocked())
		delete(r.out, id)
		delete(r.excluded, id)
	}
}

// sample checks node once: its floor first, then the readiness verdict,
// then whether the node's FSM has applied everything up to the floor, so
// that a node that was ready at the call to Ready (and had applied its
// target, which the floor is never above) cannot fail the check made after
// it. "Everything up to the floor" is the last command at or below it that
// any FSM received: the FSM's applied index (Status().AppliedIndex) stays
// below a leader's no-op or barrier that no FSM sees.
func (r *readyLog) sample(n *raftkit.RaftNode) {
	r.mu.Lock()
	floor := r.floor[n.ID()]
	ready := r.ready
	r.mu.Unlock()
	if ready(n) != nil {
		return
	}
	owed := r.applied.lastCommand(floor)
	if st := n.Status(); st.AppliedIndex < owed {
		r.mu.Lock()
		r.violations = append(r.violations, fmt.Sprintf("%s ready at applied index %d, below the last command (%d) at or below its floor %d", n.ID(), st.AppliedIndex, owed, floor))
		r.mu.Unlock()
	}
}

// result returns how many samples broke the promise, and the first few.
func (r *readyLog) result() (int, []string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.violations), append([]string(nil), r.violations[:min(len(r.violations), 5)]...)
}
