package raftkit_test

import (
	"bytes"
	"context"
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
