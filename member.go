package raftkit

import (
	"context"
	"fmt"

	"github.com/hashicorp/raft"
)

// What a node knows of its own membership, and how it says so.

// IsMember reports whether this node's latest configuration lists it, as
// a voter or a non-voter: it has been bootstrapped or added, and not
// removed since (as far as it has heard). An application that adds its
// nodes itself (AddVoter from a member, say) can skip that step for a
// node that restarts as a member. It does not block.
func (n *RaftNode) IsMember() bool {
	f := n.raft.GetConfiguration()
	return f.Error() == nil && n.inConfiguration(f.Configuration())
}

// callMemberErr is memberErr for a write or a read, which needs a leader:
// a node that started without Peers or Join, and that no configuration
// lists, fails after one heartbeat timeout (within ctx) rather than wait
// out ctx for a leader that only adding it can give it. A leader that has
// just added it reaches it within that time.
func (n *RaftNode) callMemberErr(ctx context.Context) error {
	if err := n.memberErr(); err != nil {
		return err
	}
	if len(n.cfg.peers) > 0 || len(n.cfg.Join) > 0 {
		return nil
	}
	heard := func() bool { return n.GetLeaderAddr() != "" || n.IsMember() }
	if heard() {
		return nil
	}
	grace, cancel := context.WithTimeout(ctx, n.raft.ReloadableConfig().HeartbeatTimeout)
	defer cancel()
	for sleepCtx(grace, readyPoll) {
		if heard() {
			return nil
		}
	}
	if heard() || ctx.Err() != nil {
		return nil // the caller's own wait reports an ended ctx
	}
	return wrapErr(ErrNotApplied, "", fmt.Errorf("not a member of any cluster configuration: %s (at %s) started without Peers or Join and waits to be added (AddVoter or AddNonvoter on a member)", n.id, n.addr))
}

// outsideErr is memberErr's error for a node whose latest configuration,
// list, does not contain it. If the configuration lists this node's
// address under another ID, the node was not removed: it restarted with a
// different ID.
func (n *RaftNode) outsideErr(conf raft.Configuration, list []string) error {
	for _, s := range conf.Servers {
		if string(s.Address) == n.addr && string(s.ID) != n.id {
			return wrapErr(ErrRemoved, "", fmt.Errorf("this node's ID changed: it started with ID %q, but its configuration %v holds its address %s as %q; restart it with ID %q (Config.ID must not change across restarts), or wipe its Dir to join as a new member",
				n.id, list, n.addr, s.ID, s.ID))
		}
	}
	return wrapErr(ErrRemoved, "", fmt.Errorf("%s is not in the latest configuration %v (it was removed); to bring it back, restart it with Join (or add it with AddVoter), or wipe its Dir", n.id, list))
}
