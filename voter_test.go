package raftkit

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	fsmexample "github.com/raftkit/raftkit/fsm_example"
)

// checkUnchangedAfterFailedAdd fails t unless err is AddVoter's clear
// not-applied answer for addr, given within limit, and the cluster still
// lists only servers and still commits writes.
func checkUnchangedAfterFailedAdd(t *testing.T, c *testCluster, via *RaftNode, err error, took, limit time.Duration, addr string, servers int) {
	t.Helper()
	if err == nil {
		t.Fatalf("AddVoter at %s, where nothing answers, returned nil", addr)
	}
	if !errors.Is(err, ErrNotApplied) || errors.Is(err, ErrUnknownOutcome) || Classify(err) != NotApplied {
		t.Fatalf("AddVoter at %s: %v (class %s), want a not-applied error", addr, err, Classify(err))
	}
	for _, want := range []string{addr, "the configuration is unchanged"} {
		if !strings.Contains(err.Error(), want) {
			t.Fatalf("AddVoter's error %q does not say %q", err, want)
		}
	}
	if seg := repeated(err); seg != "" {
		t.Fatalf("AddVoter's error %q repeats %q", err, seg)
	}
	if strings.Contains(err.Error(), ":0->") {
		t.Fatalf("AddVoter's error %q names the dial's meaningless source address", err)
	}
	if took > limit {
		t.Fatalf("AddVoter took %s with a context of %s", took, limit)
	}
	l := c.leader()
	if got := len(c.nodes[l].Status().Servers); got != servers {
		t.Fatalf("configuration after the failed add: %+v, want %d servers", c.nodes[l].Status().Servers, servers)
	}
	if _, err := via.Apply(ctxTimeout(t, 5*time.Second), fsmexample.Set("after", []byte("1"))); err != nil {
		t.Fatalf("write after the failed add: %v", err)
	}
}

// Issue 29: a mistyped join address on a one-node cluster made it need two
// votes of two, and no write ever committed again.
func TestAddVoterAtAMistypedAddressLeavesAOneNodeClusterWorking(t *testing.T) {
	c := newTCPCluster(t, 1)
	n := c.nodes[c.leader()]
	typo := unusedAddr(t)
	const limit = 2 * time.Second
	start := time.Now()
	err := n.AddVoter(ctxTimeout(t, limit), "typo", typo)
	checkUnchangedAfterFailedAdd(t, c, n, err, time.Since(start), limit, typo, 1)
	t.Logf("AddVoter said: %v", err)
}

// The same on three nodes with one down, asked on a follower: a voter
// that cannot answer would be the second missing vote of four.
func TestAddVoterOfAnUnreachableNodeKeepsQuorumWithAMemberDown(t *testing.T) {
	c := newTCPCluster(t, 3)
	l := c.leader()
	down, f := (l+1)%3, (l+2)%3
	c.stop(down)
	typo := unusedAddr(t)
	const limit = 2 * time.Second
	start := time.Now()
	err := c.nodes[f].AddVoter(ctxTimeout(t, limit), "typo", typo)
	checkUnchangedAfterFailedAdd(t, c, c.nodes[f], err, time.Since(start), limit, typo, 3)
}

// An address held by a member with another ID is not taken from it: the
// node there answers with its own ID.
func TestAddVoterRefusesAnAddressThatAnswersAsAnotherID(t *testing.T) {
	c := newTCPCluster(t, 3)
	l := c.leader()
	f := c.nodes[(l+1)%3]
	err := c.nodes[l].AddVoter(ctxTimeout(t, 5*time.Second), "newcomer", f.Addr())
	if !errors.Is(err, ErrInvalidRequest) || !strings.Contains(err.Error(), f.ID()) || !strings.Contains(err.Error(), "the configuration is unchanged") {
		t.Fatalf("AddVoter of another ID at a member's address: %v, want an invalid request naming %s", err, f.ID())
	}
	if st := c.nodes[l].Status(); len(st.Servers) != 3 {
		t.Fatalf("configuration after the refused add: %+v", st.Servers)
	}
}

// A real node that waits to be added becomes a voter, through a follower,
// and adding it again changes nothing.
func TestAddVoterPromotesANewNodeOnceItHasCaughtUp(t *testing.T) {
	c := newTCPCluster(t, 3)
	l := c.leader()
	for i := 0; i < 20; i++ {
		if _, err := c.nodes[l].Apply(ctxTimeout(t, 5*time.Second), fsmexample.Set("k"+string(rune('a'+i)), []byte("v"))); err != nil {
			t.Fatal(err)
		}
	}
	addrs, lns := reservePorts(t, 1)
	kv := fsmexample.New()
	n4, err := NewRaftNode(Config{ID: "n4", Addr: addrs[0], Listener: lns[0], Dir: filepath.Join(t.TempDir(), "n4"), RaftConfig: fastRaft, Logger: testLogger(t)}, kv)
	if err != nil {
		t.Fatal(err)
	}
	defer n4.Close()
	f := c.nodes[(l+1)%3]
	if err := f.AddVoter(ctxTimeout(t, 10*time.Second), "n4", addrs[0]); err != nil {
		t.Fatalf("AddVoter of a live node through a follower: %v", err)
	}
	leader := c.nodes[c.leader()]
	var voter bool
	for _, s := range leader.Status().Servers {
		voter = voter || (s.ID == "n4" && s.Voter)
	}
	if !voter {
		t.Fatalf("n4 is not a voter after AddVoter: %+v", leader.Status().Servers)
	}
	index := leader.Status().LastLogIndex
	if err := f.AddVoter(ctxTimeout(t, 5*time.Second), "n4", addrs[0]); err != nil {
		t.Fatal(err)
	}
	if got := leader.Status().LastLogIndex; got != index {
		t.Fatalf("adding an existing voter again wrote to the log (index %d -> %d)", index, got)
	}
	waitFor(t, 10*time.Second, "n4 to apply everything", func() bool { return kv.Len() == 20 })
}

// A node that answers as the ID asked for but belongs to another cluster
// never receives the configuration that adds it: the non-voter entry made
// for it is removed again, and the error says why.
func TestAddVoterRemovesANonvoterThatNeverCatchesUp(t *testing.T) {
	c := newTCPCluster(t, 3)
	l := c.leader()
	other := newTCPCluster(t, 1)
	o := other.nodes[other.leader()]
	err := c.nodes[l].AddVoter(ctxTimeout(t, 3*time.Second), o.ID(), o.Addr())
	if !errors.Is(err, ErrNotApplied) || Classify(err) != NotApplied {
		t.Fatalf("AddVoter of another cluster's node: %v, want not applied", err)
	}
	for _, want := range []string{o.Addr(), "never received the configuration", "removed again", "the configuration is unchanged"} {
		if !strings.Contains(err.Error(), want) {
			t.Fatalf("AddVoter's error %q does not say %q", err, want)
		}
	}
	if st := c.nodes[c.leader()].Status(); len(st.Servers) != 3 {
		t.Fatalf("configuration after the failed add: %+v", st.Servers)
	}
	if _, err := c.nodes[l].Apply(ctxTimeout(t, 5*time.Second), fsmexample.Set("after", []byte("1"))); err != nil {
		t.Fatalf("write after the failed add: %v", err)
	}
}

// ForceAddVoter adds a voter that nothing answers for, at once, from a
// follower: the operator's explicit choice.
func TestForceAddVoterAddsWithoutChecking(t *testing.T) {
	c := newTCPCluster(t, 3)
	l := c.leader()
	f := c.nodes[(l+1)%3]
	ghost := unusedAddr(t)
	if err := f.ForceAddVoter(ctxTimeout(t, 5*time.Second), "ghost", ghost); err != nil {
		t.Fatal(err)
	}
	found := false
	for _, s := range c.nodes[c.leader()].Status().Servers {
		found = found || (s.ID == "ghost" && s.Addr == ghost && s.Voter)
	}
	if !found {
		t.Fatalf("ghost is not a voter after ForceAddVoter: %+v", c.nodes[c.leader()].Status().Servers)
	}
	// Four voters, three up: the cluster still commits, and the ghost can
	// be removed again.
	if err := f.RemoveServer(ctxTimeout(t, 10*time.Second), "ghost"); err != nil {
		t.Fatal(err)
	}
}
