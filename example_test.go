package raftkit_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/hashicorp/raft"

	"github.com/raftkit/raftkit"
	fsmexample "github.com/raftkit/raftkit/fsm_example"
)

// A single in-memory node: no ports, no disk. A real node sets Addr to a
// host:port, Dir to a directory and Peers to the cluster's addresses.
func ExampleNewRaftNode() {
	kv := fsmexample.New()
	node, err := raftkit.NewRaftNode(raftkit.Config{
		InMemory: true,
		Addr:     "node1",
		Peers:    []string{"node1"},
	}, kv)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer node.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	leader, err := node.WaitForLeader(ctx)
	fmt.Println("leader:", leader, err)
	// Output: leader: node1 <nil>
}

func ExampleRaftNode_Apply() {
	kv := fsmexample.New()
	node, err := raftkit.NewRaftNode(raftkit.Config{
		InMemory: true, Addr: "node1", Peers: []string{"node1"},
		// The FSM's errors that callers match, on every node alike.
		FSMErrors: fsmexample.Errors,
	}, kv)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer node.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := node.WaitForLeader(ctx); err != nil {
		fmt.Println(err)
		return
	}

	if _, err := node.Apply(ctx, fsmexample.Set("greeting", []byte("hello"))); err != nil {
		if errors.Is(err, raftkit.ErrUnknownOutcome) {
			fmt.Println("the write may or may not have been applied:", err)
		}
		return
	}
	swapped, err := node.Apply(ctx, fsmexample.CompareAndSet("greeting", []byte("hello"), []byte("hi")))
	fmt.Println("swapped:", swapped, err)
	value, _ := kv.Get("greeting")
	fmt.Println("greeting:", string(value))

	// The FSM's own error comes back as Apply's error: the command was
	// applied, and the FSM rejected it.
	_, err = node.Apply(ctx, []byte{0xff})
	fmt.Println("bad command:", errors.Is(err, fsmexample.ErrBadCommand), raftkit.Classify(err))
	// Output:
	// swapped: true <nil>
	// greeting: hi
	// bad command: true rejected
}

func ExampleRaftNode_WatchLeadership() {
	node, err := raftkit.NewRaftNode(raftkit.Config{InMemory: true, Addr: "node1", Peers: []string{"node1"}}, fsmexample.New())
	if err != nil {
		fmt.Println(err)
		return
	}
	defer node.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for l := range node.WatchLeadership(ctx) {
		if l.IsLeader {
			fmt.Println("this node leads")
			break
		}
	}
	// Output: this node leads
}

// Three in-memory nodes on one MemNetwork form a cluster; a write through a
// follower is forwarded to the leader, and a linearizable read on another
// follower sees it.
func ExampleMemNetwork() {
	network := raftkit.NewMemNetwork()
	names := []string{"a", "b", "c"}
	var nodes []*raftkit.RaftNode
	var stores []*fsmexample.Store
	for _, name := range names {
		kv := fsmexample.New()
		n, err := raftkit.NewRaftNode(raftkit.Config{InMemory: true, Network: network, Addr: name, Peers: names}, kv)
		if err != nil {
			fmt.Println(err)
			return
		}
		defer n.Close()
		nodes, stores = append(nodes, n), append(stores, kv)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	leader, err := nodes[0].WaitForLeader(ctx)
	if err != nil {
		fmt.Println(err)
		return
	}
	var followers []int
	for i, n := range nodes {
		if n.Addr() != leader {
			followers = append(followers, i)
		}
	}
	if _, err := nodes[followers[0]].Apply(ctx, fsmexample.Set("color", []byte("blue"))); err != nil {
		fmt.Println(err)
		return
	}
	if err := nodes[followers[1]].LinearizableRead(ctx); err != nil {
		fmt.Println(err)
		return
	}
	v, _ := stores[followers[1]].Get("color")
	fmt.Println("color:", string(v))
	// Output: color: blue
}

func ExampleRaftNode_RunWhileLeader() {
	node, err := raftkit.NewRaftNode(raftkit.Config{InMemory: true, Addr: "node1", Peers: []string{"node1"}}, fsmexample.New())
	if err != nil {
		fmt.Println(err)
		return
	}
	defer node.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	done := make(chan struct{})
	go node.RunWhileLeader(ctx, func(leaderCtx context.Context) {
		// Leader-only work goes here; stop when leaderCtx is cancelled.
		fmt.Println("leading: starting the leader's work")
		close(done)
		<-leaderCtx.Done()
	})
	<-done
	// Output: leading: starting the leader's work
}

// A job fences its side effects with the lease's term and checks the
// lease, without a round trip, just before each one.
func ExampleLeaseFromContext() {
	node, err := raftkit.NewRaftNode(raftkit.Config{InMemory: true, Addr: "node1", Peers: []string{"node1"}}, fsmexample.New())
	if err != nil {
		fmt.Println(err)
		return
	}
	defer node.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var highest uint64 // what a fenced resource remembers
	write := func(token uint64, what string) {
		if token < highest {
			fmt.Println("refused:", what)
			return
		}
		highest = token
		fmt.Println("written:", what)
	}
	done := make(chan struct{})
	go node.RunWhileLeader(ctx, func(ctx context.Context) {
		defer close(done)
		lease := raftkit.LeaseFromContext(ctx)
		if lease.Valid() {
			write(lease.Term(), "the leader's tick")
		}
		write(lease.Term()-1, "a deposed leader's tick")
		cancel()
		<-ctx.Done()
		fmt.Println("stopped:", context.Cause(ctx))
	})
	<-done
	// Output:
	// written: the leader's tick
	// refused: a deposed leader's tick
	// stopped: context canceled
}

// A result type registered in Config.ResultTypes comes back as itself on
// every node; ApplyAs returns it typed.
func ExampleApplyAs() {
	type counter struct {
		Name  string
		Value int64
	}
	fsm := &counterFSM{result: func(n int64) any { return counter{Name: "hits", Value: n} }}
	node, err := raftkit.NewRaftNode(raftkit.Config{
		InMemory: true, Addr: "node1", Peers: []string{"node1"},
		ResultTypes: []any{counter{}},
	}, fsm)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer node.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for i := 0; i < 2; i++ {
		c, err := raftkit.ApplyAs[counter](ctx, node, []byte("incr"))
		fmt.Println(c.Name, c.Value, err)
	}
	// Output:
	// hits 1 <nil>
	// hits 2 <nil>
}

// counterFSM counts the commands it applied.
type counterFSM struct {
	n      int64
	result func(int64) any
}

func (f *counterFSM) Apply(l *raft.Log) any {
	if l.Type != raft.LogCommand {
		return nil
	}
	f.n++
	return f.result(f.n)
}
func (f *counterFSM) Snapshot() (raft.FSMSnapshot, error) { return counterSnap(f.n), nil }
func (f *counterFSM) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	return json.NewDecoder(rc).Decode(&f.n)
}

type counterSnap int64

func (s counterSnap) Persist(sink raft.SnapshotSink) error {
	if err := json.NewEncoder(sink).Encode(int64(s)); err != nil {
		sink.Cancel()
		return err
	}
	return sink.Close()
}
func (counterSnap) Release() {}

// A node used only for leader election needs no FSM of its own; its
// leader publishes where it serves, and every node can read it.
func ExampleElectionFSM() {
	node, err := raftkit.NewRaftNode(raftkit.Config{InMemory: true, Addr: "node1", Peers: []string{"node1"}}, raftkit.ElectionFSM())
	if err != nil {
		fmt.Println(err)
		return
	}
	defer node.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	published := make(chan struct{})
	go node.RunWhileLeader(ctx, func(ctx context.Context) {
		if err := node.Publish(ctx, "10.0.0.1:8080"); err != nil {
			fmt.Println(err)
		}
		close(published)
		<-ctx.Done()
	})
	<-published
	for l := range node.WatchLeadership(ctx) {
		if l.Published != "" {
			fmt.Println("the leader serves at", l.Published, "in its term:", l.PublishedTerm == l.Term)
			break
		}
	}
	// Output: the leader serves at 10.0.0.1:8080 in its term: true
}
