package raftkit

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"

	"github.com/hashicorp/raft"
)

func TestChunkHeaderRoundTrip(t *testing.T) {
	for _, h := range []chunkHeader{
		{id: 1, index: 0, count: 2, total: chunkSize + 1},
		{id: 1<<64 - 1, index: 3, count: 4, total: 4 * chunkSize},
		{id: 7, index: 0, count: 1, total: 1},
		{id: 9, index: 255, count: 256, total: MaxCommandSizeLimit},
		{abort: true},
	} {
		got, err := parseChunkHeader(h.encode())
		if err != nil || got != h {
			t.Errorf("parse(encode(%+v)) = %+v, %v", h, got, err)
		}
	}
}

func TestChunkHeaderRejectsMalformed(t *testing.T) {
	valid := chunkHeader{id: 5, index: 1, count: 3, total: 2*chunkSize + 10}.encode()
	with := func(f func(b []byte) []byte) []byte { return f(bytes.Clone(valid)) }
	const fields = 5 // offset of id; index at +8, count at +12, total at +16
	for _, tc := range []struct {
		name string
		ext  []byte
	}{
		{"nil", nil},
		{"magic only", []byte(chunkMagic)},
		{"short", valid[:len(valid)-1]},
		{"long", append(bytes.Clone(valid), 0)},
		{"other magic", with(func(b []byte) []byte { b[3] = '2'; return b })},
		{"unknown flag", with(func(b []byte) []byte { b[4] = 2; return b })},
		{"abort with fields", with(func(b []byte) []byte { b[4] = chunkFlagAbort; return b })},
		{"count 0", with(func(b []byte) []byte { binary.BigEndian.PutUint32(b[fields+12:], 0); return b })},
		{"index = count", with(func(b []byte) []byte { binary.BigEndian.PutUint32(b[fields+8:], 3); return b })},
		{"index > count", with(func(b []byte) []byte { binary.BigEndian.PutUint32(b[fields+8:], 1<<31); return b })},
		{"total too small for count", with(func(b []byte) []byte { binary.BigEndian.PutUint64(b[fields+16:], 2*chunkSize); return b })},
		{"total too large for count", with(func(b []byte) []byte { binary.BigEndian.PutUint64(b[fields+16:], 3*chunkSize+1); return b })},
		{"total over limit", chunkHeader{id: 1, count: 256, total: MaxCommandSizeLimit + 1}.encode()},
		{"total 0", chunkHeader{id: 1, count: 1, total: 0}.encode()},
		{"huge total", with(func(b []byte) []byte { binary.BigEndian.PutUint64(b[fields+16:], 1<<63); return b })},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if h, err := parseChunkHeader(tc.ext); !errors.Is(err, errBadChunkHeader) {
				t.Errorf("parse(%x) = %+v, %v; want errBadChunkHeader", tc.ext, h, err)
			}
		})
	}
}

// recordingFSM records the commands and configurations it is given and
// answers each command with "applied <index>".
type recordingFSM struct {
	cmds    []raft.Log
	configs []uint64
	batches int
}

func (f *recordingFSM) Apply(l *raft.Log) any {
	f.cmds = append(f.cmds, raft.Log{Index: l.Index, Term: l.Term, Type: l.Type, Data: bytes.Clone(l.Data), Extensions: l.Extensions})
	return fmt.Sprintf("applied %d", l.Index)
}

func (f *recordingFSM) StoreConfiguration(index uint64, _ raft.Configuration) {
	f.configs = append(f.configs, index)
}

func (f *recordingFSM) Snapshot() (raft.FSMSnapshot, error) { return nil, nil }
func (f *recordingFSM) Restore(rc io.ReadCloser) error      { return rc.Close() }

// batchingRecorder is recordingFSM as a raft.BatchingFSM.
type batchingRecorder struct{ recordingFSM }

func (f *batchingRecorder) ApplyBatch(logs []*raft.Log) []any {
	f.batches++
	out := make([]any, len(logs))
	for i, l := range logs {
		switch l.Type {
		case raft.LogCommand:
			out[i] = f.Apply(l)
		case raft.LogConfiguration:
			f.configs = append(f.configs, l.Index)
		}
	}
	return out
}

// fsmKinds runs a test against trackedFSM over a plain FSM and over a
// BatchingFSM.
func fsmKinds(t *testing.T, test func(t *testing.T, tf *trackedFSM, rec *recordingFSM)) {
	t.Run("plain", func(t *testing.T) {
		rec := &recordingFSM{}
		test(t, newTrackedFSM(rec), rec)
	})
	t.Run("batching", func(t *testing.T) {
		rec := &batchingRecorder{}
		test(t, newTrackedFSM(rec), &rec.recordingFSM)
	})
}

// chunkEntries splits cmd into chunk entries as the leader submits them,
// at indexes from first on, in term.
func chunkEntries(id uint64, term, first uint64, cmd []byte) []*raft.Log {
	h := chunkHeader{id: id, count: uint32(chunkCount(len(cmd))), total: uint64(len(cmd))}
	var logs []*raft.Log
	for i := 0; i < int(h.count); i++ {
		h.index = uint32(i)
		part := cmd[i*chunkSize : min(len(cmd), (i+1)*chunkSize)]
		logs = append(logs, &raft.Log{Index: first + uint64(i), Term: term, Type: raft.LogCommand, Data: part, Extensions: h.encode()})
	}
	return logs
}

func command(size int, seed byte) []byte {
	b := make([]byte, size)
	for i := range b {
		b[i] = seed + byte(i*7)
	}
	return b
}

func TestTrackedFSMReassemblesChunkedCommand(t *testing.T) {
	fsmKinds(t, func(t *testing.T, tf *trackedFSM, rec *recordingFSM) {
		small := &raft.Log{Index: 10, Term: 3, Type: raft.LogCommand, Data: []byte("small")}
		cmd := command(3*chunkSize+17, 1)
		chunks := chunkEntries(42, 3, 11, cmd) // 11..14
		after := &raft.Log{Index: 15, Term: 3, Type: raft.LogCommand, Data: []byte("after")}
		// Two batches, the sequence spanning both.
		out1 := tf.ApplyBatch(append([]*raft.Log{small}, chunks[:2]...))
		if tf.pending == nil || tf.pendingTerm.Load() != 3 {
			t.Fatalf("no pending sequence after two of four chunks")
		}
		out2 := tf.ApplyBatch(append(chunks[2:], after))
		want1 := []any{"applied 10", nil, nil}
		want2 := []any{nil, "applied 14", "applied 15"}
		if fmt.Sprint(out1) != fmt.Sprint(want1) || fmt.Sprint(out2) != fmt.Sprint(want2) {
			t.Fatalf("responses %v %v, want %v %v", out1, out2, want1, want2)
		}
		if len(rec.cmds) != 3 {
			t.Fatalf("FSM got %d commands, want 3", len(rec.cmds))
		}
		whole := rec.cmds[1]
		if whole.Index != 14 || whole.Term != 3 || whole.Type != raft.LogCommand || !bytes.Equal(whole.Data, cmd) || whole.Extensions != nil {
			t.Fatalf("FSM got index %d term %d type %v, %d bytes (equal %v), extensions %x; want index 14 term 3, the %d bytes",
				whole.Index, whole.Term, whole.Type, len(whole.Data), bytes.Equal(whole.Data, cmd), whole.Extensions, len(cmd))
		}
		if tf.pending != nil || tf.pendingTerm.Load() != 0 || tf.applied.Load() != 15 {
			t.Fatalf("after the command: pending %v, applied %d", tf.pending != nil, tf.applied.Load())
		}
	})
}

func TestTrackedFSMEntryBetweenChunksDropsSequence(t *testing.T) {
	config := &raft.Log{Index: 3, Term: 1, Type: raft.LogConfiguration, Data: raft.EncodeConfiguration(raft.Configuration{})}
	other := &raft.Log{Index: 3, Term: 1, Type: raft.LogCommand, Data: []byte("other")}
	abort := &raft.Log{Index: 3, Term: 1, Type: raft.LogCommand, Extensions: chunkHeader{abort: true}.encode()}
	foreign := &raft.Log{Index: 3, Term: 1, Type: raft.LogCommand, Data: []byte("foreign"), Extensions: []byte("not ours")}
	for _, tc := range []struct {
		name    string
		between *raft.Log
		resp    any // its response
		cmds    int // commands the FSM gets
	}{
		{"command", other, "applied 3", 1},
		{"command with other extensions", foreign, "applied 3", 1},
		{"configuration", config, nil, 0},
		{"abort", abort, nil, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fsmKinds(t, func(t *testing.T, tf *trackedFSM, rec *recordingFSM) {
				chunks := chunkEntries(1, 1, 1, command(3*chunkSize, 2)) // 1, 2, then 4 after the entry at 3
				chunks[2].Index = 4
				out := tf.ApplyBatch([]*raft.Log{chunks[0], chunks[1], tc.between, chunks[2]})
				want := []any{nil, nil, tc.resp, errChunkIncomplete}
				if fmt.Sprint(out) != fmt.Sprint(want) {
					t.Fatalf("responses %v, want %v", out, want)
				}
				if len(rec.cmds) != tc.cmds {
					t.Fatalf("FSM got %d commands, want %d", len(rec.cmds), tc.cmds)
				}
				if tc.between == config && len(rec.configs) != 1 {
					t.Fatalf("FSM got %d configurations, want 1", len(rec.configs))
				}
				if tf.pending != nil || tf.pendingTerm.Load() != 0 {
					t.Fatal("sequence still pending")
				}
			})
		})
	}
}

func TestTrackedFSMTermChangeDropsSequence(t *testing.T) {
	fsmKinds(t, func(t *testing.T, tf *trackedFSM, rec *recordingFSM) {
		chunks := chunkEntries(1, 1, 1, command(2*chunkSize+1, 3))
		chunks[2].Term = 2
		out := tf.ApplyBatch(chunks)
		if want := []any{nil, nil, errChunkIncomplete}; fmt.Sprint(out) != fmt.Sprint(want) {
			t.Fatalf("responses %v, want %v", out, want)
		}
		if len(rec.cmds) != 0 || tf.pending != nil {
			t.Fatalf("FSM got %d commands, pending %v", len(rec.cmds), tf.pending != nil)
		}
	})
}

func TestTrackedFSMChunkOutOfSequence(t *testing.T) {
	cmd := command(3*chunkSize, 4)
	for _, tc := range []struct {
		name  string
		logs  func() []*raft.Log
		resps []any
	}{
		{"final without start", func() []*raft.Log { return chunkEntries(1, 1, 1, cmd)[2:] }, []any{errChunkIncomplete}},
		{"skipped chunk", func() []*raft.Log {
			c := chunkEntries(1, 1, 1, cmd)
			return []*raft.Log{c[0], c[2]}
		}, []any{nil, errChunkIncomplete}},
		{"other sequence", func() []*raft.Log {
			a, b := chunkEntries(1, 1, 1, cmd), chunkEntries(2, 1, 2, cmd)
			return []*raft.Log{a[0], b[1], a[1], a[2]}
		}, []any{nil, errChunkIncomplete, errChunkIncomplete, errChunkIncomplete}},
		{"new start replaces", func() []*raft.Log {
			a, b := chunkEntries(1, 1, 1, cmd), chunkEntries(2, 1, 2, cmd)
			return []*raft.Log{a[0], a[1], b[0], b[1], b[2]}
		}, []any{nil, nil, nil, nil, "applied 4"}},
		{"short chunk", func() []*raft.Log {
			c := chunkEntries(1, 1, 1, cmd)
			c[1].Data = c[1].Data[:10]
			return c
		}, []any{nil, errChunkIncomplete, errChunkIncomplete}},
		{"malformed header", func() []*raft.Log {
			c := chunkEntries(1, 1, 1, cmd)
			c[1].Extensions = c[1].Extensions[:10]
			return c
		}, []any{nil, errChunkIncomplete, errChunkIncomplete}},
		{"abort with data", func() []*raft.Log {
			c := chunkEntries(1, 1, 1, cmd)
			return []*raft.Log{c[0], {Index: 9, Term: 1, Type: raft.LogCommand, Data: []byte("x"), Extensions: chunkHeader{abort: true}.encode()}}
		}, []any{nil, errChunkIncomplete}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fsmKinds(t, func(t *testing.T, tf *trackedFSM, rec *recordingFSM) {
				out := tf.ApplyBatch(tc.logs())
				if fmt.Sprint(out) != fmt.Sprint(tc.resps) {
					t.Fatalf("responses %v, want %v", out, tc.resps)
				}
			})
		})
	}
}

func TestTrackedFSMDefersSnapshotWhileChunkPending(t *testing.T) {
	fsmKinds(t, func(t *testing.T, tf *trackedFSM, rec *recordingFSM) {
		chunks := chunkEntries(1, 1, 1, command(2*chunkSize+1, 5))
		tf.ApplyBatch(chunks[:1])
		if _, err := tf.Snapshot(); !errors.Is(err, errChunkInProgress) {
			t.Fatalf("Snapshot while pending: %v, want errChunkInProgress", err)
		}
		// raft passes the FSM's error on formatted with %v.
		if wrapped := fmt.Errorf("failed to start snapshot: %v", errChunkInProgress); !isChunkInProgress(wrapped) || isChunkInProgress(errors.New("other")) {
			t.Fatal("isChunkInProgress does not recognise raft's error")
		}
		tf.ApplyBatch(chunks[1:])
		if _, err := tf.Snapshot(); err != nil {
			t.Fatalf("Snapshot after the command: %v", err)
		}
	})
}

func TestTrackedFSMRestoreClearsPendingChunks(t *testing.T) {
	fsmKinds(t, func(t *testing.T, tf *trackedFSM, rec *recordingFSM) {
		chunks := chunkEntries(1, 1, 1, command(2*chunkSize+1, 6))
		tf.ApplyBatch(chunks[:2])
		if err := tf.Restore(io.NopCloser(strings.NewReader(""))); err != nil {
			t.Fatal(err)
		}
		if tf.pending != nil || tf.pendingTerm.Load() != 0 {
			t.Fatal("Restore kept the pending sequence")
		}
		if out := tf.ApplyBatch(chunks[2:]); out[0] != errChunkIncomplete {
			t.Fatalf("final chunk after Restore: %v, want errChunkIncomplete", out[0])
		}
		if _, err := tf.Snapshot(); err != nil {
			t.Fatalf("Snapshot: %v", err)
		}
	})
}

func TestTrackedFSMSmallCommandsPassThroughUnchanged(t *testing.T) {
	fsmKinds(t, func(t *testing.T, tf *trackedFSM, rec *recordingFSM) {
		logs := []*raft.Log{
			{Index: 1, Term: 1, Type: raft.LogCommand, Data: []byte("a")},
			{Index: 2, Term: 1, Type: raft.LogConfiguration, Data: raft.EncodeConfiguration(raft.Configuration{})},
			{Index: 3, Term: 1, Type: raft.LogCommand, Data: []byte("b"), Extensions: []byte("user's own")},
		}
		out := tf.ApplyBatch(logs)
		if want := []any{"applied 1", nil, "applied 3"}; fmt.Sprint(out) != fmt.Sprint(want) {
			t.Fatalf("responses %v, want %v", out, want)
		}
		if len(rec.cmds) != 2 || string(rec.cmds[1].Extensions) != "user's own" || len(rec.configs) != 1 {
			t.Fatalf("FSM got %d commands (%q), %d configurations", len(rec.cmds), rec.cmds, len(rec.configs))
		}
	})
}

func TestTrackedFSMHandsBatchingFSMOneBatch(t *testing.T) {
	rec := &batchingRecorder{}
	tf := newTrackedFSM(rec)
	logs := append([]*raft.Log{{Index: 1, Term: 1, Type: raft.LogCommand, Data: []byte("a")}},
		chunkEntries(1, 1, 2, command(2*chunkSize+1, 7))...)
	out := tf.ApplyBatch(logs)
	if rec.batches != 1 || len(rec.cmds) != 2 || fmt.Sprint(out) != fmt.Sprint([]any{"applied 1", nil, nil, "applied 4"}) {
		t.Fatalf("%d batches, %d commands, responses %v", rec.batches, len(rec.cmds), out)
	}
}
