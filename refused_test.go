package raftkit

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/rpc"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/go-msgpack/v2/codec"
	"github.com/hashicorp/raft"

	"github.com/raftkit/raftkit/internal/peer"
	"github.com/raftkit/raftkit/internal/port"
)

// Refused means no effect: a command that the node refuses as busy, after
// the first part of its body was read, is answered as not applied, and a
// complete request that its bytes carry never runs (issue 28: the node
// used to read the next request header from inside the refused body). A
// member's stalled 40 MiB message holds the node's whole request budget;
// a stranger's 40 KiB command, with an Apply request 16 KiB into its body
// where the node stops reading to wait for budget, is refused at its
// message deadline. The node's own limits throughout.
func TestBusyRefusedCommandRunsNoRequestItCarries(t *testing.T) {
	log := &commandLog{}
	n := startLoggedNode(t, log)
	addr := n.Addr()

	hog := dialFrom(t, "127.0.0.1", addr)
	defer hog.Close()
	go func() {
		b := append([]byte{port.TagRPC}, wireFrame(t, &rpc.Request{ServiceMethod: peer.MethodApply, Seq: 1})...)
		b = binary.BigEndian.AppendUint32(b, 40<<20)
		hog.Write(b)
		hog.Write(make([]byte, 33<<20))
	}()
	waitFor(t, 30*time.Second, "a stalled message to hold the request budget", func() bool { return n.mux.BudgetInUse() > 32<<20 })

	var dials atomic.Int32
	pool := peer.NewPool(func(ctx context.Context, addr string) (net.Conn, error) {
		dials.Add(1)
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}}
		conn, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			return nil, err
		}
		if _, err := conn.Write([]byte{port.TagRPC}); err != nil {
			conn.Close()
			return nil, err
		}
		return conn, nil
	})
	defer pool.Close()
	inner := wireRequest(t, 7, peer.MethodApply, &peer.ApplyRequest{Command: []byte("smuggled"), Timeout: int64(5 * time.Second)})
	cmd := carrying(t, 40<<10, 16<<10, inner)
	var resp peer.ApplyResponse
	ctx := ctxTimeout(t, 20*time.Second)
	err := transportErr("apply", addr, pool.Call(ctx, addr, peer.MethodApply, &peer.ApplyRequest{Command: cmd, Timeout: int64(5 * time.Second)}, &resp))
	var refused *peer.RefusedError
	if !errors.Is(err, ErrNotApplied) || errors.Is(err, ErrUnknownOutcome) || !errors.As(err, &refused) || !strings.Contains(refused.Msg, "busy") {
		t.Errorf("a command refused as busy: %v, want not applied (refused)", err)
	}
	// The connection stayed in step: the next request on it is served.
	if err := pool.Call(ctx, addr, peer.MethodApply, &peer.ApplyRequest{Command: []byte("after"), Timeout: int64(5 * time.Second)}, &resp); err != nil || resp.Err != nil {
		t.Errorf("the request after the refused one: %v %+v", err, resp.Err)
	} else if d := dials.Load(); d != 1 {
		t.Errorf("%d connections for two requests: the refusal cost the connection", d)
	}
	// Whatever reached the log before the fence is applied.
	if _, err := n.Apply(ctx, []byte("fence")); err != nil {
		t.Fatal(err)
	}
	if got := log.commands(0); slices.Contains(got, "smuggled") {
		t.Fatalf("a request carried inside a refused command ran; applied %q", got)
	}
}

// commandLog is an FSM that records the commands it applies.
type commandLog struct {
	mu   sync.Mutex
	cmds []string
}

func (l *commandLog) Apply(e *raft.Log) any {
	if e.Type == raft.LogCommand {
		l.mu.Lock()
		l.cmds = append(l.cmds, string(e.Data))
		l.mu.Unlock()
	}
	return nil
}

// commands returns the commands applied from the from-th on.
func (l *commandLog) commands(from int) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.cmds[from:])
}

func (l *commandLog) len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.cmds)
}

func (l *commandLog) Snapshot() (raft.FSMSnapshot, error) { return emptySnapshot{}, nil }
func (l *commandLog) Restore(rc io.ReadCloser) error      { return rc.Close() }

type emptySnapshot struct{}

func (emptySnapshot) Persist(sink raft.SnapshotSink) error { return sink.Close() }
func (emptySnapshot) Release()                             {}

// startLoggedNode starts a one-node cluster over TCP on 127.0.0.1 with
// fsm and waits for it to lead.
func startLoggedNode(t testing.TB, fsm raft.FSM) *RaftNode {
	t.Helper()
	addrs, lns := reservePorts(t, 1)
	n, err := NewRaftNode(Config{Addr: addrs[0], Peers: addrs, Listener: lns[0], Dir: t.TempDir(), RaftConfig: fastRaft, Logger: testLogger(t)}, fsm)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	memLeader(t, []*RaftNode{n})
	return n
}

// wireFrame returns v as one length-prefixed msgpack frame of the node
// port's request protocol.
func wireFrame(t testing.TB, v any) []byte {
	t.Helper()
	b, err := encodeWire(v)
	if err != nil {
		t.Fatal(err)
	}
	return append(binary.BigEndian.AppendUint32(nil, uint32(len(b))), b...)
}

func encodeWire(v any) ([]byte, error) {
	var b []byte
	err := codec.NewEncoderBytes(&b, peer.Handle()).Encode(v)
	return b, err
}

// wireRequest returns a whole request: its header frame and body frame.
func wireRequest(t testing.TB, seq uint64, method string, body any) []byte {
	t.Helper()
	return append(wireFrame(t, &rpc.Request{ServiceMethod: method, Seq: seq}), wireFrame(t, body)...)
}

// carrying returns a command of size bytes that holds inner where, in the
// body frame of an ApplyRequest, offset at falls.
func carrying(t testing.TB, size, at int, inner []byte) []byte {
	t.Helper()
	cmd := bytes.Repeat([]byte{'x'}, size)
	body, err := encodeWire(&peer.ApplyRequest{Command: cmd})
	if err != nil {
		t.Fatal(err)
	}
	off := bytes.Index(body, cmd)
	if at < off || at-off+len(inner) > size {
		t.Fatalf("cannot place %d bytes at offset %d of a body whose %d-byte command starts at %d", len(inner), at, size, off)
	}
	copy(cmd[at-off:], inner)
	return cmd
}
