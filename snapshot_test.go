package raftkit

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	fsmexample "github.com/raftkit/raftkit/fsm_example"
	"github.com/raftkit/raftkit/internal/chunk"
)

func TestBackupWipeRestoreKeepsEveryKey(t *testing.T) {
	c := newTCPCluster(t, 3)
	l := c.leader()
	const keys = 50
	for i := 0; i < keys; i++ {
		if _, err := c.nodes[(l+i)%3].Apply(ctxTimeout(t, 10*time.Second), fsmexample.Set(fmt.Sprintf("k%02d", i), []byte(fmt.Sprint(i)))); err != nil {
			t.Fatalf("write %d: %v", i, err)
		}
	}
	// A follower takes the backup; the read barrier makes it complete.
	file := filepath.Join(t.TempDir(), "cluster.backup")
	out, err := os.Create(file)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.nodes[(l+1)%3].Backup(ctxTimeout(t, 20*time.Second), out); err != nil {
		t.Fatalf("backup: %v", err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
	in, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	info, err := ReadBackupInfo(in)
	in.Close()
	if err != nil || info.Index < keys || info.Size == 0 || info.NodeID != c.nodes[(l+1)%3].ID() {
		t.Fatalf("backup info %+v, %v", info, err)
	}

	// Wipe: stop every node and delete its data, then start a fresh cluster.
	for i := range c.nodes {
		c.stop(i)
		if err := os.RemoveAll(c.dirs[i]); err != nil {
			t.Fatal(err)
		}
	}
	for i := range c.nodes {
		c.start(i)
	}
	l = c.leader()
	if n := c.fsms[l].Len(); n != 0 {
		t.Fatalf("wiped cluster has %d keys", n)
	}

	in, err = os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	waitFor(t, 15*time.Second, "the follower to know the leader", func() bool { return c.nodes[(l+1)%3].GetLeaderID() == c.nodes[l].ID() })
	var nle *NotLeaderError
	if err := c.nodes[(l+1)%3].Restore(ctxTimeout(t, 20*time.Second), in); !errors.As(err, &nle) || nle.LeaderID != c.nodes[l].ID() {
		t.Fatalf("restore on a follower: %v, want *NotLeaderError naming %s", err, c.nodes[l].ID())
	}
	if _, err := in.Seek(0, 0); err != nil {
		t.Fatal(err)
	}
	if err := c.nodes[l].Restore(ctxTimeout(t, 20*time.Second), in); err != nil {
		t.Fatalf("restore: %v", err)
	}
	waitFor(t, 20*time.Second, "every node to hold every key", func() bool {
		for _, f := range c.fsms {
			if f.Len() != keys {
				return false
			}
		}
		return true
	})
	for i, f := range c.fsms {
		for k := 0; k < keys; k++ {
			if v, ok := f.Get(fmt.Sprintf("k%02d", k)); !ok || string(v) != fmt.Sprint(k) {
				t.Fatalf("node %d: k%02d = %q, %v", i, k, v, ok)
			}
		}
	}
	// The restored cluster takes writes as usual.
	if _, err := c.nodes[(l+2)%3].Apply(ctxTimeout(t, 10*time.Second), fsmexample.Set("after", []byte("x"))); err != nil {
		t.Fatalf("write after restore: %v", err)
	}
}

func TestRestoreRefusesDamagedBackups(t *testing.T) {
	kv := fsmexample.New()
	node, err := NewRaftNode(Config{InMemory: true, Addr: "bk1", Peers: []string{"bk1"}, RaftConfig: fastRaft}, kv)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { node.Close() })
	ctx := ctxTimeout(t, 10*time.Second)
	if _, err := node.WaitForLeader(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := node.Apply(ctx, fsmexample.Set("a", []byte("1"))); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := node.Backup(ctx, &buf); err != nil {
		t.Fatal(err)
	}
	good := buf.Bytes()
	flipped := append([]byte(nil), good...)
	flipped[len(flipped)-12] ^= 0xff // inside the snapshot data
	cases := map[string][]byte{
		"empty":         nil,
		"not a backup":  []byte("hello world\n{}\n"),
		"truncated":     good[:len(good)-20],
		"no checksum":   good[:len(good)-8],
		"flipped byte":  flipped,
		"bad header":    []byte(backupMagic + "{not json\n"),
		"negative size": []byte(backupMagic + `{"size":-1,"version":1}` + "\n"),
	}
	for name, data := range cases {
		t.Run(name, func(t *testing.T) {
			if _, err := ReadBackupInfo(bytes.NewReader(data)); !errors.Is(err, ErrBadBackup) {
				t.Fatalf("ReadBackupInfo: %v, want ErrBadBackup", err)
			}
			before := node.Status().LastLogIndex
			if err := node.Restore(ctx, bytes.NewReader(data)); !errors.Is(err, ErrBadBackup) {
				t.Fatalf("Restore: %v, want ErrBadBackup", err)
			}
			if after := node.Status().LastLogIndex; after != before {
				t.Fatalf("a refused restore moved the log from %d to %d", before, after)
			}
			if v, ok := kv.Get("a"); !ok || string(v) != "1" {
				t.Fatalf("a refused restore changed the state: a = %q, %v", v, ok)
			}
		})
	}
	if _, err := ReadBackupInfo(bytes.NewReader(good)); err != nil {
		t.Fatalf("intact backup: %v", err)
	}
}

// A node's log stays within TrailingLogBytes + SnapshotThresholdBytes
// (plus what arrives while a snapshot is taken), whatever raft's
// SnapshotInterval: here raft's own timer never fires during the test.
func TestLogStaysWithinItsByteBound(t *testing.T) {
	const (
		size      = 64 << 10
		trailing  = 4 << 20
		threshold = 4 << 20
		writes    = 640      // 40 MiB of commands
		slack     = 12 << 20 // what arrives while a snapshot is taken, on a loaded machine
	)
	for _, kind := range logStores {
		t.Run(kind.String(), func(t *testing.T) {
			c := newTCPCluster(t, 1, withLogStore(kind), func(c *Config) {
				c.TrailingLogBytes, c.SnapshotThresholdBytes = trailing, threshold
				c.SnapshotInterval, c.SnapshotThreshold = time.Hour, 1<<30
			})
			n := c.nodes[c.leader()]
			ctx := ctxTimeout(t, 60*time.Second)
			biggest := uint64(0)
			for i := 0; i < writes; i++ {
				cmd, _ := casCommand(fmt.Sprintf("k%d", i%8), size, 1)
				if _, err := n.Apply(ctx, cmd); err != nil {
					t.Fatalf("write %d: %v", i, err)
				}
				first, _ := n.stores.Log.FirstIndex()
				last, _ := n.stores.Log.LastIndex()
				biggest = max(biggest, last-first+1)
			}
			if limit := uint64(trailing+threshold+slack) / size; biggest > limit {
				t.Fatalf("the log held up to %d entries of %d KiB (%d MiB), want at most %d (%d MiB)", biggest, size>>10, biggest*size>>20, limit, (trailing+threshold+slack)>>20)
			}
			first, _ := n.stores.Log.FirstIndex()
			if first <= 1 {
				t.Fatalf("after %d MiB of commands the log was never compacted (first index %d)", writes*size>>20, first)
			}
			// raft keeps the entries that fit in TrailingLogBytes.
			if got := n.raft.ReloadableConfig().TrailingLogs; got > trailing/size+trailing/size/4 || got < minTrailingLogs {
				t.Fatalf("raft keeps %d trailing entries of %d KiB, want about %d", got, size>>10, trailing/size)
			}
			t.Logf("largest log: %d entries (%d MiB); first index now %d", biggest, biggest*size>>20, first)
		})
	}
}

// A snapshot that raft asked for while a chunked command was half applied
// (the FSM refuses it) is taken as soon as the command is complete, not at
// raft's next interval.
func TestSnapshotDeferredByChunkedCommandIsTakenOnCompletion(t *testing.T) {
	c := newTCPCluster(t, 1, func(c *Config) { c.SnapshotInterval = time.Hour })
	n := c.nodes[c.leader()]
	cmd, _ := casCommand("k", chunk.Size+100, 1)
	h := chunk.Header{ID: 78, Count: 2, Total: uint64(len(cmd))}
	submitChunk(t, n, h, cmd)
	if err := n.raft.Snapshot().Error(); !chunk.IsInProgress(err) {
		t.Fatalf("raft's snapshot while a chunked command is half applied: %v, want it refused", err)
	}
	h.Index = 1
	final := submitChunk(t, n, h, cmd).Index()
	waitFor(t, 15*time.Second, "a snapshot that covers the completed command", func() bool {
		metas, err := n.stores.Snaps.List()
		return err == nil && len(metas) > 0 && metas[0].Index >= final
	})
}

// Status counts the snapshots a node's FSM was restored from: its own at a
// restart, and one the leader installs on a follower too far behind.
func TestStatusCountsRestoredSnapshots(t *testing.T) {
	net := NewMemNetwork()
	c := startCluster(t, net, []string{"mem0", "mem1", "mem2"}, nil, []func(*Config){func(c *Config) {
		c.RaftConfig = func(rc *raft.Config) { fastRaft(rc); rc.TrailingLogs = 1 }
	}})
	l := c.leader()
	f := (l + 1) % 3
	leader := c.nodes[l]
	ctx := ctxTimeout(t, 30*time.Second)
	for i, n := range c.nodes {
		if got := n.Status().SnapshotsRestored; got != 0 {
			t.Fatalf("node %d restored %d snapshots at its first start", i, got)
		}
	}
	net.Isolate(c.addrs[f])
	for i := 0; i < 20; i++ {
		if _, err := leader.Apply(ctx, fsmexample.Set(fmt.Sprint("k", i), []byte("v"))); err != nil {
			t.Fatal(err)
		}
	}
	if err := leader.Snapshot(ctx); err != nil {
		t.Fatal(err)
	}
	net.Heal()
	waitFor(t, 15*time.Second, "the leader to install its snapshot on the follower", func() bool {
		return c.nodes[f].Status().SnapshotsRestored == 1
	})
	c.stop(l)
	c.start(l)
	if got := c.nodes[l].Status().SnapshotsRestored; got != 1 {
		t.Fatalf("the restarted leader restored %d snapshots, want 1 (its own)", got)
	}
}
