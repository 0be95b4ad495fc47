package raftkit

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	fsmexample "github.com/raftkit/raftkit/fsm_example"
	"github.com/raftkit/raftkit/internal/store"
)

func TestWALStoreKeepsWritesAcrossRestart(t *testing.T) {
	c := newTCPCluster(t, 1, withLogStore(LogStoreWAL))
	c.leader()
	n, dir := c.nodes[0], c.dirs[0]
	for i := 0; i < 50; i++ {
		if _, err := n.Apply(ctxTimeout(t, 5*time.Second), fsmexample.Set(fmt.Sprintf("k%d", i), []byte("v"))); err != nil {
			t.Fatal(err)
		}
	}
	term := n.Raft().CurrentTerm()
	c.stop(0)
	if _, err := os.Stat(filepath.Join(dir, store.BoltFile)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("raft-wal node created %s (err %v)", store.BoltFile, err)
	}
	if _, err := os.Stat(filepath.Join(dir, store.WALDir, store.WALMetaFile)); err != nil {
		t.Fatalf("raft-wal metadata missing: %v", err)
	}

	c.start(0)
	n, kv := c.nodes[0], c.fsms[0]
	if got := n.Raft().CurrentTerm(); got < term {
		t.Fatalf("term went back from %d to %d across restart", term, got)
	}
	waitFor(t, 10*time.Second, "the log to be replayed", func() bool { return kv.Len() == 50 })
	if _, err := n.Apply(ctxTimeout(t, 10*time.Second), fsmexample.Set("after", []byte("v"))); err != nil {
		t.Fatalf("write after restart: %v", err)
	}
}

func TestWALLockedDirFailsFast(t *testing.T) {
	c := newTCPCluster(t, 1, withLogStore(LogStoreWAL))
	addrs, lns := reservePorts(t, 1)
	done := make(chan error, 1)
	go func() {
		_, err := NewRaftNode(Config{Addr: addrs[0], Listener: lns[0], Dir: c.dirs[0], LogStore: LogStoreWAL}, fsmexample.New())
		done <- err
	}()
	select {
	case err := <-done:
		if !errors.Is(err, ErrDataDirLocked) {
			t.Fatalf("second node on a raft-wal Dir in use: %v, want ErrDataDirLocked", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("second node on a raft-wal Dir in use hangs instead of failing")
	}
}

func TestWALDamagedMetadataIsRefused(t *testing.T) {
	c := newTCPCluster(t, 1, withLogStore(LogStoreWAL))
	c.leader()
	c.stop(0)
	good := c.dirs[0]
	meta, err := os.ReadFile(filepath.Join(good, store.WALDir, store.WALMetaFile))
	if err != nil {
		t.Fatal(err)
	}
	for name, damage := range map[string][]byte{
		"empty":     nil,
		"truncated": meta[:len(meta)/3],
		"garbage":   []byte(strings.Repeat("not a bolt file ", 512)),
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			if err := os.MkdirAll(filepath.Join(dir, store.WALDir), 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, store.WALDir, store.WALMetaFile), damage, 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := NewRaftNode(Config{Addr: "127.0.0.1:0", Dir: dir, LogStore: LogStoreWAL}, fsmexample.New())
			if !errors.Is(err, ErrCorruptStore) {
				t.Fatalf("%s wal-meta.db: %v, want ErrCorruptStore", name, err)
			}
		})
	}
}

func TestDirKeepsItsLogStore(t *testing.T) {
	for _, tc := range []struct{ made, opened LogStoreKind }{{LogStoreBolt, LogStoreWAL}, {LogStoreWAL, LogStoreBolt}} {
		t.Run(tc.made.String(), func(t *testing.T) {
			dir := t.TempDir()
			n, err := NewRaftNode(Config{Addr: "127.0.0.1:0", Dir: dir, LogStore: tc.made}, fsmexample.New())
			if err != nil {
				t.Fatal(err)
			}
			n.Close()
			_, err = NewRaftNode(Config{Addr: "127.0.0.1:0", Dir: dir, LogStore: tc.opened}, fsmexample.New())
			var ce *ConfigError
			if !errors.As(err, &ce) || ce.Field != "LogStore" {
				t.Fatalf("opening a %s Dir as %s: %v, want a *ConfigError for LogStore", tc.made, tc.opened, err)
			}
		})
	}
}
