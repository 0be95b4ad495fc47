package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/binary"
	"fmt"
	"io"
	"math"
	"net"
	"net/rpc"
	"sync"
	"time"

	"github.com/hashicorp/go-msgpack/v2/codec"
	"github.com/hashicorp/raft"

	"github.com/raftkit/raftkit/internal/peer"
)

// The tag bytes that start every connection to a raftkit node's port.
const (
	tagRaft byte = 0x52
	tagRPC  byte = 0x4b
)

// raft's NetworkTransport RPC type bytes.
const (
	rpcAppendEntries  = 0
	rpcRequestVote    = 1
	rpcRequestPreVote = 4
)

// attack is one row of the table. run attacks the cluster until
// ctx ends and then lets go of everything it holds.
type attack struct {
	name string
	// plain and mtls say on which clusters the attack runs.
	plain, mtls bool
	run         func(ctx context.Context, c *cluster, target int, scale float64)
}

func attacks() []attack {
	return []attack{
		{"term-overflow", true, true, termOverflow},
		{"claim-64MiB", true, true, func(ctx context.Context, c *cluster, t int, s float64) {
			var first [5]byte
			first[0] = tagRPC
			binary.BigEndian.PutUint32(first[1:], 64<<20-1)
			flood(ctx, c.nodes[t].raft, 4, scaled(8, s), first[:], 0)
		}},
		{"frames-64MiB", true, true, func(ctx context.Context, c *cluster, t int, s float64) {
			var first [5]byte
			first[0] = tagRPC
			binary.BigEndian.PutUint32(first[1:], 64<<20-1)
			flood(ctx, c.nodes[t].raft, 2, scaled(4, s), first[:], 64<<20-1)
		}},
		{"raft-tag-silent", true, true, func(ctx context.Context, c *cluster, t int, s float64) {
			flood(ctx, c.nodes[t].raft, 16, scaled(256, s), []byte{tagRaft}, 0)
		}},
		{"silent", true, false, func(ctx context.Context, c *cluster, t int, s float64) {
			flood(ctx, c.nodes[t].raft, 16, scaled(120, s), nil, 0)
		}},
		{"tls-stall", false, true, func(ctx context.Context, c *cluster, t int, s float64) {
			// A TLS handshake record header announcing 512 bytes, then 10 of them.
			first := append([]byte{0x16, 0x03, 0x01, 0x02, 0x00}, make([]byte, 10)...)
			flood(ctx, c.nodes[t].raft, 16, scaled(120, s), first, 0)
		}},
		{"large-commands", true, true, largeCommands},
		{"slow-http-bodies", true, false, slowBodies},
	}
}

// slowBodies opens 500 HTTP connections from 16 addresses to the leader's
// kvserver, each starting a PUT that announces a 1 MB body and then sends
// 1 KiB of it a second.
func slowBodies(ctx context.Context, c *cluster, target int, s float64) {
	addr := c.nodes[target].http
	var wg sync.WaitGroup
	for i := 0; i < scaled(500, s); i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(2+i%16))}, Timeout: time.Second}
			conn, err := d.DialContext(ctx, "tcp", addr)
			if err != nil {
				return
			}
			stop := context.AfterFunc(ctx, func() { conn.Close() })
			defer stop()
			defer conn.Close()
			fmt.Fprintf(conn, "PUT /kv/slow-%d HTTP/1.1\r\nHost: kv\r\nContent-Length: 1000000\r\n\r\n", i)
			chunk := make([]byte, 1024)
			for ctx.Err() == nil {
				if _, err := conn.Write(chunk); err != nil {
					return
				}
				select {
				case <-ctx.Done():
				case <-time.After(time.Second):
				}
			}
		}()
	}
	wg.Wait()
}

func scaled(n int, s float64) int { return max(1, int(math.Round(float64(n)*s))) }

// redial makes flood open again, after a second, each connection the node
// closed: a churn of new connections instead of a fixed set.
var redial = false

// flood opens perHost connections from each of hosts loopback addresses
// (127.0.0.2 and up) to addr and holds them until ctx ends. Each sends
// first, then body bytes of zeros, then nothing.
func flood(ctx context.Context, addr string, hosts, perHost int, first []byte, body int) {
	var wg sync.WaitGroup
	for h := 0; h < hosts; h++ {
		src := &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(2+h))}
		for i := 0; i < perHost; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				d := net.Dialer{LocalAddr: src, Timeout: time.Second}
				for ctx.Err() == nil {
					conn, err := d.DialContext(ctx, "tcp", addr)
					if err == nil {
						holdOpen(ctx, conn, first, body)
					}
					if !redial {
						<-ctx.Done()
						return
					}
					select {
					case <-ctx.Done():
					case <-time.After(time.Second):
					}
				}
			}()
		}
	}
	wg.Wait()
}

// holdOpen writes first and body on conn and waits until the node closes
// it or ctx ends.
func holdOpen(ctx context.Context, conn net.Conn, first []byte, body int) {
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	defer conn.Close()
	if len(first) > 0 {
		if _, err := conn.Write(first); err != nil {
			return
		}
	}
	chunk := make([]byte, 64<<10)
	for body > 0 {
		n, err := conn.Write(chunk[:min(body, len(chunk))])
		if err != nil {
			return
		}
		body -= n
	}
	io.Copy(io.Discard, conn)
}

// termOverflow sends every node requests with term 2^64-1 (a RequestVote
// flagged as a leadership transfer, a pre-vote and a heartbeat), over and
// over until ctx ends.
func termOverflow(ctx context.Context, c *cluster, _ int, _ float64) {
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}, Timeout: time.Second}
	hdr := raft.RPCHeader{ProtocolVersion: raft.ProtocolVersionMax, Addr: []byte("127.0.0.2:7000")}
	reqs := []struct {
		typ byte
		req any
	}{
		{rpcRequestVote, &raft.RequestVoteRequest{RPCHeader: hdr, Term: math.MaxUint64, LastLogTerm: math.MaxUint64, LastLogIndex: math.MaxUint64, LeadershipTransfer: true}},
		{rpcRequestPreVote, &raft.RequestPreVoteRequest{RPCHeader: hdr, Term: math.MaxUint64, LastLogTerm: math.MaxUint64, LastLogIndex: math.MaxUint64}},
		{rpcAppendEntries, &raft.AppendEntriesRequest{RPCHeader: hdr, Term: math.MaxUint64}},
	}
	for ctx.Err() == nil {
		for _, n := range c.nodes {
			for _, r := range reqs {
				conn, err := d.DialContext(ctx, "tcp", n.raft)
				if err != nil {
					continue
				}
				conn.SetDeadline(time.Now().Add(2 * time.Second))
				w := bufio.NewWriter(conn)
				w.WriteByte(tagRaft)
				w.WriteByte(r.typ)
				codec.NewEncoder(w, &codec.MsgpackHandle{}).Encode(r.req)
				w.Flush()
				var answer string
				codec.NewDecoder(bufio.NewReader(conn), &codec.MsgpackHandle{}).Decode(&answer)
				conn.Close()
			}
		}
		select {
		case <-ctx.Done():
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// largeCommands writes five values of the largest size kvserver accepts at
// once through a follower.
func largeCommands(ctx context.Context, c *cluster, target int, _ float64) {
	f := c.nodes[(target+1)%len(c.nodes)]
	value := make([]byte, c.maxValue)
	var wg sync.WaitGroup
	for i := 0; i < 5; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.put(f, fmt.Sprintf("large-%d", i), value)
		}()
	}
	wg.Wait()
	<-ctx.Done()
}

// probe opens a new connection to addr as a member would (from 127.0.0.1,
// with a member's certificate on a TLS cluster) and asks for a read index.
// It reports whether the node answered within limit, whatever the answer.
func probe(addr string, tc *tls.Config, limit time.Duration) bool {
	deadline := time.Now().Add(limit)
	conn, err := net.DialTimeout("tcp", addr, limit)
	if err != nil {
		return false
	}
	defer conn.Close()
	conn.SetDeadline(deadline)
	if tc != nil {
		tconn := tls.Client(conn, tc)
		if err := tconn.Handshake(); err != nil {
			return false
		}
		conn = tconn
	}
	if _, err := conn.Write([]byte{tagRPC}); err != nil {
		return false
	}
	client := rpc.NewClientWithCodec(peer.NewClientCodec(conn, peer.Deadlines{Message: limit}))
	defer client.Close()
	call := client.Go(peer.MethodReadIndex, &peer.ReadIndexRequest{Timeout: int64(limit / 2)}, &peer.ReadIndexResponse{}, nil)
	select {
	case <-call.Done:
		_, isServerErr := call.Error.(rpc.ServerError)
		return call.Error == nil || isServerErr
	case <-time.After(time.Until(deadline)):
		return false
	}
}
