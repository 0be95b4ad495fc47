package raftkit

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"

	"github.com/raftkit/raftkit/internal/chunk"
	"github.com/raftkit/raftkit/internal/peer"
	"github.com/raftkit/raftkit/internal/port"
	"github.com/raftkit/raftkit/internal/store"
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
	mux    *port.Mux
	trans  *raft.NetworkTransport
	stores *store.Stores

	leadership *leaderWatch
	election   *electionFSM // nil unless the node runs ElectionFSM
	rpc        *peer.Pool
	fwd        *peer.Batcher // forwarded writes
	runners    runnerSet
	// futureWaits counts waits on raft futures (waitFuture, leaderApply).
	futureWaits waitGroup
	readyTerm   atomic.Uint64 // term in which this leader's barrier completed
	metrics     metrics       // Config.Metrics, or none
	departures  *departures   // peers that announced a clean close

	// leaderReads and followerReads share read-index requests among
	// concurrent LinearizableRead calls; readFetches counts their running
	// requests so that Close can wait for them.
	leaderReads, followerReads *readBatcher
	readFetches                sync.WaitGroup

	// batchApplyCh is raft.Config.BatchApplyCh as the node started with.
	batchApplyCh bool
	// submitMu keeps a chunked command's chunks together in the log: held
	// exclusively while they are submitted, shared while other commands
	// are (see submit).
	submitMu sync.RWMutex
	// chunkIDs numbers chunked commands' sequences, from a random start.
	chunkIDs atomic.Uint64
	// chunkAsks holds what peers answered, or failed to answer, about
	// reading chunks where no hello said (see readsChunks).
	chunkAsks chunkAsks
	// chunkCut is set when a chunked submission may have stopped between
	// chunks (see noteChunkCut).
	chunkCut atomic.Bool
	// storedChunks follows the chunks the log store has taken, so that a
	// chunked submission feeds raft a group at a time (nil but with
	// raft-wal; see submitChunked).
	storedChunks *chunk.Stored

	// hooks are this package's tests' (see nodeHooks).
	hooks *nodeHooks

	// life holds the node's parts with their stop functions; Close
	// stops them in reverse order.
	life      *lifecycle
	closeOnce sync.Once
	closeErr  error
	closed    chan struct{}

	// gate holds the bootstrap agreement and the cluster's identity.
	gate *clusterGate
	// readyState is what the node learned about its readiness (see
	// readiness.go).
	readyState *readyState
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
func NewRaftNode(cfg Config, fsm raft.FSM) (*RaftNode, error) {
	return newRaftNode(cfg, fsm, nil)
}

// nodeHooks let this package's tests watch a node's parts being built and
// stopped (and fail the constructor after any of them), and make it answer
// as a node of an older version would. nil: none.
type nodeHooks struct {
	lifecycle *lifecycleHooks
	// profile, if set, changes what the node says of itself on the node
	// port (speak protocol 1, lack a feature, require one).
	profile func(peer.Profile) peer.Profile
	// leaseLength, if set, replaces the length of this node's leases.
	leaseLength func(time.Duration) time.Duration
	// campaign, if set, changes how a leaderless node reports (alone.go).
	campaign func(*campaign)
}

// ownProfile is what the node says of itself on the node port.
func (h *nodeHooks) ownProfile() peer.Profile {
	p := peer.Profile{Protocol: peer.Protocol, Features: peer.Features, Version: ModuleVersion()}
	if h.profile != nil {
		p = h.profile(p)
	}
	return p
}

func newRaftNode(cfg Config, fsm raft.FSM, hooks *nodeHooks) (node *RaftNode, err error) {
	if hooks == nil {
		hooks = &nodeHooks{}
	}
	if fsm == nil {
		return nil, configErr("fsm", "", "must not be nil: pass the application's raft.FSM")
	}
	s, err := cfg.settle()
	if err != nil {
		return nil, err
	}
	departed := newDepartures()
	if hooks.campaign != nil {
		hooks.campaign(&departed.campaign)
	}
	s = s.withLogger(&quietLogger{Logger: s.Logger, d: departed})
	// Each part is registered with its stop function as soon as it exists;
	// a failure from here on stops the parts built so far, last first,
	// exactly as Close does.
	life := &lifecycle{hooks: hooks.lifecycle}
	defer func() {
		if err != nil {
			_ = life.stop()
		}
	}()

	stores, err := store.Open(s.storeOptions())
	if err != nil {
		return nil, publicErr(err)
	}
	if err := life.add("stores", stores.Close); err != nil {
		return nil, err
	}

	po := s.portOptions()
	po.Profile = hooks.ownProfile()
	mux, trans, err := port.Open(po)
	if err != nil {
		return nil, err
	}
	s = s.bound(mux.Advertise())
	// Raft's transport, then the port under it: its accept loop ends only
	// once it is closed and the port stops.
	if err := life.add("transport", func() error {
		var errs []error
		if err := trans.Close(); err != nil {
			errs = append(errs, err)
		}
		if err := mux.Close(); err != nil && !errors.Is(err, ErrClosed) && !errors.Is(err, net.ErrClosed) {
			errs = append(errs, fmt.Errorf("listener: %w", err))
		}
		return errors.Join(errs...)
	}); err != nil {
		return nil, err
	}

	rc, err := raftConfig(s)
	if err != nil {
		return nil, err
	}
	if err := applyRecovery(s, rc, fsm, stores, trans); err != nil {
		return nil, err
	}
	hasState, err := raft.HasExistingState(stores.Log, stores.Stable, stores.Snaps)
	if err != nil {
		return nil, fmt.Errorf("%w: reading existing raft state: %v", ErrCorruptStore, err)
	}
	if !hasState && s.peersErr != nil {
		return nil, s.peersErr
	}
	gate := newClusterGate(s, stores.Stable, stores.Log, hasState)
	// The gate's membership goroutines are a later part ("membership");
	// this one ends raft connections' waits for the gate's decision.
	if err := life.add("cluster gate", func() error { gate.release(); return nil }); err != nil {
		return nil, err
	}
	if !hasState && len(s.peers) == 1 {
		if err := gate.bootstrapNow(rc, stores, trans); err != nil {
			return nil, err
		}
	}
	mux.SetGate(gate)

	n := &RaftNode{
		cfg:     s,
		id:      s.ID,
		addr:    s.advertise,
		logger:  s.Logger.Named("raftkit"),
		mux:     mux,
		trans:   trans,
		stores:  stores,
		metrics: metrics{sink: s.Metrics},
		gate:    gate,
		closed:  make(chan struct{}),
		life:    life,
		hooks:   hooks,

		departures: departed,
		readyState: newReadyState(),
	}
	// Reads and forwarded writes stop after raft and the request clients
	// (registered later): their requests in flight end when those do.
	n.leaderReads = &readBatcher{fetch: n.leaderReadIndex, timeout: s.ApplyTimeout, wg: &n.readFetches}
	n.followerReads = &readBatcher{fetch: n.remoteReadIndex, timeout: s.ApplyTimeout, wg: &n.readFetches}
	if err := life.add("reads", func() error {
		n.leaderReads.stop()
		n.followerReads.stop()
		n.readFetches.Wait()
		return nil
	}); err != nil {
		return nil, err
	}
	n.rpc = peer.NewPool(func(ctx context.Context, addr string) (net.Conn, error) {
		return mux.Dial(ctx, addr, peer.PurposeRPC)
	})
	n.fwd = peer.NewBatcher(n.rpc)
	if err := life.add("forwarded writes", func() error { n.fwd.Stop(); return nil }); err != nil {
		return nil, err
	}
	if err := life.add("request clients", func() error { n.rpc.Close(); return nil }); err != nil {
		return nil, err
	}

	// With raft-wal a leader feeds raft a large command's chunks a group
	// at a time, so that its disk and its followers' work at once; with
	// BoltDB, whose commits cost two fsyncs each, that gained nothing (see
	// docs/performance.md).
	if stores.Cache != nil && s.LogStore == LogStoreWAL {
		n.storedChunks = chunk.NewStored()
		stores.Cache.OnStored = n.storedChunks.Note
	}
	n.fsm = newTrackedFSM(fsm)
	n.election, _ = fsm.(*electionFSM)
	snaps := &openedSnapshots{SnapshotStore: stores.Snaps}
	n.fsm.restored = func() uint64 {
		meta := snaps.opened()
		if meta == nil {
			return 0
		}
		n.readyState.configuration(meta.ConfigurationIndex, listed(meta.Configuration, n.id), true)
		return meta.Index
	}
	n.fsm.configured = func(index uint64, conf raft.Configuration) {
		n.readyState.configuration(index, listed(conf, n.id), true)
	}
	// Raft sees its transport and stable store through the term guard,
	// which refuses requests with impossible terms (see internal/port).
	guarded, stable := mux.GuardTerms(trans, stores.Stable, s.Logger.Named("transport"))
	meter, err := store.NewMeter(watchMembership(stores.Log, n.id, n.readyState))
	if err != nil {
		return nil, publicErr(err)
	}
	if s.LogStore == LogStoreWAL && !s.InMemory {
		meter.MaxBatchBytes = walBatchBytes
	}
	r, err := raft.NewRaft(rc, n.fsm, meter, stable, snaps, guarded)
	if err != nil {
		return nil, fmt.Errorf("raftkit: start raft: %w", err)
	}
	n.raft = r
	n.batchApplyCh = rc.BatchApplyCh
	if err := life.add("raft", n.stopRaft); err != nil {
		return nil, err
	}
	departed.raft.Store(r)
	r.RegisterObserver(departed.observer(raft.ServerID(s.ID)))
	// The port learns the configuration's hosts (its members) from raft;
	// the transport part waits for that goroutine.
	mux.FollowConfiguration(r)

	// The parts from here on use raft: they stop before it does.
	if err := life.add("compaction", startCompactor(n, meter, stores.Cache, rc.TrailingLogs)); err != nil {
		return nil, err
	}
	n.leadership = newLeaderWatch(r, n.Published)
	if n.election != nil {
		n.election.onChange(n.leadership.changed)
		n.leadership.changed() // what was applied before onChange
	}
	if err := life.add("leadership watch", func() error { n.leadership.close(); return nil }); err != nil {
		return nil, err
	}
	n.runners.grace = s.LeaderJobGrace
	if err := life.add("leadership runners", func() error { n.runners.stopAll(); return nil }); err != nil {
		return nil, err
	}
	n.chunkIDs.Store(rand.Uint64())
	abortCtx, stopAborts := context.WithCancel(context.Background())
	abortsDone := make(chan struct{})
	go func() {
		defer close(abortsDone)
		n.abortAbandonedChunks(abortCtx)
	}()
	if err := life.add("abandoned chunk aborts", func() error { stopAborts(); <-abortsDone; return nil }); err != nil {
		return nil, err
	}
	server, err := peer.NewServer(peerHandler{n: n})
	if err != nil {
		return nil, fmt.Errorf("raftkit: register request service: %w", err)
	}
	mux.ServeRPC(func(conn net.Conn, l peer.Limits) {
		if l.Upgrade == nil {
			server.Serve(conn, l)
			return
		}
		// A stranger's connection (it has limits to upgrade once its host
		// becomes a member's): what it says of its sender counts only
		// then (see peerHandler.Closing).
		stranger, err := peer.NewServer(peerHandler{n: n, member: func() bool { _, ok := l.Upgrade(); return ok }})
		if err != nil {
			conn.Close()
			return
		}
		stranger.Serve(conn, l)
	})
	// Requests being served end with the listener; the server only stops
	// taking new request connections.
	if err := life.add("request server", func() error { mux.ServeRPC(nil); return nil }); err != nil {
		return nil, err
	}
	if s.Metrics != nil {
		if err := life.add("metrics", n.startMetrics()); err != nil {
			return nil, err
		}
	}
	n.logger.Info("node started", "id", n.id, "addr", n.addr, "in_memory", s.InMemory, "log_store", s.LogStore, "dir", s.Dir, "has_state", hasState)
	if hasState {
		n.notePeersOnRestart(s)
	}
	if err := life.add("membership", func() error { gate.halt(); return nil }); err != nil {
		return nil, err
	}
	gate.start(n)
	if s.InMemory {
		detach := s.Network.attach(n)
		if err := life.add("network's node list", func() error { detach(); return nil }); err != nil {
			return nil, err
		}
	}
	// Stopped first: from then on calls fail with ErrClosed.
	if err := life.add("calls", func() error { close(n.closed); return nil }); err != nil {
		return nil, err
	}
	switch {
	case len(s.Join) > 0 && (!hasState || n.removedFromConfiguration()):
		n.readyState.startJoin()
		if err := n.join(); err != nil {
			return nil, err
		}
	case !hasState && len(s.Peers) == 0:
		// A fresh node that waits to be added from elsewhere (AddVoter,
		// AddNonvoter) joins as one that asked: while it catches up it
		// receives the configurations from before its addition, which do
		// not list it, and it is not a removed node for that.
		n.readyState.startJoin()
	}
	n.awaitCatchUp()
	return n, nil
}

// stopRaft lets raftkit's own waits on raft futures end while raft still
// runs (raft would leave queued ones unresolved at shutdown, and their
// waits would never end), then shuts raft down.
func (n *RaftNode) stopRaft() error {
	if !n.futureWaits.drain(2 * n.raft.ReloadableConfig().ElectionTimeout) {
		n.logger.Debug("raft futures still pending at close; their waits may never end")
	}
	return n.raft.Shutdown().Error()
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
// must not be shut down directly: use Close. The one exception is a
// simulated crash (raftkittest's Crash): Shutdown, then Close at once. raft
// stops as in a killed process (a leader hands nothing over), and Close,
// finding raft down, skips the handover and the closing announcement and
// releases the rest; until Close the node answers nothing.
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

// WaitForLeader blocks until the node is a ready member of its cluster and
// knows a leader, and returns the leader's address. Ready means that the
// node's configuration contains it and, after a Join, that it has applied
// what the cluster had committed when it joined. It returns ctx's error,
// ErrClosed, or at once an error matching ErrInvalidConfig (the node's
// Peers disagree with its peers') or ErrRemoved.
func (n *RaftNode) WaitForLeader(ctx context.Context) (string, error) {
	return n.waitReadyLeader(ctx)
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
	// AppliedIndex is the last entry this node's FSM has applied: its
	// state reflects every command up to it.
	AppliedIndex uint64 `json:"applied_index"`
	// RaftAppliedIndex is the last entry raft has handed to this node's
	// FSM, which may still be applying it. It is at least AppliedIndex.
	RaftAppliedIndex uint64       `json:"raft_applied_index"`
	LeaderID         string       `json:"leader_id"`
	LeaderAddr       string       `json:"leader_addr"`
	Servers          []ServerInfo `json:"servers"`
	// Joining is true after a Join until the node has the configuration
	// that contains it and has applied what the cluster had committed
	// when it joined.
	Joining bool `json:"joining,omitempty"`
	// CatchingUp is true from the node's start (and from its return to
	// the configuration after a removal) until it has applied
	// CatchUpIndex: the index its leader had committed when the node
	// first asked it since (0 until it has learned it).
	CatchingUp   bool   `json:"catching_up,omitempty"`
	CatchUpIndex uint64 `json:"catch_up_index,omitempty"`
	// Ready is Ready's verdict: the node is open, a member with a known
	// leader, and caught up. A node that is not ready may lack writes
	// that were acknowledged before it started: do not serve stale reads
	// from it.
	Ready bool `json:"ready"`
	// MembershipError says why the node cannot serve as a member: its
	// Peers disagree with its peers' (an error matching ErrInvalidConfig)
	// or it was removed (ErrRemoved). Empty otherwise.
	MembershipError string `json:"membership_error,omitempty"`
	// LastContact is when this node last heard from a leader; zero on the
	// leader itself and on a node that never heard from one.
	LastContact time.Time `json:"last_contact"`
	// SnapshotsRestored counts the snapshots this node's FSM was restored
	// from since the node started: its own latest at start, or one the
	// leader sent because the node was too far behind for the log.
	SnapshotsRestored uint64 `json:"snapshots_restored"`
	// Version is the raftkit module version of this node's program
	// (ModuleVersion), and Protocol the node protocol it speaks
	// (ProtocolVersion).
	Version  string `json:"version"`
	Protocol int    `json:"protocol"`
	// Peers says what each member of the cluster (by the Config's
	// addresses and raft's latest configuration) that this node has talked
	// to speaks, by address: during a rolling upgrade, watch them all
	// reach the new protocol.
	Peers []PeerProtocol `json:"peers,omitempty"`
}

// PeerProtocol is what a peer speaks on the node port, as its hello said
// (or, for protocol 1, as its silence did).
type PeerProtocol struct {
	Addr     string   `json:"addr"`
	Protocol int      `json:"protocol"`
	Version  string   `json:"version"`
	Features []string `json:"features"`
	// Refused says why this node and the peer do not talk (see
	// ErrIncompatible); empty when they do.
	Refused string `json:"refused,omitempty"`
}

// Status returns the node's current raft state. It does not block.
func (n *RaftNode) Status() Status {
	st, _ := n.status()
	return st
}

// status is Status, and Ready's verdict.
func (n *RaftNode) status() (Status, error) {
	addr, id := n.raft.LeaderWithID()
	st := Status{
		ID:           n.id,
		Addr:         n.addr,
		State:        n.raft.State().String(),
		Term:         n.raft.CurrentTerm(),
		LastLogIndex: n.raft.LastIndex(),
		CommitIndex:  n.raft.CommitIndex(),
		LeaderID:     string(id),
		LeaderAddr:   string(addr),
		CatchingUp:   !n.caughtUp(),
		CatchUpIndex: n.readyState.target(),
	}
	st.Joining = n.readyState.isJoining() && st.CatchingUp
	st.RaftAppliedIndex, st.AppliedIndex = n.appliedIndexes()
	st.SnapshotsRestored = n.fsm.restores.Load()
	memberErr := n.memberErr()
	if memberErr != nil {
		st.MembershipError = memberErr.Error()
	}
	if n.raft.State() != raft.Leader {
		st.LastContact = n.raft.LastContact()
	}
	if f := n.raft.GetConfiguration(); f.Error() == nil {
		for _, s := range f.Configuration().Servers {
			st.Servers = append(st.Servers, ServerInfo{ID: string(s.ID), Addr: string(s.Address), Voter: s.Suffrage == raft.Voter, Suffrage: s.Suffrage.String()})
		}
	}
	ready := n.checkOpen()
	if ready == nil {
		ready = memberErr
	}
	if ready == nil {
		ready = readiness(st)
	}
	st.Ready = ready == nil
	own := n.mux.Profile()
	st.Version, st.Protocol = own.Version, own.Protocol
	for _, p := range n.mux.Peers() {
		st.Peers = append(st.Peers, PeerProtocol{Addr: p.Addr, Protocol: p.Profile.Protocol, Version: p.Profile.Version, Features: p.Profile.Features, Refused: p.Refused})
	}
	return st, ready
}

// Close stops the node: it tells the other members that it is closing
// (bounded by the election timeout; they then log their failures to reach
// it at Debug, not as errors), cancels RunWhileLeader's functions with
// cause ErrClosed and waits for them to return (up to
// Config.LeaderJobGrace), and a leader then hands leadership to another
// voter (bounded by the election timeout) so the cluster does not wait for
// an election. Then it stops the node's parts in the reverse order of
// their construction: new calls fail with ErrClosed, the membership,
// leadership and metrics goroutines end, raft shuts down, then the request
// clients, forwarded writes and reads, the transport, the listener and the
// stores. Close leaves no goroutine, listener or file lock behind: before
// raft shuts down it lets calls in flight on raft end (up to two election
// timeouts), because raft never resolves requests still queued when it
// shuts down. It is idempotent; later calls return the first call's
// result. Writes in flight end with ErrUnknownOutcome.
func (n *RaftNode) Close() error {
	n.closeOnce.Do(func() {
		// RunWhileLeader's functions end before leadership moves, so that
		// their last side effects precede the successor's first.
		n.runners.stopAll()
		// These two need the whole node running. The announcement comes
		// first, so that the peers also expect what a handover does to
		// their connections with this node.
		n.announceClose()
		if n.IsLeader() && n.hasOtherVoters() {
			ctx, cancel := context.WithTimeout(context.Background(), n.raft.ReloadableConfig().ElectionTimeout)
			if err := n.TransferLeadership(ctx, ""); err != nil {
				n.logger.Debug("leadership transfer before close failed", "error", err)
			}
			cancel()
		}
		if err := n.life.stop(); err != nil {
			n.closeErr = fmt.Errorf("raftkit: close: %w", err)
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
// leader changes it sees until the returned function stops it.
func (n *RaftNode) startMetrics() (stop func() error) {
	m := n.metrics.sink
	m.AddNode(n)
	ctx, cancel := context.WithCancel(context.Background())
	ch := n.WatchLeadership(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		last := ""
		for l := range ch {
			if l.LeaderID != "" && l.LeaderID != last {
				m.LeaderChanged(n.id)
				last = l.LeaderID
			}
		}
	}()
	return func() error {
		cancel()
		<-done
		m.RemoveNode(n)
		return nil
	}
}

// lifecycle is a node's parts in the order they were built, each with the
// function that stops it. Close stops them in reverse order, and a
// constructor that fails unwinds the same list, so every part that was
// built is stopped exactly once whichever way the node ends. Each stop
// function waits for its own part's goroutines. A part whose goroutines use
// raft is registered after raft, so that it stops while raft still runs.
//
// A lifecycle is not safe for concurrent use: the constructor builds it,
// and Close (once) stops it.
type lifecycle struct {
	parts []lifePart
	hooks *lifecycleHooks // tests only
}

type lifePart struct {
	name string
	stop func() error
}

// lifecycleHooks let tests watch a node's parts. added runs after each part
// is registered; an error from it fails the constructor there, as if the
// next step had failed. stopped runs after each part's stop function.
type lifecycleHooks struct {
	added   func(part string) error
	stopped func(part string)
}

// add registers a built part. An error (only ever from a test hook) means
// the constructor must fail now.
func (l *lifecycle) add(name string, stop func() error) error {
	l.parts = append(l.parts, lifePart{name: name, stop: stop})
	if l.hooks != nil && l.hooks.added != nil {
		return l.hooks.added(name)
	}
	return nil
}

// stop stops every part, last built first, and forgets them, so that a
// second call stops nothing. It returns the parts' errors, each prefixed
// with its part's name.
func (l *lifecycle) stop() error {
	parts := l.parts
	l.parts = nil
	var errs []error
	for i := len(parts) - 1; i >= 0; i-- {
		if err := parts[i].stop(); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", parts[i].name, err))
		}
		if l.hooks != nil && l.hooks.stopped != nil {
			l.hooks.stopped(parts[i].name)
		}
	}
	return errors.Join(errs...)
}

// crash stops n as a killed process would: raft shuts down first, so a
// leader hands nothing over and stops sending heartbeats at once; then
// Close releases the rest, in its usual order (with raft already down it
// skips the handover and the closing announcement). MemNetwork.StopNodes
// uses it; from outside, the same is Raft().Shutdown() then Close() (see
// Raft).
func (n *RaftNode) crash() error {
	_ = n.raft.Shutdown().Error() // idempotent; Close reports raft's shutdown error
	return n.Close()
}

// MetricsSink receives a node's measurements (Config.Metrics). The
// Prometheus one is package prom's Metrics; an application may give its
// own. Every method must be safe for concurrent use and return quickly:
// the node calls them on its write and read paths.
type MetricsSink interface {
	// AddNode and RemoveNode bracket the time n is open, so that the sink
	// may read n's Status when it reports.
	AddNode(n *RaftNode)
	RemoveNode(n *RaftNode)
	// Applied records one Apply or ApplyLocal on node id: path is "local"
	// (on the leader) or "forwarded" (from a follower); err is its error.
	Applied(id, path string, d time.Duration, err error)
	// ReadBarrier records one LinearizableRead on node id.
	ReadBarrier(id string, d time.Duration, err error)
	// LeaderChanged records that node id learned of a new leader.
	LeaderChanged(id string)
	// FSMError records a command applied through node id, as leader,
	// whose FSM response was an error.
	FSMError(id string)
}

// metrics is a node's MetricsSink, or none: its methods do nothing then.
type metrics struct{ sink MetricsSink }

// now is the start of a timed call: the zero time without a sink, so that
// calls do not read the clock for nothing.
func (m metrics) now() time.Time {
	if m.sink == nil {
		return time.Time{}
	}
	return time.Now()
}

func (m metrics) applied(id, path string, start time.Time, err error) {
	if m.sink != nil {
		m.sink.Applied(id, path, time.Since(start), err)
	}
}

func (m metrics) readBarrierDone(id string, start time.Time, err error) {
	if m.sink != nil {
		m.sink.ReadBarrier(id, time.Since(start), err)
	}
}

func (m metrics) fsmError(id string) {
	if m.sink != nil {
		m.sink.FSMError(id)
	}
}
