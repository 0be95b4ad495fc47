package raftkit

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	fsmexample "github.com/raftkit/raftkit/fsm_example"
)

// A node that was never added says so at once, as Ready does, instead of
// waiting out the caller's context for a leader; once added it is a
// member (IsMember) and serves.
func TestCallsOnANodeNeverAddedFailAtOnceAndIsMemberTellsWhenItIs(t *testing.T) {
	c := newTCPCluster(t, 3)
	l := c.leader()
	addrs, lns := reservePorts(t, 1)
	n4, err := NewRaftNode(Config{ID: "n4", Addr: addrs[0], Listener: lns[0], Dir: filepath.Join(t.TempDir(), "n4"), RaftConfig: fastRaft, Logger: testLogger(t)}, fsmexample.New())
	if err != nil {
		t.Fatal(err)
	}
	defer n4.Close()
	if n4.IsMember() {
		t.Fatal("IsMember is true on a node never added")
	}
	start := time.Now()
	_, applyErr := n4.Apply(ctxTimeout(t, 5*time.Second), fsmexample.Set("k", []byte("v")))
	readErr := n4.LinearizableRead(ctxTimeout(t, 5*time.Second))
	took := time.Since(start)
	for name, err := range map[string]error{"Apply": applyErr, "LinearizableRead": readErr} {
		if !errors.Is(err, ErrNotApplied) || !strings.Contains(err.Error(), "not a member of any cluster configuration") || !strings.Contains(err.Error(), "waits to be added") {
			t.Fatalf("%s on a node never added: %v, want a not-applied error saying it is not a member", name, err)
		}
	}
	if took > 2*time.Second {
		t.Fatalf("the calls took %s: they waited for a leader instead of failing at once", took)
	}
	if err := c.nodes[l].AddVoter(ctxTimeout(t, 10*time.Second), "n4", addrs[0]); err != nil {
		t.Fatal(err)
	}
	if !n4.IsMember() {
		t.Fatal("IsMember is false on a node that AddVoter added")
	}
	if _, err := n4.Apply(ctxTimeout(t, 5*time.Second), fsmexample.Set("k", []byte("v"))); err != nil {
		t.Fatalf("Apply once added: %v", err)
	}
	for _, n := range c.nodes {
		if !n.IsMember() {
			t.Fatalf("IsMember is false on bootstrapped member %s", n.ID())
		}
	}
}

// A data directory restarted under another ID was not removed: its
// address belongs to the old ID, and the error says the ID changed,
// naming both.
func TestRestartWithAnotherIDSaysTheIDChanged(t *testing.T) {
	c := newTCPCluster(t, 3)
	l := c.leader()
	i := (l + 1) % 3
	oldID := c.nodes[i].ID()
	c.stop(i)
	cfg := c.config(i)
	cfg.ID, cfg.Listener, cfg.Peers = "OTHER", nil, nil
	n, err := NewRaftNode(cfg, fsmexample.New())
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	_, err = n.Apply(ctxTimeout(t, 5*time.Second), fsmexample.Set("k", []byte("v")))
	if !errors.Is(err, ErrRemoved) {
		t.Fatalf("Apply on a node restarted under another ID: %v, want ErrRemoved", err)
	}
	for _, want := range []string{"ID changed", `"OTHER"`, `"` + oldID + `"`} {
		if !strings.Contains(err.Error(), want) {
			t.Fatalf("error %q does not say %s", err, want)
		}
	}
	if strings.Contains(err.Error(), "it was removed") {
		t.Fatalf("error %q says the node was removed", err)
	}
}
