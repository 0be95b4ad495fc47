package raftkit

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	fsmexample "github.com/raftkit/raftkit/fsm_example"
	"github.com/raftkit/raftkit/internal/port"
)

// configNames reports whether any node's configuration names addr.
func configNames(nodes []*RaftNode, addr string) bool {
	for _, n := range nodes {
		for _, s := range n.Status().Servers {
			if s.Addr == addr {
				return true
			}
		}
	}
	return false
}

// healthOf is what a health check of node (admin's GET health) answers,
// as far as it rests on Ready: 200, or 503 and why.
func healthOf(t *testing.T, n *RaftNode) (int, string) {
	t.Helper()
	if err := n.Ready(); err != nil {
		return http.StatusServiceUnavailable, err.Error()
	}
	return http.StatusOK, ""
}

// One typo in one node's Peers: A and B get [A,B,C], C gets [A,C,D]. They
// are started one after another in one goroutine, as the README does.
func TestNodeWithADifferentPeersListRefusesToJoin(t *testing.T) {
	addrs := unusedAddrs(t, 4)
	a, b, c, d := addrs[0], addrs[1], addrs[2], addrs[3]
	base := t.TempDir()
	lists := [][]string{{a, b, c}, {a, b, c}, {a, c, d}}
	var nodes []*RaftNode
	var fsms []*fsmexample.Store
	var cLog syncBuffer
	for i, list := range lists {
		fsm := fsmexample.New()
		logger := testLogger(t)
		if i == 2 {
			logger = hclog.New(&hclog.LoggerOptions{Level: hclog.Info, Output: &cLog})
		}
		n, err := NewRaftNode(Config{Addr: addrs[i], Dir: filepath.Join(base, fmt.Sprint(i)), Peers: list, RaftConfig: fastRaft, Logger: logger}, fsm)
		if err != nil {
			t.Fatalf("start node %d: %v", i, err)
		}
		t.Cleanup(func() { n.Close() })
		nodes, fsms = append(nodes, n), append(fsms, fsm)
	}
	cNode := nodes[2]

	// C refuses within a few seconds, naming both lists.
	var err error
	waitFor(t, 5*time.Second, "C's Apply to fail with ErrInvalidConfig", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		defer cancel()
		_, err = cNode.Apply(ctx, fsmexample.Set("from-c", []byte("x")))
		return errors.Is(err, ErrInvalidConfig)
	})
	for _, want := range []string{b, d} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("C's error does not name %s (both lists): %v", want, err)
		}
	}
	var ce *ConfigError
	if !errors.As(err, &ce) || ce.Field != "Peers" {
		t.Errorf("C's error is not a *ConfigError for Peers: %#v", err)
	}
	if err := cNode.LinearizableRead(ctxTimeout(t, time.Second)); !errors.Is(err, ErrInvalidConfig) {
		t.Errorf("C's LinearizableRead: %v, want ErrInvalidConfig", err)
	}
	start := time.Now()
	if _, err := cNode.WaitForLeader(ctxTimeout(t, 10*time.Second)); !errors.Is(err, ErrInvalidConfig) || time.Since(start) > time.Second {
		t.Errorf("C's WaitForLeader: %v after %s, want ErrInvalidConfig at once", err, time.Since(start))
	}
	if st := cNode.Status(); !strings.Contains(st.MembershipError, "invalid config") {
		t.Errorf("C's Status().MembershipError = %q", st.MembershipError)
	}
	if code, body := healthOf(t, cNode); code != http.StatusServiceUnavailable || !strings.Contains(body, "invalid config") {
		t.Errorf("C's health: %d %s", code, body)
	}

	// A and B form a cluster and commit writes; C applies none of them.
	l := -1
	waitFor(t, 15*time.Second, "A or B to lead", func() bool {
		for i := 0; i < 2; i++ {
			if nodes[i].IsLeader() {
				l = i
			}
		}
		return l >= 0
	})
	for i := 0; i < 10; i++ {
		if _, err := nodes[(l+i)%2].Apply(ctxTimeout(t, 5*time.Second), fsmexample.Set(fmt.Sprintf("k%d", i), []byte("v"))); err != nil {
			t.Fatalf("write %d on the A-B cluster: %v", i, err)
		}
	}
	if err := nodes[1-l].LinearizableRead(ctxTimeout(t, 5*time.Second)); err != nil {
		t.Fatal(err)
	}
	if fsms[1-l].Len() != 10 {
		t.Fatalf("follower of the A-B cluster has %d keys, want 10", fsms[1-l].Len())
	}
	// Give C every chance to take the log: two election timeouts' worth
	// of heartbeats from the leader.
	deadline := time.Now().Add(time.Second)
	for time.Now().Before(deadline) {
		if fsms[2].Len() != 0 || cNode.raft.LastIndex() != 0 {
			t.Fatalf("C took the cluster's log: %d keys, last index %d", fsms[2].Len(), cNode.raft.LastIndex())
		}
		if configNames(nodes, d) {
			t.Fatalf("a configuration names D (%s)", d)
		}
		time.Sleep(20 * time.Millisecond) // sampling, not synchronisation
	}
	if n := strings.Count(cLog.String(), "[ERROR] raftkit: Peers lists disagree"); n != 1 {
		t.Errorf("C logged the disagreement at ERROR %d times, want once; log:\n%s", n, cLog.String())
	}
	if st := nodes[l].Status(); len(st.Servers) != 3 || st.MembershipError != "" {
		t.Fatalf("leader's status: %+v", st)
	}
	if code, body := healthOf(t, nodes[1-l]); code != http.StatusOK {
		t.Fatalf("A-B follower's health: %d %s", code, body)
	}
}

// A node with a ConfigError from its agreement stays refused after the
// others bootstrapped, and a restart with the corrected list joins it.
func TestRestartWithTheCorrectedListJoins(t *testing.T) {
	addrs := unusedAddrs(t, 4)
	base := t.TempDir()
	dir := func(i int) string { return filepath.Join(base, fmt.Sprint(i)) }
	good := addrs[:3]
	start := func(i int, peers []string) (*RaftNode, *fsmexample.Store) {
		t.Helper()
		fsm := fsmexample.New()
		n, err := NewRaftNode(Config{Addr: addrs[i], Dir: dir(i), Peers: peers, RaftConfig: fastRaft, Logger: testLogger(t)}, fsm)
		if err != nil {
			t.Fatalf("start node %d: %v", i, err)
		}
		t.Cleanup(func() { n.Close() })
		return n, fsm
	}
	n0, _ := start(0, good)
	n1, _ := start(1, good)
	bad, _ := start(2, []string{addrs[0], addrs[2], addrs[3]})
	waitFor(t, 10*time.Second, "the odd node to refuse", func() bool { return errors.Is(bad.memberErr(), ErrInvalidConfig) })
	var leader *RaftNode
	waitFor(t, 15*time.Second, "a leader", func() bool {
		for _, n := range []*RaftNode{n0, n1} {
			if n.IsLeader() {
				leader = n
			}
		}
		return leader != nil
	})
	if _, err := leader.Apply(ctxTimeout(t, 5*time.Second), fsmexample.Set("k", []byte("v"))); err != nil {
		t.Fatal(err)
	}
	if err := bad.Close(); err != nil {
		t.Fatal(err)
	}
	fixed, fsm := start(2, good)
	if _, err := fixed.WaitForLeader(ctxTimeout(t, 15*time.Second)); err != nil {
		t.Fatalf("corrected node: %v", err)
	}
	if err := fixed.LinearizableRead(ctxTimeout(t, 10*time.Second)); err != nil {
		t.Fatal(err)
	}
	if v, ok := fsm.Get("k"); !ok || string(v) != "v" {
		t.Fatalf("corrected node has k=%q (%v)", v, ok)
	}
}

// A fresh node restarted with the same arguments while its peers are down
// stays correct: it waits, and bootstraps with them once they come.
func TestFreshNodeRestartedWhileOthersAreDownBootstrapsLater(t *testing.T) {
	addrs, lns := reservePorts(t, 3)
	c := &testCluster{t: t, addrs: addrs, lns: lns}
	base := t.TempDir()
	for i := 0; i < 3; i++ {
		c.dirs = append(c.dirs, filepath.Join(base, fmt.Sprint(i)))
	}
	c.nodes = make([]*RaftNode, 3)
	c.fsms = make([]*fsmexample.Store, 3)
	t.Cleanup(c.closeAll)
	c.start(0)
	// Alone, it must not bootstrap: nobody agreed yet.
	time.Sleep(300 * time.Millisecond) // let a few agreement rounds fail
	if c.nodes[0].raft.LastIndex() != 0 {
		t.Fatalf("a lone node bootstrapped: last index %d", c.nodes[0].raft.LastIndex())
	}
	c.stop(0)
	c.start(0)
	c.start(1)
	l := -1
	waitFor(t, 15*time.Second, "a leader", func() bool {
		for i := 0; i < 2; i++ {
			if c.nodes[i].IsLeader() {
				l = i
			}
		}
		return l >= 0
	})
	if _, err := c.nodes[l].Apply(ctxTimeout(t, 5*time.Second), fsmexample.Set("a", []byte("1"))); err != nil {
		t.Fatal(err)
	}
	// The third node comes later and joins the cluster its peers formed.
	c.start(2)
	if err := c.nodes[2].LinearizableRead(ctxTimeout(t, 15*time.Second)); err != nil {
		t.Fatal(err)
	}
	if v, _ := c.fsms[2].Get("a"); string(v) != "1" {
		t.Fatalf("late node has a=%q", v)
	}
	if n := len(c.nodes[2].Status().Servers); n != 3 {
		t.Fatalf("late node sees %d servers", n)
	}
}

// One node restarted with the same arguments while the others are down
// starts at once and keeps its membership.
func TestRestartOneNodeWhileOthersAreDown(t *testing.T) {
	c := newTCPCluster(t, 3)
	l := c.leader()
	if _, err := c.nodes[l].Apply(ctxTimeout(t, 5*time.Second), fsmexample.Set("a", []byte("1"))); err != nil {
		t.Fatal(err)
	}
	for i := range c.nodes {
		c.stop(i)
	}
	start := time.Now()
	c.start(1)
	if time.Since(start) > 5*time.Second {
		t.Fatalf("NewRaftNode took %s with its peers down", time.Since(start))
	}
	st := c.nodes[1].Status()
	if len(st.Servers) != 3 || st.MembershipError != "" {
		t.Fatalf("restarted node alone: %+v", st)
	}
	c.start(0)
	c.start(2)
	if err := c.nodes[1].LinearizableRead(ctxTimeout(t, 15*time.Second)); err != nil {
		t.Fatal(err)
	}
	if v, _ := c.fsms[1].Get("a"); string(v) != "1" {
		t.Fatalf("a=%q after restart", v)
	}
}

// A removed node that restarts from its directory says so within 5 s.
func TestRemovedNodeRestartedFromItsDirectoryReportsErrRemoved(t *testing.T) {
	c := newTCPCluster(t, 3)
	l := c.leader()
	victim := (l + 1) % 3
	// raft sends a removed server the entries up to its removal once, as
	// it stops replicating to it: a node removed before the leader's
	// replication to it got going may never hear of it while it runs (it
	// does at its restart, below). So let the victim catch up first.
	if _, err := c.nodes[l].Apply(ctxTimeout(t, 10*time.Second), fsmexample.Set("before", []byte("1"))); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the victim to apply the leader's write", func() bool {
		_, ok := c.fsms[victim].Get("before")
		return ok
	})
	// The running node learns of its removal, if raft sent it the entry
	// before committing it (on a loaded machine the leader may commit with
	// the other voter's answer and stop replicating to the victim first):
	// the removal is tried again after adding the node back.
	for attempt := 1; ; attempt++ {
		if err := c.nodes[l].RemoveServer(ctxTimeout(t, 10*time.Second), c.nodes[victim].ID()); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(5 * time.Second)
		for !errors.Is(c.nodes[victim].memberErr(), ErrRemoved) && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		if errors.Is(c.nodes[victim].memberErr(), ErrRemoved) {
			break
		}
		if attempt == 3 {
			t.Fatal("the removed node never reported ErrRemoved, in 3 removals")
		}
		t.Logf("removal %d: the node did not hear of it; adding it back to try again", attempt)
		if err := c.nodes[l].AddVoter(ctxTimeout(t, 20*time.Second), c.nodes[victim].ID(), c.nodes[victim].Addr()); err != nil {
			t.Fatal(err)
		}
	}
	c.stop(victim)
	c.start(victim)
	n := c.nodes[victim]
	start := time.Now()
	ctx := ctxTimeout(t, 20*time.Second)
	_, err := n.Apply(ctx, fsmexample.Set("x", []byte("1")))
	if !errors.Is(err, ErrRemoved) || time.Since(start) > 5*time.Second {
		t.Fatalf("Apply on the restarted removed node: %v after %s, want ErrRemoved within 5s", err, time.Since(start))
	}
	if !strings.Contains(err.Error(), "Join") {
		t.Errorf("ErrRemoved does not say how to rejoin: %v", err)
	}
	if err := n.LinearizableRead(ctx); !errors.Is(err, ErrRemoved) {
		t.Errorf("LinearizableRead: %v, want ErrRemoved", err)
	}
	if _, err := n.WaitForLeader(ctx); !errors.Is(err, ErrRemoved) {
		t.Errorf("WaitForLeader: %v, want ErrRemoved", err)
	}
	if st := n.Status(); !strings.Contains(st.MembershipError, "not a member") {
		t.Errorf("Status().MembershipError = %q", st.MembershipError)
	}
	if code, body := healthOf(t, n); code != http.StatusServiceUnavailable || !strings.Contains(body, "not a member") {
		t.Errorf("health of the removed node: %d %s", code, body)
	}
	if time.Since(start) > 5*time.Second {
		t.Errorf("reporting the removal took %s", time.Since(start))
	}
	// The README's way back: restart it with Join; it keeps its data and
	// receives what it missed.
	if _, err := c.nodes[l].Apply(ctxTimeout(t, 5*time.Second), fsmexample.Set("missed", []byte("1"))); err != nil {
		t.Fatal(err)
	}
	c.stop(victim)
	cfg := c.config(victim)
	cfg.Peers, cfg.Join = nil, []string{c.addrs[l]}
	fsm := fsmexample.New()
	back, err := NewRaftNode(cfg, fsm)
	if err != nil {
		t.Fatalf("rejoin with Join: %v", err)
	}
	c.nodes[victim], c.fsms[victim] = back, fsm
	if _, err := back.WaitForLeader(ctxTimeout(t, 15*time.Second)); err != nil {
		t.Fatalf("rejoined node: %v", err)
	}
	if err := back.LinearizableRead(ctxTimeout(t, 10*time.Second)); err != nil {
		t.Fatal(err)
	}
	if v, _ := fsm.Get("missed"); string(v) != "1" {
		t.Fatalf("rejoined node has missed=%q", v)
	}
	if n := len(back.Status().Servers); n != 3 {
		t.Fatalf("rejoined node sees %d servers", n)
	}
}

// A removed node that lost its data and is started again with its
// original Peers learns from its peers that their cluster no longer
// contains it, and says so; adding it back makes it a member again.
func TestWipedRemovedNodeWithOriginalPeersReportsErrRemoved(t *testing.T) {
	c := newTCPCluster(t, 3)
	l := c.leader()
	victim := (l + 1) % 3
	if err := c.nodes[l].RemoveServer(ctxTimeout(t, 10*time.Second), c.nodes[victim].ID()); err != nil {
		t.Fatal(err)
	}
	c.stop(victim)
	c.dirs[victim] = filepath.Join(t.TempDir(), "wiped")
	c.start(victim)
	n := c.nodes[victim]
	start := time.Now()
	waitFor(t, 5*time.Second, "the wiped node to report ErrRemoved", func() bool {
		_, err := n.Apply(ctxTimeout(t, 200*time.Millisecond), fsmexample.Set("x", []byte("1")))
		return errors.Is(err, ErrRemoved)
	})
	if n.raft.LastIndex() != 0 {
		t.Fatalf("the wiped node bootstrapped a configuration that the cluster no longer has (last index %d)", n.raft.LastIndex())
	}
	t.Logf("reported after %s", time.Since(start))
	if err := c.nodes[l].AddVoter(ctxTimeout(t, 10*time.Second), n.ID(), n.Addr()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 15*time.Second, "the node added back to be ready", func() bool {
		_, err := n.WaitForLeader(ctxTimeout(t, 200*time.Millisecond))
		return err == nil
	})
	if st := n.Status(); st.MembershipError != "" || len(st.Servers) != 3 {
		t.Fatalf("after AddVoter: %+v", st)
	}
}

// A node that joins is ready (health, WaitForLeader) only once it has the
// configuration that contains it and has applied what the cluster had
// committed when it joined.
func TestJoinedNodeIsReadyOnlyAsACaughtUpMember(t *testing.T) {
	c := newTCPCluster(t, 3)
	l := c.leader()
	const keys = 300
	for i := 0; i < keys; i++ {
		if _, err := c.nodes[l].Apply(ctxTimeout(t, 5*time.Second), fsmexample.Set(fmt.Sprintf("k%d", i), []byte("v"))); err != nil {
			t.Fatal(err)
		}
	}
	fsm := &gatedFSM{Store: fsmexample.New()}
	fsm.hold() // a slow FSM: nothing applies until released
	defer fsm.release()
	n4, err := NewRaftNode(Config{Addr: unusedAddrs(t, 1)[0], Dir: filepath.Join(t.TempDir(), "n4"), Join: []string{c.addrs[(l+1)%3]}, RaftConfig: fastRaft, Logger: testLogger(t)}, fsm)
	if err != nil {
		t.Fatal(err)
	}
	defer n4.Close()
	waitFor(t, 10*time.Second, "the joined node to have its configuration", func() bool { return len(n4.Status().Servers) == 4 })
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	_, err = n4.WaitForLeader(ctx)
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("WaitForLeader on a node that applied nothing yet: %v, want the context's deadline", err)
	}
	if code, body := healthOf(t, n4); code != http.StatusServiceUnavailable || !strings.Contains(body, "joined") {
		t.Fatalf("health of a node that applied nothing yet: %d %s", code, body)
	}
	if !n4.Status().Joining {
		t.Fatal("Status().Joining is false before the node caught up")
	}
	fsm.release()
	if _, err := n4.WaitForLeader(ctxTimeout(t, 15*time.Second)); err != nil {
		t.Fatal(err)
	}
	if fsm.Len() != keys {
		t.Fatalf("ready with %d of %d keys applied", fsm.Len(), keys)
	}
	if code, body := healthOf(t, n4); code != http.StatusOK {
		t.Fatalf("health after catching up: %d %s", code, body)
	}
}

func TestJoinWaitEndsWithJoinContext(t *testing.T) {
	nobody := unusedAddrs(t, 1)[0]
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := NewRaftNode(Config{Addr: "127.0.0.1:0", Dir: t.TempDir(), Join: []string{nobody}, JoinContext: ctx}, fsmexample.New())
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("join with an expiring JoinContext: %v, want context.DeadlineExceeded", err)
	}
	if time.Since(start) > 5*time.Second {
		t.Fatalf("NewRaftNode returned %s after JoinContext ended", time.Since(start))
	}
}

// A node with state ignores Peers on restart, even a list without it.
func TestRestartAcceptsAnyPeers(t *testing.T) {
	c := newTCPCluster(t, 3)
	l := c.leader()
	if _, err := c.nodes[l].Apply(ctxTimeout(t, 5*time.Second), fsmexample.Set("a", []byte("1"))); err != nil {
		t.Fatal(err)
	}
	f := (l + 1) % 3
	c.stop(f)
	var logs syncBuffer
	cfg := c.config(f)
	cfg.Peers = append(unusedAddrs(t, 2), c.addrs[l])
	cfg.Logger = hclog.New(&hclog.LoggerOptions{Level: hclog.Info, Output: &logs})
	fsm := fsmexample.New()
	n, err := NewRaftNode(cfg, fsm)
	if err != nil {
		t.Fatalf("restart with a stale Peers list: %v", err)
	}
	c.nodes[f], c.fsms[f] = n, fsm
	if !strings.Contains(logs.String(), "ignoring Peers") {
		t.Errorf("no INFO line about the ignored Peers; log:\n%s", logs.String())
	}
	if err := n.LinearizableRead(ctxTimeout(t, 15*time.Second)); err != nil {
		t.Fatal(err)
	}
	if v, _ := fsm.Get("a"); string(v) != "1" {
		t.Fatalf("a=%q", v)
	}
	if err := cfg.Validate(); !errors.Is(err, ErrInvalidConfig) {
		t.Fatalf("Validate (which checks as for a new node): %v, want ErrInvalidConfig", err)
	}
}

// Status reports the FSM's own applied index, and raft's separately.
func TestStatusAppliedIndexIsTheFSMs(t *testing.T) {
	fsm := &gatedFSM{Store: fsmexample.New()}
	n, err := NewRaftNode(Config{InMemory: true, Addr: "solo", Peers: []string{"solo"}, RaftConfig: fastRaft}, fsm)
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	defer fsm.release()
	if _, err := n.Apply(ctxTimeout(t, 10*time.Second), fsmexample.Set("a", []byte("1"))); err != nil {
		t.Fatal(err)
	}
	before := n.Status()
	if before.AppliedIndex != before.RaftAppliedIndex || before.AppliedIndex == 0 {
		t.Fatalf("idle node: applied %d, raft applied %d", before.AppliedIndex, before.RaftAppliedIndex)
	}
	fsm.hold()
	done := make(chan error, 1)
	go func() {
		_, err := n.Apply(ctxTimeout(t, 10*time.Second), fsmexample.Set("b", []byte("2")))
		done <- err
	}()
	waitFor(t, 10*time.Second, "raft to hand the write to the FSM", func() bool { return n.Status().RaftAppliedIndex > before.RaftAppliedIndex })
	if st := n.Status(); st.AppliedIndex != before.AppliedIndex {
		t.Fatalf("AppliedIndex %d moved past the FSM (which is held at %d)", st.AppliedIndex, before.AppliedIndex)
	}
	fsm.release()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if st := n.Status(); st.AppliedIndex != st.RaftAppliedIndex || st.AppliedIndex <= before.AppliedIndex {
		t.Fatalf("after the FSM applied: applied %d, raft applied %d", st.AppliedIndex, st.RaftAppliedIndex)
	}
}

// Raft traffic waits while a node is undecided, and traffic from a
// cluster bootstrapped with another list never reaches raft.
func TestClusterGateHoldsUndecidedAndRefusesForeignRaftTraffic(t *testing.T) {
	newGate := func(pending bool) *clusterGate {
		g := &clusterGate{logged: map[string]bool{}, logger: hclog.NewNullLogger(), decided: make(chan struct{}), stop: make(chan struct{}), pending: pending}
		if !pending {
			close(g.decided)
		}
		return g
	}
	mine := digestOf([]string{"a=1", "b=2"})
	other := digestOf([]string{"a=1", "c=3"})
	if g := newGate(false); !g.Admit("x", other) {
		t.Fatal("a node that knows no cluster (Join, old state) refused traffic")
	}

	g := newGate(true)
	admitted := make(chan bool, 2)
	go func() { admitted <- g.Admit("x", mine) }()
	go func() { admitted <- g.Admit("y", other) }()
	select {
	case <-admitted:
		t.Fatal("an undecided node let raft traffic through")
	case <-time.After(200 * time.Millisecond):
	}
	g.mu.Lock()
	g.setKnown([]string{"a=1", "b=2"})
	g.mu.Unlock()
	got := map[bool]int{}
	for i := 0; i < 2; i++ {
		got[<-admitted]++
	}
	if got[true] != 1 || got[false] != 1 {
		t.Fatalf("after deciding: %v admitted, want the own cluster's in and the other's out", got)
	}
	if !g.Admit("x", port.Digest{}) {
		t.Fatal("an unlabelled connection (old state, Join) refused")
	}

	g = newGate(true)
	go func() { admitted <- g.Admit("x", mine) }()
	g.mu.Lock()
	g.refused = errors.New("refused")
	g.endPending()
	g.mu.Unlock()
	if <-admitted {
		t.Fatal("a refused node admitted raft traffic")
	}
	g = newGate(true)
	go func() { admitted <- g.Admit("x", mine) }()
	g.halt()
	if <-admitted {
		t.Fatal("a closing node admitted raft traffic")
	}
}

// unusedAddrs returns n addresses from unusedAddr: for nodes that start
// and restart on them, and for peers that never answer.
func unusedAddrs(t testing.TB, n int) []string {
	t.Helper()
	var out []string
	for i := 0; i < n; i++ {
		out = append(out, unusedAddr(t))
	}
	return out
}
