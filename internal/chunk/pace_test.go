package chunk

import (
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

func TestStoredChunksWait(t *testing.T) {
	s := NewStored()
	entry := func(id uint64, index uint32) *raft.Log {
		return &raft.Log{Extensions: Header{ID: id, Index: index, Count: 8, Total: 8 * Size}.Encode()}
	}
	stop := make(chan struct{})
	done := make(chan bool)
	go func() { done <- s.Wait(7, 3, time.Minute, stop) }()
	s.Note(&raft.Log{Data: []byte("not a chunk")})
	s.Note(entry(6, 3)) // another sequence
	s.Note(entry(7, 2)) // an earlier chunk
	select {
	case <-done:
		t.Fatal("wait ended before chunk 3 of sequence 7 was stored")
	case <-time.After(20 * time.Millisecond):
	}
	s.Note(entry(7, 4)) // a later batch's last chunk covers 3
	if !<-done {
		t.Fatal("wait reported false once a later chunk of the sequence was stored")
	}
	if !s.Wait(7, 1, time.Minute, stop) {
		t.Fatal("wait for a chunk already stored reported false")
	}
	if s.Wait(7, 5, 10*time.Millisecond, stop) {
		t.Fatal("wait past its limit reported true")
	}
	close(stop)
	if s.Wait(7, 5, time.Minute, stop) {
		t.Fatal("wait after stop reported true")
	}
	if got := s.Batches(); got != 3 {
		t.Fatalf("%d batches counted, want 3 that ended in a valid chunk", got)
	}
}
