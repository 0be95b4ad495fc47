package raftkit

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	fsmexample "github.com/raftkit/raftkit/fsm_example"
)

// gatedFSM is a store whose Apply can be held back, as a slow FSM would.
type gatedFSM struct {
	*fsmexample.Store
	mu   sync.Mutex
	gate chan struct{} // nil: open
}

func (g *gatedFSM) hold() { g.mu.Lock(); g.gate = make(chan struct{}); g.mu.Unlock() }
func (g *gatedFSM) release() {
	g.mu.Lock()
	if g.gate != nil {
		close(g.gate)
		g.gate = nil
	}
	g.mu.Unlock()
}

func (g *gatedFSM) wait() {
	g.mu.Lock()
	gate := g.gate
	g.mu.Unlock()
	if gate != nil {
		<-gate
	}
}

func (g *gatedFSM) Apply(l *raft.Log) any { g.wait(); return g.Store.Apply(l) }
func (g *gatedFSM) ApplyBatch(logs []*raft.Log) []any {
	g.wait()
	return g.Store.ApplyBatch(logs)
}

// raft's AppliedIndex moves when entries are handed to the FSM goroutine,
// before the FSM applies them. LinearizableRead used to wait for
// AppliedIndex only, so a read on a node with a busy FSM could miss an
// acknowledged write.
func TestLinearizableReadWaitsForTheFSMNotJustRaft(t *testing.T) {
	net := NewMemNetwork()
	var addrs []string
	for i := 0; i < 3; i++ {
		addrs = append(addrs, fmt.Sprintf("gated%d", i))
	}
	var nodes []*RaftNode
	var fsms []*gatedFSM
	for _, a := range addrs {
		f := &gatedFSM{Store: fsmexample.New()}
		n, err := NewRaftNode(Config{InMemory: true, Network: net, Addr: a, Peers: addrs, RaftConfig: fastRaft}, f)
		if err != nil {
			t.Fatal(err)
		}
		nodes, fsms = append(nodes, n), append(fsms, f)
	}
	defer func() {
		for i, n := range nodes {
			fsms[i].release()
			n.Close()
		}
	}()
	l := memLeader(t, nodes)
	f := (l + 1) % 3
	fsms[f].hold()
	if _, err := nodes[l].Apply(ctxTimeout(t, 10*time.Second), fsmexample.Set("a", []byte("1"))); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the follower's raft to hand the write to its FSM", func() bool {
		return nodes[f].raft.AppliedIndex() >= nodes[l].raft.AppliedIndex()
	})
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	err := nodes[f].LinearizableRead(ctx)
	cancel()
	if _, ok := fsms[f].Get("a"); err == nil && !ok {
		t.Fatal("LinearizableRead returned before the follower's FSM applied an acknowledged write")
	}
	fsms[f].release()
	if err := nodes[f].LinearizableRead(ctxTimeout(t, 10*time.Second)); err != nil {
		t.Fatal(err)
	}
	if v, ok := fsms[f].Get("a"); !ok || string(v) != "1" {
		t.Fatalf("after LinearizableRead the follower has a=%q (%v), want 1", v, ok)
	}
}
