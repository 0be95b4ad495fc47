package raftkit

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/hashicorp/raft"

	"github.com/raftkit/raftkit/internal/peer"
)

// readyPoll is how often WaitForLeader rechecks membership and catch-up.
const readyPoll = 20 * time.Millisecond

// memberErr reports why this node cannot serve as a member: an error
// matching ErrInvalidConfig (its Peers disagree with its peers') or
// ErrRemoved; nil otherwise, including while it waits to receive a
// configuration.
func (n *RaftNode) memberErr() error {
	if err := n.gate.err(); err != nil {
		return err
	}
	if n.joining.Load() {
		return nil
	}
	conf := n.raft.GetConfiguration().Configuration()
	var list []string
	switch {
	case len(conf.Servers) > 0 && !n.inConfiguration(conf):
		list = serverEntries(conf)
	case len(conf.Servers) == 0 && len(n.gate.outsideOf()) > 0:
		// A fresh node whose Peers match a cluster that no longer
		// counts it in: it waits in vain unless it is added.
		list = n.gate.outsideOf()
	default:
		return nil
	}
	n.gate.mu.Lock()
	n.gate.logOnce("removed", func() {
		n.logger.Error("this node is not in its cluster's configuration: it was removed; restart it with Join (or add it with AddVoter) to bring it back",
			"id", n.id, "configuration", list)
	})
	n.gate.mu.Unlock()
	return wrapErr(ErrRemoved, "", fmt.Errorf("%s is not in the latest configuration %v (it was removed); to bring it back, restart it with Join (or add it with AddVoter), or wipe its Dir", n.id, list))
}

// removedFromConfiguration reports whether this node has a configuration
// that does not contain it.
func (n *RaftNode) removedFromConfiguration() bool {
	conf := n.raft.GetConfiguration().Configuration()
	return len(conf.Servers) > 0 && !n.inConfiguration(conf)
}

func (n *RaftNode) inConfiguration(conf raft.Configuration) bool {
	for _, s := range conf.Servers {
		if string(s.ID) == n.id {
			return true
		}
	}
	return false
}

// ready reports whether this node is a member that serves: its
// configuration contains it and, after a join, it has applied the index
// the leader had committed after adding it.
func (n *RaftNode) ready() bool {
	if !n.inConfiguration(n.raft.GetConfiguration().Configuration()) {
		return false
	}
	if !n.joining.Load() {
		return true
	}
	idx := n.joinIndex.Load()
	if idx == 0 || !n.fsmCaughtUp(idx) {
		return false
	}
	n.joining.Store(false)
	return true
}

// Ready reports whether this node serves as a member of its cluster, as
// health checks want to know: nil when it is open, in its cluster's
// configuration, a follower or the leader with a known leader, and, after
// a join, has applied what the cluster had committed when it joined.
// Otherwise the error says why: ErrClosed, an error matching ErrRemoved or
// ErrInvalidConfig (see Status.MembershipError), or one matching
// ErrNotReady. It does not block.
func (n *RaftNode) Ready() error {
	if err := n.checkOpen(); err != nil {
		return err
	}
	if err := n.memberErr(); err != nil {
		return err
	}
	return readiness(n.Status())
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

// awaitJoinIndex marks a node that has just joined as joining and learns,
// in the background, the leader's commit index: the node is ready once it
// has applied that index.
func (n *RaftNode) awaitJoinIndex() {
	n.joining.Store(true)
	g := n.gate
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		for {
			if addr, _ := n.raft.LeaderWithID(); addr != "" {
				if string(addr) == n.addr {
					n.joinIndex.Store(max(n.raft.CommitIndex(), 1))
					return
				}
				ctx, cancel := g.stopContext(agreementProbeTimeout)
				var resp peer.ReadIndexResponse
				err := n.rpc.Call(ctx, string(addr), peer.MethodReadIndex, &peer.ReadIndexRequest{Timeout: int64(agreementProbeTimeout)}, &resp)
				cancel()
				if err == nil && resp.Err == nil && resp.Index > 0 {
					n.joinIndex.Store(resp.Index)
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
