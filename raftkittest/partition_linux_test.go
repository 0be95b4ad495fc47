package raftkittest

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"

	"github.com/raftkit/raftkit"
)

// The partition test: five real node processes (internal/kvnode over
// TCP, BoltDB), each in its own network namespace of a netLab, and the
// clients outside them, in the lab's client namespace. A nemesis cuts the
// real links between them (see partitionFaults), stalls processes with
// SIGSTOP and kills and restarts them, while clients write and read
// through every node. After each heal the nemesis waits for the first
// write that starts after the heal to be acknowledged: that wait is the
// unavailability after the heal, and it must stay under
// partitionHealBound. At the end: every acknowledged write is on every
// node, the history is linearizable (porcupine), the replicas' stores are
// identical, and every failed call carried one of raftkit's outcome
// classes.
//
// It runs only when RAFTKIT_PARTITIONS is set, as root:
//
//	RAFTKIT_PARTITIONS=ci go test -run TestPartitionsWithRealProcesses -v ./raftkittest
//
// runs one history with each fault twice, in a seeded order (CI runs it);
// RAFTKIT_PARTITIONS=30m runs histories of RAFTKIT_PARTITIONS_HISTORY
// (default 5m) with longer faults chosen at random, until 30 minutes are
// spent. Each history prints its seed; RAFTKIT_PARTITIONS_SEED=N replays
// the nemesis' schedule and the clients' choices from it (the machine's
// timing is not replayed).
const partitionHealBound = 15 * time.Second

// partitionFaults are the faults the nemesis knows, each healed before
// the next.
var partitionFaults = []string{
	"isolate",        // a node's cable out: no node and no client reaches it
	"isolate-leader", // the leader cut from every node; clients still reach it
	"split",          // two nodes (the leader among them half the time) cut from the other three
	"one-way",        // a node's packets to every other node dropped; it still hears them
	"flap",           // a node's cable out and back every 200-400 ms
	"stall",          // SIGSTOP of the leader while a follower's cable is out
	"kill",           // SIGKILL of a node while another's packets are dropped one way; restart
}

// partitionKeys is how many keys the clients overwrite and read.
const partitionKeys = 8

func TestPartitionsWithRealProcesses(t *testing.T) {
	mode := os.Getenv("RAFTKIT_PARTITIONS")
	if mode == "" {
		t.Skip("set RAFTKIT_PARTITIONS=ci (one short history; .ci/run runs it) or a duration such as 30m; needs root")
	}
	needNetLab(t)
	seed := uint64(time.Now().UnixNano() % 1e6)
	if s := os.Getenv("RAFTKIT_PARTITIONS_SEED"); s != "" {
		var err error
		if seed, err = strconv.ParseUint(s, 10, 64); err != nil {
			t.Fatalf("RAFTKIT_PARTITIONS_SEED=%q: %v", s, err)
		}
	}
	if mode == "ci" {
		runPartitionHistory(t, seed, 0)
		return
	}
	total, err := time.ParseDuration(mode)
	if err != nil {
		t.Fatalf("RAFTKIT_PARTITIONS=%q: want ci or a duration such as 30m", mode)
	}
	each := 5 * time.Minute
	if s := os.Getenv("RAFTKIT_PARTITIONS_HISTORY"); s != "" {
		if each, err = time.ParseDuration(s); err != nil {
			t.Fatalf("RAFTKIT_PARTITIONS_HISTORY=%q: %v", s, err)
		}
	}
	each = min(each, total)
	start := time.Now()
	var all []partitionSummary
	// Histories of each until total is spent; the last one takes what is
	// left, at least a minute.
	for i := uint64(0); time.Since(start) < total; i++ {
		length := min(each, max(total-time.Since(start), time.Minute))
		var s partitionSummary
		t.Run(fmt.Sprintf("seed=%d", seed+i), func(t *testing.T) { s = runPartitionHistory(t, seed+i, length) })
		all = append(all, s)
		if t.Failed() {
			break
		}
	}
	var sum partitionSummary
	for _, s := range all {
		sum.faults += s.faults
		sum.ops += s.ops
		sum.acked += s.acked
		sum.unknown += s.unknown
		sum.gap = max(sum.gap, s.gap)
		if s.longest > sum.longest {
			sum.longest, sum.longestAfter = s.longest, s.longestAfter
		}
	}
	t.Logf("PARTITIONS total: histories=%d time=%s faults=%d ops=%d acked_unique=%d unknown_writes=%d longest_unavailability=%s (after %s) longest_gap_between_acks=%s",
		len(all), time.Since(start).Round(time.Second), sum.faults, sum.ops, sum.acked, sum.unknown, sum.longest.Round(time.Millisecond), sum.longestAfter, sum.gap.Round(time.Millisecond))
}

// partitionSummary is what one history did, for the log.
type partitionSummary struct {
	faults, ops, acked, unknown int
	longest                     time.Duration
	longestAfter                string
	gap                         time.Duration // longest time between two acknowledgements
}

// partitionRun is one history: the lab, the processes, the clients and
// the nemesis' state.
type partitionRun struct {
	t       *testing.T
	rng     *rand.Rand
	long    bool
	lab     *netLab
	pc      *procCluster
	clients *labClients

	stoppedMu sync.Mutex
	stopped   map[*proc]bool
}

// runPartitionHistory runs one history of seed: each fault twice if
// length is zero, rounds of every fault for length otherwise.
func runPartitionHistory(t *testing.T, seed uint64, length time.Duration) partitionSummary {
	replay := fmt.Sprintf("RAFTKIT_PARTITIONS=%s RAFTKIT_PARTITIONS_SEED=%d", os.Getenv("RAFTKIT_PARTITIONS"), seed)
	if length > 0 {
		replay = fmt.Sprintf("RAFTKIT_PARTITIONS=%s RAFTKIT_PARTITIONS_SEED=%d", length, seed)
	}
	t.Logf("seed=%d (replay: %s go test -run TestPartitionsWithRealProcesses -v ./raftkittest)", seed, replay)
	r := &partitionRun{t: t, rng: rand.New(rand.NewPCG(seed, 31)), long: length > 0, stopped: map[*proc]bool{}}
	r.start(5)
	r.clients = startLabClients(r.pc, 6, seed, "linearizable")
	t.Cleanup(r.clients.stop) // on failure; stopping twice is harmless

	// Faults come in rounds, each a shuffle of every kind; a short run
	// is two rounds.
	var faults []string
	begin := time.Now()
	var heals []healRecord
	for i := 0; ; i++ {
		if length == 0 && i == 2*len(partitionFaults) || length > 0 && time.Since(begin) >= length {
			break
		}
		if i%len(partitionFaults) == 0 {
			faults = append([]string(nil), partitionFaults...)
			r.rng.Shuffle(len(faults), func(i, j int) { faults[i], faults[j] = faults[j], faults[i] })
		}
		kind := faults[i%len(faults)]
		pause(t.Context(), time.Duration(300+r.rng.IntN(1200))*time.Millisecond)
		what := r.inject(kind)
		healed := time.Now()
		wait := r.clients.firstAckAfter(t, healed, 4*partitionHealBound)
		heals = append(heals, healRecord{what: what, wait: wait})
		t.Logf("fault %d: %s; healed, first write acknowledged after %s; leader %s", i+1, what, wait.Round(time.Millisecond), r.leaderNow())
	}
	r.clients.stop()

	w := &workload{pc: r.pc, rec: r.clients.rec, acks: r.clients.acks, clients: r.clients.n}
	w.check(t, "the partitions", nil)
	r.assertReplicasIdentical()
	r.clients.assertClassified(t)

	s := partitionSummary{faults: len(heals), acked: len(w.acks.list()), gap: r.clients.longestGap()}
	s.ops, s.unknown = w.rec.counts()
	var over []string
	for _, h := range heals {
		if h.wait > s.longest {
			s.longest, s.longestAfter = h.wait, h.what
		}
		if h.wait > partitionHealBound {
			over = append(over, fmt.Sprintf("%s: %s", h.what, h.wait.Round(time.Millisecond)))
		}
	}
	t.Logf("PARTITIONS seed=%d time=%s faults=%d ops=%d acked_unique=%d unknown_writes=%d longest_unavailability=%s (after %s) longest_gap_between_acks=%s classes=%s",
		seed, time.Since(begin).Round(time.Second), s.faults, s.ops, s.acked, s.unknown, s.longest.Round(time.Millisecond), s.longestAfter,
		s.gap.Round(time.Millisecond), r.clients.classes())
	if len(over) > 0 {
		t.Errorf("writes were unavailable for longer than %s after a heal: %s (replay: %s)", partitionHealBound, strings.Join(over, "; "), replay)
	}
	return s
}

type healRecord struct {
	what string
	wait time.Duration
}

// start makes the lab and starts n kvnode processes in it.
func (r *partitionRun) start(n int) {
	t := r.t
	r.lab = newNetLab(t, n)
	bin := currentNode(t)
	dir := t.TempDir()
	var peers []string
	for i := 0; i < n; i++ {
		peers = append(peers, fmt.Sprintf("n%d=%s:7000", i, r.lab.NodeIP(i)))
	}
	r.pc = &procCluster{t: t, client: &http.Client{Timeout: 3 * time.Second,
		Transport: &http.Transport{DialContext: r.lab.DialContext, MaxIdleConnsPerHost: 16}}}
	for i := 0; i < n; i++ {
		r.pc.procs = append(r.pc.procs, &proc{
			id: fmt.Sprintf("n%d", i), addr: r.lab.NodeIP(i) + ":7000", http: r.lab.NodeIP(i) + ":8000",
			dir: fmt.Sprintf("%s/n%d", dir, i), peers: strings.Join(peers, ","),
			bin: r.lab.wrapNode(dir, i, bin),
		})
	}
	t.Cleanup(func() {
		var wg sync.WaitGroup
		for _, p := range r.pc.procs {
			wg.Add(1)
			go func() { defer wg.Done(); p.stop() }()
		}
		wg.Wait()
		r.pc.client.CloseIdleConnections()
	})
	// Runs before the processes are stopped: a stopped process cannot
	// close, a cut one closes slowly.
	t.Cleanup(func() {
		r.lab.Heal()
		r.resumeAll()
	})
	for _, p := range r.pc.procs {
		p.start(t)
		r.assertNodeIsOwnProcess(p)
	}
	r.pc.leader()
}

// leaderNow names the leader of the highest term any node reports, for
// the log.
func (r *partitionRun) leaderNow() string {
	var best raftkit.Status
	for _, p := range r.pc.procs {
		if st, err := r.pc.status(p); err == nil && st.LeaderID != "" && st.Term > best.Term {
			best = st
		}
	}
	if best.LeaderID == "" {
		return "unknown"
	}
	return fmt.Sprintf("%s term %d", best.LeaderID, best.Term)
}

// assertNodeIsOwnProcess checks that the wrapper exec'd into kvnode, so
// that the pid the test signals is the node's.
func (r *partitionRun) assertNodeIsOwnProcess(p *proc) {
	p.mu.Lock()
	pid := p.cmd.Process.Pid
	p.mu.Unlock()
	comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	if err != nil || !strings.HasPrefix(string(comm), "kvnode") {
		r.t.Fatalf("%s: pid %d runs %q (%v), not kvnode: signals would miss the node", p.id, pid, comm, err)
	}
}

func (r *partitionRun) index(p *proc) int {
	for i, q := range r.pc.procs {
		if q == p {
			return i
		}
	}
	panic("not a process of this run")
}

// leaderOrAny returns the leader's index half the time, a random node's
// otherwise.
func (r *partitionRun) leaderOrAny() int {
	if r.rng.IntN(2) == 0 {
		return r.index(r.pc.leader())
	}
	return r.rng.IntN(len(r.pc.procs))
}

// faultLength is how long a fault lasts.
func (r *partitionRun) faultLength() time.Duration {
	if r.long {
		return time.Duration(2000+r.rng.IntN(8000)) * time.Millisecond
	}
	return time.Duration(1000+r.rng.IntN(1500)) * time.Millisecond
}

// inject applies one fault, waits, heals it and says what it was.
func (r *partitionRun) inject(kind string) string {
	lab, n := r.lab, len(r.pc.procs)
	d := r.faultLength()
	others := func(i int) []int {
		var o []int
		for j := 0; j < n; j++ {
			if j != i {
				o = append(o, j)
			}
		}
		return o
	}
	var what string
	switch kind {
	case "isolate":
		i := r.rng.IntN(n)
		what = fmt.Sprintf("isolate n%d (cable out) %s", i, d)
		lab.Down(i, true)
		pause(r.t.Context(), d)
	case "isolate-leader":
		l := r.index(r.pc.leader())
		what = fmt.Sprintf("isolate leader n%d from the nodes %s", l, d)
		lab.Split([]int{l}, others(l))
		pause(r.t.Context(), d)
	case "split":
		a := r.leaderOrAny()
		b := others(a)[r.rng.IntN(n-1)]
		var rest []int
		for _, j := range others(a) {
			if j != b {
				rest = append(rest, j)
			}
		}
		what = fmt.Sprintf("split n%d n%d | %v %s", a, b, rest, d)
		lab.Split([]int{a, b}, rest)
		pause(r.t.Context(), d)
	case "one-way":
		i := r.leaderOrAny()
		what = fmt.Sprintf("drop n%d's packets to the others (one way) %s", i, d)
		for _, j := range others(i) {
			lab.Block(i, j)
		}
		pause(r.t.Context(), d)
	case "flap":
		i := r.leaderOrAny()
		d = max(d, 2*time.Second)
		toggles := 0
		for end := time.Now().Add(d); time.Now().Before(end); toggles++ {
			lab.Down(i, toggles%2 == 0)
			pause(r.t.Context(), time.Duration(200+r.rng.IntN(200))*time.Millisecond)
		}
		what = fmt.Sprintf("flap n%d's cable %d times over %s", i, toggles, d)
	case "stall":
		l := r.index(r.pc.leader())
		f := others(l)[r.rng.IntN(n-1)]
		d = max(d, 2*time.Second) * 2
		what = fmt.Sprintf("SIGSTOP leader n%d %s while n%d's cable is out", l, d, f)
		lab.Down(f, true)
		r.signal(r.pc.procs[l], syscall.SIGSTOP)
		pause(r.t.Context(), d)
		r.signal(r.pc.procs[l], syscall.SIGCONT)
	case "kill":
		v := r.leaderOrAny()
		o := others(v)[r.rng.IntN(n-1)]
		what = fmt.Sprintf("SIGKILL n%d, restart after %s, while n%d's packets are dropped one way", v, d, o)
		for _, j := range others(o) {
			lab.Block(o, j)
		}
		r.pc.procs[v].kill()
		pause(r.t.Context(), d)
		r.pc.procs[v].start(r.t)
		r.assertNodeIsOwnProcess(r.pc.procs[v])
	default:
		r.t.Fatalf("unknown fault %q", kind)
	}
	lab.Heal()
	return what
}

// signal sends sig to p and remembers which processes are stopped.
func (r *partitionRun) signal(p *proc, sig syscall.Signal) {
	p.mu.Lock()
	cmd := p.cmd
	p.mu.Unlock()
	if cmd == nil {
		return
	}
	if err := cmd.Process.Signal(sig); err != nil {
		r.t.Fatalf("%s to %s: %v", sig, p.id, err)
	}
	r.stoppedMu.Lock()
	r.stopped[p] = sig == syscall.SIGSTOP
	r.stoppedMu.Unlock()
}

func (r *partitionRun) resumeAll() {
	r.stoppedMu.Lock()
	var stopped []*proc
	for p, s := range r.stopped {
		if s {
			stopped = append(stopped, p)
		}
	}
	r.stoppedMu.Unlock()
	for _, p := range stopped {
		r.signal(p, syscall.SIGCONT)
	}
}

// assertReplicasIdentical fails the test unless every node's store is
// the same, once the writes in flight when the clients stopped have
// settled (their outcome may be unknown, so they may still commit).
func (r *partitionRun) assertReplicasIdentical() {
	var diff string
	deadline := time.Now().Add(30 * time.Second)
	for {
		var dumps []map[string]string
		for _, p := range r.pc.procs {
			all, err := r.pc.dump(p)
			if err != nil {
				diff = err.Error()
				break
			}
			dumps = append(dumps, all)
		}
		if len(dumps) == len(r.pc.procs) {
			if diff = replicaDifference(dumps); diff == "" {
				r.t.Logf("replicas identical: %d keys on each of %d nodes", len(dumps[0]), len(dumps))
				return
			}
		}
		if time.Now().After(deadline) {
			r.t.Fatalf("the replicas differ after the partitions: %s", diff)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// replicaDifference describes how the stores differ from the first, or
// returns "" if they are all equal.
func replicaDifference(dumps []map[string]string) string {
	var out []string
	for i := 1; i < len(dumps); i++ {
		if reflect.DeepEqual(dumps[0], dumps[i]) {
			continue
		}
		var keys []string
		for k, v := range dumps[0] {
			if w, ok := dumps[i][k]; !ok || w != v {
				keys = append(keys, k)
			}
		}
		for k := range dumps[i] {
			if _, ok := dumps[0][k]; !ok {
				keys = append(keys, k)
			}
		}
		sort.Strings(keys)
		if len(keys) > 5 {
			keys = append(keys[:5], "…")
		}
		out = append(out, fmt.Sprintf("n%d differs from n0 (%d vs %d keys) at %v", i, len(dumps[i]), len(dumps[0]), keys))
	}
	return strings.Join(out, "; ")
}

// labClients are clients writing and reading through every node from the
// lab's client namespace, tallying each failed call's outcome class.
type labClients struct {
	pc     *procCluster
	rec    *recorder
	acks   *ackSet
	n      int
	cancel func()
	wg     sync.WaitGroup

	consistency string

	mu           sync.Mutex
	ackTimes     []ackTime // in order of acknowledgement
	tally        map[string]int
	unclassified []string
}

type ackTime struct{ call, ret time.Time }

// startLabClients starts n clients; their reads ask for consistency
// ("linearizable", or "stale" for the check's negative control).
func startLabClients(pc *procCluster, n int, seed uint64, consistency string) *labClients {
	c := &labClients{pc: pc, rec: newRecorder(), acks: &ackSet{}, n: n, tally: map[string]int{}, consistency: consistency}
	ctx, cancel := context.WithCancel(context.Background())
	c.cancel = cancel
	for id := 0; id < n; id++ {
		c.wg.Add(1)
		go func() {
			defer c.wg.Done()
			rng := rand.New(rand.NewPCG(uint64(id), seed))
			for seq := 0; ctx.Err() == nil; seq++ {
				p := pc.procs[rng.IntN(len(pc.procs))]
				if !p.running() {
					pause(ctx, 5*time.Millisecond)
					continue
				}
				key := fmt.Sprintf("k%d", rng.IntN(partitionKeys))
				switch r := rng.IntN(10); {
				case r < 4:
					c.put(p, id, key, fmt.Sprintf("c%d-%d", id, seq), false)
				case r < 6:
					c.put(p, id, fmt.Sprintf("ack-c%d-%d", id, seq), "x", true)
				default:
					c.get(p, id, key)
				}
				pause(ctx, time.Duration(rng.IntN(3))*time.Millisecond)
			}
		}()
	}
	return c
}

func (c *labClients) stop() {
	c.cancel()
	c.wg.Wait()
}

// put writes key=value through p and records the outcome by the class
// the node gave it; a call that got no answer is unknown.
func (c *labClients) put(p *proc, client int, key, value string, unique bool) {
	in := kvInput{Op: opPut, Key: key, Value: value}
	call, callTime := c.rec.now(), time.Now()
	req, _ := http.NewRequest(http.MethodPut, "http://"+p.http+"/kv/"+key, strings.NewReader(value))
	resp, err := c.pc.client.Do(req)
	if err != nil {
		c.count("no answer")
		c.rec.unknown(client, in, call)
		return
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	class, outcome := resp.Header.Get("X-Class"), resp.Header.Get(outcomeHeader)
	switch {
	case class == "applied" && outcome == outcomeApplied:
		c.rec.done(client, in, kvOutput{}, call)
		c.mu.Lock()
		c.ackTimes = append(c.ackTimes, ackTime{callTime, time.Now()})
		c.mu.Unlock()
		if unique {
			c.acks.add(key)
		}
		return
	case (class == "not_applied" || class == "closed") && outcome == outcomeNotApplied:
	case class == "unknown_outcome" && outcome == outcomeUnknown:
		c.rec.unknown(client, in, call)
	default:
		c.rec.unknown(client, in, call)
		c.noteUnclassified(fmt.Sprintf("PUT on %s: %s class=%q outcome=%q: %s", p.id, resp.Status, class, outcome, body))
		return
	}
	c.count("put " + class)
}

// get reads key linearizably through p; failed reads are not recorded.
func (c *labClients) get(p *proc, client int, key string) {
	call := c.rec.now()
	resp, err := c.pc.client.Get("http://" + p.http + "/kv/" + key + "?consistency=" + c.consistency)
	if err != nil {
		c.count("no answer")
		return
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		c.count("no answer")
		return
	}
	switch class := resp.Header.Get("X-Class"); {
	case resp.StatusCode == http.StatusOK:
		c.rec.done(client, kvInput{Op: opGet, Key: key}, kvOutput{Value: string(body)}, call)
	case resp.StatusCode == http.StatusNotFound:
		c.rec.done(client, kvInput{Op: opGet, Key: key}, kvOutput{}, call)
	case class == "not_applied" || class == "unknown_outcome" || class == "closed":
		c.count("read " + class)
	default:
		c.noteUnclassified(fmt.Sprintf("GET on %s: %s class=%q: %s", p.id, resp.Status, class, body))
	}
}

func (c *labClients) count(what string) {
	c.mu.Lock()
	c.tally[what]++
	c.mu.Unlock()
}

func (c *labClients) noteUnclassified(s string) {
	c.mu.Lock()
	c.tally["unclassified"]++
	if len(c.unclassified) < 10 {
		c.unclassified = append(c.unclassified, s)
	}
	c.mu.Unlock()
}

func (c *labClients) classes() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var parts []string
	for k, n := range c.tally {
		parts = append(parts, fmt.Sprintf("%q:%d", k, n))
	}
	sort.Strings(parts)
	return "{" + strings.Join(parts, " ") + "}"
}

// assertClassified fails the test if a node answered a failed call
// without one of the outcome classes a write or read can have.
func (c *labClients) assertClassified(t *testing.T) {
	t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	if n := c.tally["unclassified"]; n > 0 {
		t.Errorf("%d calls failed without an outcome class; the first: %s", n, strings.Join(c.unclassified, " | "))
	}
}

// longestGap is the longest time between two acknowledgements, faults
// included: how long writes were unavailable at worst.
func (c *labClients) longestGap() time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	var gap time.Duration
	for i := 1; i < len(c.ackTimes); i++ {
		gap = max(gap, c.ackTimes[i].ret.Sub(c.ackTimes[i-1].ret))
	}
	return gap
}

// firstAckAfter waits for the first write that was called after healed to
// be acknowledged and returns how long after healed that was; it fails
// the test after limit.
func (c *labClients) firstAckAfter(t *testing.T, healed time.Time, limit time.Duration) time.Duration {
	t.Helper()
	var found time.Duration
	waitUntil(t, limit, "a write acknowledged after the heal", func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		for i := len(c.ackTimes) - 1; i >= 0 && !c.ackTimes[i].ret.Before(healed); i-- {
			if !c.ackTimes[i].call.Before(healed) {
				found = c.ackTimes[i].ret.Sub(healed)
			}
		}
		return found > 0
	})
	return found
}

// The partition test's own oracles, each shown able to fail.

// TestPartitionCheckCatchesStaleReads is the end-to-end negative control:
// the same processes, lab and check, but clients that read without a
// read barrier, while the leader is cut from the other nodes. Its own
// stale answers (and lagging followers') must make the history fail.
func TestPartitionCheckCatchesStaleReads(t *testing.T) {
	if os.Getenv("RAFTKIT_PARTITIONS") == "" {
		t.Skip("set RAFTKIT_PARTITIONS=ci; needs root")
	}
	needNetLab(t)
	r := &partitionRun{t: t, rng: rand.New(rand.NewPCG(1, 31)), stopped: map[*proc]bool{}}
	r.start(5)
	r.clients = startLabClients(r.pc, 6, 1, "stale")
	t.Cleanup(r.clients.stop)
	for i := 0; i < 8; i++ {
		pause(t.Context(), 500*time.Millisecond)
		what := r.inject("isolate-leader")
		r.clients.firstAckAfter(t, time.Now(), 4*partitionHealBound)
		if !porcupine.CheckOperations(kvModel, r.clients.rec.history()) {
			t.Logf("after %d faults (the last: %s) the check fails a history of stale reads, as it must", i+1, what)
			return
		}
	}
	t.Fatal("8 isolations of the leader with stale reads, and the history still passes the check: the check cannot see stale reads")
}

func TestReplicaDifferenceNamesTheKeysThatDiffer(t *testing.T) {
	same := map[string]string{"a": "1", "b": "2"}
	if d := replicaDifference([]map[string]string{same, {"a": "1", "b": "2"}}); d != "" {
		t.Fatalf("equal stores reported as different: %s", d)
	}
	for _, other := range []map[string]string{{"a": "1"}, {"a": "1", "b": "3"}, {"a": "1", "b": "2", "c": "x"}} {
		if d := replicaDifference([]map[string]string{same, same, other}); !strings.Contains(d, "n2 differs") {
			t.Errorf("stores %v and %v: difference %q does not name n2", same, other, d)
		}
	}
}

func TestLabClientsCountAnswersWithoutAClassAsUnclassified(t *testing.T) {
	answers := map[string]func(w http.ResponseWriter){
		"applied": func(w http.ResponseWriter) {
			w.Header().Set("X-Class", "applied")
			w.Header().Set(outcomeHeader, outcomeApplied)
			w.WriteHeader(http.StatusNoContent)
		},
		"no class": func(w http.ResponseWriter) { http.Error(w, "boom", http.StatusInternalServerError) },
		"rejected": func(w http.ResponseWriter) {
			// What Classify says of an error that is none of raftkit's.
			w.Header().Set("X-Class", "rejected")
			w.Header().Set(outcomeHeader, outcomeUnknown)
			http.Error(w, "some raw error", http.StatusGatewayTimeout)
		},
	}
	var answer string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { answers[answer](w) }))
	defer srv.Close()
	pc := &procCluster{t: t, client: srv.Client()}
	p := &proc{id: "n0", http: strings.TrimPrefix(srv.URL, "http://")}
	c := &labClients{pc: pc, rec: newRecorder(), acks: &ackSet{}, tally: map[string]int{}}
	before := time.Now()
	answer = "applied"
	c.put(p, 0, "ack-1", "x", true)
	if got := c.acks.list(); len(got) != 1 || c.tally["unclassified"] != 0 {
		t.Fatalf("an applied answer: acks %v, tally %v", got, c.tally)
	}
	if wait := c.firstAckAfter(t, before, time.Second); wait <= 0 {
		t.Fatalf("the write after the heal was acknowledged %s after it", wait)
	}
	for _, a := range []string{"no class", "rejected"} {
		answer = a
		c.put(p, 0, "k0", "v", false)
		c.get(p, 0, "k0")
	}
	if n := c.tally["unclassified"]; n != 4 {
		t.Fatalf("%d unclassified answers counted, want 4 (two PUTs, two GETs): %v", n, c.classes())
	}
}

func TestFirstAckAfterIgnoresWritesCalledBeforeTheHeal(t *testing.T) {
	healed := time.Now()
	c := &labClients{ackTimes: []ackTime{
		{call: healed.Add(-time.Second), ret: healed.Add(100 * time.Millisecond)}, // called during the fault
		{call: healed.Add(50 * time.Millisecond), ret: healed.Add(300 * time.Millisecond)},
		{call: healed.Add(10 * time.Millisecond), ret: healed.Add(400 * time.Millisecond)},
	}}
	if got := c.firstAckAfter(t, healed, time.Second); got != 300*time.Millisecond {
		t.Fatalf("first acknowledgement of a write called after the heal: %s, want 300ms", got)
	}
}
