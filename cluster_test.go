package raftkit

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"

	fsmexample "github.com/raftkit/raftkit/fsm_example"
)

// Test support shared by this package's tests: the one timing profile, the
// one way to reserve ports, the one cluster builder (over TCP with its data
// in t.TempDir(), or in memory) and the one wait on a condition.

// fastRaft is the tests' timing profile: it shortens raft's timeouts so
// tests elect leaders quickly, yet keeps them long enough for a loaded
// 2-core machine running -race.
func fastRaft(c *raft.Config) {
	c.HeartbeatTimeout = 400 * time.Millisecond
	c.ElectionTimeout = 400 * time.Millisecond
	c.LeaderLeaseTimeout = 200 * time.Millisecond
	c.CommitTimeout = 5 * time.Millisecond
}

// reservePorts binds n loopback ports and returns their addresses and the
// listeners, still open: a node takes its listener with Config.Listener,
// so no other process can take the port between its choice and the node's
// start. Listeners no node took are closed when the test ends.
func reservePorts(t testing.TB, n int) ([]string, []net.Listener) {
	t.Helper()
	var addrs []string
	var lns []net.Listener
	for i := 0; i < n; i++ {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() }) // a node's Close closed it already: harmless
		lns = append(lns, ln)
		addrs = append(addrs, ln.Addr().String())
	}
	return addrs, lns
}

// unusedAddr returns a loopback address whose port was free a moment ago
// and has nothing listening on it: for a peer that cannot be reached, or
// for a constructor that takes no listener (another process may take the
// port in between; prefer reservePorts).
func unusedAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func testLogger(t testing.TB) hclog.Logger {
	if !testing.Verbose() {
		return nil
	}
	return hclog.New(&hclog.LoggerOptions{Name: t.Name(), Level: hclog.Debug, Output: testWriter{t}})
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) { w.t.Log(string(p)); return len(p), nil }

// testCluster is n nodes bootstrapped from one address list: over TCP
// with their files under t.TempDir() (net nil), or in memory on net, each
// with its own MemStorage so that a restart keeps its state. Options
// adjust every node's Config; Config.Peers lists the nodes in order, so an
// option that needs a node's index finds it there.
type testCluster struct {
	t       testing.TB
	net     *MemNetwork // nil: TCP
	opts    []func(*Config)
	addrs   []string
	lns     []net.Listener // reserved ports, until the node's first start
	dirs    []string       // TCP
	storage []*MemStorage  // in memory
	nodes   []*RaftNode
	fsms    []*fsmexample.Store
	hooks   func(i int) *nodeHooks // nil: none
}

// newTCPCluster starts n nodes over TCP on loopback, with BoltDB files
// unless an option sets another LogStore.
func newTCPCluster(t testing.TB, n int, opts ...func(*Config)) *testCluster {
	t.Helper()
	addrs, lns := reservePorts(t, n)
	return startCluster(t, nil, addrs, lns, opts)
}

// newTCPClusterHooks is newTCPCluster whose node i starts with hooks(i).
func newTCPClusterHooks(t testing.TB, n int, hooks func(i int) *nodeHooks, opts ...func(*Config)) *testCluster {
	t.Helper()
	addrs, lns := reservePorts(t, n)
	return startClusterHooks(t, nil, addrs, lns, opts, hooks)
}

// newMemCluster starts n in-memory nodes, mem0 … mem{n-1}, on net.
func newMemCluster(t testing.TB, net *MemNetwork, n int, opts ...func(*Config)) ([]*RaftNode, []*fsmexample.Store) {
	t.Helper()
	var addrs []string
	for i := 0; i < n; i++ {
		addrs = append(addrs, fmt.Sprintf("mem%d", i))
	}
	c := startCluster(t, net, addrs, nil, opts)
	return c.nodes, c.fsms
}

// newMemNode starts a single-node in-memory cluster named name on a
// network of its own and waits for it to lead.
func newMemNode(t testing.TB, name string) *RaftNode {
	t.Helper()
	c := startCluster(t, NewMemNetwork(), []string{name}, nil, nil)
	c.leader()
	return c.nodes[0]
}

func startCluster(t testing.TB, net *MemNetwork, addrs []string, lns []net.Listener, opts []func(*Config)) *testCluster {
	t.Helper()
	return startClusterHooks(t, net, addrs, lns, opts, nil)
}

func startClusterHooks(t testing.TB, net *MemNetwork, addrs []string, lns []net.Listener, opts []func(*Config), hooks func(int) *nodeHooks) *testCluster {
	t.Helper()
	n := len(addrs)
	c := &testCluster{t: t, net: net, opts: opts, addrs: addrs, lns: lns, hooks: hooks,
		nodes: make([]*RaftNode, n), fsms: make([]*fsmexample.Store, n)}
	if net == nil {
		base := t.TempDir()
		for i := 0; i < n; i++ {
			c.dirs = append(c.dirs, filepath.Join(base, fmt.Sprintf("node%d", i)))
		}
	} else {
		for i := 0; i < n; i++ {
			c.storage = append(c.storage, NewMemStorage())
		}
	}
	t.Cleanup(c.closeAll)
	for i := range c.nodes {
		c.start(i)
	}
	return c
}

// config is node i's Config: the reserved listener on its first start.
func (c *testCluster) config(i int) Config {
	cfg := Config{Addr: c.addrs[i], Peers: c.addrs, RaftConfig: fastRaft, Logger: testLogger(c.t)}
	if c.net != nil {
		cfg.InMemory, cfg.Network, cfg.Storage = true, c.net, c.storage[i]
	} else {
		cfg.Dir = c.dirs[i]
		if i < len(c.lns) {
			cfg.Listener = c.lns[i]
		}
	}
	for _, o := range c.opts {
		o(&cfg)
	}
	return cfg
}

// start (re)starts node i from its directory or storage with a fresh FSM.
func (c *testCluster) start(i int) {
	c.t.Helper()
	fsm := fsmexample.New()
	var hooks *nodeHooks
	if c.hooks != nil {
		hooks = c.hooks(i)
	}
	n, err := newRaftNode(c.config(i), fsm, hooks)
	if i < len(c.lns) {
		c.lns[i] = nil // taken, or closed by the failed start; restarts listen anew
	}
	if err != nil {
		c.t.Fatalf("start node %d: %v", i, err)
	}
	c.nodes[i], c.fsms[i] = n, fsm
}

func (c *testCluster) stop(i int) {
	c.t.Helper()
	if err := c.nodes[i].Close(); err != nil {
		c.t.Fatalf("close node %d: %v", i, err)
	}
}

func (c *testCluster) closeAll() {
	for _, n := range c.nodes {
		if n != nil {
			n.Close()
		}
	}
}

// leader waits for one open node to be leader and returns its index.
func (c *testCluster) leader() int {
	c.t.Helper()
	return memLeader(c.t, c.nodes)
}

// memLeader waits for one of nodes to be an open leader and returns its
// index.
func memLeader(t testing.TB, nodes []*RaftNode) int {
	t.Helper()
	idx := -1
	waitFor(t, 15*time.Second, "a leader", func() bool {
		for i, n := range nodes {
			if n != nil && n.checkOpen() == nil && n.IsLeader() {
				idx = i
				return true
			}
		}
		return false
	})
	return idx
}

// waitFor polls cond until it holds or the deadline passes.
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

// waitApplied waits until every open node's FSM has applied index: raft's
// AppliedIndex moves when entries are handed to the FSM goroutine, before
// the FSM has applied them (a test reading the FSM then saw 19 keys of 20).
func (c *testCluster) waitApplied(index uint64) {
	c.t.Helper()
	waitFor(c.t, 15*time.Second, fmt.Sprintf("all nodes to apply index %d", index), func() bool {
		for _, n := range c.nodes {
			if n.checkOpen() == nil && !n.fsmCaughtUp(index) {
				return false
			}
		}
		return true
	})
}

// withLogStore makes a cluster's nodes keep their log in kind.
func withLogStore(kind LogStoreKind) func(*Config) {
	return func(c *Config) { c.LogStore = kind }
}

// logStores are the two on-disk log stores, for tests that run on both.
var logStores = []LogStoreKind{LogStoreBolt, LogStoreWAL}

// nodeIndex is the index of the node c configures among its cluster's
// nodes (see testCluster).
func nodeIndex(c *Config) int {
	for i, p := range c.Peers {
		if p == c.Addr {
			return i
		}
	}
	return -1
}

func ctxTimeout(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}
