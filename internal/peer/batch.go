package peer

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"time"

	"github.com/raftkit/raftkit/internal/sentinel"
)

// Forwarded writes are batched: a follower sends the commands that its
// callers submit while earlier batches are on their way as one ApplyBatch
// request, and the leader hands them to raft back to back, so they share
// its group commit. With one caller at a time, every batch holds one
// command and nothing waits. The figures behind these numbers are in
// docs/performance.md.
const (
	// maxBatchesInFlight is how many batches a follower may have in
	// progress at the leader at once; further commands gather for the
	// next batch. Fewer, larger batches cost less CPU per command on both
	// ends and land in fewer of the leader's disk writes.
	maxBatchesInFlight = 2
	// gatherYields bounds how often a sender yields, after answering a
	// batch, for the callers answered to submit their next commands; a
	// caller that does not write again costs its sender at most these
	// yields.
	gatherYields = 128
	// MaxBatchCommands and MaxBatchBytes bound one batch.
	MaxBatchCommands = 512
	MaxBatchBytes    = 4 << 20
)

// CanceledError is a forwarded command whose caller's context ended
// before its answer came: Sent says whether it was on its way (its
// outcome is unknown) or still waiting for a batch (it was never sent).
type CanceledError struct {
	Peer string
	Sent bool
	Err  error
}

func (e *CanceledError) Error() string {
	if e.Sent {
		return fmt.Sprintf("via %s: %v", e.Peer, e.Err)
	}
	return fmt.Sprintf("context ended before the request was submitted: %v", e.Err)
}

func (e *CanceledError) Unwrap() error { return e.Err }

// fwdRequest is one caller's command waiting in a batch.
type fwdRequest struct {
	cmd      []byte
	deadline time.Time
	taken    bool // in a batch on its way (guarded by applyBatcher.mu)
	done     chan struct{}
	resp     ApplyResponse
	err      error // the transport's failure (see Submit)
}

// fwdQueue gathers commands for one leader address.
type fwdQueue struct {
	pending  []*fwdRequest
	inFlight int
	// awaited counts the callers answered whose next commands have not
	// arrived yet: a sender that answered a batch gathers until it is 0.
	awaited int
}

// Batcher batches forwarded writes per leader address.
type Batcher struct {
	pool *Pool
	wg   sync.WaitGroup // running senders; Stop waits for them

	mu      sync.Mutex
	stopped bool
	queues  map[string]*fwdQueue
}

// NewBatcher returns a batcher that sends through pool.
func NewBatcher(pool *Pool) *Batcher {
	return &Batcher{pool: pool, queues: map[string]*fwdQueue{}}
}

// Submit forwards cmd to the leader at addr within ctx and returns its
// response, or the failure: a *CanceledError when ctx ended first, an
// error of Pool.Call, or sentinel.ErrClosed after Stop. cmd must not change
// until Submit returns, nor after it if the command was sent (the
// caller's outcome is then unknown): pass bytes raftkit owns.
func (b *Batcher) Submit(ctx context.Context, addr string, cmd []byte) (*ApplyResponse, error) {
	dl, _ := ctx.Deadline()
	req := &fwdRequest{cmd: cmd, deadline: dl, done: make(chan struct{})}
	b.mu.Lock()
	if b.stopped {
		b.mu.Unlock()
		return nil, sentinel.ErrClosed
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
		return nil, &CanceledError{Peer: addr, Err: ctx.Err()}
	}
	return nil, &CanceledError{Peer: addr, Sent: true, Err: ctx.Err()}
}

// Sending reports whether a batch to addr is on its way (for tests and
// diagnostics).
func (b *Batcher) Sending(addr string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	q := b.queues[addr]
	return q != nil && q.inFlight > 0 && len(q.pending) == 0
}

// takeLocked removes the next batch from q.
func (b *Batcher) takeLocked(q *fwdQueue) []*fwdRequest {
	n, size := 0, 0
	for n < len(q.pending) && n < MaxBatchCommands {
		size += len(q.pending[n].cmd)
		if n > 0 && size > MaxBatchBytes {
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
func (b *Batcher) send(addr string, q *fwdQueue, batch []*fwdRequest) {
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
func (b *Batcher) gather(q *fwdQueue) bool {
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
func (b *Batcher) deliver(addr string, q *fwdQueue, batch []*fwdRequest) {
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
func (b *Batcher) exchange(addr string, batch []*fwdRequest) {
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
	var resp ApplyBatchResponse
	if len(batch) == 1 {
		// A batch of one travels as a plain Apply.
		var one ApplyResponse
		err = b.pool.Call(ctx, addr, MethodApply, &ApplyRequest{Command: cmds[0], Timeout: int64(timeout)}, &one)
		resp.Results = []ApplyResponse{one}
	} else {
		err = b.pool.Call(ctx, addr, MethodApplyBatch, &ApplyBatchRequest{Commands: cmds, Timeout: int64(timeout)}, &resp)
	}
	var refused *RefusedError
	if len(batch) > 1 && errors.As(err, &refused) && refused.TooLarge() {
		half := len(batch) / 2
		b.exchange(addr, batch[:half])
		b.exchange(addr, batch[half:])
		return
	}
	if err == nil && len(resp.Results) != len(batch) {
		err = &CallError{Peer: addr, Sent: true, Err: fmt.Errorf("answered %d of %d commands", len(resp.Results), len(batch))}
	}
	for i, r := range batch {
		if err != nil {
			r.err = err
		} else {
			r.resp = resp.Results[i]
		}
	}
}

// Stop makes later submits fail with sentinel.ErrClosed and waits for the
// batches on their way: close the pool first, so that they end.
func (b *Batcher) Stop() {
	b.mu.Lock()
	b.stopped = true
	b.mu.Unlock()
	b.wg.Wait()
}
