package port

import (
	"context"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/raftkit/raftkit/internal/peer"
)

// FuzzPortMuxHandshake sends arbitrary first bytes to a node's port: the
// demultiplexer must route or close each connection, never panic or hang,
// and keep serving afterwards.
func FuzzPortMuxHandshake(f *testing.F) {
	f.Add([]byte{TagRaft})
	f.Add([]byte{TagRPC, 0, 0, 0, 1, 0x80, 0, 0, 0, 1, 0x80})
	f.Add([]byte{0x16, 0x03, 0x01, 0x00, 0x05}) // a TLS record to a plain port
	f.Add([]byte("GET / HTTP/1.1\r\n\r\n"))
	f.Add([]byte{})
	ln := &pipeListener{conns: make(chan net.Conn), done: make(chan struct{})}
	m := newMux(ln, "fuzz", ln.dial, nil, hclog.NewNullLogger(), nil, false, 32<<20, peer.Profile{Protocol: peer.Protocol, Features: peer.Features})
	m.ServeRPC(func(c net.Conn, _ peer.Limits) { c.Close() })
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
		conn, err := ln.dial(context.Background(), "fuzz")
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
		conn.SetReadDeadline(time.Now().Add(HandshakeTimeout + 5*time.Second))
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
		probe, err := m.dialTagged(ctx, "fuzz", TagRaft)
		cancel()
		if err != nil {
			t.Fatalf("port stopped serving after input %x: %v", data, err)
		}
		probe.Close()
	})
}

// pipeListener is an in-memory listener: dial hands it one end of a pipe.
type pipeListener struct {
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once
}

func (l *pipeListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *pipeListener) Close() error   { l.once.Do(func() { close(l.done) }); return nil }
func (l *pipeListener) Addr() net.Addr { return strAddr("fuzz") }

func (l *pipeListener) dial(ctx context.Context, _ string) (net.Conn, error) {
	c, s := net.Pipe()
	select {
	case l.conns <- s:
		return c, nil
	case <-l.done:
	case <-ctx.Done():
	}
	c.Close()
	s.Close()
	return nil, net.ErrClosed
}
