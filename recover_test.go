package raftkit

import (
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"testing"
	"time"

	fsmexample "github.com/raftkit/raftkit/fsm_example"
	"github.com/raftkit/raftkit/internal/store"
)

func TestRecoverSingleSurvivorOfThreeNodes(t *testing.T) {
	for _, kind := range logStores {
		t.Run(kind.String(), func(t *testing.T) { testRecoverSingleSurvivor(t, kind) })
	}
}

func testRecoverSingleSurvivor(t *testing.T, kind LogStoreKind) {
	c := newTCPCluster(t, 3, withLogStore(kind))
	l := c.leader()
	const keys = 30
	for i := 0; i < keys; i++ {
		if _, err := c.nodes[l].Apply(ctxTimeout(t, 10*time.Second), fsmexample.Set(fmt.Sprintf("k%d", i), []byte("v"))); err != nil {
			t.Fatalf("write %d: %v", i, err)
		}
		if i == keys/2 {
			// Part of the state in a snapshot, part in the log.
			if err := c.nodes[0].Snapshot(ctxTimeout(t, 10*time.Second)); err != nil {
				t.Fatal(err)
			}
		}
	}
	c.waitApplied(c.nodes[l].Status().LastLogIndex)
	for i := range c.nodes {
		c.stop(i)
	}
	// Nodes 1 and 2 are lost for good. Alone, node 0 cannot elect itself.
	survivor := []ServerInfo{{ID: c.nodes[0].ID(), Addr: c.addrs[0], Voter: true}}
	if err := WriteRecovery(c.dirs[0], survivor); err != nil {
		t.Fatal(err)
	}
	info, err := InspectDir(ctxTimeout(t, 10*time.Second), c.dirs[0])
	if err != nil || !info.PendingRecovery {
		t.Fatalf("after WriteRecovery: pending=%v, %v", info != nil && info.PendingRecovery, err)
	}

	c.start(0)
	if _, err := c.nodes[0].WaitForLeader(ctxTimeout(t, 15*time.Second)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 15*time.Second, "the survivor to lead", c.nodes[0].IsLeader)
	if got := c.fsms[0].Len(); got != keys {
		t.Fatalf("recovered node has %d keys, want %d", got, keys)
	}
	if _, err := c.nodes[0].Apply(ctxTimeout(t, 10*time.Second), fsmexample.Set("after", []byte("x"))); err != nil {
		t.Fatalf("write after recovery: %v", err)
	}
	if st := c.nodes[0].Status(); len(st.Servers) != 1 || st.Servers[0].ID != c.nodes[0].ID() {
		t.Fatalf("recovered configuration %+v", st.Servers)
	}
	if _, err := os.Stat(filepath.Join(c.dirs[0], RecoveryFile)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("recovery file still present after it was applied: %v", err)
	}
	if _, err := os.Stat(filepath.Join(c.dirs[0], RecoveryFile+".applied")); err != nil {
		t.Fatalf("applied recovery file not kept: %v", err)
	}

	// A restart with the applied file does not recover again, and keeps the data.
	c.stop(0)
	c.start(0)
	waitFor(t, 15*time.Second, "the survivor to lead after restart", c.nodes[0].IsLeader)
	if err := c.nodes[0].LinearizableRead(ctxTimeout(t, 10*time.Second)); err != nil {
		t.Fatal(err)
	}
	if got := c.fsms[0].Len(); got != keys+1 {
		t.Fatalf("after restart: %d keys, want %d", got, keys+1)
	}
}

func TestWriteRecoveryRefusesBadInput(t *testing.T) {
	c := newTCPCluster(t, 1)
	c.leader()
	dir := c.dirs[0]
	w := newTCPCluster(t, 1, withLogStore(LogStoreWAL))
	w.leader()
	ok := ServerInfo{ID: "a", Addr: "127.0.0.1:1", Voter: true}
	cases := map[string]struct {
		dir     string
		servers []ServerInfo
		want    error
	}{
		"no servers":            {dir, nil, ErrRecovery},
		"no voter":              {dir, []ServerInfo{{ID: "a", Addr: "127.0.0.1:1"}}, ErrRecovery},
		"empty ID":              {dir, []ServerInfo{{Addr: "127.0.0.1:1", Voter: true}}, ErrRecovery},
		"duplicate ID":          {dir, []ServerInfo{ok, {ID: "a", Addr: "127.0.0.1:2", Voter: true}}, ErrRecovery},
		"reserved ID":           {dir, []ServerInfo{{ID: store.NoVote, Addr: "127.0.0.1:1", Voter: true}}, ErrRecovery},
		"not a dir":             {t.TempDir(), []ServerInfo{ok}, ErrRecovery},
		"running node":          {dir, []ServerInfo{ok}, ErrDataDirLocked},
		"running raft-wal node": {w.dirs[0], []ServerInfo{ok}, ErrDataDirLocked},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			if err := WriteRecovery(tc.dir, tc.servers); !errors.Is(err, tc.want) {
				t.Fatalf("WriteRecovery: %v, want %v", err, tc.want)
			}
			if _, err := os.Stat(filepath.Join(tc.dir, RecoveryFile)); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("a refused recovery left %s behind", RecoveryFile)
			}
		})
	}
}

func TestNodeRefusesRecoveryFileThatOmitsIt(t *testing.T) {
	c := newTCPCluster(t, 1)
	c.leader()
	c.stop(0)
	if err := WriteRecovery(c.dirs[0], []ServerInfo{{ID: "someone-else", Addr: "127.0.0.1:1", Voter: true}}); err != nil {
		t.Fatal(err)
	}
	_, err := NewRaftNode(c.config(0), fsmexample.New())
	if !errors.Is(err, ErrRecovery) {
		t.Fatalf("start with a recovery file that omits the node: %v, want ErrRecovery", err)
	}
	if err := os.WriteFile(filepath.Join(c.dirs[0], RecoveryFile), []byte("{garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := NewRaftNode(c.config(0), fsmexample.New()); !errors.Is(err, ErrRecovery) {
		t.Fatalf("start with a garbage recovery file: %v, want ErrRecovery", err)
	}
	os.Remove(filepath.Join(c.dirs[0], RecoveryFile))
	c.start(0)
	waitFor(t, 15*time.Second, "the node to lead again", c.nodes[0].IsLeader)
}

// poisonTerm stores term 2^64-1 and a vote for a stranger in it in a
// stopped node's stable store, as granting a hostile RequestVote does.
func poisonTerm(t *testing.T, dir string) {
	t.Helper()
	d, err := store.OpenStopped(dir, true)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	for _, err := range []error{
		d.Stable.SetUint64(store.KeyCurrentTerm, math.MaxUint64),
		d.Stable.SetUint64(store.KeyLastVoteTerm, math.MaxUint64),
		d.Stable.Set(store.KeyLastVoteCand, []byte("stranger")),
	} {
		if err != nil {
			t.Fatal(err)
		}
	}
}

func TestRecoverResetsPoisonedTerm(t *testing.T) {
	for _, kind := range logStores {
		t.Run(kind.String(), func(t *testing.T) {
			c := newTCPCluster(t, 3, withLogStore(kind))
			l := c.leader()
			const keys = 20
			for i := 0; i < keys; i++ {
				if _, err := c.nodes[l].Apply(ctxTimeout(t, 10*time.Second), fsmexample.Set(fmt.Sprintf("k%d", i), []byte("v"))); err != nil {
					t.Fatalf("write %d: %v", i, err)
				}
			}
			c.waitApplied(c.nodes[l].Status().LastLogIndex)
			var servers []ServerInfo
			for i := range c.nodes {
				servers = append(servers, ServerInfo{ID: c.nodes[i].ID(), Addr: c.addrs[i], Voter: true})
				c.stop(i)
				poisonTerm(t, c.dirs[i])
			}
			for i := range c.nodes {
				before, err := InspectDir(ctxTimeout(t, 10*time.Second), c.dirs[i])
				if err != nil {
					t.Fatal(err)
				}
				if before.CurrentTerm != math.MaxUint64 {
					t.Fatalf("node %d: poisoned term reads back as %d", i, before.CurrentTerm)
				}
				if err := WriteRecovery(c.dirs[i], servers); err != nil {
					t.Fatalf("node %d: %v", i, err)
				}
				after, err := InspectDir(ctxTimeout(t, 10*time.Second), c.dirs[i])
				if err != nil {
					t.Fatal(err)
				}
				// Reset to the last entry's term, with the vote in it spent;
				// the log itself is untouched.
				if after.CurrentTerm != before.LastLogTerm || after.LastVoteTerm != before.LastLogTerm || after.LastVoteFor != store.NoVote ||
					after.LastIndex != before.LastIndex || after.FirstIndex != before.FirstIndex || after.LastLogTerm != before.LastLogTerm {
					t.Fatalf("node %d after recovery: %+v; before: %+v", i, after, before)
				}
			}
			for i := range c.nodes {
				c.start(i)
			}
			l = c.leader()
			if _, err := c.nodes[l].Apply(ctxTimeout(t, 10*time.Second), fsmexample.Set("after", []byte("x"))); err != nil {
				t.Fatalf("write after recovery: %v", err)
			}
			c.waitApplied(c.nodes[l].Status().LastLogIndex)
			for i := range c.nodes {
				if got := c.fsms[i].Len(); got != keys+1 {
					t.Fatalf("node %d holds %d keys, want %d", i, got, keys+1)
				}
				if term := c.nodes[i].Status().Term; term > store.MaxSaneTerm {
					t.Fatalf("node %d runs in term %d", i, term)
				}
			}
		})
	}
}

func TestWriteRecoveryLeavesSaneTermAlone(t *testing.T) {
	c := newTCPCluster(t, 1, withLogStore(LogStoreWAL))
	c.leader()
	c.stop(0)
	before, err := InspectDir(ctxTimeout(t, 10*time.Second), c.dirs[0])
	if err != nil {
		t.Fatal(err)
	}
	if err := WriteRecovery(c.dirs[0], []ServerInfo{{ID: c.nodes[0].ID(), Addr: c.addrs[0], Voter: true}}); err != nil {
		t.Fatal(err)
	}
	after, err := InspectDir(ctxTimeout(t, 10*time.Second), c.dirs[0])
	if err != nil {
		t.Fatal(err)
	}
	if after.CurrentTerm != before.CurrentTerm || after.LastVoteTerm != before.LastVoteTerm || after.LastVoteFor != before.LastVoteFor {
		t.Fatalf("term and vote changed from %d/%d/%q to %d/%d/%q", before.CurrentTerm, before.LastVoteTerm, before.LastVoteFor,
			after.CurrentTerm, after.LastVoteTerm, after.LastVoteFor)
	}
}
