package raftkit

import (
	"bufio"
	"bytes"
	"fmt"
	"testing"

	"github.com/hashicorp/go-msgpack/v2/codec"
	"github.com/hashicorp/raft"
)

// BenchmarkDecodeAppendEntries measures what one command of a given size
// costs a follower before raft can use it: hashicorp/raft's NetworkTransport
// decoding the AppendEntries request that carries it, from a buffered
// stream, exactly as net_transport.go does. MaxCommandSize's documented
// cost comes from this benchmark:
//
//	go test -run '^$' -bench DecodeAppendEntries -benchtime 5x .
func BenchmarkDecodeAppendEntries(b *testing.B) {
	for _, size := range []int{64 << 10, 1 << 20, 4 << 20, 8 << 20, 16 << 20, 64 << 20} {
		b.Run(fmt.Sprintf("%dKiB", size>>10), func(b *testing.B) {
			req := raft.AppendEntriesRequest{
				RPCHeader: raft.RPCHeader{ProtocolVersion: raft.ProtocolVersionMax, ID: []byte("n1"), Addr: []byte("127.0.0.1:7001")},
				Term:      3,
				Entries:   []*raft.Log{{Index: 10, Term: 3, Type: raft.LogCommand, Data: bytes.Repeat([]byte{0xa5}, size)}},
			}
			var enc bytes.Buffer
			if err := codec.NewEncoder(&enc, &codec.MsgpackHandle{}).Encode(&req); err != nil {
				b.Fatal(err)
			}
			b.SetBytes(int64(size))
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				r := bufio.NewReaderSize(bytes.NewReader(enc.Bytes()), 256<<10)
				var got raft.AppendEntriesRequest
				if err := codec.NewDecoder(r, &codec.MsgpackHandle{}).Decode(&got); err != nil {
					b.Fatal(err)
				}
				if len(got.Entries) != 1 || len(got.Entries[0].Data) != size {
					b.Fatalf("decoded %d entries", len(got.Entries))
				}
			}
		})
	}
}
