package raftkit

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/hashicorp/raft"

	"github.com/raftkit/raftkit/internal/peer"
	"github.com/raftkit/raftkit/internal/port"
)

// DefaultJoinTimeout bounds how long a new node keeps asking Config.Join's
// members to add it.
const DefaultJoinTimeout = 30 * time.Second

// AddVoter adds a voting member, or changes its address if id is already a
// member elsewhere; it does nothing if id is already a voter at addr. Any
// node may call it: a follower forwards it to the leader.
//
// A voter counts toward the quorum at once, so the leader first checks
// that the node at addr answers as id, adds it as a non-voter, waits until
// its log has reached the leader's commit index, and only then makes it a
// voter: a mistyped address cannot cost the cluster its quorum. Give ctx
// a deadline long enough for the new node to receive the log (without
// one, Config.ApplyTimeout bounds the call). If the node never answers,
// answers as another ID, or does not catch up in time, AddVoter fails
// with an error that names the address and matches ErrNotApplied (or
// ErrInvalidRequest, for another ID): nothing changed, and the non-voter
// entry it may have made is removed again.
//
// If another ID holds addr (a member replaced by a new node at the same
// address), or id is a member at another address (a node that moved), that
// entry is removed once the node at addr has answered as id, and before the
// new one is added. A non-voter at addr is promoted once it has caught up.
//
// The change is committed when AddVoter returns nil. Failures are
// classified as for Apply: not applied (already retried within ctx),
// unknown outcome, invalid, not authorized or closed. ForceAddVoter adds a
// voter without the checks. During a rolling upgrade, a leader of a release
// before this check adds the voter at once, as ForceAddVoter does.
func (n *RaftNode) AddVoter(ctx context.Context, id, addr string) error {
	return n.changeMembership(ctx, peer.OpAddVoter, id, addr)
}

// ForceAddVoter adds a voting member at once, as AddVoter did before it
// checked its new voters: it neither waits for the node at addr to answer
// nor for it to catch up. It is for an operator who knows better, for
// example one who re-adds a member whose node is being rebuilt while the
// rest of the cluster can spare its vote. Like AddVoter it does nothing
// for a voter already at addr, and it removes an entry of another ID at
// addr, or of id at another address, before it adds id; unlike AddVoter
// it does so without asking who answers at addr.
//
// Its risk: the new voter counts toward the quorum from the moment it is
// added. If nothing answers at addr (a typo, a node not started), a
// one-node cluster never commits again (two votes of two are needed), and
// a larger one loses its quorum as soon as one more member is down; only
// RemoveServer on a quorum, or a recovery (see WriteRecovery), undoes it.
// Prefer AddVoter.
func (n *RaftNode) ForceAddVoter(ctx context.Context, id, addr string) error {
	return n.changeMembership(ctx, opForceAddVoter, id, addr)
}

// AddNonvoter adds a member that receives the log but does not vote (a read
// replica). Like AddVoter, it is idempotent and works from any node; a
// non-voter cannot cost the quorum, so it is added at once.
func (n *RaftNode) AddNonvoter(ctx context.Context, id, addr string) error {
	return n.changeMembership(ctx, peer.OpAddNonvoter, id, addr)
}

// RemoveServer removes member id from the cluster; removing an ID that is
// not a member does nothing. Any node may call it. hashicorp/raft shuts
// down only a leader that removes itself: a removed follower keeps
// running outside the configuration, is not ready (Ready and
// WaitForLeader say ErrRemoved) and, if added back without a restart, is
// ready again only once it has caught up with what its leader had
// committed after the re-add. Close a removed node that is not to come
// back.
func (n *RaftNode) RemoveServer(ctx context.Context, id string) error {
	return n.changeMembership(ctx, peer.OpRemove, id, "")
}

// TransferLeadership hands leadership to voter id ("" lets raft pick the
// most up-to-date voter) and returns when the transfer has been started and
// the leader has stepped down, or with an error. Any node may call it. On
// the leader, functions run by RunWhileLeader are stopped before the
// handover, so they never overlap with the next leader's. Transferring to
// the node that already leads does nothing and leaves its RunWhileLeader
// functions running. A transfer is retried only while no leader is known
// (or it could not be sent): once a leader has received it, leadership may
// have moved, and moving it again would not be what the caller asked.
func (n *RaftNode) TransferLeadership(ctx context.Context, id string) error {
	return n.changeMembership(ctx, peer.OpTransfer, id, "")
}

// opForceAddVoter is ForceAddVoter's operation. On the wire it is
// OpAddVoter with Force set, which leaders of earlier releases read as
// OpAddVoter, and added unchecked anyway.
const opForceAddVoter = "force-add-voter"

// membershipOps names the operations for errors.
var membershipOps = map[string]string{
	peer.OpAddVoter:    "add voter",
	opForceAddVoter:    "force add voter",
	peer.OpAddNonvoter: "add non-voter",
	peer.OpRemove:      "remove server",
	peer.OpTransfer:    "transfer leadership",
}

// changeMembership runs a membership operation on the leader, here or
// through one forward, retrying what was not applied within ctx.
func (n *RaftNode) changeMembership(ctx context.Context, op, id, addr string) error {
	what := membershipOps[op]
	if err := n.checkOpen(); err != nil {
		return err
	}
	switch op {
	case peer.OpAddVoter, opForceAddVoter, peer.OpAddNonvoter:
		if id == "" || addr == "" || strings.ContainsAny(id, "=\n") {
			return wrapErr(ErrInvalidRequest, what, fmt.Errorf("need a server ID without '=' and an address, got %q at %q", id, addr))
		}
	case peer.OpRemove:
		if id == "" {
			return wrapErr(ErrInvalidRequest, what, errors.New("empty server ID"))
		}
	}
	if err := doneErr(ctx, what); err != nil {
		return err
	}
	ctx, cancel := n.bound(ctx)
	defer cancel()
	again := retryable
	if op == peer.OpTransfer {
		again = func(err error) bool { return errors.Is(err, ErrNoLeader) }
	}
	for attempt := 0; ; attempt++ {
		var err error
		if n.IsLeader() {
			err = n.membershipHere(ctx, op, id, addr)
		} else {
			dl, _ := ctx.Deadline()
			var resp peer.MembershipResponse
			req := &peer.MembershipRequest{Op: op, ID: id, Addr: addr, Timeout: int64(time.Until(dl)), Secret: n.cfg.JoinSecret}
			if op == opForceAddVoter {
				req.Op, req.Force = peer.OpAddVoter, true
			}
			var leader string
			if leader, err = n.forward(ctx, what, peer.MethodMembership, req, &resp); err == nil {
				err = n.fromWire(leader, resp.Err)
			}
		}
		if err == nil || !again(err) || !n.backoff(ctx, attempt) {
			return err
		}
	}
}

// membershipHere runs a membership operation on this node, which must be
// the leader: it never forwards.
func (n *RaftNode) membershipHere(ctx context.Context, op, id, addr string) error {
	what := membershipOps[op]
	if err := n.checkOpen(); err != nil {
		return err
	}
	if err := doneErr(ctx, what); err != nil {
		return err
	}
	if !n.IsLeader() {
		return n.notLeader()
	}
	switch op {
	case peer.OpAddVoter:
		return n.addVoterChecked(ctx, id, addr)
	case opForceAddVoter:
		return n.addServer(ctx, id, addr, true)
	case peer.OpAddNonvoter:
		return n.addServer(ctx, id, addr, false)
	case peer.OpRemove:
		if id == "" {
			return wrapErr(ErrInvalidRequest, what, errors.New("empty server ID"))
		}
		if _, ok := n.server(id); !ok {
			return nil
		}
		return n.configError(what+" "+id, n.waitFuture(ctx, n.raft.RemoveServer(raft.ServerID(id), 0, n.timeLeft(ctx))))
	case peer.OpTransfer:
		return n.transferHere(ctx, id)
	}
	return wrapErr(ErrInvalidRequest, "membership request", fmt.Errorf("unknown operation %q", op))
}

// timeLeft is the time until ctx's deadline, which bound gave it.
func (n *RaftNode) timeLeft(ctx context.Context) time.Duration {
	dl, _ := ctx.Deadline()
	return max(time.Until(dl), time.Millisecond)
}

// transferHere hands leadership over from this node, the leader.
func (n *RaftNode) transferHere(ctx context.Context, id string) error {
	const what = "transfer leadership"
	var srv raft.Server
	if id != "" {
		var ok bool
		srv, ok = n.server(id)
		if !ok || srv.Suffrage != raft.Voter {
			return wrapErr(ErrInvalidRequest, what, fmt.Errorf("%q is not a voter of this cluster", id))
		}
		if id == n.id {
			return nil // already leads: nothing to do, runners keep running
		}
	}
	n.runners.pause(ctx)
	defer n.runners.resume()
	// Quiets the peers' "newer term" lines that follow a handover (see
	// departures).
	n.departures.handedOver.Store(true)
	for attempt := 0; ; attempt++ {
		var f raft.Future
		if id == "" {
			f = n.raft.LeadershipTransfer()
		} else {
			f = n.raft.LeadershipTransferToServer(srv.ID, srv.Address)
		}
		err := n.waitFuture(ctx, f)
		if err == nil || !n.IsLeader() || ctx.Err() != nil {
			if err != nil && n.IsLeader() {
				n.departures.handedOver.Store(false) // still leading: nothing was handed over
			}
			return n.configError(what, err)
		}
		// raft gave the transfer up (it could not reach the target, say
		// over a pooled connection to a restarted peer, or the target did
		// not take over in time) and this node leads on: leadership did
		// not move. Try again within ctx.
		if !n.backoff(ctx, attempt) {
			n.departures.handedOver.Store(false)
			return wrapErr(errTransferFailed, what, err)
		}
	}
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
				return annotate("leave", err)
			}
		}
		if err := n.waitOtherLeader(ctx); err != nil {
			return annotate("leave", err)
		}
		if err := n.RemoveServer(ctx, n.id); err != nil {
			return annotate("leave", err)
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
	return wrapErr(ErrNoLeader, "", ctx.Err())
}

// addServer adds id at addr on the leader, idempotently: the same ID and
// address is a no-op, the same ID at a new address is removed and added
// again, and another ID holding addr is removed first.
func (n *RaftNode) addServer(ctx context.Context, id, addr string, voter bool) error {
	timeout := n.timeLeft(ctx)
	f := n.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return n.configError("read configuration", err)
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
				return wrapErr(ErrInvalidRequest, "add server", fmt.Errorf("%s at %s would replace the leader itself (%s at %s)", id, addr, s.ID, s.Address))
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

// configError classifies a failed configuration change on the leader.
// Such a change, like a write, may still commit after a timeout.
func (n *RaftNode) configError(what string, err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		return unknownOutcome(what, err)
	}
	return classifyRaft(what, err, n.notLeader)
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
// until one succeeds, the join timeout passes or Config.JoinContext ends.
func (n *RaftNode) join() error {
	parent := n.cfg.JoinContext
	if parent == nil {
		parent = context.Background()
	}
	ctx, cancel := context.WithTimeout(parent, n.cfg.JoinTimeout)
	defer cancel()
	last := errors.New("no member other than this node to ask")
	for attempt := 0; ; attempt++ {
		for _, addr := range n.cfg.Join {
			if addr == n.addr {
				continue
			}
			via := addr
			err := n.joinVia(ctx, via)
			var nle *NotLeaderError
			if errors.As(err, &nle) && nle.LeaderAddr != "" && nle.LeaderAddr != addr && nle.LeaderAddr != n.addr {
				// Members do not forward: ask the leader they name.
				via = nle.LeaderAddr
				err = n.joinVia(ctx, via)
			}
			if err == nil {
				n.logger.Info("joined cluster", "via", via, "id", n.id)
				return nil
			}
			if errors.Is(err, ErrInvalidRequest) || errors.Is(err, ErrNotAuthorized) || errors.Is(err, ErrIncompatible) {
				return annotate("join via "+via, err)
			}
			last = fmt.Errorf("via %s: %s", via, bare(err))
			n.logger.Debug("join attempt failed", "via", via, "error", err)
		}
		select {
		case <-ctx.Done():
			if err := parent.Err(); err != nil {
				return wrapErr(ErrNoLeader, fmt.Sprintf("join %v", n.cfg.Join), fmt.Errorf("%w; last error: %s", err, last))
			}
			return wrapErr(ErrNoLeader, fmt.Sprintf("join %v within %s", n.cfg.Join, n.cfg.JoinTimeout), last)
		case <-time.After(min(100*time.Millisecond<<attempt, 2*time.Second)):
		}
	}
}

// joinVia asks the member at addr, once, to add this node as a voter.
// The leader may take the rest of the join's budget (ctx) to catch this
// node up: a snapshot of a large state, say.
func (n *RaftNode) joinVia(ctx context.Context, addr string) error {
	var resp peer.MembershipResponse
	req := &peer.MembershipRequest{Op: peer.OpAddVoter, ID: n.id, Addr: n.addr, Timeout: int64(n.timeLeft(ctx)), Secret: n.cfg.JoinSecret}
	err := n.rpc.Call(ctx, addr, peer.MethodMembership, req, &resp)
	var call *peer.CallError
	var incompatible *port.IncompatibleError
	switch {
	case err == nil:
		return n.fromWire(addr, resp.Err)
	case errors.As(err, &incompatible):
		return wrapErr(ErrIncompatible, "", fmt.Errorf("member %s", incompatible))
	case errors.As(err, &call) && !call.Sent:
		return wrapErr(ErrNoLeader, "", fmt.Errorf("member %s unreachable: %w", addr, call.Err))
	case errors.Is(err, ErrClosed):
		return err
	}
	return unknownOutcome("join", err)
}

// memberErr reports why this node cannot serve as a member: an error
// matching ErrInvalidConfig (its Peers disagree with its peers') or
// ErrRemoved; nil otherwise, including while it waits to receive a
// configuration.
func (n *RaftNode) memberErr() error {
	if err := n.gate.err(); err != nil {
		return err
	}
	if err := n.incompatibleErr(); err != nil {
		return err
	}
	if n.readyState.isJoining() {
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
	err := n.outsideErr(conf, list)
	n.gate.mu.Lock()
	n.gate.logOnce("removed", func() {
		n.logger.Error("this node is not in its cluster's configuration", "id", n.id, "configuration", list, "error", err)
	})
	n.gate.mu.Unlock()
	return err
}

// incompatibleErr is an error matching ErrIncompatible when this node
// refuses (the peers lack what it requires, or are too old) so many of its
// cluster's other voters that the rest cannot form a quorum with it: it
// could then never serve, and says so at once rather than wait.
func (n *RaftNode) incompatibleErr() error {
	var addrs []string
	for _, s := range n.raft.GetConfiguration().Configuration().Servers {
		if s.Suffrage == raft.Voter {
			addrs = append(addrs, string(s.Address))
		}
	}
	if len(addrs) == 0 {
		for _, p := range n.cfg.peers {
			addrs = append(addrs, p.Addr)
		}
	}
	var refused []string
	for _, a := range addrs {
		if st, ok := n.mux.Peer(a); ok && a != n.addr && st.Refused != "" && st.Ours {
			refused = append(refused, a+": "+st.Refused)
		}
	}
	if len(refused) == 0 || len(addrs)-len(refused) >= len(addrs)/2+1 {
		return nil
	}
	return wrapErr(ErrIncompatible, "", fmt.Errorf("this node refuses %d of its cluster's %d voters (%s); upgrade them to a release that speaks what this node requires",
		len(refused), len(addrs), strings.Join(refused, "; ")))
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
