package fsmexample

import (
	"bytes"
	"errors"
	"io"
	"sync"
	"testing"

	"github.com/hashicorp/raft"
)

func apply(s *Store, cmd []byte) any {
	return s.Apply(&raft.Log{Type: raft.LogCommand, Index: 1, Data: cmd})
}

func TestCommandsChangeState(t *testing.T) {
	s := New()
	if r := apply(s, Set("a", []byte("1"))); r != nil {
		t.Fatalf("set returned %v", r)
	}
	if v, ok := s.Get("a"); !ok || string(v) != "1" {
		t.Fatalf("get a = %q, %v", v, ok)
	}
	if r := apply(s, CompareAndSet("a", []byte("x"), []byte("2"))); r != false {
		t.Fatalf("cas with wrong old value returned %v, want false", r)
	}
	if r := apply(s, CompareAndSet("a", []byte("1"), []byte("2"))); r != true {
		t.Fatalf("cas with right old value returned %v, want true", r)
	}
	if r := apply(s, CompareAndSet("b", nil, []byte("new"))); r != true {
		t.Fatalf("cas on absent key with nil old returned %v, want true", r)
	}
	if r := apply(s, CompareAndSet("b", nil, []byte("again"))); r != false {
		t.Fatalf("cas with nil old on present key returned %v, want false", r)
	}
	if r := apply(s, Get("a")); !bytes.Equal(r.([]byte), []byte("2")) {
		t.Fatalf("get command returned %v", r)
	}
	if r := apply(s, Delete("a")); r != true {
		t.Fatalf("delete of present key returned %v", r)
	}
	if r := apply(s, Delete("a")); r != false {
		t.Fatalf("delete of absent key returned %v", r)
	}
	if r := apply(s, Get("a")); r.([]byte) != nil {
		t.Fatalf("get of absent key returned %v", r)
	}
	if s.Len() != 1 {
		t.Fatalf("Len = %d, want 1", s.Len())
	}
}

func TestBadCommandsReturnErrors(t *testing.T) {
	good := Set("key", []byte("value"))
	cases := map[string][]byte{
		"empty":           {},
		"unknown opcode":  {99, 0},
		"truncated":       good[:len(good)-2],
		"trailing bytes":  append(append([]byte{}, good...), 7),
		"huge key length": {opSet, 0xff, 0xff, 0xff, 0xff, 0x0f},
		"cas without flag": func() []byte {
			c := CompareAndSet("k", nil, []byte("v"))
			return c[:len(c)-1]
		}(),
	}
	for name, cmd := range cases {
		t.Run(name, func(t *testing.T) {
			s := New()
			r := apply(s, cmd)
			err, ok := r.(error)
			if !ok || !errors.Is(err, ErrBadCommand) {
				t.Fatalf("Apply(%v) = %v, want ErrBadCommand", cmd, r)
			}
			if s.Len() != 0 {
				t.Fatalf("bad command changed state")
			}
		})
	}
}

func TestApplyBatchMatchesApply(t *testing.T) {
	cmds := [][]byte{Set("a", []byte("1")), {42}, CompareAndSet("a", []byte("1"), []byte("2")), Delete("zz"), Get("a")}
	one, batch := New(), New()
	var logs []*raft.Log
	for i, c := range cmds {
		logs = append(logs, &raft.Log{Type: raft.LogCommand, Index: uint64(i + 1), Data: c})
	}
	got := batch.ApplyBatch(logs)
	for i, l := range logs {
		want := one.Apply(l)
		if werr, ok := want.(error); ok {
			if gerr, ok := got[i].(error); !ok || gerr.Error() != werr.Error() {
				t.Fatalf("entry %d: batch %v, single %v", i, got[i], want)
			}
			continue
		}
		if b, ok := want.([]byte); ok {
			if !bytes.Equal(b, got[i].([]byte)) {
				t.Fatalf("entry %d: batch %v, single %v", i, got[i], want)
			}
			continue
		}
		if got[i] != want {
			t.Fatalf("entry %d: batch %v, single %v", i, got[i], want)
		}
	}
}

type sink struct {
	bytes.Buffer
	cancelled bool
}

func (s *sink) ID() string    { return "test" }
func (s *sink) Cancel() error { s.cancelled = true; return nil }
func (s *sink) Close() error  { return nil }

func TestSnapshotRoundTrip(t *testing.T) {
	s := New()
	apply(s, Set("a", []byte("1")))
	apply(s, Set("empty", []byte{}))
	apply(s, Set("bin", []byte{0, 255, 10}))
	snap, err := s.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	apply(s, Set("after", []byte("not in snapshot")))
	var out sink
	if err := snap.Persist(&out); err != nil {
		t.Fatal(err)
	}
	r := New()
	apply(r, Set("old", []byte("replaced")))
	if err := r.Restore(io.NopCloser(bytes.NewReader(out.Bytes()))); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"a": "1", "empty": "", "bin": "\x00\xff\n"}
	got := r.All()
	if len(got) != len(want) {
		t.Fatalf("restored %d keys, want %d: %v", len(got), len(want), got)
	}
	for k, v := range want {
		if string(got[k]) != v {
			t.Fatalf("key %q = %q, want %q", k, got[k], v)
		}
	}
}

func TestRestoreRejectsDamagedSnapshots(t *testing.T) {
	s := New()
	apply(s, Set("a", []byte("1")))
	snap, _ := s.Snapshot()
	var out sink
	if err := snap.Persist(&out); err != nil {
		t.Fatal(err)
	}
	good := out.Bytes()
	cases := map[string][]byte{
		"empty":         {},
		"wrong version": append([]byte{9}, good[1:]...),
		"truncated":     good[:len(good)-1],
		"trailing":      append(append([]byte{}, good...), 1),
	}
	for name, data := range cases {
		t.Run(name, func(t *testing.T) {
			r := New()
			apply(r, Set("keep", []byte("me")))
			if err := r.Restore(io.NopCloser(bytes.NewReader(data))); err == nil {
				t.Fatal("Restore accepted a damaged snapshot")
			}
			if v, ok := r.Get("keep"); !ok || string(v) != "me" {
				t.Fatal("failed Restore lost the previous state")
			}
		})
	}
}

// Reads run while raft applies and restores; -race checks the locking.
func TestConcurrentReadsDuringApplyAndRestore(t *testing.T) {
	s := New()
	snap, _ := s.Snapshot()
	var out sink
	_ = snap.Persist(&out)
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
					s.Get("k")
					s.Len()
					s.All()
				}
			}
		}()
	}
	for i := 0; i < 2000; i++ {
		apply(s, Set("k", []byte{byte(i)}))
		if i%100 == 0 {
			if err := s.Restore(io.NopCloser(bytes.NewReader(out.Bytes()))); err != nil {
				t.Fatal(err)
			}
		}
	}
	close(stop)
	wg.Wait()
}
