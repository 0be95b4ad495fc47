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
