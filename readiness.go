package raftkit

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
)

// readyState owns what a node learns over its run about its own
// readiness (see Ready): whether it joined, the leader's commit index it
// must apply to be ready, and whether it has. The RaftNode methods below
// read and change it only through its methods.
type readyState struct {
	// joining is true from a join until this node has the configuration
	// that contains it and has caught up.
	joining atomic.Bool
	// index is the leader's commit index that this node must apply, in
	// this run, to be ready (0 until learned; see caughtUp).
	index   atomic.Uint64
	latched atomic.Bool
}

// startJoin marks the node as one that joins: configurations that do not
// list it do not make it a removed node until it has caught up.
func (r *readyState) startJoin() { r.joining.Store(true) }

// isJoining reports whether the node joined and has not caught up yet.
func (r *readyState) isJoining() bool { return r.joining.Load() }

// target is the index the node must apply to be ready (0 until learned).
func (r *readyState) target() uint64 { return r.index.Load() }

// learn sets the index the node must apply to be ready.
func (r *readyState) learn(index uint64) { r.index.Store(index) }

// caughtUp reports whether the node has applied its target; applied
// reports whether the FSM has applied an index. Once true, it stays so.
func (r *readyState) caughtUp(applied func(uint64) bool) bool {
	if r.latched.Load() {
		return true
	}
	idx := r.index.Load()
	if idx == 0 || !applied(idx) {
		return false
	}
	r.latched.Store(true)
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

// caughtUp reports whether this node has applied, in this run, the index
// the leader committed when this node first asked it after starting (or
// after joining): until then its FSM may lack writes that were
// acknowledged before it started, however healthy it looks otherwise. A
// node restarted with a log is not ready before it has applied its own
// log's committed entries, which that index covers. Once caught up, a
// node stays so for the rest of its run; health's apply-lag check covers
// later lag.
func (n *RaftNode) caughtUp() bool {
	return n.readyState.caughtUp(n.fsmCaughtUp)
}

// Ready reports whether this node serves as a member of its cluster, as
// health checks want to know: nil when it is open, in its cluster's
// configuration, a follower or the leader with a known leader, and has
// applied, in this run, what its leader had committed when the node first
// asked it after starting or joining (so a restarted node is not ready
// while it replays or receives what it missed). A node that is not ready
// may lack acknowledged writes: serve no stale reads from it.
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
		return notReady("has not yet heard from a leader since it started")
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

// awaitCatchUp learns, in the background, the commit index of the
// leader this node first hears from in this run (a read index, for which
// the leader confirms its leadership): the node is ready once it has
// applied that index (see caughtUp).
func (n *RaftNode) awaitCatchUp() {
	g := n.gate
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		for {
			if addr, _ := n.raft.LeaderWithID(); addr != "" {
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
					n.readyState.learn(idx)
					return
				}
			}
			select {
			case <-g.stop:
				return
			case <-time.After(readyPoll):
			}
		}
	}()
}
