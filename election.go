package raftkit

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/hashicorp/raft"
)

// ElectionFSM returns the state machine of a node used only for leader
// election: it keeps nothing but the value its leaders publish (Publish),
// so an application with no state of its own needs no FSM:
//
//	node, err := raftkit.NewRaftNode(cfg, raftkit.ElectionFSM())
//
// Every node still needs its Dir (or Storage): raft keeps there the terms
// it has seen and the votes it has cast, and a node that forgot them after
// a restart could vote twice in one term and let two leaders be elected.
// With ElectionFSM the directory holds only raft's log of publications
// and configuration changes, compacted as any other. Each call returns a
// new FSM; give each node its own.
func ElectionFSM() raft.FSM { return &electionFSM{} }

// electionFSM holds the value the leaders publish and the term of the
// entry that published it. Every command is a publication.
type electionFSM struct {
	mu      sync.Mutex
	value   string
	term    uint64
	changed func() // set once by the node
}

func (f *electionFSM) Apply(l *raft.Log) any {
	f.mu.Lock()
	f.value, f.term = string(l.Data), l.Term
	changed := f.changed
	f.mu.Unlock()
	if changed != nil {
		changed()
	}
	return nil
}

func (f *electionFSM) published() (string, uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.value, f.term
}

func (f *electionFSM) onChange(fn func()) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.changed = fn
}

func (f *electionFSM) Snapshot() (raft.FSMSnapshot, error) {
	v, t := f.published()
	return electionSnapshot{value: v, term: t}, nil
}

// Restore reads what electionSnapshot wrote: the term (8 bytes, big
// endian), then the value.
func (f *electionFSM) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		return err
	}
	if len(b) < 8 {
		return fmt.Errorf("raftkit: election snapshot of %d bytes, want at least 8", len(b))
	}
	f.mu.Lock()
	f.term, f.value = binary.BigEndian.Uint64(b), string(b[8:])
	changed := f.changed
	f.mu.Unlock()
	if changed != nil {
		changed()
	}
	return nil
}

type electionSnapshot struct {
	value string
	term  uint64
}

func (s electionSnapshot) Persist(sink raft.SnapshotSink) error {
	b := binary.BigEndian.AppendUint64(nil, s.term)
	if _, err := sink.Write(append(b, s.value...)); err != nil {
		sink.Cancel()
		return err
	}
	return sink.Close()
}

func (electionSnapshot) Release() {}

// errNotElection is Publish's error on a node with an FSM of its own.
var errNotElection = errors.New("the node has an FSM of its own; Publish needs a node started with ElectionFSM")

// Publish replicates value as what this leadership publishes (say, the
// leader's service address), for every node to read (Published) and watch
// (Leadership.Published). Only the leader may publish: elsewhere it fails
// with *NotLeaderError, as ApplyLocal does, and outcomes are classed as
// Apply's. It is for nodes started with ElectionFSM (ErrInvalidRequest
// otherwise); value must fit in Config.MaxCommandSize. Publish from
// RunWhileLeader's function, so that the value comes with the leadership.
func (n *RaftNode) Publish(ctx context.Context, value string) error {
	if n.election == nil {
		return wrapErr(ErrInvalidRequest, "publish", errNotElection)
	}
	_, err := n.ApplyLocal(ctx, []byte(value))
	return err
}

// Published returns the value last published (Publish) on a node started
// with ElectionFSM, as this node has applied it, and the term of the
// leader that published it: the current leader's if it equals the
// leadership's Term, an earlier leader's if smaller. Both are zero before
// any publication, and on a node with an FSM of its own.
func (n *RaftNode) Published() (value string, term uint64) {
	if n.election == nil {
		return "", 0
	}
	return n.election.published()
}
