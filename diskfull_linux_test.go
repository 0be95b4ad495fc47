package raftkit

import (
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	fsmexample "github.com/raftkit/raftkit/fsm_example"
)

// smallDisk mounts a tmpfs of size bytes for the test and returns its path.
// It needs root; outside CI a test without it is skipped with the reason,
// in CI (CI set) it fails, so that the check cannot pass unseen.
func smallDisk(t *testing.T, size string) string {
	t.Helper()
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size="+size); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("mounting a tmpfs (needs root), which CI must be able to do: %v", err)
		}
		t.Skipf("needs root to mount a small tmpfs: %v", err)
	}
	t.Cleanup(func() { _ = syscall.Unmount(dir, syscall.MNT_DETACH) })
	return dir
}

// fill takes all the free space of the file system at dir.
func fill(t *testing.T, dir string) string {
	t.Helper()
	path := filepath.Join(dir, "filler")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 4096)
	for {
		if _, err := f.Write(buf); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatal(err)
			}
			return path
		}
	}
}

// A node started on a full disk fails with an I/O error that says so (not
// ErrCorruptStore), leaves no raft.db behind, and starts once space is
// back. It used to report the directory as damaged and leave a 0-byte
// raft.db that every later start refused for good.
func TestFullDiskIsAnIOErrorAndLeavesNothingBehind(t *testing.T) {
	disk := smallDisk(t, "1m")
	dir := filepath.Join(disk, "node")
	if err := os.MkdirAll(filepath.Join(dir, "snapshots"), 0o700); err != nil {
		t.Fatal(err)
	}
	filler := fill(t, disk)
	addr := unusedAddr(t)
	_, err := NewRaftNode(Config{Addr: addr, Dir: dir, Peers: []string{addr}, RaftConfig: fastRaft}, fsmexample.New())
	if err == nil {
		t.Fatal("a node started on a full disk")
	}
	if errors.Is(err, ErrCorruptStore) || !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("start on a full disk: %v; want an I/O error matching ENOSPC, not ErrCorruptStore", err)
	}
	if _, serr := os.Stat(filepath.Join(dir, "raft.db")); !errors.Is(serr, os.ErrNotExist) {
		t.Fatalf("a failed start on a full disk left raft.db behind (%v)", serr)
	}
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	n, err := NewRaftNode(Config{Addr: addr, Dir: dir, Peers: []string{addr}, RaftConfig: fastRaft}, fsmexample.New())
	if err != nil {
		t.Fatalf("start once space is back: %v", err)
	}
	defer n.Close()
	if _, err := n.WaitForLeader(ctxTimeout(t, 10*time.Second)); err != nil {
		t.Fatal(err)
	}
}
