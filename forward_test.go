package raftkit

import (
	"bytes"
	"errors"
	"fmt"
	"testing"
	"time"

	fsmexample "github.com/raftkit/raftkit/fsm_example"
)

func TestApplyOnFollowerForwardsToLeader(t *testing.T) {
	c := newTCPCluster(t, 3)
	l := c.leader()
	for i := range c.nodes {
		if i == l {
			continue
		}
		k := fmt.Sprintf("via-%d", i)
		res, err := c.nodes[i].Apply(ctxTimeout(t, 5*time.Second), fsmexample.Set(k, []byte("v")))
		if err != nil || res != nil {
			t.Fatalf("write through follower %d: %v, %v", i, res, err)
		}
		// The leader applied it before answering.
		if v, ok := c.fsms[l].Get(k); !ok || string(v) != "v" {
			t.Fatalf("leader lacks %s after forwarded write", k)
		}
	}
}

func TestForwardedResponsesKeepTheirTypes(t *testing.T) {
	c := newTCPCluster(t, 3)
	l := c.leader()
	f := c.nodes[(l+1)%3]
	ctx := ctxTimeout(t, 10*time.Second)
	if _, err := f.Apply(ctx, fsmexample.Set("k", []byte("v1"))); err != nil {
		t.Fatal(err)
	}
	if res, err := f.Apply(ctx, fsmexample.CompareAndSet("k", []byte("v1"), []byte("v2"))); err != nil || res != true {
		t.Fatalf("forwarded CAS = %#v, %v; want true", res, err)
	}
	if res, err := f.Apply(ctx, fsmexample.Get("k")); err != nil || !bytes.Equal(res.([]byte), []byte("v2")) {
		t.Fatalf("forwarded Get = %#v, %v; want []byte(v2)", res, err)
	}
	_, err := f.Apply(ctx, []byte{0xee})
	var re *RemoteError
	if !errors.As(err, &re) || !bytes.Contains([]byte(re.Message), []byte("bad command")) {
		t.Fatalf("forwarded FSM error = %v, want *RemoteError with the FSM's message", err)
	}
	if errors.Is(err, ErrUnknownOutcome) {
		t.Fatal("an FSM error is a known outcome")
	}
}
