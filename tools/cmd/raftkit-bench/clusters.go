package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	wal "github.com/hashicorp/raft-wal"

	"github.com/raftkit/raftkit"
	fsmexample "github.com/raftkit/raftkit/fsm_example"
	"github.com/raftkit/raftkit/tools/internal/freeport"
	_ "github.com/raftkit/raftkit/walstore" // LogStoreWAL clusters
)

// cluster is three nodes in this process, built one way or another.
type cluster interface {
	// start brings up node i (fresh or from its directory).
	start(i int) error
	// isLeader reports whether node i is up and leads.
	isLeader(i int) bool
	// up reports whether node i is running.
	up(i int) bool
	// applyLeader writes cmd on node i, which should be the leader, as a
	// user of this kind of cluster would.
	applyLeader(ctx context.Context, i int, cmd []byte) error
	// applyAny writes cmd from node i whatever its role; ok is false
	// when the cluster kind cannot do that.
	applyAny(ctx context.Context, i int, cmd []byte) (ok bool, err error)
	// read is a linearizable read barrier on node i; ok is false when the
	// cluster kind cannot do that on a follower.
	read(ctx context.Context, i int) (ok bool, err error)
	// crash stops node i abruptly, as a killed process would stop.
	crash(i int)
	// stop stops node i in the planned way: leadership first.
	stop(i int)
	// term returns node i's current term (0 when down).
	term(i int) uint64
	// appliedIndex and lastIndex of node i.
	appliedIndex(i int) uint64
	lastIndex(i int) uint64
	closeAll()
}

// clusterSpec says how to build a cluster.
type clusterSpec struct {
	kind  string // "plain" or "raftkit"
	name  string // column heading
	store string // "bolt" or "wal"
	// same: give raftkit the plain cluster's raft configuration (raft's
	// DefaultConfig timeouts and batching) instead of raftkit's defaults.
	same bool
	// timing overrides raftkit's Timing (raftkit defaults only).
	timing raftkit.Timing
	// maxCommand overrides raftkit's MaxCommandSize (0: the default).
	maxCommand int
}

func newCluster(spec clusterSpec, base string) (cluster, error) {
	addrs, err := freeport.Addrs(3)
	if err != nil {
		return nil, err
	}
	dirs := make([]string, 3)
	for i := range dirs {
		dirs[i] = filepath.Join(base, fmt.Sprintf("node%d", i))
	}
	if spec.kind == "plain" {
		return &plainCluster{spec: spec, addrs: addrs, dirs: dirs, nodes: make([]*plainNode, 3)}, nil
	}
	return &kitCluster{spec: spec, addrs: addrs, dirs: dirs, nodes: make([]*raftkit.RaftNode, 3)}, nil
}

// ---- plain hashicorp/raft, wired by hand ----

type plainNode struct {
	r     *raft.Raft
	fsm   *fsmexample.Store
	trans *raft.NetworkTransport
	close func() error // log store
}

type plainCluster struct {
	// boundWaits makes applyLeader give up at ctx's deadline, as raftkit's
	// Apply does; the throughput scenarios wait as a plain user would.
	boundWaits bool
	mu         sync.Mutex
	spec       clusterSpec
	addrs      []string
	dirs       []string
	nodes      []*plainNode
}

// start builds a node the way the hashicorp/raft README and examples do:
// DefaultConfig, raft-boltdb (or raft-wal), a FileSnapshotStore, a
// NetworkTransport over TCP, and BootstrapCluster on a fresh node.
func (c *plainCluster) start(i int) error {
	dir := c.dirs[i]
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	conf := raft.DefaultConfig()
	conf.LocalID = raft.ServerID(c.addrs[i])
	conf.Logger = hclog.NewNullLogger()

	var (
		logs   raft.LogStore
		stable raft.StableStore
		closer func() error
	)
	switch c.spec.store {
	case "wal":
		wdir := filepath.Join(dir, "wal")
		if err := os.MkdirAll(wdir, 0o700); err != nil {
			return err
		}
		w, err := wal.Open(wdir, wal.WithLogger(hclog.NewNullLogger()))
		if err != nil {
			return err
		}
		logs, stable, closer = w, w, w.Close
	default:
		b, err := raftboltdb.NewBoltStore(filepath.Join(dir, "raft.db"))
		if err != nil {
			return err
		}
		logs, stable, closer = b, b, b.Close
	}
	snaps, err := raft.NewFileSnapshotStore(dir, 2, io.Discard)
	if err != nil {
		closer()
		return err
	}
	trans, err := raft.NewTCPTransport(c.addrs[i], nil, 3, 10*time.Second, io.Discard)
	if err != nil {
		closer()
		return err
	}
	fsm := fsmexample.New()
	has, err := raft.HasExistingState(logs, stable, snaps)
	if err != nil {
		closer()
		trans.Close()
		return err
	}
	if !has {
		var servers []raft.Server
		for _, a := range c.addrs {
			servers = append(servers, raft.Server{ID: raft.ServerID(a), Address: raft.ServerAddress(a)})
		}
		if err := raft.BootstrapCluster(conf, logs, stable, snaps, trans, raft.Configuration{Servers: servers}); err != nil {
			closer()
			trans.Close()
			return err
		}
	}
	r, err := raft.NewRaft(conf, fsm, logs, stable, snaps, trans)
	if err != nil {
		closer()
		trans.Close()
		return err
	}
	c.mu.Lock()
	c.nodes[i] = &plainNode{r: r, fsm: fsm, trans: trans, close: closer}
	c.mu.Unlock()
	return nil
}

func (c *plainCluster) up(i int) bool { return c.node(i) != nil }

func (c *plainCluster) isLeader(i int) bool {
	n := c.node(i)
	return n != nil && n.r.State() == raft.Leader
}

func (c *plainCluster) applyLeader(ctx context.Context, i int, cmd []byte) error {
	n := c.node(i)
	if n == nil {
		return errDown
	}
	timeout := 3 * time.Second
	if dl, ok := ctx.Deadline(); ok {
		timeout = time.Until(dl)
	}
	f := n.r.Apply(cmd, timeout)
	if c.boundWaits {
		// Around crashes a future can stay unresolved for good (seen
		// here: minutes); a careful hand-wired client bounds the wait.
		done := make(chan error, 1)
		go func() { done <- f.Error() }()
		select {
		case err := <-done:
			if err != nil {
				return err
			}
		case <-ctx.Done():
			return ctx.Err()
		}
	} else if err := f.Error(); err != nil {
		return err
	}
	if err, ok := f.Response().(error); ok {
		return err
	}
	return nil
}

func (c *plainCluster) applyAny(ctx context.Context, i int, cmd []byte) (bool, error) {
	return false, nil
}

// read is what a hand-wired linearizable read on the leader looks like:
// note the commit index, confirm leadership, wait until applied.
func (c *plainCluster) read(ctx context.Context, i int) (bool, error) {
	n := c.node(i)
	if n == nil {
		return true, errDown
	}
	if n.r.State() != raft.Leader {
		return false, nil
	}
	idx := n.r.CommitIndex()
	if err := n.r.VerifyLeader().Error(); err != nil {
		return true, err
	}
	for n.r.AppliedIndex() < idx {
		if ctx.Err() != nil {
			return true, ctx.Err()
		}
		time.Sleep(50 * time.Microsecond)
	}
	return true, nil
}

func (c *plainCluster) crash(i int) {
	n := c.take(i)
	if n == nil {
		return
	}
	n.r.Shutdown().Error() // closes the transport too
	n.close()
}

// stop is a careful hand-wired shutdown: hand leadership over first.
func (c *plainCluster) stop(i int) {
	n := c.node(i)
	if n == nil {
		return
	}
	if n.r.State() == raft.Leader {
		n.r.LeadershipTransfer().Error()
	}
	c.crash(i)
}

func (c *plainCluster) term(i int) uint64 {
	if n := c.node(i); n != nil {
		return n.r.CurrentTerm()
	}
	return 0
}

func (c *plainCluster) appliedIndex(i int) uint64 {
	if n := c.node(i); n != nil {
		return n.r.AppliedIndex()
	}
	return 0
}

func (c *plainCluster) lastIndex(i int) uint64 {
	if n := c.node(i); n != nil {
		return n.r.LastIndex()
	}
	return 0
}

func (c *plainCluster) closeAll() {
	for i := range c.nodes {
		c.crash(i)
	}
}

// ---- raftkit ----

type kitCluster struct {
	mu    sync.Mutex
	spec  clusterSpec
	addrs []string
	dirs  []string
	nodes []*raftkit.RaftNode
}

func (c *kitCluster) start(i int) error {
	cfg := raftkit.Config{
		Addr:   c.addrs[i],
		Dir:    c.dirs[i],
		Peers:  c.addrs,
		Timing: c.spec.timing,

		MaxCommandSize: c.spec.maxCommand,
	}
	if c.spec.store == "wal" {
		cfg.LogStore = raftkit.LogStoreWAL
	}
	if c.spec.same {
		// The plain cluster's raft settings, so that only raftkit's own
		// code differs.
		cfg.Timing = raftkit.TimingDefault
		cfg.RaftConfig = func(rc *raft.Config) {
			d := raft.DefaultConfig()
			rc.MaxAppendEntries = d.MaxAppendEntries
			rc.BatchApplyCh = d.BatchApplyCh
		}
	}
	n, err := raftkit.NewRaftNode(cfg, fsmexample.New())
	if err != nil {
		return err
	}
	c.mu.Lock()
	c.nodes[i] = n
	c.mu.Unlock()
	return nil
}

func (c *kitCluster) up(i int) bool { return c.node(i) != nil }

func (c *kitCluster) isLeader(i int) bool {
	n := c.node(i)
	return n != nil && n.IsLeader()
}

func (c *kitCluster) applyLeader(ctx context.Context, i int, cmd []byte) error {
	n := c.node(i)
	if n == nil {
		return errDown
	}
	_, err := n.Apply(ctx, cmd)
	return err
}

func (c *kitCluster) applyAny(ctx context.Context, i int, cmd []byte) (bool, error) {
	return true, c.applyLeader(ctx, i, cmd)
}

func (c *kitCluster) read(ctx context.Context, i int) (bool, error) {
	n := c.node(i)
	if n == nil {
		return true, errDown
	}
	return true, n.LinearizableRead(ctx)
}

// crash stops node i as a killed process would (no leadership transfer),
// (raft shut down first), then releases the port and files.
func (c *kitCluster) crash(i int) {
	n := c.take(i)
	if n == nil {
		return
	}
	// Raft's Shutdown then Close at once: the crash that RaftNode.Raft's
	// documentation allows.
	_ = n.Raft().Shutdown().Error()
	_ = n.Close()
}

func (c *kitCluster) stop(i int) {
	n := c.take(i)
	if n == nil {
		return
	}
	n.Close()
}

func (c *kitCluster) term(i int) uint64 {
	if n := c.node(i); n != nil {
		return n.Raft().CurrentTerm()
	}
	return 0
}

func (c *kitCluster) appliedIndex(i int) uint64 {
	if n := c.node(i); n != nil {
		return n.Raft().AppliedIndex()
	}
	return 0
}

func (c *kitCluster) lastIndex(i int) uint64 {
	if n := c.node(i); n != nil {
		return n.Raft().LastIndex()
	}
	return 0
}

func (c *kitCluster) closeAll() {
	for i := range c.nodes {
		if n := c.take(i); n != nil {
			n.Close()
		}
	}
}

var errDown = errors.New("node is down")

// startAll starts every node and waits for a leader that serves a write.
// It returns the time that took.
func startAll(c cluster, cmd []byte, limit time.Duration) (time.Duration, error) {
	t0 := time.Now()
	for i := 0; i < 3; i++ {
		if err := c.start(i); err != nil {
			return 0, fmt.Errorf("start node %d: %w", i, err)
		}
	}
	if _, err := firstWrite(c, cmd, limit); err != nil {
		return 0, err
	}
	return time.Since(t0), nil
}

// firstWrite polls the running nodes until one leads and commits cmd.
func firstWrite(c cluster, cmd []byte, limit time.Duration) (int, error) {
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		for i := 0; i < 3; i++ {
			if !c.isLeader(i) {
				continue
			}
			ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
			err := c.applyLeader(ctx, i, cmd)
			cancel()
			if err == nil {
				return i, nil
			}
		}
		time.Sleep(time.Millisecond)
	}
	return -1, fmt.Errorf("no leader served a write within %s", limit)
}

func (c *plainCluster) node(i int) *plainNode {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.nodes[i]
}

// take removes node i from the cluster and returns it.
func (c *plainCluster) take(i int) *plainNode {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := c.nodes[i]
	c.nodes[i] = nil
	return n
}

func (c *kitCluster) node(i int) *raftkit.RaftNode {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.nodes[i]
}

func (c *kitCluster) take(i int) *raftkit.RaftNode {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := c.nodes[i]
	c.nodes[i] = nil
	return n
}
