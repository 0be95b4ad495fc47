// Package raftkittest runs in-memory raftkit clusters inside Go tests, as
// net/http/httptest runs HTTP servers: no ports, no disk, and faults on
// demand. Applications use it to test their own raft.FSM under the same
// partitions, crashes and restarts that raftkit's own tests use.
//
//	func TestMyFSMSurvivesLeaderCrash(t *testing.T) {
//		c := raftkittest.NewCluster(t, 3, newMyFSM)
//		leader := c.WaitForLeader()
//		if _, err := leader.Apply(ctx, cmd); err != nil {
//			t.Fatal(err)
//		}
//		c.Crash(leader)
//		c.WaitForLeader()
//		c.Restart(leader)
//		c.AssertConsistent()
//	}
//
// Every node is a real *raftkit.RaftNode (Config.InMemory on a shared
// raftkit.MemNetwork) with short timeouts, so tests exercise the same
// forwarding, membership and read code as production nodes. Nodes are named
// by the *raftkit.RaftNode the cluster handed out: any value returned for a
// member, including one closed by Crash, names that member in later calls.
//
// Methods that wait (WaitForLeader, Restart, AddNode, AssertConsistent, ...)
// fail the test with tb.Fatalf when the cluster does not get there in time,
// so they must be called from the test's goroutine. The others may be called
// from any goroutine.
package raftkittest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"reflect"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"

	"github.com/raftkit/raftkit"
)

// DefaultTimeout bounds every wait of a Cluster unless WithTimeout says
// otherwise.
const DefaultTimeout = 20 * time.Second

// Cluster is a set of in-memory raftkit nodes with faults under test
// control. F is the FSM type that the cluster's newFSM returns. A Cluster is
// safe for concurrent use (see the package comment for which methods must
// run on the test goroutine).
type Cluster[F raft.FSM] struct {
	tb     testing.TB
	newFSM func() F
	opts   options
	net    *raftkit.MemNetwork
	logs   *tbWriter
	// applied is what every member's FSM received (see Divergence).
	applied *appliedLog
	// ready is the readiness oracle's floors (see readiness.go).
	ready *readyLog

	mu      sync.Mutex
	members []*member[F]
	closed  bool
}

// member is one server slot: its identity and storage outlive the
// RaftNode instances that crashes and restarts replace.
type member[F raft.FSM] struct {
	id      string
	storage *raftkit.MemStorage
	node    *raftkit.RaftNode // nil while down
	fsm     F
	initial bool // bootstrapped with the cluster (else joined later)
	wiped   bool // storage emptied: rejoins as a new member
	removed bool // no longer in the configuration
	outside bool // removed from the configuration but running (removeLive)
}

// Option changes how NewCluster builds its nodes.
type Option func(*options)

type options struct {
	configs  []func(*raftkit.Config)
	state    func(raft.FSM) (any, bool)
	timeout  time.Duration
	logLevel hclog.Level
	seed     uint64
	// fault replaces what a node's FSM receives: for tests that show the
	// divergence check failing.
	fault func(node string, l *raft.Log) *raft.Log
}

// WithConfig lets fn adjust every node's raftkit.Config (snapshot
// settings, ApplyTimeout, RaftConfig, ...) after the cluster filled it in.
// A RaftConfig hook that fn sets runs after FastTimeouts, so it changes
// only the raft settings it sets and the cluster keeps its fast timing
// otherwise. Several WithConfig options apply in order. ID, Addr,
// InMemory, Network, Storage, Peers and Join belong to the cluster:
// changing them breaks it.
func WithConfig(fn func(*raftkit.Config)) Option {
	return func(o *options) { o.configs = append(o.configs, fn) }
}

// WithState gives AssertConsistent a view of an FSM's state to compare
// across nodes with reflect.DeepEqual, such as a copy of its map. Without
// it, AssertConsistent compares the bytes of the FSMs' snapshots, which
// suits only FSMs whose snapshots are deterministic (a Go map iterated
// while writing a snapshot is not).
// F must be the cluster's FSM type.
func WithState[F raft.FSM](fn func(F) any) Option {
	return func(o *options) {
		o.state = func(f raft.FSM) (any, bool) {
			typed, ok := f.(F)
			if !ok {
				return nil, false
			}
			return fn(typed), true
		}
	}
}

// WithSeed seeds the cluster's MemNetwork (raftkit.MemNetwork.SetSeed), so
// that its message drops are the same in every run with the same seed: the
// k-th message on each link is dropped in all of them or in none. Default:
// seed 0.
func WithSeed(seed uint64) Option {
	return func(o *options) { o.seed = seed }
}

// WithTimeout bounds each wait of the cluster (leader election, restart,
// join, convergence). Default: DefaultTimeout.
func WithTimeout(d time.Duration) Option {
	return func(o *options) { o.timeout = d }
}

// WithLogLevel sets the level of the raft and raftkit log lines the cluster
// writes to tb.Log. Default: hclog.Info; hclog.Off silences them.
func WithLogLevel(level hclog.Level) Option {
	return func(o *options) { o.logLevel = level }
}

// FastTimeouts is the raft.Config hook a Cluster's nodes use: elections
// within about a second, yet stable on a loaded 2-core machine running
// the race detector. CommitTimeout is short so followers that fell behind
// catch up quickly.
func FastTimeouts(c *raft.Config) {
	c.HeartbeatTimeout = 400 * time.Millisecond
	c.ElectionTimeout = 400 * time.Millisecond
	c.LeaderLeaseTimeout = 200 * time.Millisecond
	c.CommitTimeout = 5 * time.Millisecond
}

// NewCluster starts n in-memory nodes named node0 … node{n-1}, bootstrapped
// together, each with its own FSM from newFSM, and registers Close with
// tb.Cleanup. It does not wait for a leader: call WaitForLeader.
func NewCluster[F raft.FSM](tb testing.TB, n int, newFSM func() F, opts ...Option) *Cluster[F] {
	tb.Helper()
	if n < 1 {
		tb.Fatalf("raftkittest: NewCluster needs at least one node, got %d", n)
	}
	if newFSM == nil {
		tb.Fatalf("raftkittest: NewCluster needs a newFSM function")
	}
	applied := newAppliedLog()
	c := &Cluster[F]{
		tb:     tb,
		newFSM: newFSM,
		opts:   options{timeout: DefaultTimeout, logLevel: hclog.Info},
		net:    raftkit.NewMemNetwork(),
		logs:   &tbWriter{tb: tb},

		applied: applied,
		ready:   newReadyLog(applied),
	}
	for _, o := range opts {
		o(&c.opts)
	}
	c.net.SetSeed(c.opts.seed)
	tb.Cleanup(c.Close)
	for i := 0; i < n; i++ {
		c.members = append(c.members, &member[F]{id: fmt.Sprintf("node%d", i), storage: raftkit.NewMemStorage(), initial: true})
	}
	for _, m := range c.members {
		if err := c.start(m); err != nil {
			tb.Fatalf("raftkittest: start %s: %v", m.id, err)
		}
	}
	return c
}

// config builds member m's node configuration.
func (c *Cluster[F]) config(m *member[F]) raftkit.Config {
	cfg := raftkit.Config{
		ID:          m.id,
		Addr:        m.id,
		InMemory:    true,
		Network:     c.net,
		Storage:     m.storage,
		JoinTimeout: c.opts.timeout,
		Logger:      c.logger(m.id),
	}
	if m.initial && !m.wiped {
		for _, o := range c.members {
			if o.initial {
				cfg.Peers = append(cfg.Peers, o.id)
			}
		}
	} else {
		for _, o := range c.members {
			if o != m && o.node != nil && !o.removed && !o.outside {
				cfg.Join = append(cfg.Join, o.id)
			}
		}
	}
	for _, fn := range c.opts.configs {
		fn(&cfg)
	}
	own := cfg.RaftConfig
	cfg.RaftConfig = func(rc *raft.Config) {
		FastTimeouts(rc)
		if own != nil {
			own(rc)
		}
	}
	return cfg
}

func (c *Cluster[F]) logger(name string) hclog.Logger {
	if c.opts.logLevel == hclog.Off {
		return nil
	}
	return faultQuiet{hclog.New(&hclog.LoggerOptions{Name: name, Level: c.opts.logLevel, Output: c.logs})}
}

// faultQuiet logs at Debug the warnings and errors that only report a
// fault the test made itself (a link cut, a message dropped by the
// MemNetwork): at WithLogLevel(hclog.Warn), raft's "failed to heartbeat"
// lines would otherwise flood a partition's output.
type faultQuiet struct{ hclog.Logger }

func (q faultQuiet) Log(level hclog.Level, msg string, args ...any) {
	if level > hclog.Debug && level <= hclog.Error && madeByTheTest(args) {
		level = hclog.Debug
	}
	q.Logger.Log(level, msg, args...)
}

func (q faultQuiet) Warn(msg string, args ...any)  { q.Log(hclog.Warn, msg, args...) }
func (q faultQuiet) Error(msg string, args ...any) { q.Log(hclog.Error, msg, args...) }
func (q faultQuiet) Info(msg string, args ...any)  { q.Log(hclog.Info, msg, args...) }
func (q faultQuiet) With(args ...any) hclog.Logger { return faultQuiet{q.Logger.With(args...)} }
func (q faultQuiet) Named(name string) hclog.Logger {
	return faultQuiet{q.Logger.Named(name)}
}
func (q faultQuiet) ResetNamed(name string) hclog.Logger {
	return faultQuiet{q.Logger.ResetNamed(name)}
}

// madeByTheTest reports whether a log line's values name the MemNetwork's
// own faults.
func madeByTheTest(args []any) bool {
	for _, a := range args {
		if err, ok := a.(error); ok && strings.Contains(err.Error(), "by MemNetwork") {
			return true
		}
	}
	return false
}

// start runs a new RaftNode for m with a new FSM. c.mu must not be held:
// starting a joining node waits for the cluster.
func (c *Cluster[F]) start(m *member[F]) error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return raftkit.ErrClosed
	}
	cfg := c.config(m)
	c.mu.Unlock()
	fsm := c.newFSM()
	// The node can ask a leader for its target only once it runs.
	c.ready.raise(m.id)
	node, err := raftkit.NewRaftNode(cfg, record(fsm, m.id, c.applied, c.ready, c.opts.fault))
	if err != nil {
		return err
	}
	c.ready.started(m.id, node)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		crash(node)
		return raftkit.ErrClosed
	}
	m.node, m.fsm, m.wiped = node, fsm, false
	return nil
}

// Network returns the MemNetwork the nodes talk over, for faults this type
// does not wrap (one-way Block, single links).
func (c *Cluster[F]) Network() *raftkit.MemNetwork { return c.net }

// Nodes returns the running nodes, in the order they were created.
func (c *Cluster[F]) Nodes() []*raftkit.RaftNode {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []*raftkit.RaftNode
	for _, m := range c.members {
		if m.node != nil {
			out = append(out, m.node)
		}
	}
	return out
}

// Node returns the running node of the member with the given ID, or nil if
// it is down or unknown. Each start of a member is a new *RaftNode: after
// Crash and Restart, call Node again (or use Restart's result); the old
// value stays closed and every call on it fails with raftkit.ErrClosed.
func (c *Cluster[F]) Node(id string) *raftkit.RaftNode {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, m := range c.members {
		if m.id == id {
			return m.node
		}
	}
	return nil
}

// FSM returns the FSM of node's current incarnation: a restart gives a
// member a new FSM, rebuilt by raft from its snapshot and log. After a
// crash, it returns the FSM the member had when it crashed.
func (c *Cluster[F]) FSM(node *raftkit.RaftNode) F {
	c.mu.Lock()
	defer c.mu.Unlock()
	m := c.memberLocked(node)
	if m == nil {
		c.tb.Errorf("raftkittest: FSM: %s is not a member of this cluster", node.ID())
		var zero F
		return zero
	}
	return m.fsm
}

func (c *Cluster[F]) memberLocked(node *raftkit.RaftNode) *member[F] {
	if node == nil {
		return nil
	}
	for _, m := range c.members {
		if m.id == node.ID() {
			return m
		}
	}
	return nil
}

func (c *Cluster[F]) member(node *raftkit.RaftNode) *member[F] {
	c.mu.Lock()
	defer c.mu.Unlock()
	m := c.memberLocked(node)
	if m == nil {
		id := "<nil>"
		if node != nil {
			id = node.ID()
		}
		c.tb.Fatalf("raftkittest: %s is not a member of this cluster", id)
	}
	return m
}

// Leader returns the running node that believes it leads in the highest
// term, or nil if none does. It does not wait; a leader cut off from the
// majority keeps believing it leads until its lease runs out, so use
// WaitForLeader for a leader the majority follows.
func (c *Cluster[F]) Leader() *raftkit.RaftNode {
	var best *raftkit.RaftNode
	var bestTerm uint64
	for _, n := range c.Nodes() {
		if n.IsLeader() {
			if t := n.Raft().CurrentTerm(); best == nil || t > bestTerm {
				best, bestTerm = n, t
			}
		}
	}
	return best
}

// Followers returns the running nodes other than Leader().
func (c *Cluster[F]) Followers() []*raftkit.RaftNode {
	l := c.Leader()
	var out []*raftkit.RaftNode
	for _, n := range c.Nodes() {
		if n != l {
			out = append(out, n)
		}
	}
	return out
}

// WaitForLeader waits until a running node leads with the backing of a
// majority now, and returns it: the node commits a barrier entry, which
// needs a majority's acknowledgement of an entry appended after the call
// began. (raft's VerifyLeader is not enough: a leader isolated a moment
// ago counts answers to AppendEntries it sent before the cut, which arrive
// after.) After Isolate or Partition it returns the majority side's
// leader, never the node cut off, even while that node still believes it
// leads.
func (c *Cluster[F]) WaitForLeader() *raftkit.RaftNode {
	c.tb.Helper()
	var leader *raftkit.RaftNode
	c.waitFor("a leader backed by a majority", func() bool {
		l := c.Leader()
		if l == nil {
			return false
		}
		if err := wait(l.Raft().Barrier(500*time.Millisecond), time.Second); err != nil {
			return false
		}
		leader = l
		return true
	})
	return leader
}

// waitFor polls cond until it holds, or fails the test after the
// cluster's timeout.
func (c *Cluster[F]) waitFor(what string, cond func() bool) {
	c.tb.Helper()
	deadline := time.Now().Add(c.opts.timeout)
	delay := time.Millisecond
	for !cond() {
		if time.Now().After(deadline) {
			c.tb.Fatalf("raftkittest: timed out after %s waiting for %s\n%s", c.opts.timeout, what, c.describe())
		}
		time.Sleep(delay)
		delay = min(2*delay, 20*time.Millisecond)
	}
}

// describe summarises every member's state for failure messages.
func (c *Cluster[F]) describe() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var b strings.Builder
	for _, m := range c.members {
		switch {
		case m.removed:
			fmt.Fprintf(&b, "  %s: removed\n", m.id)
		case m.node == nil:
			fmt.Fprintf(&b, "  %s: down\n", m.id)
		default:
			st := m.node.Status()
			fmt.Fprintf(&b, "  %s: %s term=%d last=%d commit=%d applied=%d leader=%q\n",
				m.id, st.State, st.Term, st.LastLogIndex, st.CommitIndex, st.AppliedIndex, st.LeaderID)
		}
	}
	return b.String()
}

// Partition splits the network into groups: nodes in the same group reach
// each other, nodes in different groups do not, and members named in no
// group (running or not) are cut off from everyone. It replaces earlier
// partitions and isolations, and breaks connections that cross groups.
func (c *Cluster[F]) Partition(groups ...[]*raftkit.RaftNode) {
	group := map[string]int{}
	for g, nodes := range groups {
		for _, n := range nodes {
			group[n.ID()] = g + 1
		}
	}
	c.mu.Lock()
	var ids []string
	for _, m := range c.members {
		ids = append(ids, m.id)
	}
	c.mu.Unlock()
	c.net.Heal()
	for i, a := range ids {
		for _, b := range ids[i+1:] {
			if ga, gb := group[a], group[b]; ga == 0 || gb == 0 || ga != gb {
				c.net.Disconnect(a, b)
			}
		}
	}
}

// Isolate cuts node off from every other node, until Heal. The isolation
// outlives a crash and restart of the node, as a network fault would.
func (c *Cluster[F]) Isolate(node *raftkit.RaftNode) {
	c.net.Isolate(node.Addr())
}

// Heal mends every partition and isolation. Message drops and delays set
// with SetDropRate and SetDelay stay.
func (c *Cluster[F]) Heal() { c.net.Heal() }

// SetDropRate makes each message lost with probability p; see
// raftkit.MemNetwork.SetDropRate. 0 turns it off. Which messages are lost
// follows the cluster's seed (WithSeed).
func (c *Cluster[F]) SetDropRate(p float64) { c.net.SetDropRate(p) }

// SetDelay delays every message by d; 0 turns it off.
func (c *Cluster[F]) SetDelay(d time.Duration) { c.net.SetDelay(d) }

// Crash stops node abruptly, as a killed process: raft stops at once with
// no leadership handover, connections break, and the node's log, term,
// vote and snapshots stay in its storage for Restart. Crashing a node that
// is down does nothing. node is closed for good: calls on it fail with
// raftkit.ErrClosed at once, so a client loop must fetch the member's new
// node (Restart's result, or Node(id)) rather than retry on the old one.
func (c *Cluster[F]) Crash(node *raftkit.RaftNode) {
	m := c.member(node)
	c.mu.Lock()
	n := m.node
	m.node = nil
	c.mu.Unlock()
	if n != nil {
		crash(n)
	}
}

// crash stops n as a killed process would: its raft stops at once, so a
// leader hands nothing over and stops sending heartbeats, and then Close
// releases the rest (with raft down it skips the handover and the closing
// announcement). This is the one way RaftNode.Raft's documentation allows
// a node's raft to be shut down from outside.
func crash(n *raftkit.RaftNode) {
	_ = n.Raft().Shutdown().Error() // Close reports raft's shutdown error
	_ = n.Close()
}

// Restart starts a crashed member again from its storage, with a new FSM
// that raft rebuilds from the snapshot and log, and returns the new node.
// A wiped member instead joins the cluster as a new, empty voter and
// catches up. Restarting a running member crashes it first.
func (c *Cluster[F]) Restart(node *raftkit.RaftNode) *raftkit.RaftNode {
	c.tb.Helper()
	m := c.member(node)
	if m.removed {
		c.tb.Fatalf("raftkittest: Restart: %s was removed from the cluster", m.id)
	}
	c.Crash(node)
	if err := c.start(m); err != nil {
		c.tb.Fatalf("raftkittest: restart %s: %v", m.id, err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return m.node
}

// Wipe crashes node if it is running, erases its storage (log, term,
// vote, snapshots) as after a lost disk, and removes it from the cluster
// configuration, which needs a leader. A wiped member must not come back
// as the voter it was: having forgotten its vote, it could vote twice in
// one term. Restart brings it back as a new member that joins and catches
// up.
func (c *Cluster[F]) Wipe(node *raftkit.RaftNode) {
	c.tb.Helper()
	m := c.member(node)
	c.Crash(node)
	c.removeFromConfig(m.id)
	c.mu.Lock()
	m.storage = raftkit.NewMemStorage()
	m.wiped = true
	c.mu.Unlock()
}

// removeFromConfig removes id through any running member, retrying while
// leadership moves.
func (c *Cluster[F]) removeFromConfig(id string) {
	c.tb.Helper()
	var last error
	c.waitFor("removal of "+id+" from the configuration (last error: see below)", func() bool {
		for _, n := range c.Nodes() {
			if n.ID() == id {
				continue
			}
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			last = n.RemoveServer(ctx, id)
			cancel()
			if last == nil {
				return true
			}
		}
		if last != nil {
			c.tb.Logf("raftkittest: removing %s: %v", id, last)
		}
		return false
	})
}

// AddNode starts a new member with empty storage, which joins the cluster
// as a voter through the running members, and returns it once it has
// joined.
func (c *Cluster[F]) AddNode() *raftkit.RaftNode {
	c.tb.Helper()
	c.mu.Lock()
	m := &member[F]{id: fmt.Sprintf("node%d", len(c.members)), storage: raftkit.NewMemStorage()}
	c.members = append(c.members, m)
	c.mu.Unlock()
	if err := c.start(m); err != nil {
		c.mu.Lock()
		m.removed = true
		c.mu.Unlock()
		c.tb.Fatalf("raftkittest: add %s: %v", m.id, err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return m.node
}

// RemoveNode removes node from the cluster configuration through a
// running member (node itself if it is the only one left), then stops it.
// A removed member cannot be restarted.
func (c *Cluster[F]) RemoveNode(node *raftkit.RaftNode) {
	c.tb.Helper()
	m := c.member(node)
	c.removeFromConfig(m.id)
	c.Crash(node)
	c.mu.Lock()
	m.removed = true
	c.mu.Unlock()
}

// removeLive removes node from the configuration and leaves it running, as
// hashicorp/raft leaves a removed follower (only a leader that removes
// itself shuts down), once the node knows: it reports ErrRemoved. The
// leader's last message to a removed follower, which carries the
// configuration without it, can fail; a node that never stored that
// configuration cannot know that it left, and stays ready until its
// leader's heartbeats are missed (or entries from after its re-add reach
// it). removeLive then crashes it, removes the member for good, and
// reports false.
func (c *Cluster[F]) removeLive(node *raftkit.RaftNode) bool {
	c.tb.Helper()
	m := c.member(node)
	c.ready.left(m.id)
	c.mu.Lock()
	m.outside = true
	c.mu.Unlock()
	c.removeFromConfig(m.id)
	deadline := time.Now().Add(2 * time.Second)
	for !errors.Is(node.Ready(), raftkit.ErrRemoved) {
		if time.Now().After(deadline) {
			c.tb.Logf("raftkittest: %s was removed but does not know it; crashing it", m.id)
			c.Crash(node)
			c.mu.Lock()
			m.removed, m.outside = true, false
			c.mu.Unlock()
			return false
		}
		time.Sleep(5 * time.Millisecond) // polling the node, with a deadline
	}
	return true
}

// readd adds node, removed by removeLive, back as a voter, as it runs. It
// reports false, and removes the member for good, if the node's raft shut
// down meanwhile (it led when it was removed).
func (c *Cluster[F]) readd(node *raftkit.RaftNode) bool {
	c.tb.Helper()
	m := c.member(node)
	if node.Status().State == raft.Shutdown.String() {
		c.Crash(node)
		c.mu.Lock()
		m.removed, m.outside = true, false
		c.mu.Unlock()
		return false
	}
	c.ready.raise(m.id)
	var last error
	c.waitFor("re-add of "+m.id, func() bool {
		for _, n := range c.Nodes() {
			if n.ID() == m.id {
				continue
			}
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			last = n.AddVoter(ctx, m.id, node.Addr())
			cancel()
			if last == nil {
				return true
			}
		}
		c.tb.Logf("raftkittest: re-adding %s: %v", m.id, last)
		return false
	})
	c.mu.Lock()
	m.outside = false
	c.mu.Unlock()
	return true
}

// Divergence returns the lowest log index at which two members' FSMs
// received different commands (another term, or other bytes), or nil if
// they never did. Every FSM the cluster builds sits behind a recorder that
// notes each command's index, term and a hash of its bytes, across
// restarts, so a member is also held to what it applied before a crash.
// It checks what the FSMs received, whatever they made of it: an FSM that
// diverges on identical commands is AssertConsistent's to find.
func (c *Cluster[F]) Divergence() *Divergence {
	d, _ := c.applied.result()
	return d
}

// AssertConsistent waits until the FSM of every running member of the
// configuration has applied the leader's whole committed log (a
// linearizable read succeeds on each), then fails the test if two
// members' FSMs ever received different commands at one index (see
// Divergence), or unless all their FSMs hold the same state (compared as
// WithState says, else by snapshot bytes). Call it once the faults are
// healed and no writes are in flight; members that are down or
// partitioned away cannot converge.
func (c *Cluster[F]) AssertConsistent() {
	c.tb.Helper()
	leader := c.WaitForLeader()
	members := map[string]bool{}
	if f := leader.Raft().GetConfiguration(); f.Error() == nil {
		for _, s := range f.Configuration().Servers {
			members[string(s.ID)] = true
		}
	}
	var nodes []*raftkit.RaftNode
	for _, n := range c.Nodes() {
		if members[n.ID()] {
			nodes = append(nodes, n)
		}
	}
	// A read barrier on each node waits until its FSM has applied
	// everything committed before the barrier.
	for _, n := range nodes {
		var last error
		c.waitFor(n.ID()+"'s FSM to catch up (a linearizable read to succeed)", func() bool {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			last = n.LinearizableRead(ctx)
			if last != nil {
				c.tb.Logf("raftkittest: AssertConsistent: read barrier on %s: %v", n.ID(), last)
			}
			return last == nil
		})
	}
	if d := c.Divergence(); d != nil {
		c.tb.Fatalf("raftkittest: AssertConsistent: %v", d)
	}
	target := leader.Raft().CommitIndex()
	var states []any
	for _, n := range nodes {
		st, err := c.state(c.FSM(n))
		if err != nil {
			c.tb.Fatalf("raftkittest: AssertConsistent: state of %s: %v", n.ID(), err)
		}
		states = append(states, st)
	}
	for i := 1; i < len(nodes); i++ {
		if !reflect.DeepEqual(states[0], states[i]) {
			c.tb.Fatalf("raftkittest: AssertConsistent: %s and %s differ after applying index %d:\n%s: %s\n%s: %s",
				nodes[0].ID(), nodes[i].ID(), target,
				nodes[0].ID(), describeState(states[0]), nodes[i].ID(), describeState(states[i]))
		}
	}
}

// state returns the comparable view of fsm.
func (c *Cluster[F]) state(fsm F) (any, error) {
	if c.opts.state != nil {
		st, ok := c.opts.state(fsm)
		if !ok {
			return nil, fmt.Errorf("WithState was given a function for another FSM type than %T", fsm)
		}
		return st, nil
	}
	snap, err := fsm.Snapshot()
	if err != nil {
		return nil, err
	}
	defer snap.Release()
	sink := &memSink{}
	if err := snap.Persist(sink); err != nil {
		return nil, err
	}
	return sink.buf.Bytes(), nil
}

func describeState(s any) string {
	const limit = 2000
	var out string
	if b, ok := s.([]byte); ok {
		out = fmt.Sprintf("%d snapshot bytes %q", len(b), b)
	} else if m := reflect.ValueOf(s); m.Kind() == reflect.Map {
		keys := make([]string, 0, m.Len())
		for _, k := range m.MapKeys() {
			keys = append(keys, fmt.Sprintf("%v=%v", k, describeValue(m.MapIndex(k).Interface())))
		}
		sort.Strings(keys)
		out = fmt.Sprintf("%d entries {%s}", len(keys), strings.Join(keys, " "))
	} else {
		out = fmt.Sprintf("%+v", s)
	}
	if len(out) > limit {
		out = out[:limit] + "…"
	}
	return out
}

func describeValue(v any) string {
	if b, ok := v.([]byte); ok {
		return fmt.Sprintf("%q", b)
	}
	return fmt.Sprint(v)
}

// memSink is a raft.SnapshotSink that keeps the snapshot in memory.
type memSink struct {
	buf bytes.Buffer
}

func (s *memSink) Write(p []byte) (int, error) { return s.buf.Write(p) }
func (s *memSink) Close() error                { return nil }
func (s *memSink) ID() string                  { return "raftkittest" }
func (s *memSink) Cancel() error               { return errors.New("raftkittest: snapshot cancelled") }

var _ io.Writer = (*memSink)(nil)

// Close stops every node as a crash would (no leadership handovers, so it
// is quick), each having told the others first, so that a clean run logs
// no errors about the nodes going away (raftkit.MemNetwork.StopNodes);
// then it stops sending log lines to tb. NewCluster registers it with
// tb.Cleanup; calling it again does nothing. Nodes a test started itself
// on Network are stopped too.
func (c *Cluster[F]) Close() {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	c.closed = true
	for _, m := range c.members {
		m.node = nil
	}
	c.mu.Unlock()
	c.net.StopNodes()
	c.logs.stop()
}

// wait waits for f at most d.
func wait(f raft.Future, d time.Duration) error {
	done := make(chan error, 1)
	go func() { done <- f.Error() }()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case err := <-done:
		return err
	case <-t.C:
		return fmt.Errorf("raftkittest: no answer within %s", d)
	}
}

// tbWriter sends log lines to tb.Log until stop: testing panics on Log
// after the test has ended, and raft's goroutines may log until Close.
type tbWriter struct {
	mu      sync.Mutex
	tb      testing.TB
	stopped bool
}

func (w *tbWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.stopped {
		w.tb.Log(strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}

func (w *tbWriter) stop() {
	w.mu.Lock()
	w.stopped = true
	w.mu.Unlock()
}
