package raftkit

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	fsmexample "github.com/raftkit/raftkit/fsm_example"
	"github.com/raftkit/raftkit/internal/chunk"
	"github.com/raftkit/raftkit/internal/peer"
)

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
	h := chunk.Header{ID: id, Count: uint32(chunk.Count(len(cmd))), Total: uint64(len(cmd))}
	var logs []*raft.Log
	for i := 0; i < int(h.Count); i++ {
		h.Index = uint32(i)
		part := cmd[i*chunk.Size : min(len(cmd), (i+1)*chunk.Size)]
		logs = append(logs, &raft.Log{Index: first + uint64(i), Term: term, Type: raft.LogCommand, Data: part, Extensions: h.Encode()})
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
		cmd := command(3*chunk.Size+17, 1)
		chunks := chunkEntries(42, 3, 11, cmd) // 11..14
		after := &raft.Log{Index: 15, Term: 3, Type: raft.LogCommand, Data: []byte("after")}
		// Two batches, the sequence spanning both.
		out1 := tf.ApplyBatch(append([]*raft.Log{small}, chunks[:2]...))
		if !tf.chunks.Pending() || tf.chunks.PendingTerm() != 3 {
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
		if tf.chunks.Pending() || tf.chunks.PendingTerm() != 0 || tf.applied.Load() != 15 {
			t.Fatalf("after the command: pending %v, applied %d", tf.chunks.Pending(), tf.applied.Load())
		}
	})
}

func TestTrackedFSMEntryBetweenChunksDropsSequence(t *testing.T) {
	config := &raft.Log{Index: 3, Term: 1, Type: raft.LogConfiguration, Data: raft.EncodeConfiguration(raft.Configuration{})}
	other := &raft.Log{Index: 3, Term: 1, Type: raft.LogCommand, Data: []byte("other")}
	abort := &raft.Log{Index: 3, Term: 1, Type: raft.LogCommand, Extensions: chunk.Header{Abort: true}.Encode()}
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
				chunks := chunkEntries(1, 1, 1, command(3*chunk.Size, 2)) // 1, 2, then 4 after the entry at 3
				chunks[2].Index = 4
				out := tf.ApplyBatch([]*raft.Log{chunks[0], chunks[1], tc.between, chunks[2]})
				want := []any{nil, nil, tc.resp, chunk.ErrIncomplete}
				if fmt.Sprint(out) != fmt.Sprint(want) {
					t.Fatalf("responses %v, want %v", out, want)
				}
				if len(rec.cmds) != tc.cmds {
					t.Fatalf("FSM got %d commands, want %d", len(rec.cmds), tc.cmds)
				}
				if tc.between == config && len(rec.configs) != 1 {
					t.Fatalf("FSM got %d configurations, want 1", len(rec.configs))
				}
				if tf.chunks.Pending() || tf.chunks.PendingTerm() != 0 {
					t.Fatal("sequence still pending")
				}
			})
		})
	}
}

func TestTrackedFSMTermChangeDropsSequence(t *testing.T) {
	fsmKinds(t, func(t *testing.T, tf *trackedFSM, rec *recordingFSM) {
		chunks := chunkEntries(1, 1, 1, command(2*chunk.Size+1, 3))
		chunks[2].Term = 2
		out := tf.ApplyBatch(chunks)
		if want := []any{nil, nil, chunk.ErrIncomplete}; fmt.Sprint(out) != fmt.Sprint(want) {
			t.Fatalf("responses %v, want %v", out, want)
		}
		if len(rec.cmds) != 0 || tf.chunks.Pending() {
			t.Fatalf("FSM got %d commands, pending %v", len(rec.cmds), tf.chunks.Pending())
		}
	})
}

func TestTrackedFSMChunkOutOfSequence(t *testing.T) {
	cmd := command(3*chunk.Size, 4)
	for _, tc := range []struct {
		name  string
		logs  func() []*raft.Log
		resps []any
	}{
		{"final without start", func() []*raft.Log { return chunkEntries(1, 1, 1, cmd)[2:] }, []any{chunk.ErrIncomplete}},
		{"skipped chunk", func() []*raft.Log {
			c := chunkEntries(1, 1, 1, cmd)
			return []*raft.Log{c[0], c[2]}
		}, []any{nil, chunk.ErrIncomplete}},
		{"other sequence", func() []*raft.Log {
			a, b := chunkEntries(1, 1, 1, cmd), chunkEntries(2, 1, 2, cmd)
			return []*raft.Log{a[0], b[1], a[1], a[2]}
		}, []any{nil, chunk.ErrIncomplete, chunk.ErrIncomplete, chunk.ErrIncomplete}},
		{"new start replaces", func() []*raft.Log {
			a, b := chunkEntries(1, 1, 1, cmd), chunkEntries(2, 1, 2, cmd)
			return []*raft.Log{a[0], a[1], b[0], b[1], b[2]}
		}, []any{nil, nil, nil, nil, "applied 4"}},
		{"short chunk", func() []*raft.Log {
			c := chunkEntries(1, 1, 1, cmd)
			c[1].Data = c[1].Data[:10]
			return c
		}, []any{nil, chunk.ErrIncomplete, chunk.ErrIncomplete}},
		{"malformed header", func() []*raft.Log {
			c := chunkEntries(1, 1, 1, cmd)
			c[1].Extensions = c[1].Extensions[:10]
			return c
		}, []any{nil, chunk.ErrIncomplete, chunk.ErrIncomplete}},
		{"abort with data", func() []*raft.Log {
			c := chunkEntries(1, 1, 1, cmd)
			return []*raft.Log{c[0], {Index: 9, Term: 1, Type: raft.LogCommand, Data: []byte("x"), Extensions: chunk.Header{Abort: true}.Encode()}}
		}, []any{nil, chunk.ErrIncomplete}},
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
		chunks := chunkEntries(1, 1, 1, command(2*chunk.Size+1, 5))
		tf.ApplyBatch(chunks[:1])
		if _, err := tf.Snapshot(); !errors.Is(err, chunk.ErrInProgress) {
			t.Fatalf("Snapshot while pending: %v, want chunk.ErrInProgress", err)
		}
		// raft passes the FSM's error on formatted with %v.
		if wrapped := fmt.Errorf("failed to start snapshot: %v", chunk.ErrInProgress); !chunk.IsInProgress(wrapped) || chunk.IsInProgress(errors.New("other")) {
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
		chunks := chunkEntries(1, 1, 1, command(2*chunk.Size+1, 6))
		tf.ApplyBatch(chunks[:2])
		if err := tf.Restore(io.NopCloser(strings.NewReader(""))); err != nil {
			t.Fatal(err)
		}
		if tf.chunks.Pending() || tf.chunks.PendingTerm() != 0 {
			t.Fatal("Restore kept the pending sequence")
		}
		if out := tf.ApplyBatch(chunks[2:]); out[0] != chunk.ErrIncomplete {
			t.Fatalf("final chunk after Restore: %v, want chunk.ErrIncomplete", out[0])
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
		chunkEntries(1, 1, 2, command(2*chunk.Size+1, 7))...)
	out := tf.ApplyBatch(logs)
	if rec.batches != 1 || len(rec.cmds) != 2 || fmt.Sprint(out) != fmt.Sprint([]any{"applied 1", nil, nil, "applied 4"}) {
		t.Fatalf("%d batches, %d commands, responses %v", rec.batches, len(rec.cmds), out)
	}
}

// casCommand is a compare-and-set command of key to a value of its own
// (absent before), exactly size bytes long: its FSM result is true the
// first time, false after.
func casCommand(key string, size int, seed byte) (cmd, value []byte) {
	overhead := len(fsmexample.CompareAndSet(key, nil, make([]byte, size))) - size
	value = command(size-overhead, seed)
	return fsmexample.CompareAndSet(key, nil, value), value
}

// chunksIn returns the chunk entries in n's log store in [from, to], and
// fails the test on any entry there longer than chunk.Size.
func chunksIn(t *testing.T, n *RaftNode, from, to uint64) []chunk.Header {
	t.Helper()
	var hs []chunk.Header
	for i := from; i <= to; i++ {
		var l raft.Log
		if err := n.stores.Log.GetLog(i, &l); err != nil {
			t.Fatalf("%s: log entry %d: %v", n.ID(), i, err)
		}
		if len(l.Data) > chunk.Size {
			t.Fatalf("%s: log entry %d holds %d bytes, more than a chunk", n.ID(), i, len(l.Data))
		}
		if chunk.Is(l.Extensions) {
			h, err := chunk.ParseHeader(l.Extensions)
			if err != nil {
				t.Fatalf("%s: log entry %d: %v", n.ID(), i, err)
			}
			hs = append(hs, h)
		}
	}
	return hs
}

// withMaxCommandSize raises MaxCommandSize, and gives raft the timeouts of
// TimingDefault: a node that writes and decodes MiBs under -race on a
// loaded 2-core machine can stall past fastRaft's 200 ms lease, and a
// lost lease turns a write's outcome unknown.
func withMaxCommandSize(size int) func(*Config) {
	return func(c *Config) {
		c.MaxCommandSize = size
		c.FSMErrors = fsmexample.Errors
		c.RaftConfig = func(rc *raft.Config) {
			fastRaft(rc)
			rc.HeartbeatTimeout, rc.ElectionTimeout, rc.LeaderLeaseTimeout = time.Second, time.Second, 500*time.Millisecond
		}
	}
}

func TestLargeCommandsAreChunkedAndAppliedWhole(t *testing.T) {
	c := newTCPCluster(t, 3, withMaxCommandSize(4<<20))
	l := c.leader()
	f := (l + 1) % 3
	leader := c.nodes[l]
	for _, size := range []int{300 << 10, 1 << 20, 4 << 20} {
		for _, via := range []int{l, f} {
			name := fmt.Sprintf("%dKiB via %s", size>>10, map[bool]string{true: "leader", false: "follower"}[via == l])
			key := "large-" + name
			cmd, value := casCommand(key, size, byte(size>>10)+byte(via))
			if len(cmd) != size {
				t.Fatalf("%s: command is %d bytes", name, len(cmd))
			}
			before := leader.raft.LastIndex()
			res, err := c.nodes[via].Apply(ctxTimeout(t, 20*time.Second), cmd)
			if err != nil || res != true {
				t.Fatalf("%s: Apply = %v, %v; want true", name, res, err)
			}
			after := leader.raft.LastIndex()
			hs := chunksIn(t, leader, before+1, after)
			if want := chunk.Count(size); len(hs) != want {
				t.Fatalf("%s: %d chunk entries in the leader's log, want %d", name, len(hs), want)
			}
			for i, h := range hs {
				if h.ID != hs[0].ID || h.Index != uint32(i) || h.Count != uint32(len(hs)) || h.Total != uint64(size) {
					t.Fatalf("%s: chunk %d has header %+v", name, i, h)
				}
			}
			// The same command again: applied again, with the FSM's other answer.
			if res, err := c.nodes[via].Apply(ctxTimeout(t, 20*time.Second), cmd); err != nil || res != false {
				t.Fatalf("%s: second Apply = %v, %v; want false", name, res, err)
			}
			waitFor(t, 20*time.Second, name+" on every node", func() bool {
				for _, s := range c.fsms {
					if v, ok := s.Get(key); !ok || !bytes.Equal(v, value) {
						return false
					}
				}
				return true
			})
			// Followers store the chunks as the leader does.
			if hs := chunksIn(t, c.nodes[f], before+1, after); len(hs) != chunk.Count(size) {
				t.Fatalf("%s: %d chunk entries in a follower's log, want %d", name, len(hs), chunk.Count(size))
			}
		}
	}
	// An FSM error travels back as for any command.
	bad := append([]byte{99}, command(300<<10, 9)...)
	if _, err := c.nodes[f].Apply(ctxTimeout(t, 20*time.Second), bad); !errors.Is(err, fsmexample.ErrBadCommand) {
		t.Fatalf("bad large command: %v, want ErrBadCommand", err)
	}
	// Followers apply the final chunk when they learn it is committed,
	// which may be after the leader answered.
	// (raft's applied index moves before the FSM has finished, hence the
	// wait after it.)
	c.waitApplied(leader.raft.LastIndex())
	waitFor(t, 20*time.Second, "no node holding a pending sequence", func() bool {
		for _, n := range c.nodes {
			if n.fsm.chunks.PendingTerm() != 0 {
				return false
			}
		}
		return true
	})
}

func TestConcurrentSmallAndLargeWritersAgree(t *testing.T) {
	c := newTCPCluster(t, 3)
	l := c.leader()
	const writers, writes = 6, 6
	want := map[string][]byte{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	errs := make(chan error, writers*writes)
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			n := c.nodes[(l+w)%3] // two writers each on the leader and on both followers
			for i := 0; i < writes; i++ {
				key := fmt.Sprintf("w%d-%d", w, i)
				size := 100
				if i%2 == 1 {
					size = (256 << 10) + (i*w*97)%(DefaultMaxCommandSize-(256<<10)-64) // more than one chunk, within the limit
				}
				value := command(size, byte(w*writes+i))
				if _, err := n.Apply(ctxTimeout(t, 30*time.Second), fsmexample.Set(key, value)); err != nil {
					errs <- fmt.Errorf("writer %d, write %d (%d bytes) on %s: %w", w, i, size, n.ID(), err)
					return
				}
				mu.Lock()
				want[key] = value
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if t.Failed() {
		return
	}
	c.waitApplied(c.nodes[l].raft.LastIndex())
	for i, s := range c.fsms {
		waitFor(t, 20*time.Second, fmt.Sprintf("node %d's FSM to hold every write", i), func() bool {
			got := s.All()
			if len(got) != len(want) {
				return false
			}
			for k, v := range want {
				if !bytes.Equal(got[k], v) {
					return false
				}
			}
			return true
		})
	}
}

func TestFollowerRestartAfterSnapshotKeepsLargeCommands(t *testing.T) {
	// Few trailing logs, so that the leader's snapshot compacts what the
	// stopped follower lacks and it must install the snapshot.
	c := newTCPCluster(t, 3, withMaxCommandSize(2<<20), func(cfg *Config) {
		cfg.RaftConfig = func(rc *raft.Config) { fastRaft(rc); rc.TrailingLogs = 4 }
	})
	l := c.leader()
	f := (l + 1) % 3
	write := func(key string, size int) {
		t.Helper()
		if _, err := c.nodes[c.leader()].Apply(ctxTimeout(t, 20*time.Second), fsmexample.Set(key, command(size, byte(len(key))))); err != nil {
			t.Fatalf("write %s: %v", key, err)
		}
	}
	for i := 0; i < 4; i++ {
		write(fmt.Sprintf("before-%d", i), 1<<20+i)
		write(fmt.Sprintf("small-before-%d", i), 10)
	}
	c.waitApplied(c.nodes[l].raft.LastIndex())
	if err := c.nodes[f].Snapshot(ctxTimeout(t, 20*time.Second)); err != nil {
		t.Fatalf("follower snapshot: %v", err)
	}
	c.stop(f)
	for i := 0; i < 3; i++ {
		write(fmt.Sprintf("while-down-%d", i), 700<<10+i)
	}
	if err := c.nodes[c.leader()].Snapshot(ctxTimeout(t, 20*time.Second)); err != nil {
		t.Fatalf("leader snapshot: %v", err)
	}
	c.start(f)
	write("after", 600<<10)
	lead := c.fsms[c.leader()]
	waitFor(t, 30*time.Second, "the restarted follower to hold the leader's state", func() bool {
		got, want := c.fsms[f].All(), lead.All()
		if len(got) != len(want) || len(want) != 4+4+3+1 {
			return false
		}
		for k, v := range want {
			if !bytes.Equal(got[k], v) {
				return false
			}
		}
		return true
	})
}

// submitChunk submits one chunk of a command (or an abort entry) on the
// leader n directly, as submitChunked does, and waits for it.
func submitChunk(t *testing.T, n *RaftNode, h chunk.Header, cmd []byte) raft.ApplyFuture {
	t.Helper()
	var part []byte
	if !h.Abort {
		part = cmd[int(h.Index)*chunk.Size : min(len(cmd), int(h.Index+1)*chunk.Size)]
	}
	n.submitMu.Lock()
	fut := n.raft.ApplyLog(raft.Log{Data: part, Extensions: h.Encode()}, 10*time.Second)
	n.submitMu.Unlock()
	if err := fut.Error(); err != nil {
		t.Fatalf("submit chunk %+v: %v", h, err)
	}
	return fut
}

func waitPending(t *testing.T, c *testCluster, pending bool) {
	t.Helper()
	waitFor(t, 15*time.Second, fmt.Sprintf("every FSM to hold a pending sequence: %v", pending), func() bool {
		for _, n := range c.nodes {
			if (n.fsm.chunks.PendingTerm() != 0) != pending {
				return false
			}
		}
		return true
	})
}

func TestSnapshotWaitsForChunkedCommand(t *testing.T) {
	c := newTCPCluster(t, 3)
	l := c.leader()
	leader, follower := c.nodes[l], c.nodes[(l+1)%3]
	cmd, value := casCommand("k", chunk.Size+100, 1)
	h := chunk.Header{ID: 77, Count: 2, Total: uint64(len(cmd))}
	submitChunk(t, leader, h, cmd)
	waitPending(t, c, true)

	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if err := follower.Snapshot(ctx); !errors.Is(err, context.DeadlineExceeded) || !chunk.IsInProgress(err) {
		t.Fatalf("Snapshot while a chunked command is half applied: %v; want it deferred until ctx ends", err)
	}
	snapDone := make(chan error, 1)
	go func() { snapDone <- follower.Snapshot(ctxTimeout(t, 20*time.Second)) }()
	var backup bytes.Buffer
	backupDone := make(chan error, 1)
	go func() { backupDone <- leader.Backup(ctxTimeout(t, 20*time.Second), &backup) }()

	h.Index = 1
	if res := submitChunk(t, leader, h, cmd).Response(); res != true {
		t.Fatalf("final chunk's response %v, want the FSM's true", res)
	}
	if err := <-snapDone; err != nil {
		t.Fatalf("Snapshot once the command completed: %v", err)
	}
	if err := <-backupDone; err != nil {
		t.Fatalf("Backup once the command completed: %v", err)
	}
	if info, err := ReadBackupInfo(bytes.NewReader(backup.Bytes())); err != nil {
		t.Fatalf("backup: %+v, %v", info, err)
	}
	waitPending(t, c, false)
	for i, s := range c.fsms {
		if v, _ := s.Get("k"); !bytes.Equal(v, value) {
			t.Fatalf("node %d's FSM lacks the command", i)
		}
	}
}

func TestNewLeaderAbortsAbandonedChunkedCommand(t *testing.T) {
	c := newTCPCluster(t, 3)
	l := c.leader()
	cmd, _ := casCommand("abandoned", 3*chunk.Size, 2)
	h := chunk.Header{ID: 5, Count: 3, Total: uint64(len(cmd))}
	submitChunk(t, c.nodes[l], h, cmd)
	h.Index = 1
	submitChunk(t, c.nodes[l], h, cmd)
	waitPending(t, c, true)
	// The leader dies between chunks, as far as the log can tell: another
	// node leads, and no one ever sends the last chunk.
	target := c.nodes[(l+1)%3]
	if err := c.nodes[l].TransferLeadership(ctxTimeout(t, 10*time.Second), target.ID()); err != nil {
		t.Fatal(err)
	}
	waitPending(t, c, false)
	for i, n := range c.nodes {
		if err := n.Snapshot(ctxTimeout(t, 10*time.Second)); err != nil {
			t.Fatalf("node %d: Snapshot after the abort: %v", i, err)
		}
	}
	if _, ok := c.fsms[l].Get("abandoned"); ok {
		t.Fatal("the abandoned command was applied")
	}
	// The old leader's last chunk, were it to arrive now, completes nothing.
	nl := c.leader()
	h.Index = 2
	if res := submitChunk(t, c.nodes[nl], h, cmd).Response(); res != chunk.ErrIncomplete {
		t.Fatalf("late final chunk's response %v, want chunk.ErrIncomplete", res)
	}
}

// fakeFuture is a resolved raft.ApplyFuture.
type fakeFuture struct {
	err error
	res any
}

func (f fakeFuture) Error() error  { return f.err }
func (f fakeFuture) Response() any { return f.res }
func (f fakeFuture) Index() uint64 { return 1 }

func TestChunkedFutureOutcome(t *testing.T) {
	fsmErr := errors.New("the FSM's own")
	for _, tc := range []struct {
		in      fakeFuture
		err     error
		res     any
		class   Outcome
		retried bool
	}{
		{fakeFuture{res: "ok"}, nil, "ok", Applied, false},
		{fakeFuture{res: fsmErr}, nil, fsmErr, Applied, false},
		{fakeFuture{res: chunk.ErrIncomplete}, chunk.ErrIncomplete, nil, NotApplied, true},
		{fakeFuture{err: raft.ErrLeadershipLost}, raft.ErrLeadershipLost, nil, Unknown, false},
	} {
		f := chunkedFuture{ApplyFuture: tc.in}
		if f.Error() != tc.err || f.Response() != tc.res {
			t.Errorf("%+v: Error %v, Response %v; want %v, %v", tc.in, f.Error(), f.Response(), tc.err, tc.res)
		}
		if tc.err == nil {
			continue
		}
		err := classifyRaft("apply", f.Error(), func() error { return &NotLeaderError{} })
		if Classify(err) != tc.class || retryable(err) != tc.retried {
			t.Errorf("%+v: %v has class %v, retryable %v; want %v, %v", tc.in, err, Classify(err), retryable(err), tc.class, tc.retried)
		}
	}
}

func TestRecoveryAppliesChunkedCommandsByTheSameRule(t *testing.T) {
	c := newTCPCluster(t, 3, withMaxCommandSize(2<<20))
	l := c.leader()
	leader := c.nodes[l]
	whole, wholeValue := casCommand("whole", 600<<10, 1)
	if res, err := leader.Apply(ctxTimeout(t, 10*time.Second), whole); err != nil || res != true {
		t.Fatalf("Apply = %v, %v", res, err)
	}
	// A membership change between two chunks: not applied.
	cut, _ := casCommand("cut", 2*chunk.Size, 2)
	h := chunk.Header{ID: 1, Count: 2, Total: uint64(len(cut))}
	submitChunk(t, leader, h, cut)
	if err := leader.raft.AddNonvoter("ghost", raft.ServerAddress(unusedAddr(t)), 0, 10*time.Second).Error(); err != nil {
		t.Fatal(err)
	}
	h.Index = 1
	if res := submitChunk(t, leader, h, cut).Response(); res != chunk.ErrIncomplete {
		t.Fatalf("final chunk after a configuration entry: %v, want chunk.ErrIncomplete", res)
	}
	// A command whose last chunk never came.
	left, _ := casCommand("left", 2*chunk.Size, 3)
	submitChunk(t, leader, chunk.Header{ID: 2, Count: 2, Total: uint64(len(left))}, left)
	c.waitApplied(leader.raft.LastIndex())
	for i := range c.nodes {
		c.stop(i)
	}
	if err := WriteRecovery(c.dirs[0], []ServerInfo{{ID: c.nodes[0].ID(), Addr: c.addrs[0], Voter: true}}); err != nil {
		t.Fatal(err)
	}
	c.start(0)
	waitFor(t, 15*time.Second, "the survivor to lead", c.nodes[0].IsLeader)
	if err := c.nodes[0].LinearizableRead(ctxTimeout(t, 10*time.Second)); err != nil {
		t.Fatal(err)
	}
	got := c.fsms[0].All()
	if len(got) != 1 || !bytes.Equal(got["whole"], wholeValue) {
		keys := make([]string, 0, len(got))
		for k := range got {
			keys = append(keys, k)
		}
		t.Fatalf("recovered state holds %q, want only the whole command", keys)
	}
	if err := c.nodes[0].Snapshot(ctxTimeout(t, 10*time.Second)); err != nil {
		t.Fatalf("Snapshot after recovery: %v", err)
	}
}

func TestChunkedCommandsSurviveRestartOnRaftWAL(t *testing.T) {
	c := newTCPCluster(t, 3, withLogStore(LogStoreWAL))
	l := c.leader()
	f := (l + 1) % 3
	var values [][]byte
	for i := 0; i < 3; i++ {
		cmd, value := casCommand(fmt.Sprintf("k%d", i), 700<<10, byte(i))
		if res, err := c.nodes[f].Apply(ctxTimeout(t, 10*time.Second), cmd); err != nil || res != true {
			t.Fatalf("Apply %d = %v, %v", i, res, err)
		}
		values = append(values, value)
	}
	c.waitApplied(c.nodes[l].raft.LastIndex())
	// The follower's FSM is rebuilt from its raft-wal log alone.
	c.stop(f)
	c.start(f)
	waitFor(t, 15*time.Second, "the restarted follower to replay its log", func() bool {
		for i, v := range values {
			if got, _ := c.fsms[f].Get(fmt.Sprintf("k%d", i)); !bytes.Equal(got, v) {
				return false
			}
		}
		return true
	})
	if hs := chunksIn(t, c.nodes[f], 1, c.nodes[f].raft.LastIndex()); len(hs) != 3*chunk.Count(700<<10) {
		t.Fatalf("%d chunk entries in the follower's raft-wal log, want %d", len(hs), 3*chunk.Count(700<<10))
	}
}

// Membership changes may land between a large command's chunks; Apply then
// submits the command again, and every command is applied exactly once: a
// compare-and-set of a new key answers true only the first time.
func TestLargeCommandsAppliedOnceWhileMembershipChanges(t *testing.T) {
	// Without BatchApplyCh raft's leader loop takes one chunk per turn, so
	// that a membership change often comes between two of them.
	c := newTCPCluster(t, 3, func(cfg *Config) {
		cfg.RaftConfig = func(rc *raft.Config) { fastRaft(rc); rc.BatchApplyCh = false }
	})
	l := c.leader()
	leader := c.nodes[l]
	first := leader.raft.LastIndex()
	stop := make(chan struct{})
	changes := make(chan int, 1)
	go func() {
		n := 0
		defer func() { changes <- n }()
		ghost := raft.ServerAddress(unusedAddr(t))
		for {
			select {
			case <-stop:
				return
			default:
			}
			if leader.raft.AddNonvoter("ghost", ghost, 0, time.Second).Error() == nil {
				n++
			}
			if leader.raft.RemoveServer("ghost", 0, time.Second).Error() == nil {
				n++
			}
		}
	}()
	// A command applied twice answers false (its compare-and-set finds the
	// key set). On a loaded machine the leader may lose its lease under
	// this churn: such a command's outcome is unknown, which says nothing
	// either way, so it is counted, not failed, up to a bound.
	unknown := 0
	for i := 0; i < 20; i++ {
		cmd, _ := casCommand(fmt.Sprintf("k%d", i), 1<<20-i, byte(i))
		res, err := c.nodes[(l+i)%3].Apply(ctxTimeout(t, 20*time.Second), cmd)
		if errors.Is(err, ErrUnknownOutcome) && unknown < 5 {
			unknown++
			t.Logf("command %d: %v", i, err)
			continue
		}
		if err != nil || res != true {
			close(stop)
			t.Fatalf("command %d: Apply = %v, %v; want true (applied once)", i, res, err)
		}
	}
	close(stop)
	t.Logf("%d membership changes; %d sequences cut by one", <-changes, cutSequences(t, leader, first+1, leader.raft.LastIndex()))
	c.waitApplied(leader.raft.LastIndex())
	for i, s := range c.fsms {
		if s.Len() != 20 {
			t.Fatalf("node %d holds %d keys, want 20", i, s.Len())
		}
	}
}

// cutSequences counts chunk sequences in n's log in [from, to] that an
// entry of another kind interrupted.
func cutSequences(t *testing.T, n *RaftNode, from, to uint64) int {
	cut, open := 0, false
	for i := from; i <= to; i++ {
		var l raft.Log
		if err := n.stores.Log.GetLog(i, &l); err != nil {
			t.Fatalf("log entry %d: %v", i, err)
		}
		switch h, err := chunk.ParseHeader(l.Extensions); {
		case err == nil && !h.Abort:
			open = h.Index+1 < h.Count
		case l.Type == raft.LogConfiguration || l.Type == raft.LogCommand:
			if open {
				cut++
			}
			open = false
		}
	}
	return cut
}

func TestLeaderAbortsItsOwnCutChunkedCommand(t *testing.T) {
	c := newTCPCluster(t, 3)
	l := c.leader()
	cmd, _ := casCommand("cut", 3*chunk.Size, 4)
	// A submission that stopped after its first chunk, in the leader's
	// own term: no later leader will abort it.
	submitChunk(t, c.nodes[l], chunk.Header{ID: 9, Count: 3, Total: uint64(len(cmd))}, cmd)
	waitPending(t, c, true)
	c.nodes[l].noteChunkCut()
	waitPending(t, c, false)
	for i, n := range c.nodes {
		if err := n.Snapshot(ctxTimeout(t, 10*time.Second)); err != nil {
			t.Fatalf("node %d: Snapshot after the abort: %v", i, err)
		}
	}
}

func TestLargeCommandOnInMemoryCluster(t *testing.T) {
	nodes, fsms := newMemCluster(t, NewMemNetwork(), 3)
	l := memLeader(t, nodes)
	value := command(DefaultMaxCommandSize-100, 8)
	if _, err := nodes[(l+1)%3].Apply(ctxTimeout(t, 10*time.Second), fsmexample.Set("k", value)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "every node to hold the command", func() bool {
		for _, s := range fsms {
			if v, _ := s.Get("k"); !bytes.Equal(v, value) {
				return false
			}
		}
		return true
	})
}

// FuzzChunkEntry feeds arbitrary headers and data to the FSM's chunk rule:
// it must never panic, and only well-formed chunks may reach the FSM.
func FuzzChunkEntry(f *testing.F) {
	f.Add(chunk.Header{ID: 1, Count: 2, Total: chunk.Size + 1}.Encode(), 0)
	f.Add(chunk.Header{ID: 1, Index: 1, Count: 2, Total: chunk.Size + 1}.Encode(), 1)
	f.Add(chunk.Header{Abort: true}.Encode(), 0)
	f.Add([]byte("rkc1"), 3)
	f.Fuzz(func(t *testing.T, ext []byte, size int) {
		size = max(0, size) % (chunk.Size + 2)
		rec := &recordingFSM{}
		tf := newTrackedFSM(rec)
		first := chunkEntries(1, 1, 1, command(chunk.Size+1, 1))[0]
		l := &raft.Log{Index: 2, Term: 1, Type: raft.LogCommand, Data: make([]byte, size), Extensions: ext}
		tf.ApplyBatch([]*raft.Log{first, l})
		h, err := chunk.ParseHeader(ext)
		if err != nil && chunk.Is(ext) && len(rec.cmds) != 0 {
			t.Fatalf("malformed header %x reached the FSM", ext)
		}
		if len(rec.cmds) == 1 && chunk.Is(ext) && (h.Total != uint64(len(rec.cmds[0].Data))) {
			t.Fatalf("FSM got %d bytes for a command of %d", len(rec.cmds[0].Data), h.Total)
		}
	})
}

// A leader chunks a command only while every peer says it reads chunks: a
// node from before chunking would apply each chunk as a command of its
// own. With peers that do not, a large command enters the log whole and
// every node applies it.
func TestLargeCommandsEnterTheLogWholeUnlessEveryPeerReadsChunks(t *testing.T) {
	// The first two nodes say they do not read chunks.
	withoutChunks := func(p peer.Profile) peer.Profile {
		p.Features = slices.DeleteFunc(slices.Clone(p.Features), func(f string) bool { return f == peer.FeatureChunks })
		return p
	}
	c := newTCPClusterHooks(t, 3, func(i int) *nodeHooks {
		if i < 2 {
			return &nodeHooks{profile: withoutChunks}
		}
		return nil
	}, withMaxCommandSize(2<<20))
	l := c.leader()
	leader := c.nodes[l]
	for _, via := range []int{l, (l + 1) % 3} {
		const size = 1 << 20
		key := fmt.Sprintf("whole-via-%d", via)
		cmd, value := casCommand(key, size, byte(via))
		before := leader.raft.LastIndex()
		if res, err := c.nodes[via].Apply(ctxTimeout(t, 20*time.Second), cmd); err != nil || res != true {
			t.Fatalf("Apply of %d bytes via node %d = %v, %v; want true", size, via, res, err)
		}
		commands := 0
		for i := before + 1; i <= leader.raft.LastIndex(); i++ {
			var e raft.Log
			if err := leader.stores.Log.GetLog(i, &e); err != nil {
				t.Fatal(err)
			}
			if e.Type != raft.LogCommand {
				continue
			}
			commands++
			if chunk.Is(e.Extensions) || len(e.Data) != size {
				t.Fatalf("entry %d: %d bytes, chunk header %v; want the whole %d-byte command", i, len(e.Data), chunk.Is(e.Extensions), size)
			}
		}
		if commands != 1 {
			t.Fatalf("%d command entries for one command", commands)
		}
		for i, fsm := range c.fsms {
			waitFor(t, 10*time.Second, fmt.Sprintf("node %d to apply %s", i, key), func() bool {
				v, ok := fsm.Get(key)
				return ok && bytes.Equal(v, value)
			})
		}
	}
}

// With BatchApplyCh, raft's leader loop takes whatever waits in its
// channel: a leader that submitted all of a command's chunks at once saw
// them written in one batch and only then sent. With raft-wal it submits
// them a group at a time, each once the one before is stored; with BoltDB
// it does not (no gain there).
func TestLeaderSubmitsLargeCommandAGroupAtATimeOnRaftWAL(t *testing.T) {
	c := newTCPCluster(t, 3, withMaxCommandSize(4<<20), withLogStore(LogStoreWAL))
	leader := c.nodes[c.leader()]
	if !leader.batchApplyCh || leader.storedChunks == nil {
		t.Fatalf("raft-wal defaults: BatchApplyCh %v, store notices %v", leader.batchApplyCh, leader.storedChunks != nil)
	}
	cmd, value := casCommand("grouped", 4<<20, 1)
	before := leader.storedChunks.Batches()
	if res, err := leader.Apply(ctxTimeout(t, 20*time.Second), cmd); err != nil || res != true {
		t.Fatalf("Apply = %v, %v; want true", res, err)
	}
	groups := uint64(chunk.Count(len(cmd)) / chunk.Group)
	if got := leader.storedChunks.Batches() - before; got < groups {
		t.Fatalf("the leader stored the command's %d chunks in %d batches, want at least %d (one per group)", chunk.Count(len(cmd)), got, groups)
	}
	waitFor(t, 20*time.Second, "the command on every node", func() bool {
		for _, s := range c.fsms {
			if v, ok := s.Get("grouped"); !ok || !bytes.Equal(v, value) {
				return false
			}
		}
		return true
	})
	bolt := newTCPCluster(t, 3, withMaxCommandSize(4<<20))
	if n := bolt.nodes[bolt.leader()]; n.storedChunks != nil {
		t.Fatal("a BoltDB node feeds chunks a group at a time")
	}
}
