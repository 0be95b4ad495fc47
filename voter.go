package raftkit

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/hashicorp/raft"

	"github.com/raftkit/raftkit/internal/peer"
)

// A voter counts toward the quorum from the moment the configuration that
// adds it is in the leader's log. Added at an address where nothing
// answers (a typo), it can never vote: a one-node cluster then needs two
// votes of two and never commits again, and a larger one loses its quorum
// as soon as one more member is down. So AddVoter, on the leader, first
// asks the node at the address who it is, adds it as a non-voter, waits
// until its log holds the configuration that adds it and reaches the
// leader's commit index, and only then promotes it (etcd's learners,
// Consul's autopilot). What the leader can observe of a follower is what
// the follower says: raft keeps its match indexes to itself. The leader
// asks with the bootstrap comparison request, which every release serves
// (its answer names the node, its latest configuration and, since this
// release, its last log index), over the node port it already uses.

// voterProbe is how often the leader asks a new voter how far it has come.
const voterProbe = 50 * time.Millisecond

// addVoterChecked adds id at addr as a voter, on the leader, as described
// above. A voter already at addr is left alone; a non-voter at addr is
// promoted once it has caught up. If the node never answers as id, or
// never catches up before ctx ends, the non-voter entry added for it is
// removed again and the error, not applied, says so.
func (n *RaftNode) addVoterChecked(ctx context.Context, id, addr string) error {
	what := fmt.Sprintf("add voter %s at %s", id, addr)
	f := n.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return n.configError("read configuration", err)
	}
	wasNonvoter := false
	var displaced []string // entries the non-voter replaces
	for _, s := range f.Configuration().Servers {
		sameID, sameAddr := string(s.ID) == id, string(s.Address) == addr
		switch {
		case sameID && sameAddr && s.Suffrage != raft.Nonvoter:
			return nil
		case sameID && sameAddr:
			wasNonvoter = true
		case sameID || sameAddr:
			displaced = append(displaced, string(s.ID)+"="+string(s.Address))
		}
	}
	wait, cancel := context.WithDeadline(ctx, answerBy(ctx))
	defer cancel()
	start := time.Now()
	unchanged := func(format string, args ...any) error {
		return wrapErr(ErrNotApplied, what, fmt.Errorf(format+"; the configuration is unchanged", args...))
	}
	// Who answers at addr? Nothing is changed before someone does, as id.
	var resp *peer.BootstrapResponse
	var last error
	for resp == nil {
		resp, last = n.askNode(wait, addr)
		if resp != nil && resp.ID != id {
			return wrapErr(ErrInvalidRequest, what, fmt.Errorf("the node at %s is %q, not %q; the configuration is unchanged", addr, resp.ID, id))
		}
		if resp == nil && !sleepCtx(wait, voterProbe) {
			return unchanged("no raftkit node answered at %s within %s (%v)", addr, time.Since(start).Round(time.Millisecond), last)
		}
		if !n.IsLeader() {
			return n.notLeader() // nothing changed; the caller retries on the new leader
		}
	}
	if !wasNonvoter {
		n.logger.Info("adding a voter as a non-voter until it has caught up", "id", id, "addr", addr)
		if err := n.addServer(ctx, id, addr, false); err != nil {
			return err
		}
	}
	target := n.raft.CommitIndex()
	var want []string // the leader's latest configuration
	caughtUp := func() bool {
		want = nil
		if f := n.raft.GetConfiguration(); f.Error() == nil {
			want = serverEntries(f.Configuration())
		}
		return voterCaughtUp(resp, id, want, target)
	}
	for !caughtUp() {
		if !sleepCtx(wait, voterProbe) {
			why, changed := n.undoNonvoter(ctx, id, wasNonvoter, displaced)
			class := ErrNotApplied
			if changed {
				class = ErrUnknownOutcome
			}
			return wrapErr(class, what, fmt.Errorf("the node at %s %s within %s; %s",
				addr, progress(resp, last, id, want, target), time.Since(start).Round(time.Millisecond), why))
		}
		if !n.IsLeader() {
			// The next leader finds the non-voter and goes on from there
			// when the caller retries.
			return n.notLeader()
		}
		var r *peer.BootstrapResponse
		if r, last = n.askNode(wait, addr); r != nil {
			resp = r
		}
	}
	n.logger.Info("promoting a caught-up non-voter to voter", "id", id, "addr", addr, "last_index", resp.LastIndex, "commit_index", target)
	return n.addServer(ctx, id, addr, true)
}

// answerBy is when a checked add stops waiting for the new node: early
// enough before ctx's deadline (which bound set) to remove its non-voter
// entry again and to answer a follower that forwarded the request, whose
// own deadline is the same.
func answerBy(ctx context.Context) time.Time {
	dl, _ := ctx.Deadline()
	return dl.Add(-min(max(time.Until(dl)/5, 10*time.Millisecond), 2*time.Second))
}

// askNode asks the node at addr who it is and how far its log has come;
// nil and the reason if it does not answer.
func (n *RaftNode) askNode(ctx context.Context, addr string) (*peer.BootstrapResponse, error) {
	req := &peer.BootstrapRequest{ID: n.id, Addr: n.addr, Peers: n.gate.probeList()}
	var resp peer.BootstrapResponse
	if err := n.rpc.Call(ctx, addr, peer.MethodBootstrap, req, &resp); err != nil {
		return nil, err
	}
	return &resp, nil
}

// voterCaughtUp reports whether the node's answer shows a log that holds
// the leader's latest configuration, want (which lists the node: the
// configuration of another cluster, even one listing the node, does not
// match), and reaches target. A node of a release that does not report
// its last index is judged by the configuration alone, which it holds
// only once its log has reached the entry that added it.
func voterCaughtUp(resp *peer.BootstrapResponse, id string, want []string, target uint64) bool {
	return resp.ID == id && want != nil && slices.Equal(resp.Servers, want) && (resp.LastIndex >= target || resp.LastIndex == 0)
}

// progress says how far a node that did not catch up came.
func progress(resp *peer.BootstrapResponse, last error, id string, want []string, target uint64) string {
	var b strings.Builder
	switch {
	case resp.ID != id:
		fmt.Fprintf(&b, "answered as %q, not %q", resp.ID, id)
	case !slices.Equal(resp.Servers, want):
		fmt.Fprintf(&b, "answered but never received the configuration that adds it (it holds %v; is it a member of another cluster?)", resp.Servers)
	default:
		fmt.Fprintf(&b, "answered but did not catch up (its log reached index %d of the %d the leader had committed)", resp.LastIndex, target)
	}
	if last != nil {
		fmt.Fprintf(&b, ", then stopped answering (%v),", last)
	}
	return b.String()
}

// undoNonvoter removes the non-voter entry a checked add made for id,
// unless it was there before, and says what the configuration is left
// with, and whether that differs from what it was before. It runs when
// the caller's wait is over, on a budget of its own.
func (n *RaftNode) undoNonvoter(ctx context.Context, id string, wasNonvoter bool, displaced []string) (string, bool) {
	if wasNonvoter {
		return "it stays a non-voter, as it was; the configuration is unchanged", false
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), max(n.timeLeft(ctx), time.Second))
	defer cancel()
	if err := n.waitFuture(ctx, n.raft.RemoveServer(raft.ServerID(id), 0, n.timeLeft(ctx))); err != nil {
		n.logger.Warn("could not remove a non-voter that never caught up", "id", id, "error", err)
		return fmt.Sprintf("it was added as a non-voter, and removing it again failed (%v): remove it with RemoveServer", err), true
	}
	if len(displaced) > 0 {
		return fmt.Sprintf("it was added as a non-voter and removed again, but the entries it replaced (%s) are gone", strings.Join(displaced, ", ")), true
	}
	return "it was added as a non-voter and removed again: the configuration is unchanged", false
}

// sleepCtx waits d, or until ctx ends; it reports whether ctx is still
// live.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return ctx.Err() == nil
	}
}
