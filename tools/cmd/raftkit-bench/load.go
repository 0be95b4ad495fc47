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
	lat      []time.Duration // each successful operation's latency, sorted
}

// add merges r2, measured on the same cluster at another time, into r.
func (r *loadResult) add(r2 loadResult) {
	r.ops += r2.ops
	r.errs += r2.errs
	r.elapsed += r2.elapsed
	if r.firstErr == nil {
		r.firstErr = r2.firstErr
	}
	r.lat = append(r.lat, r2.lat...)
	r.percentiles()
}

func (r *loadResult) percentiles() {
	sort.Slice(r.lat, func(i, j int) bool { return r.lat[i] < r.lat[j] })
	if len(r.lat) > 0 {
		r.p50 = r.lat[len(r.lat)/2]
		r.p99 = r.lat[min(len(r.lat)-1, len(r.lat)*99/100)]
	}
}

// sliceWarmup is the warm-up before slice i: the whole warm-up before the
// first, at most 200 ms before the others.
func sliceWarmup(warmup time.Duration, i int) time.Duration {
	if i > 0 {
		return min(warmup, 200*time.Millisecond)
	}
	return warmup
}

// runSliced measures load a as runAlternating measures each of its two.
func runSliced(warmup, d time.Duration, a func(warmup, d time.Duration) loadResult) loadResult {
	var r loadResult
	for i := 0; i < alternateSlices; i++ {
		r.add(a(sliceWarmup(warmup, i), d/alternateSlices))
	}
	return r
}

// alternateSlices is how many slices of its measured time each of two
// alternated loads gets.
const alternateSlices = 4

// runAlternating measures loads a and b, which compare two paths on one
// cluster, in alternated slices (a b b a a b b a), each after its own
// warm-up, so that drift in the machine's disk or load over the run hits
// both alike: on the reference VM, fsync latency moves by 10-20 % within
// minutes, as much as the difference that forwarding makes. Each load is
// measured for d in all.
func runAlternating(warmup, d time.Duration, a, b func(warmup, d time.Duration) loadResult) (loadResult, loadResult) {
	var ra, rb loadResult
	slice := d / alternateSlices
	for i := 0; i < alternateSlices; i++ {
		w := sliceWarmup(warmup, i)
		first, second := a, b
		r1, r2 := &ra, &rb
		if i%2 == 1 {
			first, second, r1, r2 = b, a, &rb, &ra
		}
		r1.add(first(w, slice))
		r2.add(second(w, slice))
	}
	return ra, rb
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
	res.lat = lat
	res.percentiles()
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
