package raftkit

import (
	"context"
	"sync"
	"time"

	"github.com/hashicorp/raft"
)

// Leadership is a node's view of who leads the cluster.
type Leadership struct {
	// IsLeader is true while this node is the leader.
	IsLeader bool
	// LeaderID and LeaderAddr name the known leader; empty when none is known.
	LeaderID, LeaderAddr string
	// Term is the raft term this node is in: while IsLeader, the term it
	// leads in, the fencing token of that leadership (see Lease). Terms
	// only grow.
	Term uint64
	// Published and PublishedTerm are the value the leaders of a node
	// started with ElectionFSM published last (see Publish) and the term
	// of the leader that published it: the current leader's when it
	// equals Term. Empty and zero on other nodes.
	Published     string
	PublishedTerm uint64
}

// leaderWatch turns raft's observations into Leadership values for any
// number of subscribers. It never blocks raft: its observer drops when its
// buffer is full, and every observation makes the watch re-read raft's own
// state, which raft updates before it sends the observation, so the latest
// state is never lost even when an observation is.
type leaderWatch struct {
	raft      *raft.Raft
	published func() (string, uint64)
	observer  *raft.Observer
	obsCh     chan raft.Observation
	kick      chan struct{} // the published value changed

	mu     sync.Mutex
	last   Leadership
	subs   map[*leaderSub]struct{}
	closed bool

	done chan struct{}
	wg   sync.WaitGroup
}

type leaderSub struct {
	ch   chan Leadership
	stop func() bool // stops the context.AfterFunc
}

func newLeaderWatch(r *raft.Raft, published func() (string, uint64)) *leaderWatch {
	w := &leaderWatch{
		raft:      r,
		published: published,
		kick:      make(chan struct{}, 1),
		obsCh:     make(chan raft.Observation, 64),
		subs:      map[*leaderSub]struct{}{},
		done:      make(chan struct{}),
	}
	w.observer = raft.NewObserver(w.obsCh, false, func(o *raft.Observation) bool {
		switch o.Data.(type) {
		case raft.LeaderObservation, raft.RaftState:
			return true
		}
		return false
	})
	r.RegisterObserver(w.observer)
	w.last = w.read()
	w.wg.Add(1)
	go w.loop()
	return w
}

func (w *leaderWatch) read() Leadership {
	addr, id := w.raft.LeaderWithID()
	// The term is read first: raft sets a new term before it changes
	// state, so a leader's value never carries an older term than the one
	// it leads in.
	term := w.raft.CurrentTerm()
	l := Leadership{IsLeader: w.raft.State() == raft.Leader, LeaderID: string(id), LeaderAddr: string(addr), Term: term}
	l.Published, l.PublishedTerm = w.published()
	return l
}

// changed tells the watch that the published value changed. It never
// blocks: one pending kick covers any number of changes.
func (w *leaderWatch) changed() {
	select {
	case w.kick <- struct{}{}:
	default:
	}
}

func (w *leaderWatch) loop() {
	defer w.wg.Done()
	for {
		select {
		case <-w.obsCh:
			w.publish(w.read())
		case <-w.kick:
			w.publish(w.read())
		case <-w.done:
			return
		}
	}
}

// publish delivers l to every subscriber if it differs from the last value.
// A subscriber's channel holds one value; an unread older value is replaced.
func (w *leaderWatch) publish(l Leadership) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed || l == w.last {
		return
	}
	w.last = l
	for s := range w.subs {
		offer(s.ch, l)
	}
}

// offer puts l in ch, replacing a value the reader has not taken yet. Only
// callers holding w.mu send, so the channel has one sender at a time.
func offer(ch chan Leadership, l Leadership) {
	select {
	case <-ch:
	default:
	}
	ch <- l
}

func (w *leaderWatch) subscribe(ctx context.Context) <-chan Leadership {
	s := &leaderSub{ch: make(chan Leadership, 1)}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		close(s.ch)
		return s.ch
	}
	s.ch <- w.last
	w.subs[s] = struct{}{}
	s.stop = context.AfterFunc(ctx, func() {
		w.mu.Lock()
		defer w.mu.Unlock()
		if _, ok := w.subs[s]; ok {
			delete(w.subs, s)
			close(s.ch)
		}
	})
	return s.ch
}

func (w *leaderWatch) close() {
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		return
	}
	w.closed = true
	for s := range w.subs {
		s.stop()
		close(s.ch)
	}
	w.subs = nil
	w.mu.Unlock()
	w.raft.DeregisterObserver(w.observer)
	close(w.done)
	w.wg.Wait()
}

// WatchLeadership returns a channel that receives this node's Leadership:
// first the current one, then every change. It never blocks raft and never
// drops the latest value: a reader that falls behind skips intermediate
// values and receives the newest. Any number of watchers may exist. The
// channel is closed when ctx ends or the node closes.
func (n *RaftNode) WatchLeadership(ctx context.Context) <-chan Leadership {
	return n.leadership.subscribe(ctx)
}

// RunWhileLeader runs fn whenever this node is the leader, and only then.
// Each time the node becomes leader, RunWhileLeader first waits until every
// entry of earlier terms is applied to the local FSM (a barrier), then calls
// fn in a new goroutine with a context that carries the leadership's Lease
// (LeaseFromContext: its term is the fencing token, Valid the check before
// each side effect). The context is cancelled when leadership is lost, the
// node hands leadership over (TransferLeadership, Leave, Close), ctx ends,
// or the node closes, and context.Cause says which: ErrLeadershipLost,
// ErrHandover, ErrClosed, or ctx's own cause. fn is not called again until
// leadership is regained and the previous call has returned.
//
// A planned handover (TransferLeadership, Leave, Close) cancels fn and
// waits for it to return, up to Config.LeaderJobGrace, before it hands
// leadership over: no successor can be elected meanwhile, so fn's last
// side effects never overlap the next leader's. RunWhileLeader returns only
// after fn has returned: when ctx ends (ctx.Err()) or the node closes
// (ErrClosed).
//
// What holds when leadership is lost without a handover (a crash, a network
// split, a paused process): at most one node holds a valid Lease at any
// moment, by the monotonic clocks of the nodes (see Lease for how, and for
// its one exception: a follower that restarts within a lease), so a side
// effect performed only while Lease.Valid returns true never follows a
// newer leader's (a paused leader resumes with an expired lease and Valid
// returns false at once). A side effect that does not check Valid, or that runs after a
// pause between the check and the effect, can still happen after a
// successor has started: fn's context is cancelled only once this node
// notices it has lost leadership, which may be after a successor's first
// side effect. Only fencing with Lease.Term closes that gap: have the
// resource refuse tokens smaller than the largest it has seen.
func (n *RaftNode) RunWhileLeader(ctx context.Context, fn func(ctx context.Context)) error {
	if err := n.checkOpen(); err != nil {
		return err
	}
	r := &runner{kick: make(chan struct{}, 1)}
	n.runners.add(r)
	defer n.runners.remove(r)
	defer func() { r.stop(context.Background(), context.Cause(ctx)) }()
	watch := n.WatchLeadership(ctx)
	var now Leadership
	for {
		select {
		case l, ok := <-watch:
			if !ok {
				if err := n.checkOpen(); err != nil {
					r.stop(context.Background(), ErrClosed)
					return err
				}
				return ctx.Err()
			}
			now = l
		case <-r.kick:
			// A pause ended. If it stopped fn, fn may run again.
			if !r.running() {
				r.stint = false
			}
		}
		if !now.IsLeader {
			r.stop(context.Background(), ErrLeadershipLost)
			r.stint = false
			continue
		}
		if r.stint && now.Term > r.term {
			// Leadership was lost and regained between two values the
			// watch delivered: the old term's fn must not run on.
			r.stop(context.Background(), ErrLeadershipLost)
			r.stint = false
		}
		if r.stint || n.runners.paused() {
			continue
		}
		lease, err := n.acquireLease(ctx)
		if err != nil {
			continue // leadership lost or ctx done: the watch says which
		}
		if n.runners.start(r, ctx, fn, lease) {
			r.stint, r.term = true, lease.term
		}
	}
}

// runner is one RunWhileLeader call.
type runner struct {
	kick  chan struct{} // pause/resume happened
	stint bool          // fn started in the current leadership (loop-owned)
	term  uint64        // the term of that leadership (loop-owned)

	mu     sync.Mutex
	cancel context.CancelCauseFunc // nil when fn is not running
	done   chan struct{}           // closed when fn and its renewals ended
}

// running reports whether fn is running.
func (r *runner) running() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.done != nil
}

// stop cancels fn with cause and waits for it to return, or for ctx. The
// first cause given wins.
func (r *runner) stop(ctx context.Context, cause error) {
	r.mu.Lock()
	cancel, done := r.cancel, r.done
	r.mu.Unlock()
	if cancel == nil {
		return
	}
	cancel(cause)
	select {
	case <-done:
	case <-ctx.Done():
	}
}

// runnerSet tracks a node's RunWhileLeader calls so that a handover can
// stop them first.
type runnerSet struct {
	grace time.Duration // Config.LeaderJobGrace

	mu      sync.Mutex
	pauses  int
	stopped bool // stopAll ran
	runners map[*runner]struct{}
}

func (s *runnerSet) add(r *runner) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.runners == nil {
		s.runners = map[*runner]struct{}{}
	}
	s.runners[r] = struct{}{}
}

func (s *runnerSet) remove(r *runner) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.runners, r)
}

func (s *runnerSet) paused() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.pauses > 0
}

// start launches fn for r with lease unless a pause is in effect. The
// lease is renewed in the background until fn's context ends.
func (s *runnerSet) start(r *runner, ctx context.Context, fn func(context.Context), lease *Lease) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.pauses > 0 {
		return false
	}
	fctx, cancel := context.WithCancelCause(context.WithValue(ctx, leaseKey{}, lease))
	done := make(chan struct{})
	r.mu.Lock()
	r.cancel, r.done = cancel, done
	r.mu.Unlock()
	// Renewals go on until fn returns, not only until its context ends:
	// after a planned stop fn may finish its work under a valid lease.
	rctx, stopRenewals := context.WithCancel(context.Background())
	renewed := make(chan struct{})
	go func() {
		defer close(renewed)
		lease.keepRenewed(rctx)
	}()
	go func() {
		defer close(done)
		defer func() {
			r.mu.Lock()
			r.cancel, r.done = nil, nil
			r.mu.Unlock()
		}()
		defer func() {
			// fn returned (or panicked). A cause already given is kept.
			lease.ended.Store(true)
			cancel(nil)
			stopRenewals()
			<-renewed
		}()
		fn(fctx)
	}()
	return true
}

// pause stops every runner's fn, as a handover, and keeps them stopped
// until resume. It waits for each to return up to the grace or ctx.
func (s *runnerSet) pause(ctx context.Context) { s.pauseFor(ctx, ErrHandover) }

func (s *runnerSet) pauseFor(ctx context.Context, cause error) {
	s.mu.Lock()
	s.pauses++
	rs := make([]*runner, 0, len(s.runners))
	for r := range s.runners {
		rs = append(rs, r)
	}
	s.mu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, s.grace)
	defer cancel()
	for _, r := range rs {
		r.stop(ctx, cause)
	}
}

// resume ends a pause; runners start fn again if this node still leads.
func (s *runnerSet) resume() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.pauses--
	for r := range s.runners {
		select {
		case r.kick <- struct{}{}:
		default:
		}
	}
}

// stopAll stops every runner's fn for good, as the node closes: a pause
// that never ends. It waits up to the grace, once: later calls return at
// once.
func (s *runnerSet) stopAll() {
	s.mu.Lock()
	again := s.stopped
	s.stopped = true
	s.mu.Unlock()
	if !again {
		s.pauseFor(context.Background(), ErrClosed)
	}
}
