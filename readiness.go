package raftkit

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
)

// readyState owns what a node learns over its run about its own
// readiness (see Ready): whether it joined, the leader's commit index it
// must apply to be ready (its target), whether it has, and whether it is
// in the configuration it has seen. The RaftNode methods below read and
// change it only through its methods.
//
// Readiness follows membership. A configuration that does not list the
// node, stored in its log (the removal reaches a removed follower before
// it is committed, and hashicorp/raft keeps that follower running) or
// applied, resets it: the target and the latch are dropped. The node is
// back once it has applied a configuration that lists it again (or
// restored a snapshot of one); only then does it learn a new target, so
// that it is ready once it has applied what its leader had committed
// after the re-add.
type readyState struct {
	// joining is true from a join until this node has the configuration
	// that contains it and has caught up.
	joining atomic.Bool
	// wake tells the catch-up probe that a target is wanted.
	wake chan struct{}

	mu sync.Mutex
	// index is the leader's commit index that this node must apply to be
	// ready (0 until learned; see caughtUp).
	index   uint64
	latched bool
	// leftAt is the index of the latest configuration seen that does not
	// list this node, backAt that of the latest applied one that does:
	// the node is out while leftAt > backAt.
	leftAt, backAt uint64
	// leftApplied is true when the configuration at leftAt was applied,
	// not only stored (and so cannot be truncated away).
	leftApplied bool
	// epoch counts resets: a target learned across one is stale.
	epoch uint64
}

func newReadyState() *readyState {
	return &readyState{wake: make(chan struct{}, 1)}
}

// startJoin marks the node as one that joins: configurations that do not
// list it do not make it a removed node until it has caught up.
func (r *readyState) startJoin() { r.joining.Store(true) }

// isJoining reports whether the node joined and has not caught up yet.
func (r *readyState) isJoining() bool { return r.joining.Load() }

// target is the index the node must apply to be ready (0 until learned).
func (r *readyState) target() uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.index
}

// wanted reports whether the node needs a target (it is in, has none and
// has not caught up), and the epoch to learn it in.
func (r *readyState) wanted() (bool, uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.leftAt <= r.backAt && r.index == 0 && !r.latched, r.epoch
}

// learn sets the target learned in epoch, unless a reset came since.
func (r *readyState) learn(epoch, index uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.epoch == epoch && r.leftAt <= r.backAt {
		r.index = index
	}
}

// resetLocked drops the target and the latch.
func (r *readyState) resetLocked() {
	r.index, r.latched = 0, false
	r.epoch++
}

// askTarget wakes the catch-up probe.
func (r *readyState) askTarget() {
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// configuration notes that the node stored (applied false) or applied
// the configuration at index, which lists the node or not (in).
func (r *readyState) configuration(index uint64, in, applied bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	switch {
	case !in && index > r.backAt:
		if index >= r.leftAt {
			r.leftAt, r.leftApplied = index, applied
		}
		r.resetLocked()
	case in && applied && index > r.backAt:
		out := r.leftAt > r.backAt
		r.backAt = index
		if out && r.leftAt <= r.backAt {
			r.resetLocked() // back: a target learned from now on
			r.askTarget()
		}
	}
}

// truncated notes that the log lost the entries from min to max. When a
// configuration that left the node out, stored but never applied, goes
// with them, the node is in again (the cluster never committed it) and
// learns a new target.
func (r *readyState) truncated(min, max uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.leftAt > r.backAt && !r.leftApplied && min <= r.leftAt && r.leftAt <= max {
		r.leftAt = 0
		r.resetLocked()
		r.askTarget()
	}
}

// caughtUp reports whether the node is in and has applied its target;
// applied reports whether the FSM has applied an index. Once true, it
// stays so until the node leaves the configuration.
func (r *readyState) caughtUp(applied func(uint64) bool) bool {
	r.mu.Lock()
	if r.leftAt > r.backAt {
		r.mu.Unlock()
		return false
	}
	if r.latched {
		r.mu.Unlock()
		return true
	}
	idx, epoch := r.index, r.epoch
	r.mu.Unlock()
	if idx == 0 || !applied(idx) {
		return false
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.epoch != epoch {
		return false
	}
	r.latched = true
	r.joining.Store(false)
	return true
}

// readyPoll is how often WaitForLeader rechecks membership and catch-up.
const readyPoll = 20 * time.Millisecond

// ready reports whether this node is a member that serves: its
// configuration contains it, and it has caught up in this run (see
// caughtUp).
func (n *RaftNode) ready() bool {
	return n.inConfiguration(n.raft.GetConfiguration().Configuration()) && n.caughtUp()
}

// caughtUp reports whether this node has applied the index the leader
// had committed when this node first asked it after starting (or after
// joining, or after being added back to the configuration): until then
// its FSM may lack writes that were acknowledged before, however healthy
// it looks otherwise. A node restarted with a log is not ready before it
// has applied its own log's committed entries, which that index covers.
// Once caught up, a node stays so until it leaves the configuration (see
// readyState); health's apply-lag check covers later lag.
func (n *RaftNode) caughtUp() bool {
	return n.readyState.caughtUp(n.fsmCaughtUp)
}

// Ready reports whether this node serves as a member of its cluster, as
// health checks want to know: nil when it is open, in its cluster's
// configuration, a follower or the leader with a known leader, and has
// applied what its leader had committed when the node first asked it
// after starting, joining or being added back to the configuration (so a
// restarted or re-added node is not ready while it replays or receives
// what it missed). A node that leaves the configuration loses its
// readiness at once. A node that is not ready may lack acknowledged
// writes: serve no stale reads from it.
// Otherwise the error says why: ErrClosed, an error matching ErrRemoved or
// ErrInvalidConfig (see Status.MembershipError), or one matching
// ErrNotReady. It does not block.
func (n *RaftNode) Ready() error {
	_, err := n.status()
	return err
}

// readiness is Ready's verdict on a member's status.
func readiness(st Status) error {
	notReady := func(why string) error { return wrapErr(ErrNotReady, "", errors.New(why)) }
	switch {
	case st.State == raft.Shutdown.String():
		return notReady("raft has shut down (was the node removed from the cluster?)")
	case !slices.ContainsFunc(st.Servers, func(s ServerInfo) bool { return s.ID == st.ID }):
		return notReady("not a member of any cluster configuration")
	case st.LeaderID == "":
		return notReady("no known leader")
	case st.State != raft.Leader.String() && st.State != raft.Follower.String():
		return notReady("node is a " + st.State)
	case st.Joining:
		return notReady("joined, but has not yet applied what the cluster had committed when it joined")
	case st.CatchingUp && st.CatchUpIndex == 0:
		return notReady("has not yet learned its leader's commit index since it started or was added back")
	case st.CatchingUp:
		return notReady(fmt.Sprintf("catching up: applied index %d of the %d the leader had committed", st.AppliedIndex, st.CatchUpIndex))
	}
	return nil
}

// waitReadyLeader is WaitForLeader.
func (n *RaftNode) waitReadyLeader(ctx context.Context) (string, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ch := n.WatchLeadership(ctx)
	t := time.NewTicker(readyPoll)
	defer t.Stop()
	for {
		if err := n.memberErr(); err != nil {
			return "", err
		}
		if addr := n.GetLeaderAddr(); addr != "" && n.ready() {
			return addr, nil
		}
		select {
		case _, ok := <-ch:
			if !ok {
				if err := n.checkOpen(); err != nil {
					return "", err
				}
				return "", wrapErr(ErrNoLeader, "wait for leader", ctx.Err())
			}
		case <-t.C:
		}
	}
}

// awaitCatchUp learns, in the background, the node's target whenever it
// needs one (after it starts, and again after it is added back to the
// configuration): the commit index of the leader it hears from (a read
// index, for which the leader confirms its leadership). The node is ready
// once it has applied that index (see caughtUp).
func (n *RaftNode) awaitCatchUp() {
	g := n.gate
	r := n.readyState
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		for {
			if want, epoch := r.wanted(); !want {
				select {
				case <-g.stop:
					return
				case <-r.wake:
				}
				continue
			} else if addr, _ := n.raft.LeaderWithID(); addr != "" {
				ctx, cancel := g.stopContext(agreementProbeTimeout)
				var idx uint64
				var err error
				if string(addr) == n.addr {
					idx, err = n.leaderReadIndex(ctx)
				} else {
					idx, err = n.readIndexFrom(ctx, "catch-up index", string(addr))
				}
				cancel()
				if err == nil && idx > 0 {
					r.learn(epoch, idx)
					continue
				}
			}
			select {
			case <-g.stop:
				return
			case <-r.wake:
			case <-time.After(readyPoll):
			}
		}
	}()
}

// listed reports whether conf lists the server id.
func listed(conf raft.Configuration, id string) bool {
	return slices.ContainsFunc(conf.Servers, func(s raft.Server) bool { return string(s.ID) == id })
}

// membershipLog is the log store as raft sees it: it tells the node's
// readiness of every configuration stored (a removed follower stores the
// configuration that removed it, but may never learn that it committed)
// and of every truncation.
type membershipLog struct {
	raft.LogStore
	id    string
	ready *readyState
}

// watchMembership returns logs behind a membershipLog.
func watchMembership(logs raft.LogStore, id string, ready *readyState) raft.LogStore {
	return &membershipLog{LogStore: logs, id: id, ready: ready}
}

func (m *membershipLog) StoreLog(l *raft.Log) error { return m.StoreLogs([]*raft.Log{l}) }

func (m *membershipLog) StoreLogs(logs []*raft.Log) error {
	if err := m.LogStore.StoreLogs(logs); err != nil {
		return err
	}
	for _, l := range logs {
		if l.Type == raft.LogConfiguration {
			m.ready.configuration(l.Index, listed(raft.DecodeConfiguration(l.Data), m.id), false)
		}
	}
	return nil
}

func (m *membershipLog) DeleteRange(min, max uint64) error {
	if err := m.LogStore.DeleteRange(min, max); err != nil {
		return err
	}
	m.ready.truncated(min, max)
	return nil
}

// IsMonotonic passes the store's raft.MonotonicLogStore answer through.
func (m *membershipLog) IsMonotonic() bool {
	s, ok := m.LogStore.(raft.MonotonicLogStore)
	return ok && s.IsMonotonic()
}
