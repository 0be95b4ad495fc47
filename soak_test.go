package raftkit

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"io"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
)

// The soak: three nodes over loopback TCP in this process, with their
// files on disk and raftkit's defaults but for a 5 s SnapshotInterval
// (so that compactions come often), write without pause from many
// writers, through every node, for each size class and on each store.
// Every second it samples the commits, the longest write, each data
// directory's size, the first log index and the heap. It fails on
//
//   - a second in which nothing was committed,
//   - a write slower than its class's bound (soakClasses),
//   - any error (nothing is cut here, so every write must succeed),
//   - a data directory over its bound (soakDirBound) or over 1 GiB,
//   - a heap of more than 64 MiB, all three nodes together, 10 s after
//     the writes stop.
//
// It runs only when RAFTKIT_SOAK is set: "ci" for the short run (about
// five minutes in all; .ci/run runs it), or a duration such as "1h" for
// the long one, which each store runs for that long, split among the
// classes (half for 128 B, a quarter each for 64 KiB and 1 MiB).
// RAFTKIT_SOAK_STORE=bolt or wal runs one store only. See
// docs/performance.md for the figures of the long run.
func TestSoak(t *testing.T) {
	mode := os.Getenv("RAFTKIT_SOAK")
	if mode == "" {
		t.Skip("set RAFTKIT_SOAK=ci (short run) or a duration such as 1h (long run per store) to soak; see docs/performance.md")
	}
	long := time.Duration(0)
	if mode != "ci" {
		d, err := time.ParseDuration(mode)
		if err != nil || d <= 0 {
			t.Fatalf("RAFTKIT_SOAK=%q: want ci or a duration such as 1h", mode)
		}
		long = d
	}
	for _, kind := range logStores {
		if s := os.Getenv("RAFTKIT_SOAK_STORE"); s != "" && s != map[LogStoreKind]string{LogStoreBolt: "bolt", LogStoreWAL: "wal"}[kind] {
			continue
		}
		for _, class := range soakClasses {
			d := class.ci
			if long > 0 {
				d = time.Duration(float64(long) * class.share)
			}
			t.Run(fmt.Sprintf("%s/%s", kind, class.name), func(t *testing.T) {
				soak(t, kind, class, d)
			})
		}
	}
}

type soakClass struct {
	name    string
	size    int           // bytes of each value
	writers int           // concurrent writers, spread over the nodes
	bound   time.Duration // the slowest write allowed
	ci      time.Duration // how long the short run writes
	share   float64       // of the long run
}

var soakClasses = []soakClass{
	{"128B", 128, 64, time.Second, 60 * time.Second, 0.5},
	{"64KiB", 64 << 10, 8, 2 * time.Second, 20 * time.Second, 0.25},
	{"1MiB", 1 << 20, 4, 5 * time.Second, 40 * time.Second, 0.25},
}

// soakKeys bounds the key space, so that the FSM stays small.
const soakKeys = 1024

// soakHeapLimit is the most heap the three nodes may hold 10 s after the
// writes stop.
const soakHeapLimit = 64 << 20

// soakDirBound is the documented bound on a data directory (README, "Disk
// use"): (SnapshotRetain + 1) snapshots, and twice the log's bound
// (TrailingLogBytes + SnapshotThresholdBytes), the log's own high-water
// mark with what arrives while a snapshot is taken.
func soakDirBound(snapshot int64) int64 {
	return (DefaultSnapshotRetain+1)*snapshot + 2*(DefaultTrailingLogBytes+DefaultSnapshotThresholdBytes)
}

// soakFSM keeps each key's last value as a hash and a length: the FSM
// stays a few KiB whatever the values.
type soakFSM struct {
	mu   sync.Mutex
	keys map[string][2]uint64
}

func (f *soakFSM) Apply(l *raft.Log) any {
	if len(l.Data) < 2 {
		return fmt.Errorf("soak command of %d bytes", len(l.Data))
	}
	key := string(l.Data[:2])
	h := fnv.New64a()
	h.Write(l.Data[2:])
	f.mu.Lock()
	f.keys[key] = [2]uint64{h.Sum64(), uint64(len(l.Data))}
	f.mu.Unlock()
	return nil
}

func (f *soakFSM) Snapshot() (raft.FSMSnapshot, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	b, err := json.Marshal(f.keys)
	return soakSnapshot(b), err
}

func (f *soakFSM) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	keys := map[string][2]uint64{}
	if err := json.NewDecoder(rc).Decode(&keys); err != nil {
		return err
	}
	f.mu.Lock()
	f.keys = keys
	f.mu.Unlock()
	return nil
}

type soakSnapshot []byte

func (s soakSnapshot) Persist(sink raft.SnapshotSink) error {
	if _, err := sink.Write(s); err != nil {
		_ = sink.Cancel()
		return err
	}
	return sink.Close()
}

func (soakSnapshot) Release() {}

// soakStats is what the writers report and the sampler reads each second.
type soakStats struct {
	commits  atomic.Int64
	errors   atomic.Int64
	slowest  atomic.Int64 // ns, of writes completed since the last sample
	mu       sync.Mutex
	lat      latencies
	firstErr error
}

// latencies is a histogram of write latencies in fixed memory (an hour of
// writes kept one by one took 80 MiB, which the heap check then counted):
// 64 buckets per power of two from 1 µs, so a percentile is within 1.1 %.
type latencies struct {
	buckets [40 * 64]int64
	n       int64
	max     time.Duration
}

const latSub = 64

func (l *latencies) add(d time.Duration) {
	us := max(float64(d)/float64(time.Microsecond), 1)
	i := min(int(math.Log2(us)*latSub), len(l.buckets)-1)
	l.buckets[i]++
	l.n++
	l.max = max(l.max, d)
}

// pct is the p-th quantile (0 < p < 1), to the bucket's upper bound.
func (l *latencies) pct(p float64) time.Duration {
	want := int64(math.Ceil(p * float64(l.n)))
	var seen int64
	for i, c := range l.buckets {
		if seen += c; c > 0 && seen >= want {
			return time.Duration(math.Exp2(float64(i+1)/latSub) * float64(time.Microsecond)).Round(10 * time.Microsecond)
		}
	}
	return l.max
}

func (s *soakStats) done(d time.Duration, err error) {
	if err != nil {
		if s.errors.Add(1) == 1 {
			s.mu.Lock()
			s.firstErr = err
			s.mu.Unlock()
		}
		return
	}
	s.commits.Add(1)
	for {
		old := s.slowest.Load()
		if int64(d) <= old || s.slowest.CompareAndSwap(old, int64(d)) {
			break
		}
	}
	s.mu.Lock()
	s.lat.add(d)
	s.mu.Unlock()
}

func dirSize(dir string) int64 {
	var total int64
	_ = filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			if fi, err := d.Info(); err == nil {
				total += fi.Size()
			}
		}
		return nil
	})
	return total
}

func heapAfterGC() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

func soak(t *testing.T, kind LogStoreKind, class soakClass, d time.Duration) {
	addrs, lns := reservePorts(t, 3)
	base := t.TempDir()
	var nodes []*RaftNode
	var dirs []string
	for i := range addrs {
		dir := filepath.Join(base, fmt.Sprintf("node%d", i))
		dirs = append(dirs, dir)
		n, err := NewRaftNode(Config{
			Addr: addrs[i], Listener: lns[i], Peers: addrs, Dir: dir, LogStore: kind,
			SnapshotInterval: 5 * time.Second, Logger: soakLogger(t),
		}, &soakFSM{keys: map[string][2]uint64{}})
		if err != nil {
			t.Fatal(err)
		}
		nodes = append(nodes, n)
	}
	defer func() {
		for _, n := range nodes {
			_ = n.Close()
		}
	}()
	ctx := ctxTimeout(t, d+2*time.Minute)
	if _, err := nodes[0].WaitForLeader(ctx); err != nil {
		t.Fatal(err)
	}

	var stats soakStats
	writeCtx, stopWrites := context.WithTimeout(ctx, d)
	defer stopWrites()
	var writers sync.WaitGroup
	for w := 0; w < class.writers; w++ {
		writers.Add(1)
		go func(w int) {
			defer writers.Done()
			n := nodes[w%len(nodes)]
			cmd := make([]byte, class.size) // key, sequence number, zeros
			for i := uint64(0); ; i++ {
				key := uint16((uint64(w)*7919 + i) % soakKeys)
				binary.BigEndian.PutUint16(cmd, key)
				binary.BigEndian.PutUint64(cmd[2:], i)
				if writeCtx.Err() != nil {
					return
				}
				// Each write has its own deadline, independent of the
				// run's end, so that every write counts.
				wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
				start := time.Now()
				_, err := n.Apply(wctx, cmd)
				cancel()
				stats.done(time.Since(start), err)
				if err != nil {
					time.Sleep(10 * time.Millisecond) // no spinning on a failing node
				}
			}
		}(w)
	}

	t.Logf("%s %s: %d writers of %d B for %s; sampling every second", kind, class.name, class.writers, class.size, d)
	var (
		failures  []string
		maxDir    int64
		maxHeap   uint64
		lastTotal int64
		zeroRun   int
	)
	fail := func(format string, args ...any) {
		if len(failures) < 20 {
			failures = append(failures, fmt.Sprintf(format, args...))
		}
	}
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	start := time.Now()
	for sec := 1; ; sec++ {
		select {
		case <-writeCtx.Done():
		case <-tick.C:
		}
		if writeCtx.Err() != nil {
			break
		}
		total := stats.commits.Load()
		commits := total - lastTotal
		lastTotal = total
		slowest := time.Duration(stats.slowest.Swap(0))
		var sizes []int64
		var snap int64
		for _, dir := range dirs {
			sz := dirSize(dir)
			sizes = append(sizes, sz)
			maxDir = max(maxDir, sz)
			// The snapshots' own files, not the store's List, which
			// warns of the one being written.
			states, _ := filepath.Glob(filepath.Join(dir, "snapshots", "*", "state.bin"))
			for _, st := range states {
				if fi, err := os.Stat(st); err == nil {
					snap = max(snap, fi.Size())
				}
			}
		}
		first, _ := nodes[0].stores.Log.FirstIndex()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		maxHeap = max(maxHeap, ms.HeapAlloc)
		if sec%10 == 1 || commits == 0 || slowest > class.bound {
			t.Logf("t=%3ds commits=%6d slowest=%8s dirs=%v MiB first_index=%d heap=%d MiB", sec, commits, slowest.Round(time.Millisecond), mib(sizes), first, ms.HeapAlloc>>20)
		}
		if commits == 0 {
			zeroRun++
			fail("t=%ds: no write committed in the second", sec)
		} else {
			zeroRun = 0
		}
		if slowest > class.bound {
			fail("t=%ds: a write took %s (bound %s)", sec, slowest, class.bound)
		}
		for i, sz := range sizes {
			if bound := min(soakDirBound(snap), 1<<30); sz > bound {
				fail("t=%ds: node %d's directory holds %d MiB, over its bound of %d MiB", sec, i, sz>>20, bound>>20)
			}
		}
	}
	writers.Wait()
	elapsed := time.Since(start)

	// The heap, all three nodes together, once they have been idle for
	// 10 s: caches emptied, batch buffers given back.
	time.Sleep(10 * time.Second) // the idle period is what is measured
	heap := heapAfterGC()
	if path := os.Getenv("RAFTKIT_SOAK_HEAPPROFILE"); path != "" {
		if f, err := os.Create(fmt.Sprintf("%s.%s.%s", path, kind, class.name)); err == nil {
			_ = pprof.WriteHeapProfile(f)
			_ = f.Close()
		}
	}
	if heap > soakHeapLimit {
		fail("heap %d MiB 10 s after the writes stopped, over %d MiB", heap>>20, soakHeapLimit>>20)
	}
	stats.mu.Lock()
	lat := stats.lat
	stats.mu.Unlock()
	first, _ := nodes[0].stores.Log.FirstIndex()
	last, _ := nodes[0].stores.Log.LastIndex()
	t.Logf("SOAK %s %s: %s, %d writes (%.0f/s), p50 %s p99 %s max %s, largest directory %d MiB, peak heap %d MiB, heap after 10 s idle %d MiB, log %d-%d, errors %d",
		kind, class.name, elapsed.Round(time.Second), lat.n, float64(lat.n)/elapsed.Seconds(), lat.pct(0.5), lat.pct(0.99), lat.max.Round(time.Millisecond),
		maxDir>>20, maxHeap>>20, heap>>20, first, last, stats.errors.Load())
	if n := stats.errors.Load(); n > 0 {
		stats.mu.Lock()
		failures = append([]string{fmt.Sprintf("%d writes failed, the first with: %v", n, stats.firstErr)}, failures...)
		stats.mu.Unlock()
	}
	if len(failures) > 0 {
		t.Fatalf("soak failed:\n  %s", strings.Join(failures, "\n  "))
	}
}

func mib(sizes []int64) []int64 {
	out := make([]int64, len(sizes))
	for i, s := range sizes {
		out[i] = s >> 20
	}
	return out
}

// soakLogger logs raft's and raftkit's warnings and errors only, so that
// an election or a failing store shows in the soak's output.
func soakLogger(t *testing.T) hclog.Logger {
	return hclog.New(&hclog.LoggerOptions{Name: "soak", Level: hclog.Warn, Output: testWriter{t}})
}
