package raftkit

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/hashicorp/raft"

	"github.com/raftkit/raftkit/internal/wire"
)

// DefaultJoinTimeout bounds how long a new node keeps asking Config.Join's
// members to add it.
const DefaultJoinTimeout = 30 * time.Second

// AddVoter adds a voting member, or changes its address if id is already a
// member elsewhere; it does nothing if id is already a voter at addr. Any
// node may call it: a follower forwards it to the leader. The change is
// committed when AddVoter returns nil.
func (n *RaftNode) AddVoter(ctx context.Context, id, addr string) error {
	return n.changeMembership(ctx, wire.OpAddVoter, id, addr)
}

// AddNonvoter adds a member that receives the log but does not vote (a read
// replica). Like AddVoter, it is idempotent and works from any node.
func (n *RaftNode) AddNonvoter(ctx context.Context, id, addr string) error {
	return n.changeMembership(ctx, wire.OpAddNonvoter, id, addr)
}

// RemoveServer removes member id from the cluster; removing an ID that is
// not a member does nothing. Any node may call it. A removed node's raft
// shuts down when it learns of its removal; Close it.
func (n *RaftNode) RemoveServer(ctx context.Context, id string) error {
	if id == "" {
		return fmt.Errorf("%w: RemoveServer: empty server ID", errInvalidRequest)
	}
	if !n.IsLeader() {
		return n.changeMembership(ctx, wire.OpRemove, id, "")
	}
	ctx, cancel, timeout := n.bound(ctx)
	defer cancel()
	if _, ok := n.server(id); !ok {
		return nil
	}
	return n.configError("remove "+id, n.waitFuture(ctx, n.raft.RemoveServer(raft.ServerID(id), 0, timeout)))
}

// TransferLeadership hands leadership to voter id ("" lets raft pick the
// most up-to-date voter) and returns when the transfer has been started and
// this leader has stepped down, or with an error. Any node may call it. On
// the leader, functions run by RunWhileLeader are stopped before the
// handover, so they never overlap with the next leader's.
func (n *RaftNode) TransferLeadership(ctx context.Context, id string) error {
	if err := n.checkOpen(); err != nil && !n.IsLeader() {
		return err
	}
	if !n.IsLeader() {
		return n.changeMembership(ctx, wire.OpTransfer, id, "")
	}
	ctx, cancel, _ := n.bound(ctx)
	defer cancel()
	n.runners.pause(ctx)
	defer n.runners.resume()
	var f raft.Future
	if id == "" {
		n.departures.handedOver.Store(true)
		f = n.raft.LeadershipTransfer()
	} else {
		srv, ok := n.server(id)
		if !ok || srv.Suffrage != raft.Voter {
			return fmt.Errorf("%w: transfer leadership: %q is not a voter of this cluster", errInvalidRequest, id)
		}
		if id == n.id {
			return nil
		}
		n.departures.handedOver.Store(true)
		f = n.raft.LeadershipTransferToServer(srv.ID, srv.Address)
	}
	if err := n.waitFuture(ctx, f); err != nil {
		if n.IsLeader() {
			n.departures.handedOver.Store(false) // still leading: nothing was handed over
		}
		return fmt.Errorf("raftkit: transfer leadership: %w", n.closedOr(err))
	}
	return nil
}

// Leave removes this node from the cluster and closes it: a leader first
// hands leadership to another voter, then the leader removes this node.
// The last voter of a cluster cannot leave; Leave then only closes it.
func (n *RaftNode) Leave(ctx context.Context) error {
	if err := n.checkOpen(); err != nil {
		return err
	}
	if n.hasOtherVoters() {
		if n.IsLeader() {
			if err := n.TransferLeadership(ctx, ""); err != nil {
				return fmt.Errorf("raftkit: leave: %w", err)
			}
		}
		if err := n.waitOtherLeader(ctx); err != nil {
			return fmt.Errorf("raftkit: leave: %w", err)
		}
		if err := n.RemoveServer(ctx, n.id); err != nil {
			return fmt.Errorf("raftkit: leave: %w", err)
		}
	}
	return n.Close()
}

// waitOtherLeader waits until a leader other than this node is known.
func (n *RaftNode) waitOtherLeader(ctx context.Context) error {
	for l := range n.WatchLeadership(ctx) {
		if l.LeaderAddr != "" && !l.IsLeader {
			return nil
		}
	}
	if err := n.checkOpen(); err != nil {
		return err
	}
	return fmt.Errorf("%w: %w", ErrNoLeader, ctx.Err())
}

// changeMembership runs a membership operation here if this node leads, or
// forwards it to the leader.
func (n *RaftNode) changeMembership(ctx context.Context, op, id, addr string) error {
	if err := n.checkOpen(); err != nil {
		return err
	}
	if op == wire.OpAddVoter || op == wire.OpAddNonvoter {
		if id == "" || addr == "" || strings.ContainsAny(id, "=\n") {
			return fmt.Errorf("%w: %s: need a server ID without '=' and an address, got %q at %q", errInvalidRequest, op, id, addr)
		}
	}
	if n.IsLeader() {
		switch op {
		case wire.OpAddVoter:
			return n.addServer(ctx, id, addr, true)
		case wire.OpAddNonvoter:
			return n.addServer(ctx, id, addr, false)
		case wire.OpRemove:
			return n.RemoveServer(ctx, id)
		case wire.OpTransfer:
			return n.TransferLeadership(ctx, id)
		}
	}
	ctx, cancel, timeout := n.bound(ctx)
	defer cancel()
	var resp wire.MembershipResponse
	err := n.forward(ctx, wire.MethodMembership, &wire.MembershipRequest{Op: op, ID: id, Addr: addr, Timeout: int64(timeout), Secret: n.cfg.JoinSecret}, &resp, false)
	if errors.Is(err, errLeaderIsSelf) {
		if n.IsLeader() {
			return n.changeMembership(ctx, op, id, addr)
		}
		return n.notLeader()
	}
	if err != nil {
		return err
	}
	return fromWire(resp.Err)
}

// addServer adds id at addr on the leader, idempotently: the same ID and
// address is a no-op, the same ID at a new address is removed and added
// again, and another ID holding addr is removed first.
func (n *RaftNode) addServer(ctx context.Context, id, addr string, voter bool) error {
	if !n.IsLeader() {
		op := wire.OpAddNonvoter
		if voter {
			op = wire.OpAddVoter
		}
		return n.changeMembership(ctx, op, id, addr)
	}
	ctx, cancel, timeout := n.bound(ctx)
	defer cancel()
	f := n.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return fmt.Errorf("raftkit: read configuration: %w", n.closedOr(err))
	}
	for _, s := range f.Configuration().Servers {
		sameID, sameAddr := string(s.ID) == id, string(s.Address) == addr
		switch {
		case sameID && sameAddr && (s.Suffrage == raft.Voter) == voter:
			return nil
		case sameID && sameAddr && s.Suffrage == raft.Staging && voter:
			return nil
		case sameID && sameAddr && !voter && s.Suffrage == raft.Voter:
			// Demoting a voter to a non-voter.
			return n.configError("demote "+id, n.waitFuture(ctx, n.raft.DemoteVoter(s.ID, 0, timeout)))
		case sameID && sameAddr:
			// Promotion: AddVoter below.
		case sameID || sameAddr:
			if string(s.ID) == n.id {
				return fmt.Errorf("%w: %s at %s would replace the leader itself (%s at %s)", errInvalidRequest, id, addr, s.ID, s.Address)
			}
			if err := n.waitFuture(ctx, n.raft.RemoveServer(s.ID, 0, timeout)); err != nil {
				return n.configError("remove "+string(s.ID)+" before re-adding", err)
			}
		}
	}
	var af raft.IndexFuture
	if voter {
		af = n.raft.AddVoter(raft.ServerID(id), raft.ServerAddress(addr), 0, timeout)
	} else {
		af = n.raft.AddNonvoter(raft.ServerID(id), raft.ServerAddress(addr), 0, timeout)
	}
	return n.configError("add "+id, n.waitFuture(ctx, af))
}

// configError wraps a failed configuration change. Such a change, like a
// write, may still commit after a timeout.
func (n *RaftNode) configError(what string, err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, raft.ErrNotLeader):
		return n.notLeader()
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled), errors.Is(err, raft.ErrLeadershipLost):
		return fmt.Errorf("raftkit: %s: %w: %w", what, ErrUnknownOutcome, err)
	}
	return fmt.Errorf("raftkit: %s: %w", what, n.closedOr(err))
}

// server looks id up in the latest configuration.
func (n *RaftNode) server(id string) (raft.Server, bool) {
	f := n.raft.GetConfiguration()
	if f.Error() != nil {
		return raft.Server{}, false
	}
	for _, s := range f.Configuration().Servers {
		if string(s.ID) == id {
			return s, true
		}
	}
	return raft.Server{}, false
}

// join asks Config.Join's members, in turn, to add this node as a voter,
// until one succeeds or the join timeout passes.
func (n *RaftNode) join() error {
	ctx, cancel := context.WithTimeout(context.Background(), n.cfg.JoinTimeout)
	defer cancel()
	var last error
	for attempt := 0; ; attempt++ {
		for _, addr := range n.cfg.Join {
			if addr == n.addr {
				continue
			}
			callCtx, callCancel := context.WithTimeout(ctx, n.cfg.ApplyTimeout)
			var resp wire.MembershipResponse
			req := &wire.MembershipRequest{Op: wire.OpAddVoter, ID: n.id, Addr: n.addr, Timeout: int64(n.cfg.ApplyTimeout), Secret: n.cfg.JoinSecret}
			sent, err := n.rpc.call(callCtx, addr, wire.MethodMembership, req, &resp)
			callCancel()
			switch {
			case err == nil:
				err = fromWire(resp.Err)
			case !sent:
				err = fmt.Errorf("%w: member %s unreachable: %w", ErrNoLeader, addr, err)
			}
			if err == nil {
				n.logger.Info("joined cluster", "via", addr, "id", n.id)
				return nil
			}
			if errors.Is(err, errInvalidRequest) || errors.Is(err, ErrNotAuthorized) {
				return fmt.Errorf("raftkit: join via %s: %w", addr, err)
			}
			last = fmt.Errorf("via %s: %w", addr, err)
			n.logger.Debug("join attempt failed", "via", addr, "error", err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("raftkit: join %v within %s failed; last error %w", n.cfg.Join, n.cfg.JoinTimeout, last)
		case <-time.After(min(100*time.Millisecond<<attempt, 2*time.Second)):
		}
	}
}
