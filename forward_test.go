package raftkit

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	fsmexample "github.com/raftkit/raftkit/fsm_example"
	"github.com/raftkit/raftkit/internal/peer"
)

func TestApplyOnFollowerForwardsToLeader(t *testing.T) {
	c := newTCPCluster(t, 3)
	l := c.leader()
	for i := range c.nodes {
		if i == l {
			continue
		}
		k := fmt.Sprintf("via-%d", i)
		res, err := c.nodes[i].Apply(ctxTimeout(t, 5*time.Second), fsmexample.Set(k, []byte("v")))
		if err != nil || res != nil {
			t.Fatalf("write through follower %d: %v, %v", i, res, err)
		}
		// The leader applied it before answering.
		if v, ok := c.fsms[l].Get(k); !ok || string(v) != "v" {
			t.Fatalf("leader lacks %s after forwarded write", k)
		}
	}
}

func TestForwardedResponsesKeepTheirTypes(t *testing.T) {
	c := newTCPCluster(t, 3)
	l := c.leader()
	f := c.nodes[(l+1)%3]
	ctx := ctxTimeout(t, 10*time.Second)
	if _, err := f.Apply(ctx, fsmexample.Set("k", []byte("v1"))); err != nil {
		t.Fatal(err)
	}
	if res, err := f.Apply(ctx, fsmexample.CompareAndSet("k", []byte("v1"), []byte("v2"))); err != nil || res != true {
		t.Fatalf("forwarded CAS = %#v, %v; want true", res, err)
	}
	if res, err := f.Apply(ctx, fsmexample.Get("k")); err != nil || !bytes.Equal(res.([]byte), []byte("v2")) {
		t.Fatalf("forwarded Get = %#v, %v; want []byte(v2)", res, err)
	}
	_, err := f.Apply(ctx, []byte{0xee})
	var fe *FSMError
	if !errors.As(err, &fe) || !bytes.Contains([]byte(fe.Message), []byte("bad command")) {
		t.Fatalf("forwarded FSM error = %v, want *FSMError with the FSM's message", err)
	}
	if errors.Is(err, ErrUnknownOutcome) {
		t.Fatal("an FSM error is a known outcome")
	}
}

func TestOversizedCommandIsRefusedBeforeSending(t *testing.T) {
	net := NewMemNetwork()
	nodes, _ := newMemCluster(t, net, 3)
	l := memLeader(t, nodes)
	big := make([]byte, DefaultMaxCommandSize+1)
	for _, n := range []*RaftNode{nodes[l], nodes[(l+1)%3]} {
		_, err := n.Apply(ctxTimeout(t, 5*time.Second), big)
		if !errors.Is(err, ErrTooLarge) || errors.Is(err, ErrUnknownOutcome) {
			t.Fatalf("oversized command on %s: %v, want ErrTooLarge (not applied)", n.ID(), err)
		}
	}
}

func TestMaxCommandSizeIsConfigurable(t *testing.T) {
	net := NewMemNetwork()
	nodes, _ := newMemCluster(t, net, 3, func(c *Config) { c.MaxCommandSize = 4 << 20 })
	l := memLeader(t, nodes)
	f := nodes[(l+1)%3]
	if _, err := f.Apply(ctxTimeout(t, 10*time.Second), fsmexample.Set("big", make([]byte, 3<<20))); err != nil {
		t.Fatalf("3 MiB value under a 4 MiB limit, forwarded: %v", err)
	}
	if _, err := f.Apply(ctxTimeout(t, 5*time.Second), make([]byte, 4<<20+1)); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("command over the configured limit: %v, want ErrTooLarge", err)
	}
}

func TestForwardingSurvivesALeaderRestart(t *testing.T) {
	// The follower's pooled connection to the old leader dies with it; the
	// next forwarded write must use a new connection, not fail as unknown.
	net := NewMemNetwork()
	storage := []*MemStorage{NewMemStorage(), NewMemStorage(), NewMemStorage()}
	names := []string{"a", "b", "c"}
	start := func(i int) *RaftNode {
		n, err := NewRaftNode(Config{InMemory: true, Network: net, Storage: storage[i], Addr: names[i], Peers: names, RaftConfig: fastRaft}, fsmexample.New())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { n.Close() })
		return n
	}
	nodes := []*RaftNode{start(0), start(1), start(2)}
	l := memLeader(t, nodes)
	f := nodes[(l+1)%3]
	if _, err := f.Apply(ctxTimeout(t, 5*time.Second), fsmexample.Set("before", nil)); err != nil {
		t.Fatal(err)
	}
	// Restart every node but f, keeping their state, and give leadership
	// back to the old leader's address: f's pooled connection to it is dead.
	for i := range nodes {
		if nodes[i] != f {
			nodes[i].Close()
			nodes[i] = start(i)
		}
	}
	memLeader(t, nodes)
	other := nodes[(l+2)%3]
	if err := other.TransferLeadership(ctxTimeout(t, 10*time.Second), names[l]); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the old leader's address to lead and f to know it", func() bool {
		return nodes[l].IsLeader() && f.GetLeaderAddr() == names[l]
	})
	if _, err := f.Apply(ctxTimeout(t, 5*time.Second), fsmexample.Set("after", nil)); err != nil {
		t.Fatalf("forwarded write after the leader restarted: %v", err)
	}
}

// A forwarded request that fails because this node closed under it (Close,
// or a crash in tests) says so: sent, its outcome is unknown and it
// matches ErrClosed; not sent, it is closed. The connection's own error
// named the leader and the transport's internals ("outcome unknown: via
// leader node2: io: read/write on closed pipe"). Staging the race on a
// cluster (the answer must still be on its way when the node closes) is
// not reliable on a loaded machine, so the classification is tested at
// the point where the node tells its closing apart.
func TestForwardedWriteCutByThisNodeClosingSaysSo(t *testing.T) {
	closed := make(chan struct{})
	close(closed)
	cut := &peer.CallError{Peer: "mem1", Sent: true, Err: io.ErrClosedPipe}
	notSent := &peer.CallError{Peer: "mem1", Sent: false, Err: io.ErrClosedPipe}

	n := &RaftNode{closed: closed}
	err := n.forwardErr("apply", "mem1", cut)
	if !errors.Is(err, ErrUnknownOutcome) || !errors.Is(err, ErrClosed) || Classify(err) != Unknown {
		t.Fatalf("sent, then this node closed: %v (class %v); want an unknown outcome that matches ErrClosed", err, Classify(err))
	}
	if msg := err.Error(); !strings.Contains(msg, "this node closed") || strings.Contains(msg, "pipe") {
		t.Fatalf("error text %q: want it to say this node closed, without the transport's internals", msg)
	}
	if err := n.forwardErr("apply", "mem1", notSent); Classify(err) != Closed {
		t.Fatalf("not sent, this node closed: %v (class %v), want closed", err, Classify(err))
	}

	open := &RaftNode{closed: make(chan struct{})}
	if err := open.forwardErr("apply", "mem1", cut); Classify(err) != Unknown || errors.Is(err, ErrClosed) || !strings.Contains(err.Error(), "via leader mem1") {
		t.Fatalf("sent, cut while this node is open: %v; want the transport's unknown outcome, naming the leader", err)
	}
}
