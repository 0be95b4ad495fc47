package raftkit

import (
	"context"
	"errors"
	"testing"
	"time"
)

// A sender that answered callers gathers until every caller answered, by
// it or by another sender, has submitted again; callers that do not come
// back cost it at most gatherYields and do not hold up later gathers.
func TestSenderGathersEveryCallerAnswered(t *testing.T) {
	b := newApplyBatcher(nil)
	// Both batch slots busy, 3 callers answered (2 by one sender, 1 by
	// the other): no submit starts a sender of its own.
	q := &fwdQueue{inFlight: maxBatchesInFlight, awaited: 3}
	b.queues["leader"] = q
	ctx, cancel := context.WithCancel(context.Background())
	errs := make(chan error, 5)
	submit := func() {
		go func() {
			_, err := b.submit(ctx, "leader", []byte("x"))
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
		waitFor(t, 10*time.Second, "commands to arrive", func() bool {
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
		if err := <-errs; !errors.Is(err, ErrNotApplied) || errors.Is(err, ErrUnknownOutcome) {
			t.Errorf("unsent command after its context ended: %v, want not applied", err)
		}
	}
}
