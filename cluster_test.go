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

// Helpers shared by this package's tests: TCP clusters on loopback with
// their data in t.TempDir(), and waits on conditions with deadlines.

// fastRaft shortens raft's timeouts so tests elect leaders quickly; they
// stay long enough for a loaded 2-core machine running -race.
func fastRaft(c *raft.Config) {
	c.HeartbeatTimeout = 400 * time.Millisecond
	c.ElectionTimeout = 400 * time.Millisecond
	c.LeaderLeaseTimeout = 200 * time.Millisecond
	c.CommitTimeout = 5 * time.Millisecond
}

// freeAddrs returns n loopback addresses whose ports were free a moment ago.
func freeAddrs(t testing.TB, n int) []string {
	t.Helper()
	var addrs []string
	var lns []net.Listener
	for i := 0; i < n; i++ {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		lns = append(lns, ln)
		addrs = append(addrs, ln.Addr().String())
	}
	for _, ln := range lns {
		ln.Close()
	}
	return addrs
}

func testLogger(t testing.TB) hclog.Logger {
	if !testing.Verbose() {
		return nil
	}
	return hclog.New(&hclog.LoggerOptions{Name: t.Name(), Level: hclog.Debug, Output: testWriter{t}})
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) { w.t.Log(string(p)); return len(p), nil }

// tcpCluster is n nodes bootstrapped from one address list, over TCP, with
// BoltDB files under t.TempDir().
type tcpCluster struct {
	t     testing.TB
	opts  []func(*Config)
	addrs []string
	dirs  []string
	nodes []*RaftNode
	fsms  []*fsmexample.Store
}

func newTCPCluster(t testing.TB, n int, opts ...func(*Config)) *tcpCluster {
	t.Helper()
	c := &tcpCluster{t: t, opts: opts, addrs: freeAddrs(t, n)}
	base := t.TempDir()
	for i := 0; i < n; i++ {
		c.dirs = append(c.dirs, filepath.Join(base, fmt.Sprintf("node%d", i)))
	}
	c.nodes = make([]*RaftNode, n)
	c.fsms = make([]*fsmexample.Store, n)
	for i := range c.nodes {
		c.start(i)
	}
	t.Cleanup(c.closeAll)
	return c
}

func (c *tcpCluster) config(i int) Config {
	cfg := Config{Addr: c.addrs[i], Dir: c.dirs[i], Peers: c.addrs, RaftConfig: fastRaft, Logger: testLogger(c.t)}
	for _, o := range c.opts {
		o(&cfg)
	}
	return cfg
}

// withLogStore makes a cluster's nodes keep their log in kind.
func withLogStore(kind LogStoreKind) func(*Config) {
	return func(c *Config) { c.LogStore = kind }
}

// logStores are the two on-disk log stores, for tests that run on both.
var logStores = []LogStoreKind{LogStoreBolt, LogStoreWAL}

// start (re)starts node i from its directory with a fresh FSM.
func (c *tcpCluster) start(i int) {
	c.t.Helper()
	fsm := fsmexample.New()
	n, err := NewRaftNode(c.config(i), fsm)
	if err != nil {
		c.t.Fatalf("start node %d: %v", i, err)
	}
	c.nodes[i], c.fsms[i] = n, fsm
}

func (c *tcpCluster) stop(i int) {
	c.t.Helper()
	if err := c.nodes[i].Close(); err != nil {
		c.t.Fatalf("close node %d: %v", i, err)
	}
}

func (c *tcpCluster) closeAll() {
	for _, n := range c.nodes {
		if n != nil {
			n.Close()
		}
	}
}

// leader waits for one open node to be leader and returns its index.
func (c *tcpCluster) leader() int {
	c.t.Helper()
	var idx int
	waitFor(c.t, 15*time.Second, "a leader", func() bool {
		idx = -1
		for i, n := range c.nodes {
			if n.checkOpen() == nil && n.IsLeader() {
				idx = i
			}
		}
		return idx >= 0
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

// waitApplied waits until every open node has applied index.
func (c *tcpCluster) waitApplied(index uint64) {
	c.t.Helper()
	waitFor(c.t, 15*time.Second, fmt.Sprintf("all nodes to apply index %d", index), func() bool {
		for _, n := range c.nodes {
			if n.checkOpen() == nil && n.raft.AppliedIndex() < index {
				return false
			}
		}
		return true
	})
}

func ctxTimeout(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}
