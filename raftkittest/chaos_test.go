package raftkittest

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"

	"github.com/raftkit/raftkit"
	fsmexample "github.com/raftkit/raftkit/fsm_example"
)

// The chaos test: concurrent clients write and read through raftkit's
// public API while a nemesis partitions, isolates, crashes, restarts,
// transfers leadership, changes membership, drops and delays messages.
// Every history is checked for linearizability with porcupine, every
// acknowledged write of a unique key must be on every node at the end,
// and every node's FSM must have received the same command at every
// index (the divergence check; see Cluster.Divergence), and no node may
// say it is ready below its readiness floor at any sample (the readiness
// oracle; see readiness.go). Clients encode
// each command into one buffer of their own and overwrite it as soon as
// Apply returns, as applications that reuse buffers do.
//
// The default run checks a few short histories. The long run:
//
//	go test -run TestChaos -count=1 -v -timeout 2h ./raftkittest -args -histories=200
//
// prints one line "histories=… ok=… illegal=… unknown=… lost_acks=…
// diverged=… not_ready_violations=…".
// Replay one history with -seed=N -histories=1: the seed fixes the
// nemesis' schedule, the clients' choices and which messages the network
// drops (the k-th on each link; see raftkit.MemNetwork).
var (
	chaosHistories = flag.Int("histories", 3, "chaos: number of histories to run")
	chaosSeed      = flag.Uint64("seed", 1, "chaos: seed of the first history; history i uses seed+i")
	chaosDuration  = flag.Duration("duration", 3*time.Second, "chaos: how long the nemesis runs in each history")
	chaosClients   = flag.Int("clients", 8, "chaos: concurrent clients per history")
	chaosVizDir    = flag.String("vizdir", "", "chaos: directory for porcupine's HTML of failed histories (default: the OS temp dir)")
)

// chaosKeys is how many keys the clients share; few keys make reads see
// each other's writes, enough keys keep each key's history checkable.
const chaosKeys = 8

// checkTimeout bounds porcupine on one history; running out is a failure.
const checkTimeout = 60 * time.Second

type historyResult struct {
	seed      uint64
	check     porcupine.CheckResult
	lostAcks  []string
	ops       int
	unknowns  int
	faults    []string
	vizPath   string
	checkTime time.Duration
	// divergence is the first index at which two nodes' FSMs received
	// different commands; compared counts the applications checked.
	divergence *Divergence
	compared   int
	// unknownCauses counts the errors that left writes unknown.
	unknownCauses string
	// notReady counts samples of a node ready below its readiness floor;
	// notReadyFirst are the first few, samples how many were taken.
	notReady      int
	notReadyFirst []string
	samples       int
}

func TestChaosLinearizable(t *testing.T) {
	var ok, illegal, unknown, aborted, lost, diverged, notReady int
	var failed []uint64
	for i := 0; i < *chaosHistories; i++ {
		seed := *chaosSeed + uint64(i)
		var res historyResult
		t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) {
			res = runChaosHistory(t, seed)
			t.Logf("seed=%d ops=%d unknown_writes=%d check=%s in %s applies_compared=%d readiness_samples=%d faults=%s unknown_causes=%s",
				seed, res.ops, res.unknowns, res.check, res.checkTime.Round(time.Millisecond), res.compared, res.samples, strings.Join(res.faults, ","), res.unknownCauses)
			if res.check != porcupine.Ok {
				t.Errorf("seed=%d: history is %s; porcupine's view: %s (replay: -seed=%d -histories=1)", seed, res.check, res.vizPath, seed)
			}
			if len(res.lostAcks) > 0 {
				t.Errorf("seed=%d: %d acknowledged writes missing at the end: %v", seed, len(res.lostAcks), res.lostAcks)
			}
			if res.divergence != nil {
				t.Errorf("seed=%d: %v", seed, res.divergence)
			}
			if res.notReady > 0 {
				t.Errorf("seed=%d: %d samples of a node ready below its readiness floor, first: %v", seed, res.notReady, res.notReadyFirst)
			}
		})
		switch res.check {
		case porcupine.Ok:
			ok++
		case porcupine.Illegal:
			illegal++
		case porcupine.Unknown:
			unknown++
		default: // the history failed before it could be checked
			aborted++
		}
		lost += len(res.lostAcks)
		if res.divergence != nil {
			diverged++
		}
		notReady += res.notReady
		if res.check != porcupine.Ok || len(res.lostAcks) > 0 || res.divergence != nil || res.notReady > 0 {
			failed = append(failed, seed)
		}
	}
	summary := fmt.Sprintf("histories=%d ok=%d illegal=%d unknown=%d lost_acks=%d diverged=%d not_ready_violations=%d", *chaosHistories, ok, illegal, unknown, lost, diverged, notReady)
	if aborted > 0 {
		summary += fmt.Sprintf(" aborted=%d", aborted)
	}
	if len(failed) > 0 {
		summary += fmt.Sprintf(" failed_seeds=%v", failed)
	}
	fmt.Println(summary)
	t.Log(summary)
}

// chaosCluster is the cluster the chaos test runs: short ApplyTimeout,
// frequent snapshots and short trailing logs so that restarts restore
// snapshots and lagging followers get InstallSnapshot.
func chaosCluster(t testing.TB, level hclog.Level, seed uint64) *Cluster[*fsmexample.Store] {
	return NewCluster(t, 3, fsmexample.New,
		WithSeed(seed),
		WithState(kvState),
		WithLogLevel(level),
		WithConfig(func(cfg *raftkit.Config) {
			cfg.ApplyTimeout = time.Second
			cfg.SnapshotThreshold = 64
			cfg.SnapshotInterval = 50 * time.Millisecond
			cfg.RaftConfig = func(rc *raft.Config) { rc.TrailingLogs = 32 } // after FastTimeouts
		}))
}

func runChaosHistory(t *testing.T, seed uint64) historyResult {
	res := historyResult{seed: seed}
	level := hclog.Off
	if testing.Verbose() && *chaosHistories == 1 {
		level = hclog.Info
	}
	c := chaosCluster(t, level, seed)
	c.WaitForLeader()
	stopSampling := sampleReadiness(c)
	rec := NewHistory(registerModel)
	rec.VisualizationDir = *chaosVizDir
	acks := &ackSet{}

	ctx, stopClients := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for id := 0; id < *chaosClients; id++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			runClient(ctx, c, rec, acks, id, rand.New(rand.NewPCG(seed, uint64(id)+1)))
		}()
	}
	nem := &nemesis{c: c, rng: rand.New(rand.NewPCG(seed, 0))}
	nem.run(*chaosDuration)
	stopClients()
	wg.Wait()
	res.faults = nem.log
	res.unknownCauses = acks.errors.String()

	// Recover everything, then read every key once more through the log's
	// current leader: these reads must see every acknowledged write.
	nem.recover()
	nem.readd()
	res.faults = nem.log
	leader := c.WaitForLeader()
	final := *chaosClients
	for k := 0; k < chaosKeys; k++ {
		key := fmt.Sprintf("k%d", k)
		if err := linearizableGet(c, leader, rec, final, key); err != nil {
			t.Fatalf("final read of %s on leader %s: %v", key, leader.ID(), err)
		}
	}
	// The divergence check first: AssertConsistent would stop the history
	// at a divergence, which the summary counts.
	if res.divergence, res.compared = c.applied.result(); res.divergence != nil {
		return res
	}
	c.AssertConsistent()
	res.samples = stopSampling()
	res.notReady, res.notReadyFirst = c.ready.result()
	res.divergence, res.compared = c.applied.result()
	for _, key := range acks.list() {
		for _, n := range c.Nodes() {
			if _, ok := c.FSM(n).Get(key); !ok {
				res.lostAcks = append(res.lostAcks, n.ID()+":"+key)
			}
		}
	}

	if known, _ := rec.Counts(); known < 100 {
		t.Errorf("seed=%d: only %d operations completed: too little progress to prove anything", seed, known)
	}
	res.ops = rec.Checked()
	_, res.unknowns = rec.Counts()
	start := time.Now()
	err := rec.Check()
	res.checkTime = time.Since(start)
	var bad *NotLinearizableError
	switch {
	case err == nil:
		res.check = porcupine.Ok
	case errors.As(err, &bad):
		res.check, res.vizPath = porcupine.Illegal, bad.Visualization
		t.Logf("porcupine visualization of seed %d: %s", seed, bad.Visualization)
	default:
		res.check = porcupine.Unknown
		t.Logf("seed=%d: %v", seed, err)
	}
	return res
}

// errorTally counts, per kind, the errors that made writes unknown, for
// the history's log line.
type errorTally struct {
	mu     sync.Mutex
	counts map[string]int
}

func (e *errorTally) add(err error) {
	kind := "unknown-outcome: " + err.Error()
	var re *raftkit.RemoteError
	switch {
	case errors.As(err, &re):
		kind = "remote: " + re.Message
	case !errors.Is(err, raftkit.ErrUnknownOutcome):
		kind = "unclassified: " + err.Error()
	case errors.Is(err, context.DeadlineExceeded):
		kind = "unknown-outcome: deadline"
	case errors.Is(err, raft.ErrLeadershipLost):
		kind = "unknown-outcome: leadership lost"
	case errors.Is(err, raftkit.ErrClosed):
		kind = "unknown-outcome: closed"
	}
	kind = strings.Map(func(r rune) rune {
		if r >= '0' && r <= '9' {
			return -1
		}
		return r
	}, kind)
	if len(kind) > 120 {
		kind = kind[:120]
	}
	e.mu.Lock()
	if e.counts == nil {
		e.counts = map[string]int{}
	}
	e.counts[kind]++
	e.mu.Unlock()
}

func (e *errorTally) String() string {
	e.mu.Lock()
	defer e.mu.Unlock()
	var parts []string
	for k, n := range e.counts {
		parts = append(parts, fmt.Sprintf("%d×%q", n, k))
	}
	sort.Strings(parts)
	return strings.Join(parts, " ")
}

// ackSet is the unique keys whose writes were acknowledged.
type ackSet struct {
	mu     sync.Mutex
	keys   []string
	errors errorTally // why writes ended unknown
}

func (a *ackSet) add(k string) { a.mu.Lock(); a.keys = append(a.keys, k); a.mu.Unlock() }
func (a *ackSet) list() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]string(nil), a.keys...)
}

// runClient issues operations on random nodes until ctx ends: writes of
// unique values to shared keys, writes of unique keys, linearizable reads
// (barrier, then the node's local store) and reads through the log.
func runClient(ctx context.Context, c *Cluster[*fsmexample.Store], rec *kvHistory, acks *ackSet, id int, rng *rand.Rand) {
	buf := &reusedBuffer{}
	for seq := 0; ctx.Err() == nil; seq++ {
		nodes := c.Nodes()
		if len(nodes) == 0 {
			pause(ctx, time.Millisecond)
			continue
		}
		node := nodes[rng.IntN(len(nodes))]
		key := fmt.Sprintf("k%d", rng.IntN(chaosKeys))
		switch p := rng.IntN(100); {
		case p < 40:
			write(node, buf, rec, acks, id, key, fmt.Sprintf("c%d-%d", id, seq), false)
		case p < 50:
			write(node, buf, rec, acks, id, fmt.Sprintf("ack-c%d-%d", id, seq), "x", true)
		case p < 85:
			_ = linearizableGet(c, node, rec, id, key)
		default:
			logGet(node, buf, rec, id, key)
		}
		pause(ctx, time.Duration(rng.IntN(3000))*time.Microsecond)
	}
}

// pause waits d or until ctx ends: client pacing, not synchronisation.
func pause(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}

// opTimeout bounds each client operation; a timed-out write is unknown.
const opTimeout = 1500 * time.Millisecond

// notApplied reports whether err means the write certainly did not take
// effect: raftkit's outcome classes other than applied, rejected and
// unknown.
func notApplied(err error) bool {
	switch raftkit.Classify(err) {
	case raftkit.NotApplied, raftkit.Closed, raftkit.Invalid, raftkit.NotAuthorized:
		return true
	}
	return false
}

// reusedBuffer is a client's one command buffer: each command is encoded
// into it, and it is overwritten as soon as Apply returns, so that any
// copy of the caller's bytes that raftkit failed to make shows up as a
// divergence or a lost write.
type reusedBuffer struct{ b []byte }

// load puts cmd into the buffer and returns it.
func (r *reusedBuffer) load(cmd []byte) []byte {
	r.b = append(r.b[:0], cmd...)
	return r.b
}

// scribble overwrites the buffer with bytes no command starts with.
func (r *reusedBuffer) scribble() {
	for i := range r.b {
		r.b[i] = 0xEE
	}
}

func write(node *raftkit.RaftNode, buf *reusedBuffer, rec *kvHistory, acks *ackSet, client int, key, value string, unique bool) {
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	_, err := rec.Write(client, kvInput{Op: opPut, Key: key, Value: value}, func() (kvOutput, error) {
		_, err := node.Apply(ctx, buf.load(fsmexample.Set(key, []byte(value))))
		buf.scribble()
		return kvOutput{}, err
	})
	switch {
	case err == nil:
		if unique {
			acks.add(key)
		}
	case !notApplied(err):
		acks.errors.add(err) // the history keeps it as unknown
	}
}

// linearizableGet reads key on node after a read barrier. A failed read
// has no effect and is left out of the history.
func linearizableGet(c *Cluster[*fsmexample.Store], node *raftkit.RaftNode, rec *kvHistory, client int, key string) error {
	// The FSM is looked up before the barrier: if node was replaced by a
	// restart in between, the barrier fails on the closed node.
	fsm := c.FSM(node)
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	_, err := rec.Read(client, kvInput{Op: opGet, Key: key}, func() (kvOutput, error) {
		if err := node.LinearizableRead(ctx); err != nil {
			return kvOutput{}, err
		}
		v, _ := fsm.Get(key)
		return kvOutput{Value: string(v)}, nil
	})
	return err
}

// logGet reads key through the log with a Get command.
func logGet(node *raftkit.RaftNode, buf *reusedBuffer, rec *kvHistory, client int, key string) {
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	_, _ = rec.Read(client, kvInput{Op: opGet, Key: key}, func() (kvOutput, error) {
		res, err := node.Apply(ctx, buf.load(fsmexample.Get(key)))
		buf.scribble()
		if err != nil {
			return kvOutput{}, err
		}
		if v, ok := res.([]byte); ok || res == nil {
			return kvOutput{Value: string(v)}, nil
		}
		return kvOutput{Value: fmt.Sprintf("<unexpected %T %v>", res, res)}, nil
	})
}

// nemesis injects faults from a seeded schedule. At most one member is
// down at a time, so a majority can always come back.
type nemesis struct {
	c    *Cluster[*fsmexample.Store]
	rng  *rand.Rand
	down *raftkit.RaftNode
	// outside is a member removed from the configuration that still runs,
	// until the nemesis adds it back.
	outside *raftkit.RaftNode
	log     []string
}

func (n *nemesis) note(format string, args ...any) {
	n.log = append(n.log, fmt.Sprintf(format, args...))
}

func (n *nemesis) run(d time.Duration) {
	end := time.Now().Add(d)
	for time.Now().Before(end) {
		time.Sleep(time.Duration(100+n.rng.IntN(300)) * time.Millisecond) // pacing
		if n.down != nil && n.rng.IntN(2) == 0 {
			n.note("restart(%s)", n.down.ID())
			n.c.Restart(n.down)
			n.down = nil
		}
		if n.rng.IntN(3) == 0 {
			n.note("heal")
			n.c.Heal()
		}
		switch n.rng.IntN(10) {
		case 0:
			n.partition()
		case 1:
			if l := n.c.Leader(); l != nil {
				n.note("isolate-leader(%s)", l.ID())
				n.c.Isolate(l)
			}
		case 2, 3:
			n.crash()
		case 4:
			n.transfer()
		case 5, 9:
			n.membership()
		case 6:
			p := []float64{0, 0.01, 0.03}[n.rng.IntN(3)]
			n.note("drop(%g)", p)
			n.c.SetDropRate(p)
		case 7:
			d := time.Duration(n.rng.IntN(3)) * time.Millisecond
			n.note("delay(%s)", d)
			n.c.SetDelay(d)
		case 8:
			n.note("heal")
			n.c.Heal()
		}
	}
}

// partition splits the running members into a majority and a minority;
// the leader lands on either side.
func (n *nemesis) partition() {
	nodes := n.members()
	n.rng.Shuffle(len(nodes), func(i, j int) { nodes[i], nodes[j] = nodes[j], nodes[i] })
	cut := 1 + n.rng.IntN(max(1, (len(nodes)-1)/2))
	a, b := nodes[:cut], nodes[cut:]
	n.note("partition(%s|%s)", ids(a), ids(b))
	n.c.Partition(a, b)
}

func (n *nemesis) crash() {
	if n.down != nil {
		return
	}
	victim := n.c.Leader()
	if victim == nil || n.rng.IntN(2) == 0 {
		nodes := n.members()
		victim = nodes[n.rng.IntN(len(nodes))]
	}
	if victim == n.outside {
		return
	}
	n.note("crash(%s)", victim.ID())
	n.c.Crash(victim)
	n.down = victim
}

func (n *nemesis) transfer() {
	nodes := n.c.Nodes()
	via := nodes[n.rng.IntN(len(nodes))]
	n.note("transfer-via(%s)", via.ID())
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_ = via.TransferLeadership(ctx, "") // may fail while partitioned
}

// membership adds back a member removed while running; otherwise it adds
// a member to a 3-member cluster, or, from a larger one, removes a random
// member for good (the leader included) or removes a follower and leaves
// it running, to be added back later. It first heals and restarts so that
// the change can commit.
func (n *nemesis) membership() {
	n.recover()
	if n.outside != nil {
		n.readd()
		return
	}
	nodes := n.members()
	if len(nodes) <= 3 {
		added := n.c.AddNode()
		n.note("add(%s)", added.ID())
		return
	}
	if followers := n.c.Followers(); n.rng.IntN(3) > 0 && len(followers) > 0 {
		victim := followers[n.rng.IntN(len(followers))]
		if n.c.removeLive(victim) {
			n.note("remove-live(%s)", victim.ID())
			n.outside = victim
		} else {
			n.note("remove-live-unheard(%s)", victim.ID())
		}
		return
	}
	victim := nodes[n.rng.IntN(len(nodes))]
	n.note("remove(%s)", victim.ID())
	n.c.RemoveNode(victim)
}

// readd adds the member removed while running back, as it runs.
func (n *nemesis) readd() {
	if n.outside == nil {
		return
	}
	if n.c.readd(n.outside) {
		n.note("re-add(%s)", n.outside.ID())
	} else {
		n.note("removed-leader-shut-down(%s)", n.outside.ID())
	}
	n.outside = nil
}

// members returns the running members of the configuration.
func (n *nemesis) members() []*raftkit.RaftNode {
	var out []*raftkit.RaftNode
	for _, node := range n.c.Nodes() {
		if node != n.outside {
			out = append(out, node)
		}
	}
	return out
}

// recover undoes every fault: heal, no drops or delays, restart the down
// member.
func (n *nemesis) recover() {
	n.c.Heal()
	n.c.SetDropRate(0)
	n.c.SetDelay(0)
	if n.down != nil {
		n.c.Restart(n.down)
		n.down = nil
	}
}

func ids(nodes []*raftkit.RaftNode) string {
	var s []string
	for _, n := range nodes {
		s = append(s, n.ID())
	}
	return strings.Join(s, ",")
}

// sampleReadiness samples every running node's readiness against its
// floor (see readiness.go) until the returned function is called, which
// returns how many samples were taken; the test's cleanup calls it too.
func sampleReadiness[F raft.FSM](c *Cluster[F]) func() int {
	done := make(chan struct{})
	var samples int
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(readinessSamplePeriod)
		defer t.Stop()
		for {
			for _, n := range c.Nodes() {
				c.ready.sample(n)
				samples++
			}
			select {
			case <-done:
				return
			case <-t.C:
			}
		}
	}()
	var once sync.Once
	stop := func() int {
		once.Do(func() {
			close(done)
			wg.Wait()
		})
		return samples
	}
	c.tb.Cleanup(func() { stop() })
	return stop
}

// readinessSamplePeriod is how often sampleReadiness samples each node.
const readinessSamplePeriod = 5 * time.Millisecond
