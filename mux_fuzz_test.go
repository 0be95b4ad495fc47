package raftkit

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/raftkit/raftkit/internal/wire"
)

// FuzzPortMuxHandshake sends arbitrary first bytes to a node's port: the
// demultiplexer must route or close each connection, never panic or hang,
// and keep serving afterwards.
func FuzzPortMuxHandshake(f *testing.F) {
	f.Add([]byte{tagRaft})
	f.Add([]byte{tagRPC, 0, 0, 0, 1, 0x80, 0, 0, 0, 1, 0x80})
	f.Add([]byte{0x16, 0x03, 0x01, 0x00, 0x05}) // a TLS record to a plain port
	f.Add([]byte("GET / HTTP/1.1\r\n\r\n"))
	f.Add([]byte{})
	netw := NewMemNetwork()
	ln, err := netw.listen("fuzz")
	if err != nil {
		f.Fatal(err)
	}
	m := newPortMux(ln, "fuzz", func(ctx context.Context, addr string) (net.Conn, error) {
		return netw.dialContext(ctx, "fuzz", addr)
	}, nil, hclog.NewNullLogger(), nil, false, 32<<20)
	m.serveRPC(func(c net.Conn, _ wire.Limits) { c.Close() })
	go func() {
		for {
			select {
			case c := <-m.raftConns:
				c.Close()
			case <-m.done:
				return
			}
		}
	}()
	f.Cleanup(func() { m.Close() })
	f.Fuzz(func(t *testing.T, data []byte) {
		conn, err := netw.dial("client", "fuzz", time.Second)
		if err != nil {
			t.Fatal(err)
		}
		go func() {
			conn.SetWriteDeadline(time.Now().Add(time.Second))
			conn.Write(data)
		}()
		// Whatever the bytes, the node ends the connection: at once for a
		// bad tag, after the handler for a good one, or at the handshake
		// deadline for a silent peer.
		conn.SetReadDeadline(time.Now().Add(handshakeTimeout + 5*time.Second))
		buf := make([]byte, 64)
		for {
			if _, err := conn.Read(buf); err != nil {
				if ne, ok := err.(net.Error); ok && ne.Timeout() {
					t.Fatalf("connection with first bytes %x neither routed nor closed", data)
				}
				break
			}
		}
		conn.Close()
		// The port still serves a well-formed connection.
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		probe, err := m.dialTagged(ctx, "fuzz", tagRaft)
		cancel()
		if err != nil {
			t.Fatalf("port stopped serving after input %x: %v", data, err)
		}
		probe.Close()
	})
}
