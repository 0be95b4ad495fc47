package store

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hashicorp/go-hclog"
)

// This package's tests do not link package walstore, as a program on
// BoltDB does not.

func TestOpenWALWithoutWalstoreNamesTheImport(t *testing.T) {
	if WALLinked() {
		t.Fatal("raft-wal is registered in a test binary that does not import walstore")
	}
	dir := t.TempDir()
	_, err := Open(Options{Dir: dir, Kind: WAL, SnapshotRetain: 1, Logger: hclog.NewNullLogger()})
	if !errors.Is(err, ErrWALNotLinked) || !strings.Contains(err.Error(), WALImport) {
		t.Fatalf("Open(WAL) without walstore: %v, want ErrWALNotLinked naming %s", err, WALImport)
	}
	for _, name := range []string{WALDir, walLockFile} {
		if _, err := os.Stat(filepath.Join(dir, name)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("Open(WAL) without walstore created %s (stat: %v)", name, err)
		}
	}
}

func TestOpenStoppedWALDirectoryWithoutWalstoreNamesTheImport(t *testing.T) {
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, WALDir), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, WALDir, WALMetaFile), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenStopped(dir, false); !errors.Is(err, ErrWALNotLinked) {
		t.Fatalf("OpenStopped on a raft-wal directory without walstore: %v, want ErrWALNotLinked", err)
	}
	// A BoltDB node pointed at it is told what the directory holds and how
	// to open it.
	_, err := Open(Options{Dir: dir, Kind: Bolt, SnapshotRetain: 1, Logger: hclog.NewNullLogger()})
	var ke *KindError
	if !errors.As(err, &ke) || !strings.Contains(err.Error(), WALImport) {
		t.Fatalf("Open(Bolt) on a raft-wal directory without walstore: %v, want a *KindError naming %s", err, WALImport)
	}
}
