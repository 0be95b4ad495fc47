package raftkit

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/go-msgpack/v2/codec"
	"github.com/hashicorp/raft"

	fsmexample "github.com/raftkit/raftkit/fsm_example"
	"github.com/raftkit/raftkit/internal/chunk"
)

// Benchmarks of the hot paths on a three-node in-memory cluster (no disk,
// no TCP), so that they measure raftkit's own cost and run in seconds:
//
//	go test -run '^$' -bench . -benchtime 2s
//
// The side-by-side comparison with a hand-wired hashicorp/raft cluster
// over TCP and BoltDB is tools/cmd/raftkit-bench.

// benchCluster starts three in-memory nodes and returns them with the
// leader's index.
func benchCluster(b *testing.B) ([]*RaftNode, int) {
	b.Helper()
	nodes, _ := newMemCluster(b, NewMemNetwork(), 3)
	l := memLeader(b, nodes)
	// Let followers learn the leader before forwarding to it.
	waitFor(b, 10*time.Second, "followers to know the leader", func() bool {
		for _, n := range nodes {
			if n.GetLeaderAddr() == "" {
				return false
			}
		}
		return true
	})
	return nodes, l
}

// runApply runs b.N writes from about clients goroutines, each writing
// through the node pick gives it.
func runApply(b *testing.B, clients int, pick func(worker int) *RaftNode) {
	b.Helper()
	var worker atomic.Int64
	val := make([]byte, 100)
	b.SetParallelism(max(1, clients/max(1, testingProcs())))
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		w := int(worker.Add(1))
		n := pick(w)
		for i := 0; pb.Next(); i++ {
			if _, err := n.Apply(context.Background(), fsmexample.Set(fmt.Sprintf("w%d-%d", w, i%256), val)); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

func testingProcs() int { return runtime.GOMAXPROCS(0) }

func BenchmarkApplyLeader(b *testing.B) {
	for _, clients := range []int{1, 64} {
		b.Run(fmt.Sprintf("clients=%d", clients), func(b *testing.B) {
			nodes, l := benchCluster(b)
			runApply(b, clients, func(int) *RaftNode { return nodes[l] })
		})
	}
}

// BenchmarkApplyRaftDirect is BenchmarkApplyLeader's load through
// hashicorp/raft's own Apply on the same kind of cluster: the floor that
// raftkit's leader path adds its cost to.
func BenchmarkApplyRaftDirect(b *testing.B) {
	for _, clients := range []int{1, 64} {
		b.Run(fmt.Sprintf("clients=%d", clients), func(b *testing.B) {
			nodes, l := benchCluster(b)
			r := nodes[l].raft
			var worker atomic.Int64
			val := make([]byte, 100)
			b.SetParallelism(max(1, clients/max(1, testingProcs())))
			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				w := int(worker.Add(1))
				for i := 0; pb.Next(); i++ {
					f := r.Apply(fsmexample.Set(fmt.Sprintf("w%d-%d", w, i%256), val), 0)
					if err := f.Error(); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}

func BenchmarkApplyForwarded(b *testing.B) {
	for _, clients := range []int{1, 64} {
		b.Run(fmt.Sprintf("clients=%d", clients), func(b *testing.B) {
			nodes, l := benchCluster(b)
			runApply(b, clients, func(w int) *RaftNode { return nodes[(l+1+w%2)%3] })
		})
	}
}

func BenchmarkLinearizableRead(b *testing.B) {
	for _, where := range []string{"leader", "follower"} {
		b.Run(where, func(b *testing.B) {
			nodes, l := benchCluster(b)
			n := nodes[l]
			if where == "follower" {
				n = nodes[(l+1)%3]
			}
			b.SetParallelism(max(1, 64/testingProcs()))
			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if err := n.LinearizableRead(context.Background()); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}

// BenchmarkDecodeAppendEntries decodes an AppendEntries request carrying
// one entry of each size the way a follower's raft.NetworkTransport does
// (a 256 KiB bufio.Reader and a zero msgpack handle, as handleConn builds
// them), and with the handle's MaxInitLen raised, which raft does not
// expose. go-msgpack grows a []byte longer than MaxInitLen (256 KiB when
// unset) one 256 KiB step at a time, copying what it has read at each
// step: B/op grows with the square of the entry's size. "chunked" is the
// same command as raftkit submits it, in entries of at most chunk.Size
// bytes (all in one request), decoded by raft's zero handle: linear.
func BenchmarkDecodeAppendEntries(b *testing.B) {
	for _, size := range []int{64 << 10, 1 << 20, 4 << 20, 16 << 20} {
		whole := raft.AppendEntriesRequest{Term: 2, Entries: []*raft.Log{{Index: 1, Term: 2, Type: raft.LogCommand, Data: make([]byte, size)}}}
		chunked := raft.AppendEntriesRequest{Term: 2, Entries: chunkEntries(1, 2, 1, make([]byte, size))}
		for _, h := range []struct {
			name       string
			req        *raft.AppendEntriesRequest
			maxInitLen int
		}{{"raft", &whole, 0}, {"maxinitlen", &whole, 64 << 20}, {"chunked", &chunked, 0}} {
			if h.name == "chunked" && size <= chunk.Size {
				continue // one entry, as "raft"
			}
			var buf bytes.Buffer
			if err := codec.NewEncoder(&buf, &codec.MsgpackHandle{}).Encode(h.req); err != nil {
				b.Fatal(err)
			}
			b.Run(fmt.Sprintf("%dKiB/%s", size>>10, h.name), func(b *testing.B) {
				b.ReportAllocs()
				b.SetBytes(int64(size))
				for i := 0; i < b.N; i++ {
					var got raft.AppendEntriesRequest
					mh := &codec.MsgpackHandle{}
					mh.MaxInitLen = h.maxInitLen
					dec := codec.NewDecoder(bufio.NewReaderSize(bytes.NewReader(buf.Bytes()), 256<<10), mh)
					if err := dec.Decode(&got); err != nil || len(got.Entries) != len(h.req.Entries) {
						b.Fatalf("decode: %v", err)
					}
				}
			})
		}
	}
}

// BenchmarkApplyLeaderWithDeadline is BenchmarkApplyLeader/clients=64 with
// a caller's context that has its own deadline, as most callers' have.
func BenchmarkApplyLeaderWithDeadline(b *testing.B) {
	nodes, l := benchCluster(b)
	n := nodes[l]
	ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
	defer cancel()
	var worker atomic.Int64
	val := make([]byte, 100)
	b.SetParallelism(max(1, 64/max(1, testingProcs())))
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		w := int(worker.Add(1))
		for i := 0; pb.Next(); i++ {
			if _, err := n.Apply(ctx, fsmexample.Set(fmt.Sprintf("w%d-%d", w, i%256), val)); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkCommandCopy puts the copy that Apply makes of every command
// (own: the caller may reuse its buffer once Apply returns) beside a
// whole Apply of a command of the same size on an in-memory leader, one
// caller at a time: the copy's share of a write.
func BenchmarkCommandCopy(b *testing.B) {
	for _, size := range []int{64, 4 << 10, 1 << 20} {
		name := fmt.Sprintf("%dB", size)
		if size >= 1<<10 {
			name = fmt.Sprintf("%dKiB", size>>10)
		}
		cmd := fsmexample.Set("k", make([]byte, size-8))
		b.Run(name+"/copy", func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(cmd)))
			for i := 0; i < b.N; i++ {
				if c := own(cmd); len(c) != len(cmd) {
					b.Fatal("short copy")
				}
			}
		})
		b.Run(name+"/apply", func(b *testing.B) {
			nodes, l := benchCluster(b)
			b.ReportAllocs()
			b.SetBytes(int64(len(cmd)))
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if _, err := nodes[l].Apply(context.Background(), cmd); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
