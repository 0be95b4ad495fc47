package raftkit

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	fsmexample "github.com/raftkit/raftkit/fsm_example"
)

func TestFourthNodeJoinsThroughAFollowerAndGetsAllData(t *testing.T) {
	c := newTCPCluster(t, 3)
	l := c.leader()
	for i := 0; i < 25; i++ {
		if _, err := c.nodes[l].Apply(ctxTimeout(t, 5*time.Second), fsmexample.Set(fmt.Sprintf("k%d", i), []byte("v"))); err != nil {
			t.Fatal(err)
		}
	}
	follower := c.addrs[(l+1)%3]
	addrs, lns := reservePorts(t, 1)
	addr := addrs[0]
	kv := fsmexample.New()
	n4, err := NewRaftNode(Config{Addr: addr, Listener: lns[0], Dir: filepath.Join(t.TempDir(), "n4"), Join: []string{follower}, RaftConfig: fastRaft, Logger: testLogger(t)}, kv)
	if err != nil {
		t.Fatalf("join through follower %s: %v", follower, err)
	}
	defer n4.Close()
	st := c.nodes[l].Status()
	if len(st.Servers) != 4 {
		t.Fatalf("leader sees %d servers after join, want 4: %+v", len(st.Servers), st.Servers)
	}
	for _, s := range st.Servers {
		if s.ID == addr && !s.Voter {
			t.Fatalf("joined node is not a voter: %+v", s)
		}
	}
	waitFor(t, 15*time.Second, "the new node to receive all data", func() bool { return kv.Len() == 25 })
	// The new node is a full entry point.
	if _, err := n4.Apply(ctxTimeout(t, 5*time.Second), fsmexample.Set("from-n4", []byte("x"))); err != nil {
		t.Fatalf("write through the joined node: %v", err)
	}
}

func TestRestartedMemberNeverJoinsAgain(t *testing.T) {
	c := newTCPCluster(t, 3)
	l := c.leader()
	addrs, lns := reservePorts(t, 1)
	dir := filepath.Join(t.TempDir(), "n4")
	cfg := Config{Addr: addrs[0], Listener: lns[0], Dir: dir, Join: []string{c.addrs[l]}, RaftConfig: fastRaft}
	n4, err := NewRaftNode(cfg, fsmexample.New())
	if err != nil {
		t.Fatal(err)
	}
	// A member: it has the configuration that contains it (a node stopped
	// before it received that has no proof of membership, and would ask
	// Join's members again).
	if _, err := n4.WaitForLeader(ctxTimeout(t, 15*time.Second)); err != nil {
		t.Fatal(err)
	}
	n4.Close()
	cfg.Listener = nil // closed with n4: the restart listens anew
	// A join attempt would fail: the only Join address is dead and the
	// timeout tiny. A member with state must start without trying.
	cfg.Join = []string{unusedAddr(t)}
	cfg.JoinTimeout = 50 * time.Millisecond
	n4, err = NewRaftNode(cfg, fsmexample.New())
	if err != nil {
		t.Fatalf("restart of a member with data tried to join again: %v", err)
	}
	defer n4.Close()
	waitFor(t, 15*time.Second, "restarted member to follow the leader", func() bool { return n4.GetLeaderAddr() != "" })
}

func TestJoinFailsClearlyWhenNoMemberAnswers(t *testing.T) {
	dead := unusedAddr(t)
	start := time.Now()
	_, err := NewRaftNode(Config{Addr: "127.0.0.1:0", Dir: t.TempDir(), Join: []string{dead}, JoinTimeout: 300 * time.Millisecond}, fsmexample.New())
	if err == nil || !errors.Is(err, ErrNoLeader) {
		t.Fatalf("join with no reachable member: %v, want an ErrNoLeader-matching error", err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("failed join took %s with JoinTimeout 300ms", took)
	}
}

func TestJoinIsIdempotentAndReplacesAMovedMember(t *testing.T) {
	net := NewMemNetwork()
	nodes, _ := newMemCluster(t, net, 3)
	l := memLeader(t, nodes)
	f := nodes[(l+1)%3]
	ctx := ctxTimeout(t, 10*time.Second)
	// A phantom member, which AddVoter would refuse (nothing answers at
	// its address): ForceAddVoter shares AddVoter's handling of the
	// configuration, which this test is about. The checked path's
	// idempotence is TestAddVoterPromotesANewNodeOnceItHasCaughtUp's.
	if err := f.ForceAddVoter(ctx, "extra", "extra-addr"); err != nil {
		t.Fatal(err)
	}
	index := nodes[l].Status().LastLogIndex
	if err := f.ForceAddVoter(ctx, "extra", "extra-addr"); err != nil {
		t.Fatal(err)
	}
	if got := nodes[l].Status().LastLogIndex; got != index {
		t.Fatalf("repeating a join wrote to the log (index %d -> %d)", index, got)
	}
	if err := f.ForceAddVoter(ctx, "extra", "extra-addr-2"); err != nil {
		t.Fatal(err)
	}
	var found []ServerInfo
	for _, s := range nodes[l].Status().Servers {
		if s.ID == "extra" {
			found = append(found, s)
		}
	}
	if len(found) != 1 || found[0].Addr != "extra-addr-2" {
		t.Fatalf("after re-join at a new address: %+v", found)
	}
	// Remove the phantom member again so the cluster keeps its quorum.
	if err := f.RemoveServer(ctx, "extra"); err != nil {
		t.Fatal(err)
	}
	if err := f.RemoveServer(ctx, "extra"); err != nil {
		t.Fatalf("removing an absent member: %v, want nil", err)
	}
	if len(nodes[l].Status().Servers) != 3 {
		t.Fatalf("servers after removal: %+v", nodes[l].Status().Servers)
	}
}

func TestAddNonvoterReceivesDataWithoutVoting(t *testing.T) {
	net := NewMemNetwork()
	nodes, _ := newMemCluster(t, net, 3)
	l := memLeader(t, nodes)
	kv := fsmexample.New()
	replica, err := NewRaftNode(Config{InMemory: true, Network: net, Addr: "replica", RaftConfig: fastRaft}, kv)
	if err != nil {
		t.Fatal(err)
	}
	defer replica.Close()
	if err := nodes[(l+1)%3].AddNonvoter(ctxTimeout(t, 10*time.Second), "replica", "replica"); err != nil {
		t.Fatal(err)
	}
	if _, err := replica.Apply(ctxTimeout(t, 5*time.Second), fsmexample.Set("r", []byte("1"))); err != nil {
		t.Fatalf("write through a non-voter: %v", err)
	}
	waitFor(t, 10*time.Second, "the non-voter to apply", func() bool { _, ok := kv.Get("r"); return ok })
	for _, s := range nodes[l].Status().Servers {
		if s.ID == "replica" && s.Voter {
			t.Fatal("non-voter listed as voter")
		}
	}
}

func TestRemoveServerAndLeave(t *testing.T) {
	c := newTCPCluster(t, 3)
	l := c.leader()
	// Leave on the leader hands over leadership, removes itself and closes.
	if err := c.nodes[l].Leave(ctxTimeout(t, 10*time.Second)); err != nil {
		t.Fatalf("Leave on leader: %v", err)
	}
	rest := []int{(l + 1) % 3, (l + 2) % 3}
	var nl int
	waitFor(t, 15*time.Second, "a leader among the rest", func() bool {
		for _, i := range rest {
			if c.nodes[i].IsLeader() {
				nl = i
				return true
			}
		}
		return false
	})
	waitFor(t, 10*time.Second, "the leaver to leave the configuration", func() bool { return len(c.nodes[nl].Status().Servers) == 2 })
	for _, s := range c.nodes[nl].Status().Servers {
		if s.ID == c.addrs[l] {
			t.Fatalf("leaver still in configuration: %+v", c.nodes[nl].Status().Servers)
		}
	}
	if _, err := c.nodes[l].Apply(context.Background(), fsmexample.Set("x", nil)); !errors.Is(err, ErrClosed) {
		t.Fatalf("Apply on a node that left: %v, want ErrClosed", err)
	}
	// RemoveServer from the follower removes the other one; a 1-node
	// cluster then still commits.
	other := rest[0]
	if other == nl {
		other = rest[1]
	}
	if err := c.nodes[other].RemoveServer(ctxTimeout(t, 10*time.Second), c.addrs[other]); err != nil {
		t.Fatalf("RemoveServer of itself through a follower: %v", err)
	}
	waitFor(t, 10*time.Second, "one server left", func() bool { return len(c.nodes[nl].Status().Servers) == 1 })
	if _, err := c.nodes[nl].Apply(ctxTimeout(t, 5*time.Second), fsmexample.Set("alone", []byte("1"))); err != nil {
		t.Fatalf("write on the last member: %v", err)
	}
}

// hashicorp/raft issue #174: a removed node that did not hear of its
// removal must not disrupt the cluster when it comes back.
func TestRemovedNodeDoesNotDisruptTheCluster(t *testing.T) {
	net := NewMemNetwork()
	nodes, _ := newMemCluster(t, net, 3)
	l := memLeader(t, nodes)
	victim := nodes[(l+1)%3]
	net.Isolate(victim.Addr())
	if err := nodes[l].RemoveServer(ctxTimeout(t, 10*time.Second), victim.ID()); err != nil {
		t.Fatal(err)
	}
	// While cut off, the victim times out and campaigns in vain.
	waitFor(t, 10*time.Second, "the isolated node to lose its leader", func() bool { return victim.GetLeaderAddr() == "" })
	term := nodes[l].Status().Term
	net.Heal()
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) {
		if _, err := nodes[l].Apply(ctxTimeout(t, 5*time.Second), fsmexample.Set("k", []byte("v"))); err != nil {
			t.Fatalf("cluster disrupted by removed node: %v", err)
		}
		if !nodes[l].IsLeader() || nodes[l].Status().Term != term {
			t.Fatalf("removed node changed the leader or term (term %d -> %d)", term, nodes[l].Status().Term)
		}
		time.Sleep(50 * time.Millisecond) // pacing of the writes, not a sync
	}
}

func TestTransferLeadershipFromAFollower(t *testing.T) {
	net := NewMemNetwork()
	nodes, _ := newMemCluster(t, net, 3)
	l := memLeader(t, nodes)
	target := nodes[(l+2)%3]
	if err := nodes[(l+1)%3].TransferLeadership(ctxTimeout(t, 10*time.Second), target.ID()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "target to lead", target.IsLeader)
	if err := target.TransferLeadership(ctxTimeout(t, 10*time.Second), "no-such-node"); err == nil {
		t.Fatal("transfer to an unknown server succeeded")
	}
}
