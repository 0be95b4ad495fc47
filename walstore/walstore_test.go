package walstore

import (
	"errors"
	"path/filepath"
	"testing"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	"github.com/hashicorp/raft-wal/metadb"

	"github.com/raftkit/raftkit/internal/sentinel"
	"github.com/raftkit/raftkit/internal/store"
)

func TestMetaFileNameIsRaftWALs(t *testing.T) {
	if store.WALMetaFile != metadb.FileName {
		t.Fatalf("store.WALMetaFile = %q, raft-wal's metadb.FileName = %q", store.WALMetaFile, metadb.FileName)
	}
}

// Importing the package registers raft-wal with the storage door, which
// then opens, writes, closes and reopens a raft-wal log in Dir/wal.
func TestImportRegistersRaftWAL(t *testing.T) {
	if !store.WALLinked() {
		t.Fatal("importing walstore did not register raft-wal")
	}
	dir := t.TempDir()
	open := func() *store.Stores {
		s, err := store.Open(store.Options{Dir: dir, Kind: store.WAL, SnapshotRetain: 1, Logger: hclog.NewNullLogger()})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	s := open()
	if m, ok := s.Log.(raft.MonotonicLogStore); !ok || !m.IsMonotonic() {
		t.Fatal("the raft-wal log store does not tell raft it is monotonic")
	}
	if err := s.Log.StoreLogs([]*raft.Log{{Index: 1, Term: 1, Data: []byte("a")}}); err != nil {
		t.Fatal(err)
	}
	if err := s.Stable.SetUint64(store.KeyCurrentTerm, 7); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if kind, found, err := store.Detect(dir); err != nil || !found || kind != store.WAL {
		t.Fatalf("Detect(%s) = %v, %v, %v; want a raft-wal log", filepath.Base(dir), kind, found, err)
	}
	s = open() // the lock and raft-wal's metadata file were released by Close
	defer s.Close()
	var l raft.Log
	if err := s.Log.GetLog(1, &l); err != nil || string(l.Data) != "a" {
		t.Fatalf("entry 1 after reopening: %q, %v", l.Data, err)
	}
	if term, err := s.Stable.GetUint64(store.KeyCurrentTerm); err != nil || term != 7 {
		t.Fatalf("CurrentTerm after reopening: %d, %v", term, err)
	}
	if _, err := store.Open(store.Options{Dir: dir, Kind: store.WAL, SnapshotRetain: 1, Logger: hclog.NewNullLogger()}); !errors.Is(err, sentinel.ErrDataDirLocked) {
		t.Fatalf("second Open of a raft-wal log in use: %v, want ErrDataDirLocked", err)
	}
}
