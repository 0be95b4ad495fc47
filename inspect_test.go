package raftkit

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"testing"
	"time"

	fsmexample "github.com/raftkit/raftkit/fsm_example"
)

func TestInspectStoppedNodeMatchesWhatItReported(t *testing.T) {
	c := newTCPCluster(t, 3)
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

	// A damaged snapshot is reported, not hidden.
	state := filepath.Join(c.dirs[f], snapshotDir, snap.ID, "state.bin")
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
	if _, err := InspectDir(ctxTimeout(t, time.Second), t.TempDir()); err == nil {
		t.Fatal("an empty directory was inspected without error")
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, boltFile), []byte("not bolt"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := InspectDir(ctxTimeout(t, time.Second), dir); !errors.Is(err, ErrCorruptStore) {
		t.Fatalf("garbage raft.db: %v, want ErrCorruptStore", err)
	}
}
