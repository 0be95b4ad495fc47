package main

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	fsmexample "github.com/raftkit/raftkit/fsm_example"
)

// loadResult is what one throughput measurement saw.
type loadResult struct {
	ops      int
	errs     int
	elapsed  time.Duration
	p50, p99 time.Duration
	firstErr error
}

func (r loadResult) opsPerSec() float64 {
	if r.elapsed <= 0 {
		return 0
	}
	return float64(r.ops) / r.elapsed.Seconds()
}

// commandKeys is how many keys each worker writes in turn.
const commandKeys = 16

// command builds a write of about size bytes. Each worker cycles through
// commandKeys keys, which the warmup fills, so that the FSM's map holds
// the same keys in every column whatever its throughput: the memory
// scenario then compares the nodes, not how many writes each made.
func command(worker, seq, size int) []byte {
	key := fmt.Sprintf("w%03d-%03d", worker, seq%commandKeys)
	return fsmexample.Set(key, make([]byte, max(size-len(key)-4, 1)))
}

// runLoad runs clients workers calling op for warmup+d and measures the
// last d. op gets the worker number and its sequence number.
func runLoad(clients int, warmup, d time.Duration, op func(ctx context.Context, w, seq int) error) loadResult {
	var (
		measuring atomic.Bool
		stop      atomic.Bool
		wg        sync.WaitGroup
		mu        sync.Mutex
		lat       []time.Duration
		res       loadResult
	)
	for w := 0; w < clients; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			var mine []time.Duration
			errs := 0
			var firstErr error
			for seq := 0; !stop.Load(); seq++ {
				t0 := time.Now()
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				err := op(ctx, w, seq)
				cancel()
				if !measuring.Load() {
					continue
				}
				if err != nil {
					errs++
					if firstErr == nil {
						firstErr = err
					}
					continue
				}
				mine = append(mine, time.Since(t0))
			}
			mu.Lock()
			lat = append(lat, mine...)
			res.errs += errs
			if res.firstErr == nil {
				res.firstErr = firstErr
			}
			mu.Unlock()
		}(w)
	}
	time.Sleep(warmup)
	measuring.Store(true)
	t0 := time.Now()
	time.Sleep(d)
	measuring.Store(false)
	res.elapsed = time.Since(t0)
	stop.Store(true)
	wg.Wait()
	res.ops = len(lat)
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	if len(lat) > 0 {
		res.p50 = lat[len(lat)/2]
		res.p99 = lat[min(len(lat)-1, len(lat)*99/100)]
	}
	return res
}

// leaderOf waits for a leader and returns its index.
func leaderOf(c cluster, limit time.Duration) (int, error) {
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		for i := 0; i < 3; i++ {
			if c.isLeader(i) {
				return i, nil
			}
		}
		time.Sleep(time.Millisecond)
	}
	return -1, fmt.Errorf("no leader within %s", limit)
}

// prober writes sequentially to whichever node leads and records when
// each write succeeded, to measure how long writes were unavailable.
type prober struct {
	c    cluster
	size int
	mu   sync.Mutex
	ok   []time.Time
	stop atomic.Bool
	done chan struct{}
}

func startProber(c cluster, size int) *prober {
	p := &prober{c: c, size: size, done: make(chan struct{})}
	go func() {
		defer close(p.done)
		for seq := 0; !p.stop.Load(); seq++ {
			wrote := false
			for i := 0; i < 3 && !wrote; i++ {
				if !c.isLeader(i) {
					continue
				}
				ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
				err := c.applyLeader(ctx, i, command(999, seq, size))
				cancel()
				if err == nil {
					p.mu.Lock()
					p.ok = append(p.ok, time.Now())
					p.mu.Unlock()
				}
				wrote = true
			}
			if !wrote {
				time.Sleep(200 * time.Microsecond)
			}
		}
	}()
	return p
}

func (p *prober) finish() []time.Time {
	p.stop.Store(true)
	<-p.done
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]time.Time(nil), p.ok...)
}

// gapAfter returns the longest time between two successive successful
// writes where the later one falls in [from, to).
func gapAfter(ok []time.Time, from, to time.Time) time.Duration {
	var worst time.Duration
	for i := 1; i < len(ok); i++ {
		if ok[i].Before(from) || !ok[i].Before(to) {
			continue
		}
		if g := ok[i].Sub(ok[i-1]); g > worst {
			worst = g
		}
	}
	return worst
}

func median(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}

func medianF(fs []float64) float64 {
	if len(fs) == 0 {
		return 0
	}
	s := append([]float64(nil), fs...)
	sort.Float64s(s)
	return s[len(s)/2]
}
