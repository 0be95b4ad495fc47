package peer

import (
	"context"
	"errors"
	"net"
	"sync"
	"testing"
	"time"
)

// A sender that answered callers gathers until every caller answered, by
// it or by another sender, has submitted again; callers that do not come
// back cost it at most gatherYields and do not hold up later gathers.
func TestSenderGathersEveryCallerAnswered(t *testing.T) {
	b := NewBatcher(nil)
	// Both batch slots busy, 3 callers answered (2 by one sender, 1 by
	// the other): no submit starts a sender of its own.
	q := &fwdQueue{inFlight: maxBatchesInFlight, awaited: 3}
	b.queues["leader"] = q
	ctx, cancel := context.WithCancel(context.Background())
	errs := make(chan error, 5)
	submit := func() {
		go func() {
			_, err := b.Submit(ctx, "leader", []byte("x"))
			errs <- err
		}()
	}
	awaited := func() int {
		b.mu.Lock()
		defer b.mu.Unlock()
		return q.awaited
	}
	waitPending := func(n int) {
		t.Helper()
		waitUntil(t, 10*time.Second, "commands to arrive", func() bool {
			b.mu.Lock()
			defer b.mu.Unlock()
			return len(q.pending) == n
		})
	}

	submit()
	submit()
	waitPending(2)
	if b.gather(q) {
		t.Fatal("gather: all callers back, with 1 of 3 still to submit")
	}
	if n := awaited(); n != 0 {
		t.Errorf("after a gather that gave up, %d callers awaited, want 0", n)
	}

	// The next answers: 2 callers, and both come back.
	b.mu.Lock()
	q.awaited = 2
	b.mu.Unlock()
	submit()
	waitPending(3)
	if n := awaited(); n != 1 {
		t.Errorf("after 1 of 2 callers came back, %d awaited, want 1", n)
	}
	submit()
	waitPending(4)
	if !b.gather(q) {
		t.Fatal("gather: not all callers back, with both back")
	}
	submit()
	waitPending(5)
	if n := awaited(); n != 0 {
		t.Errorf("a command beyond those awaited left %d awaited, want 0", n)
	}

	// None of these was sent: ending the context takes them back.
	cancel()
	for i := 0; i < 5; i++ {
		var ce *CanceledError
		if err := <-errs; !errors.As(err, &ce) || ce.Sent {
			t.Errorf("unsent command after its context ended: %v, want a CanceledError, not sent", err)
		}
	}
}

// waitUntil polls cond until it holds or limit passes.
func waitUntil(t *testing.T, limit time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", limit, what)
		}
		time.Sleep(time.Millisecond)
	}
}

// countingHandler applies nothing: it answers every command and counts
// the batches it was sent.
type countingHandler struct {
	mu      sync.Mutex
	batches []int
}

func (h *countingHandler) Apply(_ int64, cmds [][]byte) []ApplyResponse {
	h.mu.Lock()
	h.batches = append(h.batches, len(cmds))
	h.mu.Unlock()
	return make([]ApplyResponse, len(cmds))
}
func (h *countingHandler) ReadIndex(int64) ReadIndexResponse { return ReadIndexResponse{} }
func (h *countingHandler) Membership(*MembershipRequest) MembershipResponse {
	return MembershipResponse{}
}
func (h *countingHandler) Closing(*ClosingRequest)                       {}
func (h *countingHandler) Bootstrap(*BootstrapRequest) BootstrapResponse { return BootstrapResponse{} }
func (h *countingHandler) Features() FeaturesResponse                    { return FeaturesResponse{} }

// A batch over the message cap its peer applies to this node is refused
// whole and sent again in halves, down to what fits; a single command
// over the cap is refused, as too large.
func TestBatchOverThePeersCapIsSentInHalves(t *testing.T) {
	h := &countingHandler{}
	srv, err := NewServer(h)
	if err != nil {
		t.Fatal(err)
	}
	pool := NewPool(func(ctx context.Context, addr string) (net.Conn, error) {
		c, s := net.Pipe()
		go srv.Serve(s, Limits{Deadlines: RPCDeadlines, MaxFrame: 1 << 10})
		return c, nil
	})
	defer pool.Close()
	b := NewBatcher(pool)
	var batch []*fwdRequest
	for i := 0; i < 8; i++ {
		batch = append(batch, &fwdRequest{cmd: make([]byte, 300), deadline: time.Now().Add(5 * time.Second), done: make(chan struct{})})
	}
	b.exchange("leader", batch)
	for i, r := range batch {
		if r.err != nil || r.resp.Err != nil {
			t.Fatalf("command %d: %v %+v", i, r.err, r.resp.Err)
		}
	}
	total := 0
	for _, n := range h.batches {
		total += n
		if n > 2 {
			t.Errorf("a batch of %d commands of 300 B passed a 1 KiB cap", n)
		}
	}
	if total != 8 {
		t.Errorf("the leader was sent %d commands in %v, want each of 8 once", total, h.batches)
	}
	one := []*fwdRequest{{cmd: make([]byte, 2<<10), deadline: time.Now().Add(5 * time.Second), done: make(chan struct{})}}
	b.exchange("leader", one)
	var refused *RefusedError
	if !errors.As(one[0].err, &refused) || !refused.TooLarge() {
		t.Fatalf("a 2 KiB command over a 1 KiB cap: %v, want refused as too large", one[0].err)
	}
}
