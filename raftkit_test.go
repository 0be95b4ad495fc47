package raftkit

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"go.uber.org/goleak"

	fsmexample "github.com/raftkit/raftkit/fsm_example"
	"github.com/raftkit/raftkit/internal/store"
)

func TestMain(m *testing.M) {
	if os.Getenv("RAFTKIT_HOLD_DIR") != "" {
		holdDirHelper()
		return
	}
	goleak.VerifyTestMain(m)
}

func TestConfigValidation(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "a-file")
	if err := os.WriteFile(file, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	ok := Config{Addr: "127.0.0.1:7000", Dir: dir}
	cases := []struct {
		name  string
		cfg   Config
		field string
	}{
		{"empty addr", Config{Dir: dir}, "Addr"},
		{"garbage addr", Config{Addr: "not an address", Dir: dir}, "Addr"},
		{"addr without port", Config{Addr: "127.0.0.1", Dir: dir}, "Addr"},
		{"port out of range", Config{Addr: "127.0.0.1:70000", Dir: dir}, "Addr"},
		{"wildcard without advertise", Config{Addr: "0.0.0.0:7000", Dir: dir}, "AdvertiseAddr"},
		{"empty host without advertise", Config{Addr: ":7000", Dir: dir}, "AdvertiseAddr"},
		{"wildcard advertise", Config{Addr: "0.0.0.0:7000", AdvertiseAddr: "0.0.0.0:7000", Dir: dir}, "AdvertiseAddr"},
		{"no dir", Config{Addr: "127.0.0.1:7000"}, "Dir"},
		{"dir is a file", Config{Addr: "127.0.0.1:7000", Dir: file}, "Dir"},
		{"own address missing from peers", Config{Addr: "127.0.0.1:7000", Dir: dir, Peers: []string{"127.0.0.1:7001", "127.0.0.1:7002"}}, "Peers"},
		{"garbage peer", Config{Addr: "127.0.0.1:7000", Dir: dir, Peers: []string{"127.0.0.1:7000", "nonsense"}}, "Peers[1]"},
		{"wildcard peer", Config{Addr: "127.0.0.1:7000", Dir: dir, Peers: []string{"127.0.0.1:7000", "0.0.0.0:7001"}}, "Peers[1]"},
		{"duplicate peer IDs", Config{ID: "a", Addr: "127.0.0.1:7000", Dir: dir, Peers: []string{"a=127.0.0.1:7000", "a=127.0.0.1:7001"}}, "Peers[1]"},
		{"duplicate peer addresses", Config{Addr: "127.0.0.1:7000", Dir: dir, Peers: []string{"127.0.0.1:7000", "b=127.0.0.1:7000"}}, "Peers[1]"},
		{"empty peer ID", Config{Addr: "127.0.0.1:7000", Dir: dir, Peers: []string{"=127.0.0.1:7000"}}, "Peers[0]"},
		{"peer list names node with other ID", Config{ID: "me", Addr: "127.0.0.1:7000", Dir: dir, Peers: []string{"other=127.0.0.1:7000"}}, "Peers"},
		{"port 0 with peers", Config{Addr: "127.0.0.1:0", Dir: dir, Peers: []string{"127.0.0.1:7001"}}, "Addr"},
		{"negative apply timeout", Config{Addr: "127.0.0.1:7000", Dir: dir, ApplyTimeout: -time.Second}, "ApplyTimeout"},
		{"negative max command size", Config{Addr: "127.0.0.1:7000", Dir: dir, MaxCommandSize: -1}, "MaxCommandSize"},
		{"max command size over the limit", Config{Addr: "127.0.0.1:7000", Dir: dir, MaxCommandSize: MaxCommandSizeLimit + 1}, "MaxCommandSize"},
		{"negative snapshot retain", Config{Addr: "127.0.0.1:7000", Dir: dir, SnapshotRetain: -1}, "SnapshotRetain"},
		{"ID with equals sign", Config{ID: "a=b", Addr: "127.0.0.1:7000", Dir: dir}, "ID"},
		{"network without in-memory", Config{Addr: "127.0.0.1:7000", Dir: dir, Network: NewMemNetwork()}, "Network"},
		{"in-memory empty name", Config{InMemory: true}, "Addr"},
		{"raft config hook breaks raft", Config{Addr: "127.0.0.1:0", Dir: dir, RaftConfig: func(c *raft.Config) { c.HeartbeatTimeout = time.Millisecond }}, "RaftConfig"},
		{"raft config hook changes ID", Config{Addr: "127.0.0.1:0", Dir: dir, RaftConfig: func(c *raft.Config) { c.LocalID = "x" }}, "RaftConfig"},
	}
	if err := ok.Validate(); err != nil {
		t.Fatalf("valid config rejected: %v", err)
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			node, err := NewRaftNode(tc.cfg, fsmexample.New())
			if err == nil {
				node.Close()
				t.Fatal("NewRaftNode accepted an invalid config")
			}
			if !errors.Is(err, ErrInvalidConfig) {
				t.Fatalf("error %q does not match ErrInvalidConfig", err)
			}
			var ce *ConfigError
			if !errors.As(err, &ce) || ce.Field != tc.field {
				t.Fatalf("error %q names field %v, want %q", err, ce, tc.field)
			}
		})
	}
}

func TestNilFSMIsRejected(t *testing.T) {
	_, err := NewRaftNode(Config{Addr: "127.0.0.1:0", Dir: t.TempDir()}, nil)
	if !errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), "fsm") {
		t.Fatalf("nil FSM gave %v, want ErrInvalidConfig naming fsm", err)
	}
}

func TestUnusableDirIsAClearError(t *testing.T) {
	// As root, permission bits do not stop writes; /proc refuses even root.
	dir := "/proc/raftkit-cannot-create-this"
	if os.Geteuid() != 0 {
		parent := t.TempDir()
		if err := os.Chmod(parent, 0o500); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.Chmod(parent, 0o700) })
		dir = filepath.Join(parent, "data")
	}
	_, err := NewRaftNode(Config{Addr: "127.0.0.1:0", Dir: dir}, fsmexample.New())
	if err == nil || !strings.Contains(err.Error(), dir) {
		t.Fatalf("unusable Dir gave %v, want an error naming %s", err, dir)
	}
}

func TestThreeNodesReplicateOverTCP(t *testing.T) {
	c := newTCPCluster(t, 3)
	l := c.leader()
	for i := 0; i < 20; i++ {
		if _, err := c.nodes[l].Apply(ctxTimeout(t, 5*time.Second), fsmexample.Set(fmt.Sprintf("k%d", i), []byte("v"))); err != nil {
			t.Fatalf("write %d: %v", i, err)
		}
	}
	c.waitApplied(c.nodes[l].raft.LastIndex())
	for i, f := range c.fsms {
		if f.Len() != 20 {
			t.Fatalf("node %d has %d keys, want 20", i, f.Len())
		}
	}
	st := c.nodes[l].Status()
	if st.State != "Leader" || len(st.Servers) != 3 || st.LeaderAddr != c.addrs[l] || st.CommitIndex < 20 {
		t.Fatalf("leader status %+v", st)
	}
	for i, n := range c.nodes {
		if n.GetLeaderAddr() != c.addrs[l] || n.GetLeaderID() != c.addrs[l] {
			t.Fatalf("node %d sees leader %q/%q, want %q", i, n.GetLeaderAddr(), n.GetLeaderID(), c.addrs[l])
		}
		if n.IsLeader() != (i == l) {
			t.Fatalf("node %d IsLeader = %v", i, n.IsLeader())
		}
	}
}

func TestRestartEveryNodeKeepsAcknowledgedWrites(t *testing.T) {
	c := newTCPCluster(t, 3)
	l := c.leader()
	acked := map[string]string{}
	for i := 0; i < 30; i++ {
		k, v := fmt.Sprintf("key-%d", i), fmt.Sprintf("value-%d", i)
		if _, err := c.nodes[l].Apply(ctxTimeout(t, 5*time.Second), fsmexample.Set(k, []byte(v))); err != nil {
			t.Fatalf("write %d: %v", i, err)
		}
		acked[k] = v
		if i == 15 { // some state in a snapshot, some only in the log
			if err := c.nodes[l].Snapshot(ctxTimeout(t, 5*time.Second)); err != nil {
				t.Fatal(err)
			}
		}
	}
	for i := range c.nodes {
		c.stop(i)
	}
	for i := range c.nodes {
		c.start(i)
	}
	l = c.leader()
	// A write in the new term commits everything before it.
	if _, err := c.nodes[l].Apply(ctxTimeout(t, 5*time.Second), fsmexample.Set("after-restart", []byte("x"))); err != nil {
		t.Fatal(err)
	}
	c.waitApplied(c.nodes[l].raft.LastIndex())
	for i, f := range c.fsms {
		for k, v := range acked {
			if got, ok := f.Get(k); !ok || string(got) != v {
				t.Fatalf("node %d lost %s after restart: got %q, %v", i, k, got, ok)
			}
		}
	}
}

func TestSingleNodeCluster(t *testing.T) {
	addr := unusedAddr(t)
	fsm := fsmexample.New()
	n, err := NewRaftNodeAndBootstrapCluster(addr, []string{addr}, t.TempDir(), fsm, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	if got, err := n.WaitForLeader(ctxTimeout(t, 10*time.Second)); err != nil || got != addr {
		t.Fatalf("WaitForLeader = %q, %v", got, err)
	}
	if _, err := n.Apply(context.Background(), fsmexample.Set("a", []byte("1"))); err != nil {
		t.Fatal(err)
	}
	if v, _ := fsm.Get("a"); string(v) != "1" {
		t.Fatalf("a = %q", v)
	}
}

func TestBootstrapWithoutOwnAddressFails(t *testing.T) {
	addrs := []string{unusedAddr(t), unusedAddr(t)}
	_, err := NewRaftNodeAndBootstrapCluster(addrs[0], addrs[1:], t.TempDir(), fsmexample.New(), nil)
	if !errors.Is(err, ErrInvalidConfig) {
		t.Fatalf("got %v, want ErrInvalidConfig", err)
	}
	_, err = NewRaftNodeAndBootstrapCluster(addrs[0], nil, t.TempDir(), fsmexample.New(), nil)
	if !errors.Is(err, ErrInvalidConfig) {
		t.Fatalf("empty list: got %v, want ErrInvalidConfig", err)
	}
}

func TestApplyLocalOnFollowerNamesTheLeader(t *testing.T) {
	c := newTCPCluster(t, 3)
	l := c.leader()
	f := (l + 1) % 3
	waitFor(t, 10*time.Second, "follower to learn the leader", func() bool { return c.nodes[f].GetLeaderAddr() != "" })
	_, err := c.nodes[f].ApplyLocal(ctxTimeout(t, 5*time.Second), fsmexample.Set("a", []byte("1")))
	if !errors.Is(err, raft.ErrNotLeader) {
		t.Fatalf("ApplyLocal on follower: %v, want raft.ErrNotLeader", err)
	}
	var nle *NotLeaderError
	if !errors.As(err, &nle) || nle.LeaderAddr != c.addrs[l] || nle.LeaderID != c.addrs[l] {
		t.Fatalf("error %#v does not name leader %s", nle, c.addrs[l])
	}
	if errors.Is(err, ErrUnknownOutcome) {
		t.Fatal("a write refused by a follower was marked unknown")
	}
}

func TestApplyReturnsFSMError(t *testing.T) {
	n := newMemNode(t, "solo")
	res, err := n.Apply(ctxTimeout(t, 5*time.Second), []byte{200})
	// ErrBadCommand is not registered in Config.FSMErrors: the error
	// carries the FSM's text, and is classified as the FSM's.
	var fe *FSMError
	if !errors.As(err, &fe) || !strings.Contains(fe.Message, "bad command") || res != nil || Classify(err) != Rejected {
		t.Fatalf("Apply(bad command) = %v, %v; want an *FSMError with the FSM's text", res, err)
	}
	res, err = n.Apply(ctxTimeout(t, 5*time.Second), fsmexample.Delete("missing"))
	if err != nil || res != false {
		t.Fatalf("Apply(delete) = %v, %v", res, err)
	}
}

func TestApplyTimeoutOnIsolatedLeaderIsUnknownOutcome(t *testing.T) {
	net := NewMemNetwork()
	nodes, _ := newMemCluster(t, net, 3)
	l := memLeader(t, nodes)
	net.Isolate(nodes[l].Addr())
	ctx, cancel := context.WithTimeout(context.Background(), 150*time.Millisecond)
	defer cancel()
	_, err := nodes[l].Apply(ctx, fsmexample.Set("a", []byte("1")))
	if !errors.Is(err, ErrUnknownOutcome) {
		t.Fatalf("write on isolated leader: %v, want ErrUnknownOutcome", err)
	}
	if !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, raft.ErrLeadershipLost) {
		t.Fatalf("error %v does not carry its cause", err)
	}
}

// Writes that gave up on their context are still waited on (raft
// resolves their futures later), and Close lets those waits end.
func TestCloseAfterAbandonedWritesLeavesNoWaits(t *testing.T) {
	net := NewMemNetwork()
	nodes, _ := newMemCluster(t, net, 3)
	l := memLeader(t, nodes)
	net.Isolate(nodes[l].Addr())
	var wg sync.WaitGroup
	errs := make(chan error, 20)
	for i := 0; i < 20; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
			defer cancel()
			_, err := nodes[l].ApplyLocal(ctx, fsmexample.Set(fmt.Sprintf("k%d", i), []byte("v")))
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		// Submitted writes that were cut short have an unknown outcome;
		// later ones may find the node no longer leads.
		if !errors.Is(err, ErrUnknownOutcome) && !errors.Is(err, ErrNotApplied) {
			t.Fatalf("abandoned write: %v, want ErrUnknownOutcome or ErrNotApplied", err)
		}
	}
	if err := nodes[l].Close(); err != nil {
		t.Fatal(err)
	}
	nodes[l].futureWaits.mu.Lock()
	n := nodes[l].futureWaits.n
	nodes[l].futureWaits.mu.Unlock()
	if n != 0 {
		t.Fatalf("%d waits on raft futures remain after Close", n)
	}
}

func TestApplyTimeoutDefaultsToConfig(t *testing.T) {
	net := NewMemNetwork()
	nodes, _ := newMemCluster(t, net, 3, func(c *Config) { c.ApplyTimeout = 200 * time.Millisecond })
	l := memLeader(t, nodes)
	net.Isolate(nodes[l].Addr())
	start := time.Now()
	_, err := nodes[l].Apply(context.Background(), fsmexample.Set("a", []byte("1")))
	if !errors.Is(err, ErrUnknownOutcome) {
		t.Fatalf("got %v, want ErrUnknownOutcome", err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("Apply without deadline took %s with ApplyTimeout 200ms", took)
	}
}

func TestLockedDirFailsFastInProcess(t *testing.T) {
	dir := t.TempDir()
	n, err := NewRaftNode(Config{Addr: "127.0.0.1:0", Dir: dir}, fsmexample.New())
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	start := time.Now()
	_, err = NewRaftNode(Config{Addr: "127.0.0.1:0", Dir: dir}, fsmexample.New())
	if !errors.Is(err, ErrDataDirLocked) {
		t.Fatalf("second node on the same Dir: %v, want ErrDataDirLocked", err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("locked Dir took %s to fail", took)
	}
}

// holdDirHelper runs in a child process: it opens a node on the directory
// named by RAFTKIT_HOLD_DIR, says so, and holds it until stdin closes.
func holdDirHelper() {
	n, err := NewRaftNode(Config{Addr: "127.0.0.1:0", Dir: os.Getenv("RAFTKIT_HOLD_DIR")}, fsmexample.New())
	if err != nil {
		fmt.Println("error:", err)
		os.Exit(1)
	}
	fmt.Println("holding")
	buf := make([]byte, 1)
	os.Stdin.Read(buf)
	n.Close()
}

func TestLockedDirFailsFastAcrossProcesses(t *testing.T) {
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "RAFTKIT_HOLD_DIR="+dir)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	var out syncBuffer
	cmd.Stdout = &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { stdin.Close(); cmd.Wait() }()
	waitFor(t, 30*time.Second, "the child process to hold the directory", func() bool {
		return strings.Contains(out.String(), "holding") || strings.Contains(out.String(), "error")
	})
	if !strings.Contains(out.String(), "holding") {
		t.Fatalf("child failed: %s", out.String())
	}
	start := time.Now()
	_, err = NewRaftNode(Config{Addr: "127.0.0.1:0", Dir: dir}, fsmexample.New())
	if !errors.Is(err, ErrDataDirLocked) {
		t.Fatalf("Dir held by another process: %v, want ErrDataDirLocked", err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("locked Dir took %s to fail", took)
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}
func (s *syncBuffer) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

func TestDamagedRaftDBIsRefused(t *testing.T) {
	// A real raft.db with a few entries to damage.
	good := t.TempDir()
	n, err := NewRaftNode(Config{Addr: "127.0.0.1:0", Dir: good, Peers: nil}, fsmexample.New())
	if err != nil {
		t.Fatal(err)
	}
	n.Close()
	goodDB, err := os.ReadFile(filepath.Join(good, store.BoltFile))
	if err != nil {
		t.Fatal(err)
	}
	cases := map[string]func([]byte) []byte{
		"empty":     func([]byte) []byte { return nil },
		"truncated": func(b []byte) []byte { return b[:100] },
		"garbage":   func(b []byte) []byte { return bytes.Repeat([]byte("garbage!"), len(b)/8) },
		"flipped meta pages": func(b []byte) []byte {
			b = append([]byte(nil), b...)
			for _, off := range []int{16, 4096 + 16} { // both meta pages' magic
				b[off] ^= 0xff
			}
			return b
		},
	}
	for name, damage := range cases {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, store.BoltFile), damage(goodDB), 0o600); err != nil {
				t.Fatal(err)
			}
			n, err := NewRaftNode(Config{Addr: "127.0.0.1:0", Dir: dir}, fsmexample.New())
			if err == nil {
				n.Close()
				t.Fatal("node started on a damaged raft.db")
			}
			if !errors.Is(err, ErrCorruptStore) || !strings.Contains(err.Error(), store.BoltFile) {
				t.Fatalf("got %v, want ErrCorruptStore naming raft.db", err)
			}
		})
	}
}

func TestMissingLogWithSnapshotsIsRefused(t *testing.T) {
	dir := t.TempDir()
	n, err := NewRaftNodeAndBootstrapCluster("127.0.0.1:0", []string{"127.0.0.1:0"}, dir, fsmexample.New(), nil)
	if err == nil { // port 0 with peers is invalid; use a real port
		n.Close()
		t.Fatal("port 0 with peers accepted")
	}
	addr := unusedAddr(t)
	n, err = NewRaftNodeAndBootstrapCluster(addr, []string{addr}, dir, fsmexample.New(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := n.WaitForLeader(ctxTimeout(t, 10*time.Second)); err != nil {
		t.Fatal(err)
	}
	if _, err := n.Apply(context.Background(), fsmexample.Set("a", []byte("1"))); err != nil {
		t.Fatal(err)
	}
	if err := n.Snapshot(ctxTimeout(t, 5*time.Second)); err != nil {
		t.Fatal(err)
	}
	n.Close()
	if err := os.Remove(filepath.Join(dir, store.BoltFile)); err != nil {
		t.Fatal(err)
	}
	_, err = NewRaftNodeAndBootstrapCluster(addr, []string{addr}, dir, fsmexample.New(), nil)
	if !errors.Is(err, ErrCorruptStore) {
		t.Fatalf("missing raft.db beside snapshots: %v, want ErrCorruptStore", err)
	}
}

func TestFailedConstructionReleasesEverything(t *testing.T) {
	// The port is taken, so NewRaftNode fails after opening raft.db; the
	// file lock must be released for the next attempt.
	dir := t.TempDir()
	addrs, lns := reservePorts(t, 1)
	addr := addrs[0]
	blocker, err := NewRaftNode(Config{Addr: addr, Listener: lns[0], Dir: t.TempDir()}, fsmexample.New())
	if err != nil {
		t.Fatal(err)
	}
	_, err = NewRaftNode(Config{Addr: addr, Dir: dir}, fsmexample.New())
	if err == nil || !strings.Contains(err.Error(), addr) {
		t.Fatalf("taken port gave %v, want an error naming %s", err, addr)
	}
	blocker.Close()
	n, err := NewRaftNode(Config{Addr: addr, Dir: dir}, fsmexample.New())
	if err != nil {
		t.Fatalf("retry after failed construction: %v", err)
	}
	n.Close()
}

func TestCloseIsIdempotentAndStopsCalls(t *testing.T) {
	n, err := NewRaftNode(Config{Addr: "127.0.0.1:0", Dir: t.TempDir()}, fsmexample.New())
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	if err := n.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := n.Apply(context.Background(), []byte("x")); !errors.Is(err, ErrClosed) {
		t.Fatalf("Apply after Close: %v, want ErrClosed", err)
	}
	if _, err := n.WaitForLeader(context.Background()); !errors.Is(err, ErrClosed) {
		t.Fatalf("WaitForLeader after Close: %v, want ErrClosed", err)
	}
	if err := n.Snapshot(context.Background()); !errors.Is(err, ErrClosed) {
		t.Fatalf("Snapshot after Close: %v, want ErrClosed", err)
	}
}

func TestCloseOnLeaderHandsOverLeadership(t *testing.T) {
	// Followers here wait 3s before suspecting the leader, so a new leader
	// within 1.5s of Close can only come from a handover.
	slow := func(c *Config) {
		c.RaftConfig = func(rc *raft.Config) {
			rc.HeartbeatTimeout, rc.ElectionTimeout, rc.LeaderLeaseTimeout = 3*time.Second, 3*time.Second, time.Second
		}
	}
	net := NewMemNetwork()
	nodes, _ := newMemCluster(t, net, 3, slow)
	l := memLeader(t, nodes)
	if err := nodes[l].Close(); err != nil {
		t.Fatal(err)
	}
	closed := time.Now()
	rest := append(append([]*RaftNode{}, nodes[:l]...), nodes[l+1:]...)
	memLeader(t, rest)
	if took := time.Since(closed); took > 1500*time.Millisecond {
		t.Fatalf("new leader came %s after Close: leadership was not handed over", took)
	}
}

func TestLeadershipWatchersStartWithCurrentStateAndSeeChanges(t *testing.T) {
	net := NewMemNetwork()
	nodes, _ := newMemCluster(t, net, 3)
	var (
		l      int
		a, b   <-chan Leadership
		cancel context.CancelFunc
	)
	// The first value is the state when the watch starts. On a loaded
	// machine leadership may move between finding the leader and
	// watching it; then the first value must say so, and we try again.
	for attempt := 0; ; attempt++ {
		l = memLeader(t, nodes)
		var ctx context.Context
		ctx, cancel = context.WithCancel(context.Background())
		a, b = nodes[l].WatchLeadership(ctx), nodes[l].WatchLeadership(ctx)
		fa, fb := <-a, <-b
		if fa.IsLeader && fb.IsLeader && fa.LeaderAddr == nodes[l].Addr() && fb.LeaderAddr == nodes[l].Addr() {
			break
		}
		cancel()
		if nodes[l].IsLeader() || attempt == 5 {
			t.Fatalf("first values %+v, %+v on a node that leads (attempt %d)", fa, fb, attempt)
		}
	}
	defer cancel()
	net.Isolate(nodes[l].Addr())
	// Neither watcher reads while leadership is lost; each then sees the
	// latest state, not a stale one.
	waitFor(t, 10*time.Second, "isolated leader to step down", func() bool { return !nodes[l].IsLeader() })
	for _, ch := range []<-chan Leadership{a, b} {
		select {
		case got := <-ch:
			if got.IsLeader {
				t.Fatalf("watcher got %+v after step-down, want not leader", got)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("watcher saw no change after step-down")
		}
	}
	cancel()
	for _, ch := range []<-chan Leadership{a, b} {
		waitFor(t, 5*time.Second, "channel to close after cancel", func() bool {
			select {
			case _, ok := <-ch:
				return !ok
			default:
				return false
			}
		})
	}
}

func TestPortZeroResolvesToANewValue(t *testing.T) {
	port0 := Config{Addr: "127.0.0.1:0", Dir: t.TempDir()}
	s, err := port0.settle()
	if err != nil {
		t.Fatal(err)
	}
	b := s.bound("127.0.0.1:45678")
	if b.advertise != "127.0.0.1:45678" || b.ID != "127.0.0.1:45678" {
		t.Fatalf("bound to port 45678: advertise %q, ID %q", b.advertise, b.ID)
	}
	if s.advertise != "127.0.0.1:0" || s.ID != "127.0.0.1:0" {
		t.Fatalf("resolving port 0 changed the settled config: advertise %q, ID %q", s.advertise, s.ID)
	}

	named := port0
	named.ID = "n1"
	s, err = named.settle()
	if err != nil {
		t.Fatal(err)
	}
	if b := s.bound("127.0.0.1:45678"); b.ID != "n1" || b.advertise != "127.0.0.1:45678" {
		t.Fatalf("bound with ID n1: advertise %q, ID %q", b.advertise, b.ID)
	}

	advertised := port0
	advertised.AdvertiseAddr = "127.0.0.1:7000"
	s, err = advertised.settle()
	if err != nil {
		t.Fatal(err)
	}
	if b := s.bound(s.portOptions().Advertise); b.advertise != "127.0.0.1:7000" || b.ID != "127.0.0.1:7000" {
		t.Fatalf("bound with AdvertiseAddr: advertise %q, ID %q", b.advertise, b.ID)
	}

	n, err := NewRaftNode(port0, fsmexample.New())
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	if _, port, _ := net.SplitHostPort(n.Addr()); port == "0" || n.ID() != n.Addr() {
		t.Fatalf("node on port 0 has ID %q and address %q, want both the chosen port", n.ID(), n.Addr())
	}
}
