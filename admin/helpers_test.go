package admin

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"

	"github.com/raftkit/raftkit"
	fsmexample "github.com/raftkit/raftkit/fsm_example"
)

// Test support: small clusters of real nodes, over TCP on loopback or in
// memory, as package raftkit's own tests build them.

func fastRaft(c *raft.Config) {
	c.HeartbeatTimeout = 400 * time.Millisecond
	c.ElectionTimeout = 400 * time.Millisecond
	c.LeaderLeaseTimeout = 200 * time.Millisecond
	c.CommitTimeout = 5 * time.Millisecond
}

func testLogger(t testing.TB) hclog.Logger {
	if !testing.Verbose() {
		return nil
	}
	return hclog.New(&hclog.LoggerOptions{Name: t.Name(), Level: hclog.Debug, Output: testWriter{t}})
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) { w.t.Log(string(p)); return len(p), nil }

// reservePorts binds n loopback ports; a node takes its listener with
// Config.Listener.
func reservePorts(t testing.TB, n int) ([]string, []net.Listener) {
	t.Helper()
	var addrs []string
	var lns []net.Listener
	for i := 0; i < n; i++ {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		lns = append(lns, ln)
		addrs = append(addrs, ln.Addr().String())
	}
	return addrs, lns
}

func waitFor(t testing.TB, limit time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", limit, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func ctxTimeout(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// testCluster is n nodes over TCP on loopback, with their files under
// t.TempDir().
type testCluster struct {
	t     testing.TB
	addrs []string
	nodes []*raftkit.RaftNode
	fsms  []*fsmexample.Store
}

func newTCPCluster(t testing.TB, n int, opts ...func(*raftkit.Config)) *testCluster {
	t.Helper()
	addrs, lns := reservePorts(t, n)
	base := t.TempDir()
	c := &testCluster{t: t, addrs: addrs}
	for i := range addrs {
		cfg := raftkit.Config{Addr: addrs[i], Listener: lns[i], Dir: filepath.Join(base, fmt.Sprint(i)), Peers: addrs, RaftConfig: fastRaft, Logger: testLogger(t)}
		for _, o := range opts {
			o(&cfg)
		}
		fsm := fsmexample.New()
		node, err := raftkit.NewRaftNode(cfg, fsm)
		if err != nil {
			t.Fatalf("start node %d: %v", i, err)
		}
		t.Cleanup(func() { node.Close() })
		c.nodes, c.fsms = append(c.nodes, node), append(c.fsms, fsm)
	}
	return c
}

func (c *testCluster) leader() int {
	c.t.Helper()
	return memLeader(c.t, c.nodes)
}

func (c *testCluster) stop(i int) {
	c.t.Helper()
	if err := c.nodes[i].Close(); err != nil {
		c.t.Fatalf("close node %d: %v", i, err)
	}
}

// waitApplied waits until every open node's FSM has applied index.
func (c *testCluster) waitApplied(index uint64) {
	c.t.Helper()
	waitFor(c.t, 15*time.Second, fmt.Sprintf("all nodes to apply index %d", index), func() bool {
		for _, n := range c.nodes {
			if n.Status().AppliedIndex < index {
				return false
			}
		}
		return true
	})
}

// newMemCluster starts n in-memory nodes, mem0 … mem{n-1}, on network.
func newMemCluster(t testing.TB, network *raftkit.MemNetwork, n int) ([]*raftkit.RaftNode, []*fsmexample.Store) {
	t.Helper()
	var addrs []string
	for i := 0; i < n; i++ {
		addrs = append(addrs, fmt.Sprintf("mem%d", i))
	}
	var nodes []*raftkit.RaftNode
	var fsms []*fsmexample.Store
	for _, a := range addrs {
		fsm := fsmexample.New()
		node, err := raftkit.NewRaftNode(raftkit.Config{InMemory: true, Network: network, Addr: a, Peers: addrs, RaftConfig: fastRaft, Logger: testLogger(t)}, fsm)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { node.Close() })
		nodes, fsms = append(nodes, node), append(fsms, fsm)
	}
	return nodes, fsms
}

// memLeader waits for one of nodes to lead and returns its index.
func memLeader(t testing.TB, nodes []*raftkit.RaftNode) int {
	t.Helper()
	idx := -1
	waitFor(t, 15*time.Second, "a leader", func() bool {
		for i, n := range nodes {
			if n != nil && n.IsLeader() {
				idx = i
				return true
			}
		}
		return false
	})
	return idx
}

// newMemNode starts a single-node in-memory cluster named name on a
// network of its own and waits for it to lead.
func newMemNode(t testing.TB, name string) *raftkit.RaftNode {
	t.Helper()
	node, err := raftkit.NewRaftNode(raftkit.Config{InMemory: true, Addr: name, Peers: []string{name}, RaftConfig: fastRaft, Logger: testLogger(t)}, fsmexample.New())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { node.Close() })
	memLeader(t, []*raftkit.RaftNode{node})
	return node
}
