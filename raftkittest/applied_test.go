package raftkittest

import (
	"bytes"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	fsmexample "github.com/raftkit/raftkit/fsm_example"
)

// withFault makes fault decide what each node's FSM receives.
func withFault(fault func(node string, l *raft.Log) *raft.Log) Option {
	return func(o *options) { o.fault = fault }
}

// The divergence check's negative control: a follower whose FSM receives
// one command with a byte changed fails the check, at that command's
// index, although the command itself is valid.
func TestDivergenceCheckCatchesACorruptedFollowerApply(t *testing.T) {
	victim := fsmexample.Set("victim", []byte("v1"))
	var target atomic.Value // the follower whose apply is corrupted
	target.Store("")
	var at atomic.Uint64
	fault := func(node string, l *raft.Log) *raft.Log {
		if node != target.Load().(string) || !bytes.Equal(l.Data, victim) {
			return l
		}
		at.Store(l.Index)
		bad := *l
		bad.Data = fsmexample.Set("victim", []byte("v2")) // valid, and other
		return &bad
	}
	c := newKVCluster(t, 3, withFault(fault))
	leader := c.WaitForLeader()
	target.Store(c.Followers()[0].ID())
	mustSet(t, leader, "before", "x")
	if _, err := leader.Apply(ctxFor(t, 5*time.Second), victim); err != nil {
		t.Fatal(err)
	}
	mustSet(t, leader, "after", "x")
	msg := runFake(t, func(tb testing.TB) {
		c.tb = tb
		c.AssertConsistent()
	})
	c.tb = t
	d := c.Divergence()
	if d == nil || at.Load() == 0 || d.Index != at.Load() {
		t.Fatalf("divergence %v, want one at the corrupted apply's index %d", d, at.Load())
	}
	if !strings.Contains(msg, "diverged at index") {
		t.Fatalf("AssertConsistent reported %q, want the divergence", msg)
	}
}

// Bytes changed behind raftkit's back diverge too: a command submitted
// through the Raft() escape hatch (which copies nothing) from a buffer
// that the caller reuses reaches a follower that catches up later with
// the new bytes, from the leader's in-memory log. The check names it.
func TestDivergenceCheckCatchesABufferReusedBehindRaft(t *testing.T) {
	c := newKVCluster(t, 3)
	leader := c.WaitForLeader()
	down := c.Followers()[0]
	c.Crash(down)
	buf := fsmexample.Set("k", []byte("v1"))
	if err := leader.Raft().Apply(buf, 5*time.Second).Error(); err != nil {
		t.Fatal(err)
	}
	copy(buf, fsmexample.Set("k", []byte("v2")))
	c.Restart(down)
	msg := runFake(t, func(tb testing.TB) {
		c.tb = tb
		c.AssertConsistent()
	})
	c.tb = t
	if c.Divergence() == nil || !strings.Contains(msg, "diverged at index") {
		t.Fatalf("divergence %v, AssertConsistent %q: want the reused buffer found", c.Divergence(), msg)
	}
}

// Through raftkit's own Apply, the same reuse is harmless: Apply copies.
func TestReusedBufferThroughApplyDoesNotDiverge(t *testing.T) {
	c := newKVCluster(t, 3)
	leader := c.WaitForLeader()
	down := c.Followers()[0]
	c.Crash(down)
	buf := fsmexample.Set("k", []byte("v1"))
	if _, err := leader.Apply(ctxFor(t, 5*time.Second), buf); err != nil {
		t.Fatal(err)
	}
	copy(buf, fsmexample.Set("k", []byte("v2")))
	c.Restart(down)
	c.AssertConsistent()
	if d := c.Divergence(); d != nil {
		t.Fatal(d)
	}
	if v, _ := c.FSM(c.Node(down.ID())).Get("k"); string(v) != "v1" {
		t.Fatalf("the restarted follower holds k=%q, want v1", v)
	}
}
