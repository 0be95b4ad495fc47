package raftkit

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	fsmexample "github.com/raftkit/raftkit/fsm_example"
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

// A follower that closes (here: crashes) while its forwarded write is with
// the leader says so: the outcome is unknown, and the error names this
// node's closing, not the leader or the transport's internals.
func TestForwardedWriteCutByThisNodeClosingSaysSo(t *testing.T) {
	net := NewMemNetwork()
	c := startCluster(t, net, []string{"mem0", "mem1", "mem2"}, nil, nil)
	l := c.leader()
	f := (l + 1) % 3
	leader, follower := c.nodes[l], c.nodes[f]
	before := leader.raft.AppliedIndex()
	// The leader's answers to the follower arrive a second late, so the
	// write is applied while its answer is still on its way.
	net.SetLinkFaults(c.addrs[l], c.addrs[f], LinkFaults{Delay: time.Second})
	done := make(chan error, 1)
	go func() {
		_, err := follower.Apply(ctxTimeout(t, 10*time.Second), fsmexample.Set("k", []byte("v")))
		done <- err
	}()
	waitFor(t, 10*time.Second, "the leader to apply the forwarded write", func() bool {
		v, ok := c.fsms[l].Get("k")
		return ok && string(v) == "v" && leader.raft.AppliedIndex() > before
	})
	if err := follower.crash(); err != nil {
		t.Fatal(err)
	}
	err := <-done
	if !errors.Is(err, ErrUnknownOutcome) || !errors.Is(err, ErrClosed) || Classify(err) != Unknown {
		t.Fatalf("forwarded write cut by this node's crash: %v (class %v); want an unknown outcome that matches ErrClosed", err, Classify(err))
	}
	if msg := err.Error(); !strings.Contains(msg, "this node closed") || strings.Contains(msg, "pipe") {
		t.Fatalf("error text %q: want it to say this node closed, without the transport's internals", msg)
	}
}
