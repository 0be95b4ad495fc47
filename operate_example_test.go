package raftkit_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/raftkit/raftkit"
	fsmexample "github.com/raftkit/raftkit/fsm_example"
)

// Applications on log/slog pass their logger through SlogLogger.
func ExampleSlogLogger() {
	logger := slog.New(slog.NewTextHandler(os.Stdout, &slog.HandlerOptions{
		Level: slog.LevelWarn,
		ReplaceAttr: func(groups []string, a slog.Attr) slog.Attr {
			if a.Key == slog.TimeKey {
				return slog.Attr{} // deterministic output
			}
			return a
		},
	}))
	hl := raftkit.SlogLogger(logger).Named("raftkit")
	hl.Info("not shown: below the handler's level")
	hl.Warn("disk almost full", "dir", "/var/lib/app/raft", "free_mb", 12)
	// Output:
	// level=WARN msg="disk almost full" logger=raftkit dir=/var/lib/app/raft free_mb=12
}

// Back up one cluster and restore the backup into another (here: two
// single-node in-memory clusters). Restore runs on the leader.
func ExampleRaftNode_Backup() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	start := func(name string, kv *fsmexample.Store) (*raftkit.RaftNode, error) {
		node, err := raftkit.NewRaftNode(raftkit.Config{InMemory: true, Addr: name, Peers: []string{name}}, kv)
		if err != nil {
			return nil, err
		}
		if _, err := node.WaitForLeader(ctx); err != nil {
			node.Close()
			return nil, err
		}
		return node, nil
	}

	old, err := start("old", fsmexample.New())
	if err != nil {
		fmt.Println(err)
		return
	}
	defer old.Close()
	if _, err := old.Apply(ctx, fsmexample.Set("greeting", []byte("hello"))); err != nil {
		fmt.Println(err)
		return
	}
	var backup bytes.Buffer // usually a file
	if err := old.Backup(ctx, &backup); err != nil {
		fmt.Println(err)
		return
	}

	kv := fsmexample.New()
	fresh, err := start("fresh", kv)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer fresh.Close()
	if err := fresh.Restore(ctx, &backup); err != nil {
		fmt.Println(err)
		return
	}
	v, _ := kv.Get("greeting")
	fmt.Println("greeting:", string(v))
	// Output: greeting: hello
}

// AddVoter checks its new voter before the cluster counts on it: where
// nothing answers (a typo), it fails, changes nothing, and the cluster
// keeps committing.
func ExampleRaftNode_AddVoter() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	node, err := raftkit.NewRaftNode(raftkit.Config{InMemory: true, Addr: "n1", Peers: []string{"n1"}}, fsmexample.New())
	if err != nil {
		fmt.Println(err)
		return
	}
	defer node.Close()
	if _, err := node.WaitForLeader(ctx); err != nil {
		fmt.Println(err)
		return
	}
	addCtx, cancelAdd := context.WithTimeout(ctx, time.Second)
	defer cancelAdd()
	err = node.AddVoter(addCtx, "n2", "n2-typo")
	fmt.Println("added:", err == nil, "not applied:", errors.Is(err, raftkit.ErrNotApplied))
	_, err = node.Apply(ctx, fsmexample.Set("still", []byte("writable")))
	fmt.Println("write after:", err)
	// Output:
	// added: false not applied: true
	// write after: <nil>
}

// ForceAddVoter counts on a voter that is not there yet: here a node being
// rebuilt. Until it answers, the cluster (now two voters) commits nothing.
func ExampleRaftNode_ForceAddVoter() {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	network := raftkit.NewMemNetwork()
	n1, err := raftkit.NewRaftNode(raftkit.Config{InMemory: true, Network: network, Addr: "n1", Peers: []string{"n1"}}, fsmexample.New())
	if err != nil {
		fmt.Println(err)
		return
	}
	defer n1.Close()
	if _, err := n1.WaitForLeader(ctx); err != nil {
		fmt.Println(err)
		return
	}
	if err := n1.ForceAddVoter(ctx, "n2", "n2"); err != nil {
		fmt.Println(err)
		return
	}
	// The rebuilt node starts without state and waits to be added: it is.
	kv := fsmexample.New()
	n2, err := raftkit.NewRaftNode(raftkit.Config{InMemory: true, Network: network, Addr: "n2"}, kv)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer n2.Close()
	if _, err := n1.Apply(ctx, fsmexample.Set("k", []byte("v"))); err != nil {
		fmt.Println(err)
		return
	}
	if _, err := n2.WaitForLeader(ctx); err != nil {
		fmt.Println(err)
		return
	}
	voters := 0
	for _, s := range n1.Status().Servers {
		if s.Voter {
			voters++
		}
	}
	fmt.Println("voters:", voters)
	// Output: voters: 2
}

// IsMember tells an application that adds its nodes itself whether a
// (re)started node still needs adding.
func ExampleRaftNode_IsMember() {
	network := raftkit.NewMemNetwork()
	member, err := raftkit.NewRaftNode(raftkit.Config{InMemory: true, Network: network, Addr: "n1", Peers: []string{"n1"}}, fsmexample.New())
	if err != nil {
		fmt.Println(err)
		return
	}
	defer member.Close()
	fresh, err := raftkit.NewRaftNode(raftkit.Config{InMemory: true, Network: network, Addr: "n2"}, fsmexample.New())
	if err != nil {
		fmt.Println(err)
		return
	}
	defer fresh.Close()
	fmt.Println("n1:", member.IsMember(), "n2:", fresh.IsMember())
	// Output: n1: true n2: false
}
