package raftkit

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
)

// Why a RunWhileLeader function was stopped: context.Cause of its context
// matches one of these, ErrClosed when the node closes, or the cause of
// the context given to RunWhileLeader when that ends.
var (
	// ErrLeadershipLost is the cause when this node stopped leading
	// without choosing to: it stepped down (cut off from a majority, or
	// paused long enough for the others to elect a successor) or saw a
	// newer term. Lease.Verify returns errors that match it too.
	ErrLeadershipLost = errors.New("raftkit: leadership lost")

	// ErrHandover is the cause when this node hands leadership over on
	// purpose (TransferLeadership, Leave).
	ErrHandover = errors.New("raftkit: leadership handed over")
)

// Lease is this node's leadership in one term, as RunWhileLeader hands it
// to its function (see LeaseFromContext). Its Term is a fencing token:
// every leader's term is larger than all earlier leaders', so a resource
// that remembers the largest term it has seen and refuses smaller ones
// never takes a side effect from a deposed leader, whatever the clocks or
// the network do.
//
// Valid says, without a network round trip, whether the lease still holds
// by this machine's own clock. While the function runs, raftkit renews the
// lease in the background: it records the time, appends an entry to the
// log and waits for a majority to store it. A majority that stores an
// entry written after that time has heard from this leader after it, so
// none of them starts an election before a heartbeat timeout has passed
// since then, and no other node can win one: the lease lasts three
// quarters of raft's heartbeat timeout (and of its election timeout, if
// shorter) from the start of the last successful renewal, measured with
// the monotonic clock (on Linux CLOCK_BOOTTIME, which also counts time the
// machine was suspended). A process stopped (SIGSTOP, a long GC or VM
// pause) finds its lease expired when it resumes and Valid returns false
// before it can act. Renewals cost one log entry every quarter lease.
//
// What the lease cannot cover: the time between Valid returning true and
// the side effect itself (a pause exactly there), and a follower that
// acknowledged the lease and then restarted within it (it forgets its
// leader and may vote at once). Fencing with Term covers both.
type Lease struct {
	n      *RaftNode
	term   uint64
	length time.Duration
	since  int64        // leaseClock when the first renewal started
	expiry atomic.Int64 // leaseClock when the lease ends
	ended  atomic.Bool  // the function returned
}

type leaseKey struct{}

// LeaseFromContext returns the Lease of the RunWhileLeader function whose
// context ctx is (or derives from), or nil if there is none.
func LeaseFromContext(ctx context.Context) *Lease {
	l, _ := ctx.Value(leaseKey{}).(*Lease)
	return l
}

// Term returns the raft term this node leads in: the fencing token of the
// side effects the function performs. It never changes for one Lease.
func (l *Lease) Term() uint64 { return l.term }

// Valid reports whether this node still holds the lease: the function
// has not returned, the node leads in the lease's term, and the last
// successful renewal started less than the lease's length ago by the
// monotonic clock. It sends nothing and waits for nothing. Check it just
// before each side effect; when it returns false, do not act.
//
// After a planned stop (context.Cause ErrHandover, ErrClosed, or the end
// of the context given to RunWhileLeader) the lease is still renewed and
// leadership does not move until the function returns or
// Config.LeaderJobGrace passes, so Valid stays true meanwhile: the
// function may finish its unit of work under the same guard.
func (l *Lease) Valid() bool {
	return !l.ended.Load() && leaseClock() < l.expiry.Load() && l.leads()
}

// Remaining returns how long the lease still holds by the local clock if
// no further renewal succeeds, or 0 if Valid would return false.
func (l *Lease) Remaining() time.Duration {
	if !l.Valid() {
		return 0
	}
	return time.Duration(l.expiry.Load() - leaseClock())
}

// Verify renews the lease now, with a round trip to a majority (one log
// entry), and returns nil if this node still leads in the lease's term: a
// side effect started right after it returns nil is at least as safe as
// one guarded by Valid. Otherwise it returns an error matching
// ErrLeadershipLost (also once the function has returned), or ctx's error.
func (l *Lease) Verify(ctx context.Context) error {
	if l.ended.Load() {
		return fmt.Errorf("%w: the function of term %d returned", ErrLeadershipLost, l.term)
	}
	return l.renew(ctx)
}

func (l *Lease) leads() bool {
	return l.n.raft.State() == raft.Leader && l.n.raft.CurrentTerm() == l.term
}

// renew appends a barrier and, once a majority stored it in the lease's
// term, extends the lease to length after the renewal started.
//
// Not raft's VerifyLeader: a verification counts the next heartbeat
// response from each follower, and that may answer a heartbeat sent before
// the verification started (hashicorp/raft's heartbeat loop notifies the
// waiting verifications of whatever response arrives). A leader resuming
// from a pause would then renew its lease with a follower's answer from
// before the pause. An entry appended after the start can only be stored
// by followers that heard from this leader after it.
func (l *Lease) renew(ctx context.Context) error {
	start := leaseClock()
	if !l.leads() {
		return fmt.Errorf("%w: no longer leads in term %d", ErrLeadershipLost, l.term)
	}
	if err := l.n.waitFuture(ctx, l.n.raft.Barrier(0)); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("%w: term %d: %w", ErrLeadershipLost, l.term, err)
	}
	if !l.leads() {
		return fmt.Errorf("%w: no longer leads in term %d", ErrLeadershipLost, l.term)
	}
	until := start + int64(l.length)
	for {
		old := l.expiry.Load()
		if until <= old || l.expiry.CompareAndSwap(old, until) {
			return nil
		}
	}
}

// keepRenewed renews the lease every quarter of its length until ctx ends.
// A renewal that fails or takes longer only lets the lease run out sooner.
func (l *Lease) keepRenewed(ctx context.Context) {
	t := time.NewTicker(l.length / 4)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		rctx, cancel := context.WithTimeout(ctx, l.length)
		l.renew(rctx)
		cancel()
	}
}

// leaseLength is the lease's length for r's current timeouts: three
// quarters of the shorter of the heartbeat and election timeouts, which
// is how long a follower waits at least before it starts an election.
func leaseLength(r *raft.Raft) time.Duration {
	c := r.ReloadableConfig()
	d := c.HeartbeatTimeout
	if c.ElectionTimeout < d {
		d = c.ElectionTimeout
	}
	return d * 3 / 4
}

// acquireLease waits until every entry of earlier terms is applied (a
// barrier, which is also the lease's first renewal) and returns the lease
// of the term this node leads in.
func (n *RaftNode) acquireLease(ctx context.Context) (*Lease, error) {
	term := n.raft.CurrentTerm()
	l := &Lease{n: n, term: term, length: leaseLength(n.raft), since: leaseClock()}
	if n.hooks.leaseLength != nil {
		l.length = n.hooks.leaseLength(l.length)
	}
	if err := l.renew(ctx); err != nil {
		return nil, err
	}
	return l, nil
}
