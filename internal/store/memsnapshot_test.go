package store

import (
	"io"
	"testing"

	"github.com/hashicorp/raft"
)

func memSnap(t *testing.T, s *MemSnapshots, term, index uint64, data string) raft.SnapshotSink {
	t.Helper()
	sink, err := s.Create(1, index, term, raft.Configuration{}, 1, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sink.Write([]byte(data)); err != nil {
		t.Fatal(err)
	}
	return sink
}

func memLatest(t *testing.T, s *MemSnapshots) (uint64, string) {
	t.Helper()
	list, err := s.List()
	if err != nil {
		t.Fatal(err)
	}
	if len(list) == 0 {
		return 0, ""
	}
	_, rc, err := s.Open(list[0].ID)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	return list[0].Index, string(b)
}

// A crash while a snapshot is written must leave the previous snapshot,
// not a partial one.
func TestMemSnapshotExistsOnlyOnceClosed(t *testing.T) {
	s := &MemSnapshots{}
	memSnap(t, s, 1, 10, "ten").Close()
	partial := memSnap(t, s, 1, 20, "twen") // never closed: the node crashed
	if idx, data := memLatest(t, s); idx != 10 || data != "ten" {
		t.Fatalf("latest is %d %q, want the closed snapshot 10 \"ten\"", idx, data)
	}
	partial.Cancel()
	if idx, _ := memLatest(t, s); idx != 10 {
		t.Fatalf("a cancelled snapshot became the latest (%d)", idx)
	}
}

// A local snapshot that finishes after a newer one from the leader must not
// replace it: the log behind the newer one may be compacted already.
func TestMemSnapshotNeverReplacesANewerOne(t *testing.T) {
	s := &MemSnapshots{}
	older := memSnap(t, s, 2, 300, "local")
	memSnap(t, s, 3, 500, "from leader").Close()
	older.Close()
	if idx, data := memLatest(t, s); idx != 500 || data != "from leader" {
		t.Fatalf("latest is %d %q, want 500 \"from leader\"", idx, data)
	}
}
