package raftkit

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	fsmexample "github.com/raftkit/raftkit/fsm_example"
	"github.com/raftkit/raftkit/internal/store"
)

// Damaged data directories: every case gives ErrCorruptStore, or starts
// the node with all of its data through a documented recovery. None may
// panic, and none may start a node with empty state that then votes.

// damageMarker is written into every value so tests can find log entries
// in raft.db.
const damageMarker = "DAMAGE-TEST-VALUE"

// seededDir builds a single-node data directory with two snapshots and
// log entries after the newest one (each snapshot compacts the log behind
// it down to trailingLogs entries), and returns its path, the node's
// address and the keys it holds.
func seededDir(t *testing.T, trailingLogs uint64) (dir, addr string, keys []string) {
	t.Helper()
	c := newTCPCluster(t, 1, func(c *Config) {
		c.SnapshotRetain = 2
		c.RaftConfig = func(rc *raft.Config) { fastRaft(rc); rc.TrailingLogs = trailingLogs }
	})
	defer c.stop(0)
	c.leader()
	n := c.nodes[0]
	write := func(from, to int) {
		for i := from; i < to; i++ {
			k := fmt.Sprintf("k%03d", i)
			if _, err := n.Apply(ctxTimeout(t, 5*time.Second), fsmexample.Set(k, []byte(damageMarker+k))); err != nil {
				t.Fatal(err)
			}
			keys = append(keys, k)
		}
	}
	write(0, 10)
	if err := n.Snapshot(ctxTimeout(t, 5*time.Second)); err != nil {
		t.Fatal(err)
	}
	write(10, 20)
	if err := n.Snapshot(ctxTimeout(t, 5*time.Second)); err != nil {
		t.Fatal(err)
	}
	write(20, 30)
	return c.dirs[0], c.addrs[0], keys
}

// snapshotDirs returns the snapshot directories under dir, newest first.
func snapshotDirs(t *testing.T, dir string) []string {
	t.Helper()
	snaps, err := raft.NewFileSnapshotStore(dir, 2, os.Stderr)
	if err != nil {
		t.Fatal(err)
	}
	list, err := snaps.List()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, m := range list {
		out = append(out, filepath.Join(dir, store.SnapshotDir, m.ID))
	}
	return out
}

// restart opens dir again and returns the node or the error. It must
// never panic.
func restart(t *testing.T, dir, addr string) (*RaftNode, *fsmexample.Store, error) {
	t.Helper()
	kv := fsmexample.New()
	var n *RaftNode
	var err error
	func() {
		defer func() {
			if p := recover(); p != nil {
				t.Fatalf("NewRaftNode panicked on a damaged directory: %v", p)
			}
		}()
		n, err = NewRaftNode(Config{Addr: addr, Dir: dir, Peers: []string{addr}, RaftConfig: fastRaft}, kv)
	}()
	if err == nil {
		t.Cleanup(func() { n.Close() })
	}
	return n, kv, err
}

func flipByte(t *testing.T, path string, off int) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	b[off] ^= 0xff
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

func wantCorrupt(t *testing.T, err error, mention string) {
	t.Helper()
	if !errors.Is(err, ErrCorruptStore) {
		t.Fatalf("got %v, want ErrCorruptStore", err)
	}
	if !strings.Contains(err.Error(), mention) {
		t.Fatalf("error %q does not mention %q", err, mention)
	}
}

// wantAllKeys waits for the restarted node to lead and checks it has
// every key.
func wantAllKeys(t *testing.T, n *RaftNode, kv *fsmexample.Store, keys []string) {
	t.Helper()
	if _, err := n.WaitForLeader(ctxTimeout(t, 10*time.Second)); err != nil {
		t.Fatal(err)
	}
	if err := n.LinearizableRead(ctxTimeout(t, 10*time.Second)); err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		if v, ok := kv.Get(k); !ok || string(v) != damageMarker+k {
			t.Fatalf("restarted node has %s=%q (%v), want it intact", k, v, ok)
		}
	}
}

func TestSnapshotWithBadCRCAloneIsRefused(t *testing.T) {
	dir, addr, _ := seededDir(t, 2)
	snaps := snapshotDirs(t, dir)
	for _, s := range snaps {
		flipByte(t, filepath.Join(s, "state.bin"), 3)
	}
	_, _, err := restart(t, dir, addr)
	wantCorrupt(t, err, "snapshot")
}

func TestNewestSnapshotWithBadCRCFallsBackToOlderWhenTheLogCoversTheGap(t *testing.T) {
	dir, addr, keys := seededDir(t, 1000)
	snaps := snapshotDirs(t, dir)
	if len(snaps) != 2 {
		t.Fatalf("%d snapshots, want 2", len(snaps))
	}
	flipByte(t, filepath.Join(snaps[0], "state.bin"), 3)
	n, kv, err := restart(t, dir, addr)
	if err != nil {
		t.Fatalf("restart with an older good snapshot and the log after it: %v", err)
	}
	wantAllKeys(t, n, kv, keys)
}

func TestNewestSnapshotWithBadCRCIsRefusedWhenTheLogWasCompacted(t *testing.T) {
	dir, addr, _ := seededDir(t, 2)
	flipByte(t, filepath.Join(snapshotDirs(t, dir)[0], "state.bin"), 3)
	_, _, err := restart(t, dir, addr)
	wantCorrupt(t, err, "entries in between are lost")
}

func TestSnapshotMetaDamageIsRefused(t *testing.T) {
	dir, addr, _ := seededDir(t, 2)
	for _, s := range snapshotDirs(t, dir) {
		if err := os.WriteFile(filepath.Join(s, "meta.json"), []byte("{not json"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	_, _, err := restart(t, dir, addr)
	wantCorrupt(t, err, "")
}

func TestLeftoverTmpSnapshotIsRemoved(t *testing.T) {
	dir, addr, keys := seededDir(t, 2)
	// A crash in the middle of writing a snapshot leaves a .tmp directory
	// with a partial state file.
	tmp := filepath.Join(dir, store.SnapshotDir, "9-999-123456.tmp")
	if err := os.MkdirAll(tmp, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(tmp, "state.bin"), []byte("partial"), 0o600); err != nil {
		t.Fatal(err)
	}
	n, kv, err := restart(t, dir, addr)
	if err != nil {
		t.Fatalf("restart beside a leftover .tmp snapshot: %v", err)
	}
	wantAllKeys(t, n, kv, keys)
	if _, err := os.Stat(tmp); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("leftover %s is still there (%v)", tmp, err)
	}
}

func TestFlippedLogEntryIsRefused(t *testing.T) {
	dir, addr, _ := seededDir(t, 2)
	db := filepath.Join(dir, store.BoltFile)
	b, err := os.ReadFile(db)
	if err != nil {
		t.Fatal(err)
	}
	// The last entry's value sits in a data page, not a meta page. Flip a
	// byte of the msgpack framing just before the command bytes.
	off := bytes.LastIndex(b, []byte(damageMarker+"k029"))
	if off < 0 {
		t.Fatal("last value not found in raft.db")
	}
	for _, back := range []int{40, 30, 20} {
		flipByte(t, db, off-back)
	}
	_, _, err = restart(t, dir, addr)
	wantCorrupt(t, err, store.BoltFile)
}

func TestTruncatedLogTailIsRefused(t *testing.T) {
	dir, addr, _ := seededDir(t, 2)
	db := filepath.Join(dir, store.BoltFile)
	b, err := os.ReadFile(db)
	if err != nil {
		t.Fatal(err)
	}
	// Cut the file at the start of the page holding the newest entry, as
	// a disk that lost the file's tail would.
	off := bytes.LastIndex(b, []byte(damageMarker+"k029"))
	if off < 0 {
		t.Fatal("last value not found in raft.db")
	}
	if err := os.Truncate(db, int64(off/4096*4096)); err != nil {
		t.Fatal(err)
	}
	_, _, err = restart(t, dir, addr)
	wantCorrupt(t, err, store.BoltFile)
}

func TestEmptyRaftDBBesideSnapshotsIsRefused(t *testing.T) {
	dir, addr, _ := seededDir(t, 2)
	if err := os.Truncate(filepath.Join(dir, store.BoltFile), 0); err != nil {
		t.Fatal(err)
	}
	_, _, err := restart(t, dir, addr)
	wantCorrupt(t, err, store.BoltFile)
}

func TestMissingSnapshotsWithCompactedLogAreRefused(t *testing.T) {
	dir, addr, _ := seededDir(t, 2)
	// The log was compacted behind the snapshots; without them the node
	// would start from a log with a hole at its start.
	if err := os.RemoveAll(filepath.Join(dir, store.SnapshotDir)); err != nil {
		t.Fatal(err)
	}
	_, _, err := restart(t, dir, addr)
	wantCorrupt(t, err, "")
}

// After a fallback past a damaged newest snapshot, the node knows it
// restored the older one: its FSM's applied index is that snapshot's, so a
// linearizable read cannot be served from state that lacks the entries in
// between. (It took the newest listed snapshot's index, and fsmCaughtUp
// passed a read on an FSM that had applied nothing after the older one.)
func TestFallbackPastDamagedSnapshotReportsTheSnapshotRestored(t *testing.T) {
	dir, addr, keys := seededDir(t, 1000)
	snaps, err := raft.NewFileSnapshotStore(dir, 2, os.Stderr)
	if err != nil {
		t.Fatal(err)
	}
	metas, err := snaps.List()
	if err != nil || len(metas) != 2 {
		t.Fatalf("%d snapshots (%v), want 2", len(metas), err)
	}
	flipByte(t, filepath.Join(snapshotDirs(t, dir)[0], "state.bin"), 3)

	fsm := &gatedFSM{Store: fsmexample.New()}
	fsm.hold()
	n, err := NewRaftNode(Config{Addr: addr, Dir: dir, Peers: []string{addr}, RaftConfig: fastRaft}, fsm)
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	defer fsm.release() // before Close: raft's FSM goroutine must not stay blocked
	if got := n.fsm.applied.Load(); got != metas[1].Index {
		t.Fatalf("after falling back to the snapshot at %d (the one at %d is damaged), the FSM is taken to have applied %d", metas[1].Index, metas[0].Index, got)
	}
	if n.fsmCaughtUp(metas[0].Index + 1) {
		t.Fatalf("fsmCaughtUp(%d) holds on an FSM restored to %d", metas[0].Index+1, metas[1].Index)
	}
	fsm.release()
	wantAllKeys(t, n, fsm.Store, keys)
}
