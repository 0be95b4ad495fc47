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

// The crash test runs three real node processes (this test binary,
// re-executed) over TCP with BoltDB, kills them with SIGKILL during writes
// and restarts them from the same directories.

// nodeProcessEnv, when set, makes the test binary run one node process
// instead of the tests. The node's settings come from the variables below.
const (
	nodeProcessEnv = "RAFTKITTEST_NODE"
	nodeIDEnv      = "RAFTKITTEST_NODE_ID"
	nodeAddrEnv    = "RAFTKITTEST_NODE_ADDR"
	nodeHTTPEnv    = "RAFTKITTEST_NODE_HTTP"
	nodeDirEnv     = "RAFTKITTEST_NODE_DIR"
	nodePeersEnv   = "RAFTKITTEST_NODE_PEERS"
)

// Outcome header values of the node process's PUT responses.
const (
	outcomeHeader     = "X-Outcome"
	outcomeApplied    = "applied"
	outcomeNotApplied = "not-applied"
	outcomeUnknown    = "unknown"
)

// runNodeProcess is the node process: a raftkit node with an fsmexample
// store behind a small HTTP API, until stdin closes (a clean stop) or the
// process is killed.
//
//	PUT /kv/{key}   body = value          204 applied; 503 not applied; 504 unknown
//	GET /kv/{key}?consistency=linearizable 200 value; 404 absent; 503 no read
//	GET /dump                             this node's whole store, JSON, after a read barrier
//	GET /status                           raftkit.Status, JSON
func runNodeProcess() {
	logger := hclog.New(&hclog.LoggerOptions{Name: os.Getenv(nodeIDEnv), Level: hclog.Warn, Output: os.Stderr})
	kv := fsmexample.New()
	node, err := raftkit.NewRaftNode(raftkit.Config{
		ID:                os.Getenv(nodeIDEnv),
		Addr:              os.Getenv(nodeAddrEnv),
		Dir:               os.Getenv(nodeDirEnv),
		Peers:             strings.Split(os.Getenv(nodePeersEnv), ","),
		ApplyTimeout:      time.Second,
		SnapshotThreshold: 64,
		SnapshotInterval:  100 * time.Millisecond,
		Logger:            logger,
		RaftConfig: func(rc *raft.Config) {
			FastTimeouts(rc)
			rc.TrailingLogs = 32
		},
	}, kv)
	if err != nil {
		fmt.Println("error:", err)
		os.Exit(1)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("PUT /kv/{key}", func(w http.ResponseWriter, r *http.Request) {
		value, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		_, err = node.Apply(r.Context(), fsmexample.Set(r.PathValue("key"), value))
		switch {
		case err == nil:
			w.Header().Set(outcomeHeader, outcomeApplied)
			w.WriteHeader(http.StatusNoContent)
		case notApplied(err):
			w.Header().Set(outcomeHeader, outcomeNotApplied)
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
		default:
			w.Header().Set(outcomeHeader, outcomeUnknown)
			http.Error(w, err.Error(), http.StatusGatewayTimeout)
		}
	})
	mux.HandleFunc("GET /kv/{key}", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("consistency") != "stale" {
			if err := node.LinearizableRead(r.Context()); err != nil {
				http.Error(w, err.Error(), http.StatusServiceUnavailable)
				return
			}
		}
		v, ok := kv.Get(r.PathValue("key"))
		if !ok {
			http.Error(w, "absent", http.StatusNotFound)
			return
		}
		w.Write(v)
	})
	mux.HandleFunc("GET /dump", func(w http.ResponseWriter, r *http.Request) {
		if err := node.LinearizableRead(r.Context()); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		all := map[string]string{}
		for k, v := range kv.All() {
			all[k] = string(v)
		}
		json.NewEncoder(w).Encode(all)
	})
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode(node.Status())
	})
	ln, err := net.Listen("tcp", os.Getenv(nodeHTTPEnv))
	if err != nil {
		fmt.Println("error:", err)
		node.Close()
		os.Exit(1)
	}
	srv := &http.Server{Handler: mux}
	go srv.Serve(ln)
	fmt.Println("ready")
	io.Copy(io.Discard, os.Stdin)
	srv.Close()
	node.Close()
}

// proc is one node process and the settings to start it again.
type proc struct {
	id, addr, http, dir string
	peers               string

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
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(),
		nodeProcessEnv+"=1", nodeIDEnv+"="+p.id, nodeAddrEnv+"="+p.addr,
		nodeHTTPEnv+"="+p.http, nodeDirEnv+"="+p.dir, nodePeersEnv+"="+p.peers)
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
	rec := newRecorder()
	acks := &ackSet{}
	const clients = 6
	ctx, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for id := 0; id < clients; id++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(id), 7))
			for seq := 0; ctx.Err() == nil; seq++ {
				p := pc.procs[rng.IntN(len(pc.procs))]
				if !p.running() {
					pause(ctx, 5*time.Millisecond)
					continue
				}
				key := fmt.Sprintf("k%d", rng.IntN(4))
				switch r := rng.IntN(10); {
				case r < 4:
					pc.put(p, rec, acks, id, key, fmt.Sprintf("c%d-%d", id, seq), false)
				case r < 7:
					pc.put(p, rec, acks, id, fmt.Sprintf("ack-c%d-%d", id, seq), "x", true)
				default:
					_ = pc.get(p, rec, id, key)
				}
				pause(ctx, time.Duration(rng.IntN(3))*time.Millisecond)
			}
		}()
	}

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
	stop()
	wg.Wait()
	t.Logf("killed with SIGKILL: %v", killed)

	// Every acknowledged write is on every node once they caught up.
	leader := pc.leader()
	for k := 0; k < 4; k++ {
		key := fmt.Sprintf("k%d", k)
		var err error
		waitUntil(t, 20*time.Second, "a final read of "+key, func() bool {
			err = pc.get(leader, rec, clients, key)
			return err == nil
		})
	}
	var lost []string
	acked := acks.list()
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
	}
	known, unknown := rec.counts()
	t.Logf("%d acknowledged unique writes, %d operations with known outcome, %d unknown writes", len(acked), known, unknown)
	if len(acked) < 20 {
		t.Fatalf("only %d unique writes were acknowledged: the cluster made too little progress to prove anything", len(acked))
	}
	if len(lost) > 0 {
		t.Fatalf("lost_acks=%d: acknowledged writes missing after restarts: %v", len(lost), lost)
	}
	result, info := porcupine.CheckOperationsVerbose(kvModel, rec.history(), checkTimeout)
	if result != porcupine.Ok {
		path := saveVisualization(t, 0, info)
		t.Fatalf("crash-test history is %s; porcupine's view: %s", result, path)
	}
}
