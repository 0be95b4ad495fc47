package raftkit

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/hashicorp/raft"

	"github.com/raftkit/raftkit/internal/chunk"
	"github.com/raftkit/raftkit/internal/peer"
)

// A command longer than chunk.Size enters the raft log in chunks (see
// internal/chunk): the leader submits it as consecutive entries, and the
// FSM wrapper (trackedFSM) hands the user's FSM the whole command once, at
// the final chunk's index. Commands of at most chunk.Size bytes, and every
// command while a peer does not speak chunks (everyPeerReadsChunks), are
// submitted as they are, with no Extensions.

// submit hands one command to raft on the leader: as it is, or in chunks
// when it is longer than chunk.Size. The chunks of one command must follow
// each other in the log with nothing of this node's in between, so a
// chunked command holds n.submitMu exclusively while it submits, and every
// other command holds it shared while raft takes it (not while it waits
// for the outcome).
func (n *RaftNode) submit(cmd ownedCmd, timeout time.Duration) raft.ApplyFuture {
	if len(cmd) > chunk.Size {
		all, err := n.everyPeerReadsChunks(timeout)
		if err != nil {
			return failedFuture{err}
		}
		if all {
			return n.submitChunked(cmd, timeout)
		}
	}
	n.submitMu.RLock()
	f := n.raft.Apply(cmd, timeout)
	n.submitMu.RUnlock()
	return f
}

// submitChunked submits cmd as chunks, one after another, each within
// what is left of timeout, and returns the final chunk's future: the
// command's outcome. raft resolves the other chunks' futures with no one
// waiting. A chunk that raft did not take leaves the sequence unfinished
// in the log, where the next entry drops it.
func (n *RaftNode) submitChunked(cmd ownedCmd, timeout time.Duration) raft.ApplyFuture {
	h := chunk.Header{ID: n.chunkIDs.Add(1), Count: uint32(chunk.Count(len(cmd))), Total: uint64(len(cmd))}
	deadline := time.Now().Add(timeout)
	n.submitMu.Lock()
	defer n.submitMu.Unlock()
	var f raft.ApplyFuture
	// With BatchApplyCh, raft's leader loop would take every chunk at
	// once, write them all, and only then send them: the leader's and a
	// follower's disk writes of the whole command would add up. Fed a
	// group at a time, each once the one before is stored, the leader
	// writes a group while its followers write the one before. Only with
	// raft-wal (see storedChunks in NewRaftNode).
	gated := n.batchApplyCh && n.storedChunks != nil
	for i := 0; i < int(h.Count); i++ {
		left := time.Until(deadline)
		if left <= 0 {
			if i > 0 {
				n.noteChunkCut()
			}
			return failedFuture{raft.ErrEnqueueTimeout}
		}
		if gated && i > 0 && i%chunk.Group == 0 {
			gated = n.storedChunks.Wait(h.ID, uint32(i-1), min(left, chunk.GroupWait), n.closed) && n.IsLeader()
		}
		h.Index = uint32(i)
		part := cmd[i*chunk.Size : min(len(cmd), (i+1)*chunk.Size)]
		f = n.raft.ApplyLog(raft.Log{Data: part, Extensions: h.Encode()}, left)
	}
	if !time.Now().Before(deadline) {
		// raft may have refused the last chunks (ErrEnqueueTimeout).
		n.noteChunkCut()
	}
	return chunkedFuture{ApplyFuture: f, n: n}
}

// noteChunkCut records that this node may have left a sequence unfinished
// in its own term, where no later leader will abort it: the abort loop
// then aborts the sequence the FSM holds.
func (n *RaftNode) noteChunkCut() {
	n.chunkCut.Store(true)
	n.fsm.chunks.Poke()
}

// chunkedFuture is a chunked command's outcome: its final chunk's future,
// with chunk.ErrIncomplete as an error rather than the FSM's response.
type chunkedFuture struct {
	raft.ApplyFuture
	n *RaftNode // told when the final chunk failed (nil in unit tests)
}

func (f chunkedFuture) Error() error {
	if err := f.ApplyFuture.Error(); err != nil {
		// Whatever stopped the final chunk (a leadership transfer, the
		// deadline, a lost leadership) may have left the first ones in
		// the log: have the abort loop drop them if this node leads.
		if f.n != nil {
			f.n.noteChunkCut()
		}
		return err
	}
	if f.ApplyFuture.Response() == chunk.ErrIncomplete {
		return chunk.ErrIncomplete
	}
	return nil
}

func (f chunkedFuture) Response() any {
	if r := f.ApplyFuture.Response(); r != chunk.ErrIncomplete {
		return r
	}
	return nil
}

// failedFuture is a raft.ApplyFuture that failed before raft took it.
type failedFuture struct{ err error }

func (f failedFuture) Error() error  { return f.err }
func (f failedFuture) Response() any { return nil }
func (f failedFuture) Index() uint64 { return 0 }

// abortAbandonedChunks runs while the node is open. Whenever this node
// leads and its FSM holds a sequence of an earlier term (a leader that
// died between chunks), or one of its own submissions stopped between
// chunks (noteChunkCut), it submits an abort entry: no one can finish that
// sequence, and until an entry drops it the FSM refuses snapshots. The
// abort is submitted like a chunked command, never between another
// command's chunks, so an abort that turns out not to be needed (the
// sequence was dropped or completed by entries the FSM had yet to apply)
// is harmless.
func (n *RaftNode) abortAbandonedChunks(ctx context.Context) {
	watch := n.leadership.subscribe(ctx)
	leading := false
	var retry <-chan time.Time
	for {
		select {
		case l, ok := <-watch:
			if !ok {
				return
			}
			leading = l.IsLeader
		case <-n.fsm.chunks.Started():
		case <-retry:
		case <-ctx.Done():
			return
		}
		retry = nil
		term := n.fsm.chunks.PendingTerm()
		if !leading || term == 0 || (term >= n.raft.CurrentTerm() && !n.chunkCut.Load()) {
			continue
		}
		n.logger.Info("dropping a chunked command left unfinished in the log", "term", term)
		n.submitMu.Lock()
		cut := n.chunkCut.Swap(false)
		f := n.raft.ApplyLog(raft.Log{Extensions: chunk.Header{Abort: true}.Encode()}, n.cfg.ApplyTimeout)
		n.submitMu.Unlock()
		if err := n.waitFuture(ctx, f); err != nil {
			n.logger.Debug("abort of an unfinished chunked command failed; retrying", "error", err)
			if cut {
				n.chunkCut.Store(true)
			}
			retry = time.After(100 * time.Millisecond)
		}
	}
}

// A node that does not reassemble chunks would hand each chunk to its FSM
// as a command of its own and silently diverge. So a leader chunks a
// command only while every other server in its configuration reads
// chunks, as proven to it:
//
//   - a peer that answers hellos says so in its hello to this node's own
//     dial (peer.FeatureChunks; see internal/peer's protocol.go); one
//     that says it does not gets large commands whole, which every
//     version reads;
//   - a peer that closes hellos unanswered (protocol 1, or a release from
//     before chunks) says nothing of itself, and is asked (a
//     FeaturesRequest, which releases from before chunks do not know);
//     the answer holds for what the mux learned of the peer from one dial
//     (PeerState.Gen). Without a positive answer, a large command fails as
//     not applied, naming the peer: such a peer's release is unknown, and
//     it is not sent what it might misread;
//   - a peer not heard from yet is asked (a hello); one that cannot be
//     asked gets large commands whole.
const (
	// askWait bounds asking a peer this node has not heard from yet.
	askWait = time.Second
	// askRetry is how long a peer that could not be asked counts as not
	// reading chunks before it is asked again.
	askRetry = 5 * time.Second
	// maxAsks bounds chunkAsks: past it, the memory starts again.
	maxAsks = 1024
)

// chunkAsks remembers, by peer address, the leader's questions about
// chunks whose answers no hello gave: when a peer could not be asked at
// all, and what a peer without hellos answered a FeaturesRequest.
type chunkAsks struct {
	mu     sync.Mutex
	byAddr map[string]chunkAsk
}

type chunkAsk struct {
	gen   uint64 // the mux's PeerState.Gen asked about; 0: the peer could not be asked
	at    time.Time
	reads bool
	cause error // why the peer did not confirm
}

func (a *chunkAsks) get(addr string) (chunkAsk, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	c, ok := a.byAddr[addr]
	return c, ok
}

func (a *chunkAsks) put(addr string, c chunkAsk) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.byAddr == nil || len(a.byAddr) >= maxAsks {
		a.byAddr = map[string]chunkAsk{}
	}
	c.at = time.Now()
	a.byAddr[addr] = c
}

// everyPeerReadsChunks reports whether every other server in n's
// configuration reads chunked commands, asking those n has not heard from
// (each within timeout, at most askWait). An error (not applied) names a
// peer without hellos that did not confirm it reads them.
func (n *RaftNode) everyPeerReadsChunks(timeout time.Duration) (bool, error) {
	all := true
	for _, s := range n.raft.GetConfiguration().Configuration().Servers {
		if string(s.ID) == n.id {
			continue
		}
		reads, err := n.readsChunks(string(s.Address), timeout)
		if err != nil {
			return false, err
		}
		all = all && reads
	}
	return all, nil
}

func (n *RaftNode) readsChunks(addr string, timeout time.Duration) (bool, error) {
	st, known := n.mux.Peer(addr)
	if !known {
		if c, ok := n.chunkAsks.get(addr); ok && c.gen == 0 && time.Since(c.at) < askRetry {
			return false, nil
		}
		ctx, cancel := context.WithTimeout(context.Background(), min(timeout, askWait))
		var err error
		st, err = n.mux.Ask(ctx, addr)
		cancel()
		if err != nil {
			n.chunkAsks.put(addr, chunkAsk{})
			n.logger.Debug("a peer could not be asked what it speaks; large commands enter the log whole", "peer", addr, "error", err)
			return false, nil
		}
	}
	switch {
	case st.Refused != "":
		return false, nil
	case !st.Legacy:
		return st.Profile.Speaks(peer.FeatureChunks), nil
	}
	c, ok := n.chunkAsks.get(addr)
	if !ok || c.gen != st.Gen || (!c.reads && time.Since(c.at) >= askRetry) {
		c = chunkAsk{gen: st.Gen}
		ctx, cancel := context.WithTimeout(context.Background(), min(timeout, askWait))
		var resp peer.FeaturesResponse
		err := n.rpc.Call(ctx, addr, peer.MethodFeatures, &peer.FeaturesRequest{}, &resp)
		cancel()
		switch {
		case err != nil:
			c.cause = err
		case !resp.Chunks:
			c.cause = errors.New("it answered that it does not")
		default:
			c.reads = true
		}
		n.chunkAsks.put(addr, c)
	}
	if !c.reads {
		return false, wrapErr(ErrNotApplied, "", fmt.Errorf("peer %s closes hellos unanswered (a release before protocol 2, perhaps from before chunked commands) "+
			"and did not confirm that it reads chunked commands (%v): a command over %d bytes would reach it in chunks it could apply as commands of their own; "+
			"upgrade that peer, or keep commands within %d bytes", addr, c.cause, chunk.Size, chunk.Size))
	}
	return true, nil
}
