// Command raftkit-bench measures raftkit against a hashicorp/raft cluster
// wired by hand, side by side in one run: three nodes in this process on
// loopback TCP, with their files in a temporary directory.
//
//	cd tools && go run ./cmd/raftkit-bench [flags]
//
// For each scenario it prints the plain cluster's figure, raftkit's with
// the same raft configuration (raft.DefaultConfig timeouts and batching),
// raftkit's with its own defaults, and the ratios. Clusters of each kind
// are built alternately, so that drift in the machine's load hits all
// columns alike. See -h for the scenarios and sizes.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"strings"
	"time"
)

type options struct {
	scenarios map[string]bool
	variants  []clusterSpec
	stores    []string
	duration  time.Duration
	warmup    time.Duration
	size      int
	rounds    int
	failovers int
	every     time.Duration
	loadConns int
	dir       string
	markdown  bool
	// memProfile, when set, names the heap profiles written at the
	// memory measurement: memProfile.<variant>.<round>.
	memProfile string
	// largeSizes are the large scenario's command sizes (nil: largeSizes),
	// largeBytes about how much it writes per size (0: largeBytes).
	largeSizes []int
	largeBytes int
}

const allScenarios = "seq,c64,c256,fwd1,fwd64,read-leader,read-follower,startup,memory,large,failover,handover"

func main() {
	scen := flag.String("scenarios", allScenarios, "comma-separated scenarios to run: "+allScenarios)
	variants := flag.String("variants", "plain,same,raftkit", "columns: plain (hand-wired hashicorp/raft), same (raftkit with plain's raft config), raftkit (raftkit defaults)")
	store := flag.String("store", "bolt", "log store: bolt, wal, or both")
	duration := flag.Duration("duration", 3*time.Second, "measured time of each throughput scenario")
	warmup := flag.Duration("warmup", 500*time.Millisecond, "unmeasured load before each throughput scenario")
	size := flag.Int("size", 128, "bytes per command")
	rounds := flag.Int("rounds", 1, "repeat the throughput scenarios this many times and report medians")
	failovers := flag.Int("failovers", 5, "leader crashes (failover) and planned stops (handover) per cluster")
	every := flag.Duration("every", 2*time.Second, "time between two crashes or stops; -failovers 20 -every 3s is a 60 s steady-load run")
	loadConns := flag.Int("load", 16, "clients writing steadily during failover and handover")
	dir := flag.String("dir", "", "where the nodes' files go (default: a temporary directory, removed at exit)")
	markdown := flag.Bool("markdown", true, "print the table as Markdown")
	cpuProfile := flag.String("cpuprofile", "", "write a CPU profile of the whole run to this file")
	memProfile := flag.String("memprofile", "", "write a heap profile of each cluster at the memory measurement to this file name plus .<variant>.<n>")
	memProfileRate := flag.Int("memprofilerate", 0, "runtime.MemProfileRate for -memprofile (0: Go's default, one sample per 512 KiB)")
	flag.Parse()
	if *memProfileRate > 0 {
		runtime.MemProfileRate = *memProfileRate
	}
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			log.Fatal(err)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			log.Fatal(err)
		}
		defer pprof.StopCPUProfile()
	}

	o := options{
		scenarios: map[string]bool{},
		duration:  *duration, warmup: *warmup, size: *size, rounds: max(*rounds, 1),
		failovers: *failovers, every: *every, loadConns: *loadConns, markdown: *markdown,
		memProfile: *memProfile,
	}
	for _, s := range strings.Split(*scen, ",") {
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		if !strings.Contains(","+allScenarios+",", ","+s+",") {
			log.Fatalf("unknown scenario %q; choose from %s", s, allScenarios)
		}
		o.scenarios[s] = true
	}
	switch *store {
	case "bolt", "wal":
		o.stores = []string{*store}
	case "both":
		o.stores = []string{"bolt", "wal"}
	default:
		log.Fatalf("-store must be bolt, wal or both, not %q", *store)
	}
	for _, v := range strings.Split(*variants, ",") {
		switch strings.TrimSpace(v) {
		case "plain":
			o.variants = append(o.variants, clusterSpec{kind: "plain", name: "plain raft"})
		case "same":
			o.variants = append(o.variants, clusterSpec{kind: "raftkit", name: "raftkit, same config", same: true})
		case "raftkit":
			o.variants = append(o.variants, clusterSpec{kind: "raftkit", name: "raftkit defaults"})
		default:
			log.Fatalf("unknown variant %q", v)
		}
	}
	if len(o.variants) == 0 {
		log.Fatal("-variants names no variant")
	}
	o.dir = *dir
	if o.dir == "" {
		d, err := os.MkdirTemp("", "raftkit-bench-")
		if err != nil {
			log.Fatal(err)
		}
		defer os.RemoveAll(d)
		o.dir = d
	}
	printMachine()
	for _, st := range o.stores {
		t := newTable(st, o.variants)
		if err := runAll(o, st, t); err != nil {
			log.Print(err)
		}
		fmt.Printf("\n### Log store: %s; %d B commands; %s per throughput scenario; %d round(s)\n\n", st, o.size, o.duration, o.rounds)
		t.print(o.markdown)
		t.targets()
	}
}

// residentBytes is the process's anonymous resident memory (RssAnon:
// heap, stacks, runtime), or 0 where /proc does not tell it. File-backed
// pages are left out: bbolt maps raft.db, and a column that wrote more has
// a larger file mapped, which says nothing about the nodes' own memory.
func residentBytes() int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "RssAnon:"); ok {
			var kb int64
			if _, err := fmt.Sscanf(strings.TrimSpace(rest), "%d kB", &kb); err == nil {
				return kb << 10
			}
		}
	}
	return 0
}

// writeHeapProfile writes the heap profile of what is live now.
func writeHeapProfile(name string) error {
	f, err := os.Create(name)
	if err != nil {
		return err
	}
	if err := pprof.Lookup("heap").WriteTo(f, 0); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func printMachine() {
	host, _ := os.Hostname()
	fmt.Printf("raftkit-bench: %s, %s/%s, GOMAXPROCS=%d, NumCPU=%d, host %s, %s\n",
		runtime.Version(), runtime.GOOS, runtime.GOARCH, runtime.GOMAXPROCS(0), runtime.NumCPU(), host, time.Now().UTC().Format(time.RFC3339))
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		fmt.Printf("load average at start: %s", b)
	}
}

var throughputScenarios = []string{"seq", "c64", "c256", "fwd1", "fwd64", "read-leader", "read-follower"}

func runAll(o options, store string, t *table) error {
	wantThroughput := o.scenarios["startup"] || o.scenarios["memory"]
	for _, s := range throughputScenarios {
		wantThroughput = wantThroughput || o.scenarios[s]
	}
	// Each store's clusters get directories of their own: a directory
	// holds one kind of log store.
	o.dir = filepath.Join(o.dir, store)
	n := 0
	if wantThroughput {
		for round := 0; round < o.rounds; round++ {
			// Alternate the order of the variants between rounds.
			for k := range o.variants {
				v := o.variants[(k+round)%len(o.variants)]
				v.store = store
				n++
				if err := throughputRound(o, v, fmt.Sprintf("%s/t%d", o.dir, n), t); err != nil {
					return fmt.Errorf("%s: %w", v.name, err)
				}
			}
		}
	}
	if o.scenarios["large"] {
		for _, v := range o.variants {
			v.store = store
			n++
			if err := largeRun(o, v, fmt.Sprintf("%s/l%d", o.dir, n), t); err != nil {
				return fmt.Errorf("%s large: %w", v.name, err)
			}
		}
	}
	for _, sc := range []string{"failover", "handover"} {
		if !o.scenarios[sc] {
			continue
		}
		for _, v := range o.variants {
			v.store = store
			n++
			if err := availabilityRun(o, v, sc, fmt.Sprintf("%s/a%d", o.dir, n), t); err != nil {
				return fmt.Errorf("%s %s: %w", v.name, sc, err)
			}
		}
	}
	return nil
}

// throughputRound builds one cluster of kind v and runs the throughput
// scenarios on it, then measures its memory.
func throughputRound(o options, v clusterSpec, dir string, t *table) error {
	debug.FreeOSMemory()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	rssBefore := residentBytes()
	goroutinesBefore := runtime.NumGoroutine()

	c, err := newCluster(v, dir)
	if err != nil {
		return err
	}
	defer c.closeAll()
	startup, err := startAll(c, command(0, 0, o.size), 30*time.Second)
	if err != nil {
		return err
	}
	t.addDur("startup", "start -> first write", v.name, startup, lowerBetter)
	l, err := leaderOf(c, 10*time.Second)
	if err != nil {
		return err
	}
	followers := []int{(l + 1) % 3, (l + 2) % 3}
	writeFor := func(clients int, warmup, d time.Duration) loadResult {
		return runLoad(clients, warmup, d, func(ctx context.Context, w, seq int) error {
			return c.applyLeader(ctx, l, command(w, seq, o.size))
		})
	}
	write := func(clients int) loadResult { return writeFor(clients, o.warmup, o.duration) }
	addLoad := func(sc string, r loadResult) {
		t.addNum(sc, "ops/s", v.name, r.opsPerSec(), higherBetter)
		t.addDur(sc, "p50", v.name, r.p50, lowerBetter)
		t.addDur(sc, "p99", v.name, r.p99, lowerBetter)
		if r.errs > 0 {
			t.note(fmt.Sprintf("%s %s: %d errors, first: %v", v.name, sc, r.errs, r.firstErr))
		}
	}
	if o.scenarios["seq"] {
		addLoad("seq", write(1))
	}
	// fwd64 is judged against c64: the two are measured alternately.
	fwd64 := false
	if o.scenarios["fwd64"] {
		fwd64, _ = c.applyAny(context.Background(), followers[0], command(0, 0, o.size))
	}
	if fwd64 {
		local, fwd := runAlternating(o.warmup, o.duration,
			func(warmup, d time.Duration) loadResult { return writeFor(64, warmup, d) },
			func(warmup, d time.Duration) loadResult {
				return runLoad(64, warmup, d, func(ctx context.Context, w, seq int) error {
					_, err := c.applyAny(ctx, followers[w%2], command(w, seq, o.size))
					return err
				})
			})
		addLoad("c64", local)
		addLoad("fwd64", fwd)
	} else if o.scenarios["fwd64"] {
		// A cluster that cannot forward (plain raft) measures c64 in the
		// same slices, so that its c64 compares with the others'.
		addLoad("c64", runSliced(o.warmup, o.duration, func(warmup, d time.Duration) loadResult { return writeFor(64, warmup, d) }))
	} else if o.scenarios["c64"] || o.scenarios["read-leader"] || o.scenarios["read-follower"] {
		addLoad("c64", write(64))
	}
	if o.scenarios["c256"] {
		addLoad("c256", write(256))
	}
	if o.scenarios["fwd1"] {
		if ok, _ := c.applyAny(context.Background(), followers[0], command(0, 0, o.size)); ok {
			addLoad("fwd1", runLoad(1, o.warmup, o.duration, func(ctx context.Context, w, seq int) error {
				_, err := c.applyAny(ctx, followers[0], command(w, seq, o.size))
				return err
			}))
		}
	}
	if o.scenarios["read-leader"] {
		addLoad("read-leader", runLoad(64, o.warmup, o.duration, func(ctx context.Context, w, seq int) error {
			_, err := c.read(ctx, l)
			return err
		}))
	}
	if o.scenarios["read-follower"] {
		if ok, _ := c.read(context.Background(), followers[0]); ok {
			addLoad("read-follower", runLoad(64, o.warmup, o.duration, func(ctx context.Context, w, seq int) error {
				_, err := c.read(ctx, followers[w%2])
				return err
			}))
		}
	}
	if o.scenarios["memory"] {
		// FreeOSMemory collects and returns free pages to the system,
		// so that the resident set counts what the nodes hold, not what
		// the load left behind for reuse.
		debug.FreeOSMemory()
		var after runtime.MemStats
		runtime.ReadMemStats(&after)
		perNode := (float64(after.HeapInuse) - float64(before.HeapInuse)) / 3
		t.addNum("memory", "Go heap per node (MiB)", v.name, perNode/(1<<20), lowerBetterNum)
		if rss := residentBytes(); rss > 0 && rssBefore > 0 {
			t.addNum("memory", "anonymous RSS per node (MiB)", v.name, float64(rss-rssBefore)/3/(1<<20), lowerBetterNum)
		}
		if o.memProfile != "" {
			if err := writeHeapProfile(fmt.Sprintf("%s.%s.%s", o.memProfile, v.kind+map[bool]string{true: "-same"}[v.same], filepath.Base(dir))); err != nil {
				return err
			}
		}
		t.addNum("memory", "goroutines per node", v.name, float64(runtime.NumGoroutine()-goroutinesBefore)/3, lowerBetterNum)
	}
	return nil
}

// availabilityRun keeps a steady write load on a cluster of kind v and,
// o.failovers times, crashes (failover) or stops (handover) the leader,
// measuring how long writes were unavailable, then restarts the node. It
// also counts elections that no crash or stop caused.
func availabilityRun(o options, v clusterSpec, sc string, dir string, t *table) error {
	c, err := newCluster(v, dir)
	if err != nil {
		return err
	}
	defer c.closeAll()
	if pc, ok := c.(*plainCluster); ok {
		pc.boundWaits = true
	}
	if _, err := startAll(c, command(0, 0, o.size), 30*time.Second); err != nil {
		return err
	}
	stopLoad := make(chan struct{})
	loadDone := make(chan struct{})
	go func() {
		defer close(loadDone)
		runLoadUntil(c, o.loadConns, o.size, stopLoad)
	}()
	p := startProber(c, o.size)
	terms := startTermWatch(c)

	type event struct{ at, settled time.Time }
	var events []event
	time.Sleep(o.every / 2)
	for k := 0; k < o.failovers; k++ {
		l, err := leaderOf(c, 30*time.Second)
		if err != nil {
			break
		}
		at := time.Now()
		if sc == "failover" {
			c.crash(l)
		} else {
			c.stop(l)
		}
		if _, err := firstWrite(c, command(998, k, o.size), 30*time.Second); err != nil {
			t.note(fmt.Sprintf("%s %s: %v", v.name, sc, err))
			break
		}
		if err := c.start(l); err != nil {
			t.note(fmt.Sprintf("%s %s: restart node %d: %v", v.name, sc, l, err))
			break
		}
		// Settled: the restarted node has caught up, or 5 s have passed
		// (under load, raft's default 50 ms commit timeout makes a
		// follower catch up slowly).
		deadline := time.Now().Add(5 * time.Second)
		for time.Now().Before(deadline) {
			if nl, err := leaderOf(c, time.Second); err == nil && c.appliedIndex(l)+2*1024 >= c.lastIndex(nl) {
				break
			}
			time.Sleep(5 * time.Millisecond)
		}
		events = append(events, event{at: at, settled: time.Now().Add(time.Second)})
		time.Sleep(max(0, o.every-time.Since(at)))
	}
	ok := p.finish()
	close(stopLoad)
	<-loadDone
	changes := terms.finish()

	var gaps []time.Duration
	for k, e := range events {
		to := time.Now()
		if k+1 < len(events) {
			to = events[k+1].at
		}
		gaps = append(gaps, gapAfter(ok, e.at, to))
	}
	spurious := 0
	for _, ch := range changes {
		inWindow := false
		for _, e := range events {
			if !ch.Before(e.at) && ch.Before(e.settled) {
				inWindow = true
			}
		}
		if !inWindow {
			spurious++
		}
	}
	label := "leader crash -> writes served"
	if sc == "handover" {
		label = "leader Close/stop -> writes served"
	}
	if len(gaps) > 0 {
		t.addDur(sc, label+" (median)", v.name, median(gaps), lowerBetter)
		worst := gaps[0]
		for _, g := range gaps {
			worst = max(worst, g)
		}
		t.addDur(sc, label+" (max)", v.name, worst, lowerBetter)
	}
	t.addNum(sc, fmt.Sprintf("elections not caused by the %d %s", len(events), map[string]string{"failover": "crashes", "handover": "stops"}[sc]), v.name, float64(spurious), lowerBetterNum)
	return nil
}

// runLoadUntil writes from clients goroutines to the current leader until
// stop closes.
func runLoadUntil(c cluster, clients, size int, stop chan struct{}) {
	done := make(chan struct{})
	for w := 0; w < clients; w++ {
		go func(w int) {
			defer func() { done <- struct{}{} }()
			for seq := 0; ; seq++ {
				select {
				case <-stop:
					return
				default:
				}
				wrote := false
				for i := 0; i < 3; i++ {
					if c.isLeader(i) {
						ctx, cancel := context.WithTimeout(context.Background(), time.Second)
						_ = c.applyLeader(ctx, i, command(w, seq, size))
						cancel()
						wrote = true
						break
					}
				}
				if !wrote {
					time.Sleep(time.Millisecond)
				}
			}
		}(w)
	}
	for w := 0; w < clients; w++ {
		<-done
	}
}

// termWatch records when the highest term among running nodes rises.
type termWatch struct {
	stop    chan struct{}
	done    chan struct{}
	changes []time.Time
}

func startTermWatch(c cluster) *termWatch {
	w := &termWatch{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		var last uint64
		for {
			var top uint64
			for i := 0; i < 3; i++ {
				top = max(top, c.term(i))
			}
			if last != 0 && top > last {
				w.changes = append(w.changes, time.Now())
			}
			last = max(last, top)
			select {
			case <-w.stop:
				return
			case <-time.After(2 * time.Millisecond):
			}
		}
	}()
	return w
}

func (w *termWatch) finish() []time.Time {
	close(w.stop)
	<-w.done
	return w.changes
}
