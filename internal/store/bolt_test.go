package store

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
	"go.etcd.io/bbolt"

	"github.com/raftkit/raftkit/internal/sentinel"
)

// bbolt maps raft.db; reading a page past the end of a truncated file is a
// SIGBUS. checkBoltSize refuses such files before bbolt opens them, and
// safely turns the fault into an error should one get through anyway.
func TestMappedFileFaultIsAnErrorNotACrash(t *testing.T) {
	db := filepath.Join(t.TempDir(), BoltFile)
	s, err := newBoltStore(db, &bbolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	const marker = "damage-marker-"
	for i := 0; i < 30; i++ {
		l := &raft.Log{Index: uint64(i + 1), Term: 1, Type: raft.LogCommand, Data: []byte(fmt.Sprintf("%sk%03d%s", marker, i, bytes.Repeat([]byte{'v'}, 1000)))}
		if err := s.StoreLog(l); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(db)
	if err != nil {
		t.Fatal(err)
	}
	off := bytes.LastIndex(b, []byte(marker+"k029"))
	if off < 0 {
		t.Fatal("last value not found in raft.db")
	}
	if err := os.Truncate(db, int64(off/4096*4096)); err != nil {
		t.Fatal(err)
	}
	if err := checkBoltFile(db, false); !errors.Is(err, sentinel.ErrCorruptStore) {
		t.Fatalf("checkBoltFile on a truncated file: %v, want CorruptStore", err)
	}
	// checkBolt alone, without the size check in front of it.
	err = checkBolt(db, false)
	if !errors.Is(err, sentinel.ErrCorruptStore) || !strings.Contains(err.Error(), "panicked") {
		t.Fatalf("checkBolt on a truncated file: %v, want CorruptStore from a recovered fault", err)
	}
}
