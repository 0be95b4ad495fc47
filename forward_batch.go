package raftkit

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"time"

	"github.com/raftkit/raftkit/internal/wire"
)

// Forwarded writes are batched: a follower sends the commands that its
// callers submit while earlier batches are on their way as one
// ApplyBatch request, and the leader hands them to raft back to back, so
// they share its group commit. With one caller at a time, every batch
// holds one command and nothing waits.
const (
	// maxBatchesInFlight is how many batches a follower may have in
	// progress at the leader at once; further commands gather for the
	// next batch. Fewer, larger batches cost less CPU per command on both
	// ends and land in fewer of the leader's disk writes: on a 2-core
	// machine with 64 forwarding writers, 2 gave 0.84-0.96x of the
	// leader's own writes per second with BoltDB (4: 0.74x, 8: 0.67x;
	// 1: 0.82x) and 0.80x with raft-wal (4: 0.69x).
	maxBatchesInFlight = 2
	// gatherYields bounds how often a sender yields, after answering a
	// batch, for the callers answered to submit their next commands. On a
	// busy 2-core machine 4 yields were often too few: alternated runs of
	// 64 forwarding writers gave 16 yields 1.2x the writes per second of
	// 4 with BoltDB and 1.15x with raft-wal (and 0 yields 0.78x); runs
	// that alternated forwarded and leader writes on one cluster gave 32
	// yields a median of 0.84x of the leader's writes per second against
	// 0.78x with 16 (3 batches in flight: 0.75x). Since a sender waits for
	// every caller answered rather than for as many commands as it
	// answered (see gather), 5 alternated runs gave 128 yields medians of
	// 0.84x (BoltDB) and 0.84x (raft-wal) against 0.74x and 0.78x before
	// (512: 0.86x and 0.79x). A caller that does not write again costs
	// its sender at most these yields.
	gatherYields = 128
	// maxBatchCommands and maxBatchBytes bound one batch.
	maxBatchCommands = 512
	maxBatchBytes    = 4 << 20
)

// fwdRequest is one caller's command waiting in a batch.
type fwdRequest struct {
	cmd      ownedCmd
	deadline time.Time
	taken    bool // in a batch on its way (guarded by applyBatcher.mu)
	done     chan struct{}
	resp     wire.ApplyResponse
	err      error // transport failure, as forward reports it
}

// fwdQueue gathers commands for one leader address.
type fwdQueue struct {
	pending  []*fwdRequest
	inFlight int
	// awaited counts the callers answered whose next commands have not
	// arrived yet: a sender that answered a batch gathers until it is 0.
	awaited int
}

// applyBatcher batches forwarded writes per leader address.
type applyBatcher struct {
	n  *RaftNode
	wg sync.WaitGroup // running senders; Close waits for them

	mu      sync.Mutex
	stopped bool
	queues  map[string]*fwdQueue
}

func newApplyBatcher(n *RaftNode) *applyBatcher {
	return &applyBatcher{n: n, queues: map[string]*fwdQueue{}}
}

// submit forwards cmd to the leader at addr within ctx and returns its
// response, or the transport error (classified as forward does).
func (b *applyBatcher) submit(ctx context.Context, addr string, cmd ownedCmd) (*wire.ApplyResponse, error) {
	dl, _ := ctx.Deadline()
	req := &fwdRequest{cmd: cmd, deadline: dl, done: make(chan struct{})}
	b.mu.Lock()
	if b.stopped {
		b.mu.Unlock()
		return nil, ErrClosed
	}
	q := b.queues[addr]
	if q == nil {
		q = &fwdQueue{}
		b.queues[addr] = q
	}
	q.pending = append(q.pending, req)
	if q.awaited > 0 {
		q.awaited--
	}
	var batch []*fwdRequest
	if q.inFlight < maxBatchesInFlight {
		batch = b.takeLocked(q)
		q.inFlight++
		b.wg.Add(1)
	}
	b.mu.Unlock()
	if batch != nil {
		go b.send(addr, q, batch)
	}
	select {
	case <-req.done:
		return &req.resp, req.err
	case <-ctx.Done():
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if !req.taken {
		// Still waiting for a batch: never sent.
		for i, r := range q.pending {
			if r == req {
				q.pending = append(q.pending[:i:i], q.pending[i+1:]...)
				break
			}
		}
		return nil, doneErr(ctx, "apply")
	}
	return nil, unknownOutcome("apply", fmt.Errorf("via leader %s: %w", addr, ctx.Err()))
}

// takeLocked removes the next batch from q.
func (b *applyBatcher) takeLocked(q *fwdQueue) []*fwdRequest {
	n, size := 0, 0
	for n < len(q.pending) && n < maxBatchCommands {
		size += len(q.pending[n].cmd)
		if n > 0 && size > maxBatchBytes {
			break
		}
		n++
	}
	batch := q.pending[:n:n]
	for _, r := range batch {
		r.taken = true
	}
	q.pending = q.pending[n:]
	if len(q.pending) == 0 {
		q.pending = nil
	}
	return batch
}

// send delivers batch, then keeps delivering what gathered meanwhile.
func (b *applyBatcher) send(addr string, q *fwdQueue, batch []*fwdRequest) {
	defer b.wg.Done()
	for batch != nil {
		b.deliver(addr, q, batch)
		b.gather(q)
		b.mu.Lock()
		if len(q.pending) > 0 {
			batch = b.takeLocked(q)
		} else {
			batch = nil
			q.inFlight--
			if q.inFlight == 0 && b.queues[addr] == q {
				delete(b.queues, addr)
			}
		}
		b.mu.Unlock()
	}
}

// gather lets the callers just answered submit their next commands, so
// that they join this sender's next batch rather than wait for a later
// one: it yields until every caller answered, by this sender or another,
// has submitted again, or gatherYields times. It reports whether they
// all did. Batches sent together come back together, so two senders
// often gather at once; counting what waited instead let the first leave
// with the other's callers before its own were back, and those then
// waited for a whole round trip.
func (b *applyBatcher) gather(q *fwdQueue) bool {
	for i := 0; i < gatherYields; i++ {
		b.mu.Lock()
		n := q.awaited
		b.mu.Unlock()
		if n == 0 {
			return true
		}
		runtime.Gosched()
	}
	// Callers that did not come back (they may have no more to write)
	// must not hold up later gathers.
	b.mu.Lock()
	q.awaited = 0
	b.mu.Unlock()
	return false
}

// deliver sends one batch and answers its callers, counting them in
// q.awaited.
func (b *applyBatcher) deliver(addr string, q *fwdQueue, batch []*fwdRequest) {
	b.exchange(addr, batch)
	b.mu.Lock()
	q.awaited += len(batch)
	b.mu.Unlock()
	for _, r := range batch {
		close(r.done)
	}
}

// exchange sends batch to the leader at addr and records each command's
// response, or the failure. A batch that the leader refuses as larger
// than it takes from this node (it counts this node's connections as a
// stranger's, whose messages are capped at 64 KiB) had no effect: its
// halves are sent on their own, down to single commands.
func (b *applyBatcher) exchange(addr string, batch []*fwdRequest) {
	var latest time.Time
	cmds := make([][]byte, len(batch))
	for i, r := range batch {
		cmds[i] = r.cmd
		if r.deadline.After(latest) {
			latest = r.deadline
		}
	}
	ctx, cancel := context.WithDeadline(context.Background(), latest)
	defer cancel()
	timeout := time.Until(latest)
	var err error
	var resp wire.ApplyBatchResponse
	if len(batch) == 1 {
		// A batch of one travels as a plain Apply.
		var one wire.ApplyResponse
		err = b.n.forwardTo(ctx, "apply", addr, wire.MethodApply, &wire.ApplyRequest{Command: cmds[0], Timeout: int64(timeout)}, &one)
		resp.Results = []wire.ApplyResponse{one}
	} else {
		err = b.n.forwardTo(ctx, "apply", addr, wire.MethodApplyBatch, &wire.ApplyBatchRequest{Commands: cmds, Timeout: int64(timeout)}, &resp)
	}
	var refused *refusedError
	if len(batch) > 1 && errors.As(err, &refused) && refused.tooLarge() {
		half := len(batch) / 2
		b.exchange(addr, batch[:half])
		b.exchange(addr, batch[half:])
		return
	}
	if err == nil && len(resp.Results) != len(batch) {
		err = unknownOutcome("apply", fmt.Errorf("leader %s answered %d of %d commands", addr, len(resp.Results), len(batch)))
	}
	for i, r := range batch {
		if err != nil {
			r.err = err
		} else {
			r.resp = resp.Results[i]
		}
	}
}

// stop makes later submits fail with ErrClosed and waits for the batches
// on their way: close the request clients first, so that they end.
func (b *applyBatcher) stop() {
	b.mu.Lock()
	b.stopped = true
	b.mu.Unlock()
	b.wg.Wait()
}
