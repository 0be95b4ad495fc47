package raftkit

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	fsmexample "github.com/raftkit/raftkit/fsm_example"
	"github.com/raftkit/raftkit/internal/store"
)

func TestInspectStoppedNodeMatchesWhatItReported(t *testing.T) {
	for _, kind := range logStores {
		t.Run(kind.String(), func(t *testing.T) { testInspectStoppedNode(t, kind) })
	}
}

func testInspectStoppedNode(t *testing.T, kind LogStoreKind) {
	c := newTCPCluster(t, 3, withLogStore(kind))
	l := c.leader()
	f := (l + 1) % 3
	write := func(from, to int) {
		for i := from; i < to; i++ {
			if _, err := c.nodes[l].Apply(ctxTimeout(t, 10*time.Second), fsmexample.Set(fmt.Sprintf("k%d", i), []byte("v"))); err != nil {
				t.Fatalf("write %d: %v", i, err)
			}
		}
	}
	write(0, 10)
	c.waitApplied(c.nodes[l].Status().LastLogIndex)
	if err := c.nodes[f].Snapshot(ctxTimeout(t, 10*time.Second)); err != nil {
		t.Fatal(err)
	}
	write(10, 15)
	c.waitApplied(c.nodes[l].Status().LastLogIndex)

	if _, err := InspectDir(ctxTimeout(t, 10*time.Second), c.dirs[l]); !errors.Is(err, ErrDataDirLocked) {
		t.Fatalf("inspecting a running node's dir: %v, want ErrDataDirLocked", err)
	}

	st := c.nodes[f].Status()
	stats := c.nodes[f].Raft().Stats()
	c.stop(f)
	info, err := InspectDir(ctxTimeout(t, 10*time.Second), c.dirs[f])
	if err != nil {
		t.Fatal(err)
	}
	if info.LogStore != kind.String() {
		t.Fatalf("inspect says the log store is %q, want %q", info.LogStore, kind)
	}
	if info.CurrentTerm != st.Term || info.LastIndex != st.LastLogIndex || info.FirstIndex == 0 || info.FirstIndex > info.LastIndex {
		t.Fatalf("inspect: term %d, log [%d, %d]; node reported term %d, last index %d", info.CurrentTerm, info.FirstIndex, info.LastIndex, st.Term, st.LastLogIndex)
	}
	if !reflect.DeepEqual(info.Servers, st.Servers) {
		t.Fatalf("inspect servers %+v, node reported %+v", info.Servers, st.Servers)
	}
	if len(info.Snapshots) != 1 {
		t.Fatalf("inspect found %d snapshots, want 1: %+v", len(info.Snapshots), info.Snapshots)
	}
	snap := info.Snapshots[0]
	if strconv.FormatUint(snap.Index, 10) != stats["last_snapshot_index"] || strconv.FormatUint(snap.Term, 10) != stats["last_snapshot_term"] || !snap.CRCOK || snap.Size == 0 {
		t.Fatalf("snapshot %+v; node reported index %s term %s", snap, stats["last_snapshot_index"], stats["last_snapshot_term"])
	}
	if info.PendingRecovery {
		t.Fatal("no recovery file was written, yet PendingRecovery")
	}
	if info.LastLogTerm == 0 || info.LastLogTerm > info.CurrentTerm {
		t.Fatalf("last log term %d, current term %d", info.LastLogTerm, info.CurrentTerm)
	}
	if info.LastVoteFor == "" || info.LastVoteTerm == 0 {
		t.Fatalf("no vote read back: %q in term %d", info.LastVoteFor, info.LastVoteTerm)
	}
	// Inspecting holds the directory: a node cannot start on it meanwhile,
	// and can once it is done.
	d, err := store.OpenStopped(c.dirs[f], false)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := NewRaftNode(c.config(f), fsmexample.New()); !errors.Is(err, ErrDataDirLocked) {
		t.Fatalf("starting a node on a directory being inspected: %v, want ErrDataDirLocked", err)
	}
	d.Close()

	// A damaged snapshot is reported, not hidden.
	state := filepath.Join(c.dirs[f], store.SnapshotDir, snap.ID, "state.bin")
	data, err := os.ReadFile(state)
	if err != nil {
		t.Fatal(err)
	}
	data[len(data)/2] ^= 0xff
	if err := os.WriteFile(state, data, 0o600); err != nil {
		t.Fatal(err)
	}
	info, err = InspectDir(ctxTimeout(t, 10*time.Second), c.dirs[f])
	if err != nil {
		t.Fatal(err)
	}
	if s := info.Snapshots[0]; s.CRCOK || s.Error == "" {
		t.Fatalf("damaged snapshot reported as %+v", s)
	}
}

func TestInspectRejectsWhatIsNotADataDir(t *testing.T) {
	if _, err := InspectDir(ctxTimeout(t, time.Second), t.TempDir()); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("empty directory: %v, want an error matching fs.ErrNotExist", err)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, store.BoltFile), []byte("not bolt"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := InspectDir(ctxTimeout(t, time.Second), dir); !errors.Is(err, ErrCorruptStore) {
		t.Fatalf("garbage raft.db: %v, want ErrCorruptStore", err)
	}
	dir = t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, store.WALDir), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, store.WALDir, store.WALMetaFile), []byte("not bolt"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := InspectDir(ctxTimeout(t, time.Second), dir); !errors.Is(err, ErrCorruptStore) {
		t.Fatalf("garbage wal-meta.db: %v, want ErrCorruptStore", err)
	}
	// Both stores in one directory: raftkit never writes that.
	if err := os.WriteFile(filepath.Join(dir, store.BoltFile), []byte("not bolt"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := InspectDir(ctxTimeout(t, time.Second), dir); !errors.Is(err, ErrCorruptStore) || !strings.Contains(err.Error(), "both") {
		t.Fatalf("raft.db beside wal/: %v, want ErrCorruptStore naming both", err)
	}
}

// A user restore leaves a hole in the log (raft takes the restored
// snapshot one index past its last entry). Writes go on after it, and
// InspectDir reads past it, on both log stores.
func TestRestoreThenWritesThenInspectOnBothLogStores(t *testing.T) {
	for _, kind := range logStores {
		t.Run(kind.String(), func(t *testing.T) {
			c := newTCPCluster(t, 1, withLogStore(kind))
			c.leader()
			n := c.nodes[0]
			for i := 0; i < 5; i++ {
				if _, err := n.Apply(ctxTimeout(t, 10*time.Second), fsmexample.Set(fmt.Sprintf("k%d", i), []byte("v"))); err != nil {
					t.Fatal(err)
				}
			}
			var backup bytes.Buffer
			if err := n.Backup(ctxTimeout(t, 10*time.Second), &backup); err != nil {
				t.Fatal(err)
			}
			if err := n.Restore(ctxTimeout(t, 10*time.Second), &backup); err != nil {
				t.Fatal(err)
			}
			if _, err := n.Apply(ctxTimeout(t, 10*time.Second), fsmexample.Set("after", []byte("v"))); err != nil {
				t.Fatalf("write after restore: %v", err)
			}
			last := n.Status().LastLogIndex
			c.stop(0)
			info, err := InspectDir(ctxTimeout(t, 10*time.Second), c.dirs[0])
			if err != nil {
				t.Fatal(err)
			}
			if info.LastIndex != last || len(info.Servers) != 1 {
				t.Fatalf("inspect after restore: last index %d (node said %d), servers %+v", info.LastIndex, last, info.Servers)
			}
			c.start(0)
			c.leader()
			// The restarted node replays its log into the FSM after it
			// leads: wait for the read barrier, then count.
			if err := c.nodes[0].LinearizableRead(ctxTimeout(t, 10*time.Second)); err != nil {
				t.Fatal(err)
			}
			if got := c.fsms[0].Len(); got != 6 {
				t.Fatalf("after restart: %d keys, want 6", got)
			}
		})
	}
}
