package raftkit

import (
	"context"
	"sync"

	"github.com/hashicorp/raft"
)

// Leadership is a node's view of who leads the cluster.
type Leadership struct {
	// IsLeader is true while this node is the leader.
	IsLeader bool
	// LeaderID and LeaderAddr name the known leader; empty when none is known.
	LeaderID, LeaderAddr string
}

// leaderWatch turns raft's observations into Leadership values for any
// number of subscribers. It never blocks raft: its observer drops when its
// buffer is full, and every observation makes the watch re-read raft's own
// state, which raft updates before it sends the observation, so the latest
// state is never lost even when an observation is.
type leaderWatch struct {
	raft     *raft.Raft
	observer *raft.Observer
	obsCh    chan raft.Observation

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

func newLeaderWatch(r *raft.Raft) *leaderWatch {
	w := &leaderWatch{
		raft:  r,
		obsCh: make(chan raft.Observation, 64),
		subs:  map[*leaderSub]struct{}{},
		done:  make(chan struct{}),
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
	return Leadership{IsLeader: w.raft.State() == raft.Leader, LeaderID: string(id), LeaderAddr: string(addr)}
}

func (w *leaderWatch) loop() {
	defer w.wg.Done()
	for {
		select {
		case <-w.obsCh:
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
// fn in a new goroutine with a context that is cancelled the moment
// leadership is lost, the node hands leadership over (TransferLeadership,
// Close, Leave), ctx ends, or the node closes. fn must return soon after its
// context is cancelled; it is not called again until leadership is regained
// and the previous call has returned.
//
// RunWhileLeader blocks until ctx ends (returning ctx.Err()) or the node
// closes (returning ErrClosed). It is the whole of leader election for an
// application: start it on every node and exactly one runs fn at a time.
//
// Exclusivity rests on raft's leader lease when the network splits: a
// leader cut off from the majority steps down within about the heartbeat
// timeout, before the rest can elect a successor. Work with external side
// effects that must never overlap even under clock trouble should also be
// fenced, for example with the leader's term from Status.
func (n *RaftNode) RunWhileLeader(ctx context.Context, fn func(ctx context.Context)) error {
	if err := n.checkOpen(); err != nil {
		return err
	}
	r := &runner{kick: make(chan struct{}, 1)}
	n.runners.add(r)
	defer n.runners.remove(r)
	defer r.stop(context.Background())
	watch := n.WatchLeadership(ctx)
	leading := false
	for {
		select {
		case l, ok := <-watch:
			if !ok {
				if err := n.checkOpen(); err != nil {
					return err
				}
				return ctx.Err()
			}
			leading = l.IsLeader
		case <-r.kick:
			// A pause ended. If it stopped fn, fn may run again.
			r.mu.Lock()
			if r.cancel == nil {
				r.stint = false
			}
			r.mu.Unlock()
		}
		if !leading {
			r.stop(context.Background())
			r.stint = false
			continue
		}
		if r.stint || n.runners.paused() {
			continue
		}
		if err := n.waitFuture(ctx, n.raft.Barrier(0)); err != nil {
			continue // leadership lost or ctx done: the watch says which
		}
		if n.IsLeader() && n.runners.start(r, ctx, fn) {
			r.stint = true
		}
	}
}

// runner is one RunWhileLeader call.
type runner struct {
	kick  chan struct{} // pause/resume happened
	stint bool          // fn started in the current leadership (loop-owned)

	mu     sync.Mutex
	cancel context.CancelFunc
	done   chan struct{}
}

// stop cancels fn and waits for it to return, or for ctx.
func (r *runner) stop(ctx context.Context) {
	r.mu.Lock()
	cancel, done := r.cancel, r.done
	r.cancel, r.done = nil, nil
	r.mu.Unlock()
	if cancel == nil {
		return
	}
	cancel()
	select {
	case <-done:
	case <-ctx.Done():
	}
}

// runnerSet tracks a node's RunWhileLeader calls so that a handover can
// stop them first.
type runnerSet struct {
	mu      sync.Mutex
	pauses  int
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

// start launches fn for r unless a pause is in effect.
func (s *runnerSet) start(r *runner, ctx context.Context, fn func(context.Context)) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.pauses > 0 {
		return false
	}
	fctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	r.mu.Lock()
	r.cancel, r.done = cancel, done
	r.mu.Unlock()
	go func() {
		defer close(done)
		defer cancel()
		fn(fctx)
	}()
	return true
}

// pause stops every runner's fn (waiting up to ctx for each to return) and
// keeps them stopped until resume.
func (s *runnerSet) pause(ctx context.Context) {
	s.mu.Lock()
	s.pauses++
	rs := make([]*runner, 0, len(s.runners))
	for r := range s.runners {
		rs = append(rs, r)
	}
	s.mu.Unlock()
	for _, r := range rs {
		r.stop(ctx)
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

// stopAll stops every runner's fn for good (the node is closing): a pause
// that never ends.
func (s *runnerSet) stopAll() { s.pause(context.Background()) }
