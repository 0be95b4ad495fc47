package raftkit

import (
	"context"
	"errors"
	"fmt"
	"net/rpc"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"

	"github.com/raftkit/raftkit/internal/wire"
)

// RaftNode is one member of a replicated state machine: a hashicorp/raft
// instance with its stores, snapshots and transport, built from a Config.
// All methods are safe for concurrent use.
type RaftNode struct {
	cfg    *settled
	id     string
	addr   string // advertised
	logger hclog.Logger

	raft   *raft.Raft
	fsm    *trackedFSM // the application's FSM, as raft sees it
	mux    *portMux
	trans  *raft.NetworkTransport
	stores *nodeStores

	leadership *leaderWatch
	rpcServer  *rpc.Server
	rpc        *rpcPool
	fwd        *applyBatcher // forwarded writes
	runners    runnerSet
	// futureWaits counts waits on raft futures (waitFuture, applyWaits).
	futureWaits waitGroup
	applyWaits  *applyWaiter
	readyTerm   atomic.Uint64 // term in which this leader's barrier completed
	metrics     *Metrics      // nil: none
	metricsWG   sync.WaitGroup

	// leaderReads and followerReads share read-index requests among
	// concurrent LinearizableRead calls; readFetches counts their running
	// requests so that Close can wait for them.
	leaderReads, followerReads *readBatcher
	readFetches                sync.WaitGroup

	// batchApplyCh is raft.Config.BatchApplyCh as the node started with.
	batchApplyCh bool

	closeOnce sync.Once
	closeErr  error
	closed    chan struct{}
}

// NewRaftNode opens (or creates) the node's stores, binds its port and
// starts raft. If cfg.Peers is set and the node has no state yet, it
// bootstraps the cluster with those peers; a node with state rejoins its
// cluster whatever Peers says. The FSM is the application's state machine;
// raftkit calls it only from raft's goroutines (Apply, Snapshot, Restore).
//
// If Dir holds a recovery file (RecoveryFile, see WriteRecovery), it is
// applied first with raft.RecoverCluster and fsm, then renamed; fsm's
// Restore must replace its whole state, as raft requires anyway.
//
// If NewRaftNode fails, everything it opened is closed again. Errors match
// ErrInvalidConfig, ErrDataDirLocked, ErrCorruptStore or ErrRecovery where
// those apply.
func NewRaftNode(cfg Config, fsm raft.FSM) (node *RaftNode, err error) {
	if fsm == nil {
		return nil, configErr("fsm", "", "must not be nil: pass the application's raft.FSM")
	}
	s, err := cfg.settle()
	if err != nil {
		return nil, err
	}
	var undo []func() error
	defer func() {
		if err != nil {
			for i := len(undo) - 1; i >= 0; i-- {
				_ = undo[i]()
			}
		}
	}()

	stores, err := openStores(s)
	if err != nil {
		return nil, err
	}
	undo = append(undo, stores.Close)

	mux, trans, err := openTransport(s)
	if err != nil {
		return nil, err
	}
	undo = append(undo, mux.Close, trans.Close)
	if cfg.ID == "" && s.ID == s.advertise {
		s.ID = mux.advertise // port 0 resolved
	}
	s.advertise = mux.advertise

	rc, err := raftConfig(s)
	if err != nil {
		return nil, err
	}
	if err := applyRecovery(s, rc, fsm, stores, trans); err != nil {
		return nil, err
	}
	hasState, err := raft.HasExistingState(stores.log, stores.stable, stores.snaps)
	if err != nil {
		return nil, fmt.Errorf("%w: reading existing raft state: %v", ErrCorruptStore, err)
	}
	if !hasState {
		if err := bootstrap(s, rc, stores, trans); err != nil {
			return nil, err
		}
	}
	tracked := newTrackedFSM(fsm)
	tracked.restored = func() uint64 { return snapshotIndex(stores.snaps) }
	r, err := raft.NewRaft(rc, tracked, stores.log, stores.stable, stores.snaps, trans)
	if err != nil {
		return nil, fmt.Errorf("raftkit: start raft: %w", err)
	}
	undo = append(undo, func() error { return r.Shutdown().Error() })

	n := &RaftNode{
		cfg:     s,
		id:      s.ID,
		addr:    s.advertise,
		logger:  s.Logger.Named("raftkit"),
		raft:    r,
		fsm:     tracked,
		mux:     mux,
		trans:   trans,
		stores:  stores,
		metrics: s.Metrics,
		closed:  make(chan struct{}),
	}
	n.batchApplyCh = rc.BatchApplyCh
	n.leadership = newLeaderWatch(r)
	n.leaderReads = &readBatcher{fetch: n.leaderReadIndex, timeout: s.ApplyTimeout, wg: &n.readFetches}
	n.followerReads = &readBatcher{fetch: n.remoteReadIndex, timeout: s.ApplyTimeout, wg: &n.readFetches}
	n.rpc = newRPCPool(mux)
	n.fwd = newApplyBatcher(n)
	n.applyWaits = newApplyWaiter(n)
	n.rpcServer = rpc.NewServer()
	if err := n.rpcServer.RegisterName(wire.Service, &rpcService{n: n}); err != nil {
		n.Close()
		return nil, fmt.Errorf("raftkit: register request service: %w", err)
	}
	mux.serveRPC(n.serveRPC)
	n.startMetrics()
	n.logger.Info("node started", "id", n.id, "addr", n.addr, "in_memory", s.InMemory, "dir", s.Dir, "has_state", hasState)
	if !hasState && len(s.Join) > 0 {
		if err := n.join(); err != nil {
			n.Close()
			return nil, err
		}
	}
	return n, nil
}

// raftMaxAppendEntries is raft.Config.MaxAppendEntries as raftkit sets
// it: how many commands one leader batch (one log fsync) and one
// AppendEntries request may carry. raft's limit is 1024.
const raftMaxAppendEntries = 512

// raftConfig builds raft's Config from ours and the RaftConfig hook.
func raftConfig(s *settled) (*raft.Config, error) {
	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(s.ID)
	rc.Logger = s.Logger.Named("raft")
	rc.SnapshotThreshold = s.SnapshotThreshold
	rc.SnapshotInterval = s.SnapshotInterval
	applyTiming(rc, resolveTiming(s))
	// Larger batches than raft's default (64): under many concurrent
	// writers one fsync and one AppendEntries carry more commands, and a
	// follower that fell behind catches up in fewer round trips.
	rc.MaxAppendEntries = raftMaxAppendEntries
	rc.BatchApplyCh = true
	if s.RaftConfig != nil {
		s.RaftConfig(rc)
		if rc.LocalID != raft.ServerID(s.ID) {
			return nil, configErr("RaftConfig", string(rc.LocalID), "changed LocalID; set Config.ID instead")
		}
		if rc.Logger == nil {
			rc.Logger = hclog.NewNullLogger() // raft would log to stderr
		}
	}
	if err := raft.ValidateConfig(rc); err != nil {
		return nil, configErr("RaftConfig", "", "%v", err)
	}
	return rc, nil
}

// ID returns the node's server ID.
func (n *RaftNode) ID() string { return n.id }

// Addr returns the address other nodes reach this node at.
func (n *RaftNode) Addr() string { return n.addr }

// Raft returns the underlying *raft.Raft: the escape hatch for what raftkit
// does not wrap. Calls on it bypass raftkit's forwarding and timeouts, and it
// must not be shut down directly: use Close.
func (n *RaftNode) Raft() *raft.Raft { return n.raft }

// IsLeader reports whether this node is the leader right now, by raft's own
// state. A leader cut off from the majority keeps saying true until its
// lease runs out (about the heartbeat timeout).
func (n *RaftNode) IsLeader() bool { return n.raft.State() == raft.Leader }

// GetLeaderAddr returns the address of the leader this node knows of, or ""
// if none is known.
func (n *RaftNode) GetLeaderAddr() string {
	addr, _ := n.raft.LeaderWithID()
	return string(addr)
}

// GetLeaderID returns the ID of the leader this node knows of, or "".
func (n *RaftNode) GetLeaderID() string {
	_, id := n.raft.LeaderWithID()
	return string(id)
}

// WaitForLeader blocks until the node knows a leader and returns its
// address, or returns an error matching ErrNoLeader and ctx's error (or
// ErrClosed).
func (n *RaftNode) WaitForLeader(ctx context.Context) (string, error) {
	ch := n.WatchLeadership(ctx)
	for l := range ch {
		if l.LeaderAddr != "" {
			return l.LeaderAddr, nil
		}
	}
	if err := n.checkOpen(); err != nil {
		return "", err
	}
	return "", wrapErr(ErrNoLeader, "wait for leader", ctx.Err())
}

func (n *RaftNode) notLeader() error {
	addr, id := n.raft.LeaderWithID()
	return &NotLeaderError{LeaderID: string(id), LeaderAddr: string(addr)}
}

// bound returns ctx limited to its own deadline or, if it has none,
// ApplyTimeout. A ctx that has a deadline is returned as it is: nothing
// raftkit starts under it outlives the call, so a derived context to
// cancel would only cost allocations.
func (n *RaftNode) bound(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, n.cfg.ApplyTimeout)
}

// waitFuture waits for f or for ctx. When ctx wins, a goroutine goes on
// waiting for the future; Close lets such waits end before it shuts raft
// down, because raft never resolves a future still queued in its channels
// at shutdown (VerifyLeader, leadership transfers, batched applies), and
// the goroutine would wait forever.
func (n *RaftNode) waitFuture(ctx context.Context, f raft.Future) error {
	done := make(chan error, 1)
	n.futureWaits.add()
	go func() {
		defer n.futureWaits.done()
		done <- f.Error()
	}()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// waitGroup counts goroutines that wait on raft futures. Unlike
// sync.WaitGroup it may be waited on, with a bound, while goroutines are
// still being added.
type waitGroup struct {
	mu   sync.Mutex
	n    int
	idle chan struct{} // closed when n reaches 0 during a drain
}

func (w *waitGroup) add() {
	w.mu.Lock()
	w.n++
	w.mu.Unlock()
}

func (w *waitGroup) done() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.n--; w.n == 0 && w.idle != nil {
		close(w.idle)
		w.idle = nil
	}
}

// drain waits until no goroutine is counted, or for d. It reports whether
// they all finished.
func (w *waitGroup) drain(d time.Duration) bool {
	w.mu.Lock()
	if w.n == 0 {
		w.mu.Unlock()
		return true
	}
	if w.idle == nil {
		w.idle = make(chan struct{})
	}
	idle := w.idle
	w.mu.Unlock()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-idle:
		return true
	case <-t.C:
		return false
	}
}

// ServerInfo describes one member of the cluster configuration.
type ServerInfo struct {
	ID   string `json:"id"`
	Addr string `json:"addr"`
	// Voter is false for non-voters (read replicas) and staging servers.
	Voter bool `json:"voter"`
	// Suffrage is raft's word for the member's role: "Voter", "Nonvoter"
	// or "Staging".
	Suffrage string `json:"suffrage"`
}

// Status is a point-in-time view of a node.
type Status struct {
	ID    string `json:"id"`
	Addr  string `json:"addr"`
	State string `json:"state"` // Follower, Candidate, Leader or Shutdown
	Term  uint64 `json:"term"`
	// LastLogIndex is the last entry in this node's log (maybe uncommitted).
	LastLogIndex uint64 `json:"last_log_index"`
	// CommitIndex is the last entry this node knows to be committed.
	CommitIndex uint64 `json:"commit_index"`
	// AppliedIndex is the last entry raft has handed to this node's FSM;
	// the FSM may still be applying the latest batch (LinearizableRead
	// waits for the FSM itself).
	AppliedIndex uint64       `json:"applied_index"`
	LeaderID     string       `json:"leader_id"`
	LeaderAddr   string       `json:"leader_addr"`
	Servers      []ServerInfo `json:"servers"`
	// LastContact is when this node last heard from a leader; zero on the
	// leader itself and on a node that never heard from one.
	LastContact time.Time `json:"last_contact"`
}

// Status returns the node's current raft state. It does not block.
func (n *RaftNode) Status() Status {
	addr, id := n.raft.LeaderWithID()
	st := Status{
		ID:           n.id,
		Addr:         n.addr,
		State:        n.raft.State().String(),
		Term:         n.raft.CurrentTerm(),
		LastLogIndex: n.raft.LastIndex(),
		CommitIndex:  n.raft.CommitIndex(),
		AppliedIndex: n.raft.AppliedIndex(),
		LeaderID:     string(id),
		LeaderAddr:   string(addr),
	}
	if n.raft.State() != raft.Leader {
		st.LastContact = n.raft.LastContact()
	}
	if f := n.raft.GetConfiguration(); f.Error() == nil {
		for _, s := range f.Configuration().Servers {
			st.Servers = append(st.Servers, ServerInfo{ID: string(s.ID), Addr: string(s.Address), Voter: s.Suffrage == raft.Voter, Suffrage: s.Suffrage.String()})
		}
	}
	return st
}

// Close stops the node: a leader first hands leadership to another voter
// (bounded by the election timeout) so the cluster does not wait for an
// election, then raft shuts down, then the transport, then the stores.
// Close leaves no goroutine, listener or file lock behind: it first lets
// calls in flight on raft end (up to two election timeouts), because raft
// never resolves requests still queued when it shuts down. It is
// idempotent; later calls return the first call's result. Writes in flight
// end with ErrUnknownOutcome.
func (n *RaftNode) Close() error {
	n.closeOnce.Do(func() {
		if n.IsLeader() && n.hasOtherVoters() {
			ctx, cancel := context.WithTimeout(context.Background(), n.raft.ReloadableConfig().ElectionTimeout)
			if err := n.TransferLeadership(ctx, ""); err != nil {
				n.logger.Debug("leadership transfer before close failed", "error", err)
			}
			cancel()
		}
		close(n.closed)
		n.runners.stopAll()
		// Let raftkit's own waits on raft futures end while raft still
		// runs: raft would leave queued ones unresolved at shutdown.
		if !n.futureWaits.drain(2 * n.raft.ReloadableConfig().ElectionTimeout) {
			n.logger.Debug("raft futures still pending at close; their waits may never end")
		}
		var errs []error
		if err := n.raft.Shutdown().Error(); err != nil {
			errs = append(errs, fmt.Errorf("raft shutdown: %w", err))
		}
		n.leadership.close()
		n.fwd.stop()
		n.metricsWG.Wait()
		n.metrics.removeNode(n)
		n.rpc.Close()
		n.fwd.wg.Wait()
		n.leaderReads.stop()
		n.followerReads.stop()
		n.readFetches.Wait()
		if err := n.trans.Close(); err != nil {
			errs = append(errs, fmt.Errorf("transport: %w", err))
		}
		if err := n.mux.Close(); err != nil && !errors.Is(err, ErrClosed) {
			errs = append(errs, fmt.Errorf("listener: %w", err))
		}
		if err := n.stores.Close(); err != nil {
			errs = append(errs, fmt.Errorf("stores: %w", err))
		}
		if len(errs) > 0 {
			n.closeErr = fmt.Errorf("raftkit: close: %w", errors.Join(errs...))
		}
		n.logger.Info("node closed", "id", n.id)
	})
	return n.closeErr
}

func (n *RaftNode) hasOtherVoters() bool {
	f := n.raft.GetConfiguration()
	if f.Error() != nil {
		return false
	}
	for _, s := range f.Configuration().Servers {
		if s.Suffrage == raft.Voter && string(s.ID) != n.id {
			return true
		}
	}
	return false
}

func (n *RaftNode) checkOpen() error {
	select {
	case <-n.closed:
		return ErrClosed
	default:
		return nil
	}
}

// closedOr returns ErrClosed-wrapped err after Close, else err.
func (n *RaftNode) closedOr(err error) error {
	if errors.Is(err, raft.ErrRaftShutdown) {
		return fmt.Errorf("%w: %w", ErrClosed, err)
	}
	return err
}

// startMetrics registers the node with Config.Metrics and counts the
// leader changes it sees until the node closes.
func (n *RaftNode) startMetrics() {
	m := n.metrics
	if m == nil {
		return
	}
	m.addNode(n)
	ch := n.WatchLeadership(context.Background()) // closed by Close
	n.metricsWG.Add(1)
	go func() {
		defer n.metricsWG.Done()
		last := ""
		for l := range ch {
			if l.LeaderID != "" && l.LeaderID != last {
				m.leaderChanged(n.id)
				last = l.LeaderID
			}
		}
	}()
}
