package raftkittest

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"

	"github.com/raftkit/raftkit"
)

// The crash test runs three real node processes (internal/kvnode, built
// from this tree) over TCP with BoltDB, kills them with SIGKILL during
// writes and restarts them from the same directories.

// builtNodes holds the kvnode binaries built for this test run.
var builtNodes struct {
	sync.Mutex
	dir     string
	current string
}

// currentNode returns a kvnode binary built from this tree, building it
// on first use.
func currentNode(t *testing.T) string {
	t.Helper()
	builtNodes.Lock()
	defer builtNodes.Unlock()
	if builtNodes.current != "" {
		return builtNodes.current
	}
	root, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}").Output()
	if err != nil {
		t.Fatalf("locate the module: %v", err)
	}
	bin := filepath.Join(nodesDir(t), "kvnode-current")
	buildNode(t, strings.TrimSpace(string(root)), bin)
	builtNodes.current = bin
	return bin
}

// nodesDir is where the binaries go, removed when the tests end (TestMain).
func nodesDir(t *testing.T) string {
	if builtNodes.dir == "" {
		dir, err := os.MkdirTemp("", "raftkittest-nodes-")
		if err != nil {
			t.Fatal(err)
		}
		builtNodes.dir = dir
	}
	return builtNodes.dir
}

// buildNode builds internal/kvnode of the module tree at root into bin.
func buildNode(t *testing.T, root, bin string, tags ...string) {
	t.Helper()
	args := []string{"build", "-o", bin}
	if len(tags) > 0 {
		args = append(args, "-tags", strings.Join(tags, ","))
	}
	build := exec.Command("go", append(args, "./raftkittest/internal/kvnode")...)
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build kvnode in %s: %v\n%s", root, err, out)
	}
}

// Outcome header values of the node process's PUT responses.
const (
	outcomeHeader     = "X-Outcome"
	outcomeApplied    = "applied"
	outcomeNotApplied = "not-applied"
	outcomeUnknown    = "unknown"
)

// proc is one node process and the settings to start it again.
type proc struct {
	id, addr, http, dir string
	peers               string
	store               string // "bolt" or "wal"
	bin                 string // the kvnode binary it runs

	mu    sync.Mutex
	cmd   *exec.Cmd
	stdin io.WriteCloser
	out   *lockedBuffer
}

type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string { l.mu.Lock(); defer l.mu.Unlock(); return l.b.String() }

func (p *proc) start(t *testing.T) {
	t.Helper()
	store := p.store
	if store == "" {
		store = "bolt"
	}
	cmd := exec.Command(p.bin, "-id", p.id, "-addr", p.addr, "-http", p.http, "-dir", p.dir, "-peers", p.peers, "-store", store)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out := &lockedBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p.mu.Lock()
	p.cmd, p.stdin, p.out = cmd, stdin, out
	p.mu.Unlock()
	waitUntil(t, 30*time.Second, p.id+" to start", func() bool {
		s := out.String()
		if strings.Contains(s, "error:") {
			t.Fatalf("%s failed to start: %s", p.id, s)
		}
		return strings.Contains(s, "ready")
	})
}

// kill sends SIGKILL and reaps the process.
func (p *proc) kill() {
	p.mu.Lock()
	cmd := p.cmd
	p.cmd = nil
	p.mu.Unlock()
	if cmd != nil {
		cmd.Process.Kill()
		cmd.Wait()
	}
}

// stop closes stdin, which makes the node close cleanly, and reaps it.
func (p *proc) stop() {
	p.mu.Lock()
	cmd, stdin := p.cmd, p.stdin
	p.cmd = nil
	p.mu.Unlock()
	if cmd == nil {
		return
	}
	stdin.Close()
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		cmd.Process.Kill()
		<-done
	}
}

func (p *proc) running() bool { p.mu.Lock(); defer p.mu.Unlock(); return p.cmd != nil }

type procCluster struct {
	t      *testing.T
	procs  []*proc
	client *http.Client
}

func newProcCluster(t *testing.T, n int) *procCluster {
	return startProcCluster(t, n, currentNode(t), "bolt")
}

// startProcCluster starts n kvnode processes of binary bin on store.
func startProcCluster(t *testing.T, n int, bin, store string) *procCluster {
	addrs := freeAddrs(t, 2*n)
	var peers []string
	for i := 0; i < n; i++ {
		peers = append(peers, fmt.Sprintf("n%d=%s", i, addrs[i]))
	}
	pc := &procCluster{t: t, client: &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 16}}}
	base := t.TempDir()
	for i := 0; i < n; i++ {
		pc.procs = append(pc.procs, &proc{
			id: fmt.Sprintf("n%d", i), addr: addrs[i], http: addrs[n+i],
			dir: fmt.Sprintf("%s/n%d", base, i), peers: strings.Join(peers, ","),
			bin: bin, store: store,
		})
	}
	t.Cleanup(func() {
		var wg sync.WaitGroup
		for _, p := range pc.procs {
			wg.Add(1)
			go func() { defer wg.Done(); p.stop() }()
		}
		wg.Wait()
		pc.client.CloseIdleConnections()
	})
	for _, p := range pc.procs {
		p.start(t)
	}
	return pc
}

func freeAddrs(t testing.TB, n int) []string {
	var out []string
	var lns []net.Listener
	for i := 0; i < n; i++ {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		lns = append(lns, ln)
		out = append(out, ln.Addr().String())
	}
	for _, ln := range lns {
		ln.Close()
	}
	return out
}

func (pc *procCluster) status(p *proc) (raftkit.Status, error) {
	var st raftkit.Status
	resp, err := pc.client.Get("http://" + p.http + "/status")
	if err != nil {
		return st, err
	}
	defer resp.Body.Close()
	return st, json.NewDecoder(resp.Body).Decode(&st)
}

// leader waits for a running process that leads and returns it.
func (pc *procCluster) leader() *proc {
	var l *proc
	waitUntil(pc.t, 30*time.Second, "a leader process", func() bool {
		for _, p := range pc.procs {
			if !p.running() {
				continue
			}
			if st, err := pc.status(p); err == nil && st.State == "Leader" {
				l = p
				return true
			}
		}
		return false
	})
	return l
}

// put writes key=value through p and records the outcome.
func (pc *procCluster) put(p *proc, rec *recorder, acks *ackSet, client int, key, value string, unique bool) {
	in := kvInput{Op: opPut, Key: key, Value: value}
	call := rec.now()
	req, _ := http.NewRequest(http.MethodPut, "http://"+p.http+"/kv/"+key, strings.NewReader(value))
	resp, err := pc.client.Do(req)
	if err != nil {
		// The node died or hung mid-request (or refused the connection;
		// which one cannot be told reliably): unknown is always safe.
		rec.unknown(client, in, call)
		return
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	switch resp.Header.Get(outcomeHeader) {
	case outcomeApplied:
		rec.done(client, in, kvOutput{}, call)
		if unique {
			acks.add(key)
		}
	case outcomeNotApplied:
	default:
		rec.unknown(client, in, call)
	}
}

// get reads key linearizably through p; failed reads are not recorded.
func (pc *procCluster) get(p *proc, rec *recorder, client int, key string) error {
	call := rec.now()
	resp, err := pc.client.Get("http://" + p.http + "/kv/" + key + "?consistency=linearizable")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	switch resp.StatusCode {
	case http.StatusOK:
		rec.done(client, kvInput{Op: opGet, Key: key}, kvOutput{Value: string(body)}, call)
	case http.StatusNotFound:
		rec.done(client, kvInput{Op: opGet, Key: key}, kvOutput{}, call)
	default:
		return fmt.Errorf("GET %s on %s: %s: %s", key, p.id, resp.Status, body)
	}
	return nil
}

func (pc *procCluster) dump(p *proc) (map[string]string, error) {
	resp, err := pc.client.Get("http://" + p.http + "/dump")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(resp.Body)
		return nil, fmt.Errorf("dump on %s: %s: %s", p.id, resp.Status, body)
	}
	var all map[string]string
	return all, json.NewDecoder(resp.Body).Decode(&all)
}

func TestCrashRecoveryWithRealProcesses(t *testing.T) {
	pc := newProcCluster(t, 3)
	pc.leader()
	w := pc.writeContinuously(6, 7, func(id, seq int, rng *rand.Rand) *proc { return pc.procs[rng.IntN(len(pc.procs))] })
	// Kill the leader, then a follower, in turn, while the clients write;
	// restart each from its directory before the next kill.
	rng := rand.New(rand.NewPCG(42, 42))
	var killed []string
	for round := 0; round < 6; round++ {
		pause(context.Background(), time.Duration(200+rng.IntN(400))*time.Millisecond)
		victim := pc.leader()
		role := "leader"
		if round%2 == 1 {
			role = "follower"
			var followers []*proc
			for _, p := range pc.procs {
				if p != victim {
					followers = append(followers, p)
				}
			}
			victim = followers[rng.IntN(len(followers))]
		}
		killed = append(killed, role+":"+victim.id)
		victim.kill()
		pause(context.Background(), time.Duration(100+rng.IntN(500))*time.Millisecond)
		victim.start(t)
	}
	w.stop()
	t.Logf("killed with SIGKILL: %v", killed)
	w.check(t, "restarts", nil)
}

// workload is clients writing and reading through a process cluster
// while a test kills and restarts its nodes, and what they saw.
type workload struct {
	pc      *procCluster
	rec     *recorder
	acks    *ackSet
	clients int
	cancel  context.CancelFunc
	wg      sync.WaitGroup
}

// writeContinuously starts clients that each, until stop, send a mix of
// overwrites of four keys, unique acknowledged writes and reads to the
// node pick chooses, skipping nodes that are down.
func (pc *procCluster) writeContinuously(clients int, seed uint64, pick func(id, seq int, rng *rand.Rand) *proc) *workload {
	w := &workload{pc: pc, rec: newRecorder(), acks: &ackSet{}, clients: clients}
	ctx, cancel := context.WithCancel(context.Background())
	w.cancel = cancel
	for id := 0; id < clients; id++ {
		w.wg.Add(1)
		go func() {
			defer w.wg.Done()
			rng := rand.New(rand.NewPCG(uint64(id), seed))
			for seq := 0; ctx.Err() == nil; seq++ {
				p := pick(id, seq, rng)
				if !p.running() {
					pause(ctx, 5*time.Millisecond)
					continue
				}
				key := fmt.Sprintf("k%d", rng.IntN(4))
				switch r := rng.IntN(10); {
				case r < 4:
					pc.put(p, w.rec, w.acks, id, key, fmt.Sprintf("c%d-%d", id, seq), false)
				case r < 7:
					pc.put(p, w.rec, w.acks, id, fmt.Sprintf("ack-c%d-%d", id, seq), "x", true)
				default:
					_ = pc.get(p, w.rec, id, key)
				}
				pause(ctx, time.Duration(rng.IntN(3))*time.Millisecond)
			}
		}()
	}
	return w
}

// stop ends the clients and waits for them.
func (w *workload) stop() {
	w.cancel()
	w.wg.Wait()
}

// check reads every key through the leader, then fails the test if a node
// lacks an acknowledged write or the history is not linearizable; each is
// called with every node's store once it answered. after names what the
// nodes went through, for the messages.
func (w *workload) check(t *testing.T, after string, each func(p *proc, all map[string]string)) {
	t.Helper()
	pc := w.pc
	leader := pc.leader()
	for k := 0; k < 4; k++ {
		key := fmt.Sprintf("k%d", k)
		waitUntil(t, 20*time.Second, "a final read of "+key, func() bool { return pc.get(leader, w.rec, w.clients, key) == nil })
	}
	var lost []string
	acked := w.acks.list()
	for _, p := range pc.procs {
		var all map[string]string
		waitUntil(t, 30*time.Second, p.id+" to dump its store after a read barrier", func() bool {
			var err error
			all, err = pc.dump(p)
			return err == nil
		})
		for _, k := range acked {
			if _, ok := all[k]; !ok {
				lost = append(lost, p.id+":"+k)
			}
		}
		if each != nil {
			each(p, all)
		}
	}
	known, unknown := w.rec.counts()
	t.Logf("%d acknowledged unique writes, %d operations with known outcome, %d unknown writes", len(acked), known, unknown)
	if len(acked) < 20 {
		t.Fatalf("only %d unique writes were acknowledged: the cluster made too little progress to prove anything", len(acked))
	}
	if len(lost) > 0 {
		t.Fatalf("lost_acks=%d: acknowledged writes missing after %s: %v", len(lost), after, lost)
	}
	result, info := porcupine.CheckOperationsVerbose(kvModel, w.rec.history(), checkTimeout)
	if result != porcupine.Ok {
		t.Fatalf("the history across %s is %s; porcupine's view: %s", after, result, saveVisualization(t, 0, info))
	}
}
