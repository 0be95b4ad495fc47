package main

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/raftkit/raftkit"
	fsmexample "github.com/raftkit/raftkit/fsm_example"
)

// The quorum-loss walkthrough of the README on raft-wal directories:
// inspect a stopped node, recover the survivor, start it alone.
func TestCLIInspectAndRecoverRaftWALDir(t *testing.T) {
	bin := buildCLI(t)
	base := t.TempDir()
	var addrs, dirs []string
	for i := 0; i < 3; i++ {
		addrs = append(addrs, freeAddr(t))
		dirs = append(dirs, filepath.Join(base, fmt.Sprintf("node%d", i)))
	}
	start := func(i int, fsm *fsmexample.Store) *raftkit.RaftNode {
		t.Helper()
		n, err := raftkit.NewRaftNode(raftkit.Config{Addr: addrs[i], Dir: dirs[i], Peers: addrs, LogStore: raftkit.LogStoreWAL, RaftConfig: fastRaft}, fsm)
		if err != nil {
			t.Fatalf("start node %d: %v", i, err)
		}
		t.Cleanup(func() { n.Close() })
		return n
	}
	var nodes []*raftkit.RaftNode
	for i := range addrs {
		nodes = append(nodes, start(i, fsmexample.New()))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for i := 0; i < 20; i++ {
		if _, err := nodes[0].Apply(ctx, fsmexample.Set(fmt.Sprintf("k%02d", i), []byte("v"))); err != nil {
			t.Fatalf("write %d: %v", i, err)
		}
	}
	if err := nodes[0].LinearizableRead(ctx); err != nil {
		t.Fatal(err)
	}

	// A running node's directory is refused.
	if r := runCLI(t, bin, "inspect", dirs[0]); r.code != 1 || !strings.Contains(r.stderr, "stop the node first") {
		t.Fatalf("inspect of a running raft-wal node: exit %d, stderr %s", r.code, r.stderr)
	}
	st := nodes[0].Status()
	for _, n := range nodes {
		n.Close()
	}
	var info raftkit.DirInfo
	if err := json.Unmarshal([]byte(must(t, bin, "-json", "inspect", dirs[0])), &info); err != nil {
		t.Fatal(err)
	}
	// Closing hands leadership over, which may add an entry in a new term
	// after st was read.
	if info.LogStore != "LogStoreWAL" || info.LastIndex < st.LastLogIndex || info.CurrentTerm < st.Term || len(info.Servers) != 3 {
		t.Fatalf("inspect: %+v; node reported %+v", info, st)
	}
	if out := must(t, bin, "inspect", dirs[0]); !strings.Contains(out, "LogStoreWAL") {
		t.Fatalf("inspect table does not name the log store:\n%s", out)
	}

	id := nodes[0].ID()
	out := must(t, bin, "recover", "-yes", dirs[0], id+"="+addrs[0])
	if !strings.Contains(out, raftkit.RecoveryFile) {
		t.Fatalf("recover said %q", out)
	}
	fsm := fsmexample.New()
	n := start(0, fsm)
	waitFor(t, "the survivor to lead", n.IsLeader)
	if got := fsm.Len(); got != 20 {
		t.Fatalf("survivor has %d keys after recovery, want 20", got)
	}
	if _, err := n.Apply(ctx, fsmexample.Set("after", []byte("x"))); err != nil {
		t.Fatalf("write after recovery: %v", err)
	}
	if s := n.Status().Servers; len(s) != 1 || s[0].ID != id {
		t.Fatalf("servers after recovery: %+v", s)
	}
}
