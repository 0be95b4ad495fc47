package snapshot

import (
	"bytes"
	"errors"
	"io"
	"testing"
)

// sink is a raft.SnapshotSink in memory that notes how it ended.
type sink struct {
	bytes.Buffer
	closed, cancelled bool
}

func (s *sink) ID() string    { return "test" }
func (s *sink) Close() error  { s.closed = true; return nil }
func (s *sink) Cancel() error { s.cancelled = true; return nil }

func TestBytesPersistsAndCloses(t *testing.T) {
	s := &sink{}
	if err := Bytes([]byte("state")).Persist(s); err != nil {
		t.Fatal(err)
	}
	if s.String() != "state" || !s.closed || s.cancelled {
		t.Fatalf("sink holds %q, closed %v, cancelled %v", s.String(), s.closed, s.cancelled)
	}
}

func TestFuncCancelsOnAFailedWrite(t *testing.T) {
	s := &sink{}
	boom := errors.New("disk full")
	err := Func(func(w io.Writer) error {
		io.WriteString(w, "half")
		return boom
	}).Persist(s)
	if !errors.Is(err, boom) || s.closed || !s.cancelled {
		t.Fatalf("Persist = %v, closed %v, cancelled %v; want the write's error and a cancelled sink", err, s.closed, s.cancelled)
	}
}
