package wire

import (
	"encoding/binary"
	"errors"
	"net"
	"net/rpc"
	"testing"
	"time"
)

type echo struct{}

func (echo) Apply(req *ApplyRequest, resp *ApplyResponse) error {
	resp.Result = req.Command
	return nil
}

func serve(t *testing.T, d Deadlines) (client net.Conn, done chan struct{}) {
	t.Helper()
	srv := rpc.NewServer()
	if err := srv.RegisterName(Service, echo{}); err != nil {
		t.Fatal(err)
	}
	c, s := net.Pipe()
	done = make(chan struct{})
	go func() { srv.ServeCodec(NewServerCodec(s, d)); close(done) }()
	t.Cleanup(func() { c.Close(); <-done })
	return c, done
}

func TestRoundTrip(t *testing.T) {
	conn, _ := serve(t, Deadlines{Idle: time.Minute, Message: time.Second})
	client := rpc.NewClientWithCodec(NewClientCodec(conn, Deadlines{Message: time.Second}))
	var resp ApplyResponse
	if err := client.Call(MethodApply, &ApplyRequest{Command: []byte("hi")}, &resp); err != nil {
		t.Fatal(err)
	}
	if b, ok := resp.Result.([]byte); !ok || string(b) != "hi" {
		t.Fatalf("result %#v", resp.Result)
	}
}

func TestOversizedFrameClosesTheConnection(t *testing.T) {
	conn, done := serve(t, Deadlines{Idle: time.Minute, Message: time.Second})
	var hdr [4]byte
	binary.BigEndian.PutUint32(hdr[:], MaxFrame+1)
	conn.Write(hdr[:])
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("server kept a connection that announced an oversized message")
	}
}

func TestStalledMessageHitsItsDeadline(t *testing.T) {
	conn, done := serve(t, Deadlines{Idle: time.Minute, Message: 100 * time.Millisecond})
	var hdr [4]byte
	binary.BigEndian.PutUint32(hdr[:], 1000)
	conn.Write(hdr[:]) // promises 1000 bytes, sends none
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("server waited forever for a message that never came")
	}
}

func TestIdleConnectionHitsItsDeadline(t *testing.T) {
	_, done := serve(t, Deadlines{Idle: 100 * time.Millisecond, Message: time.Second})
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("idle connection was never closed")
	}
}

func TestGarbageIsAnErrorNotAPanic(t *testing.T) {
	conn, done := serve(t, Deadlines{Idle: time.Minute, Message: time.Second})
	var hdr [4]byte
	binary.BigEndian.PutUint32(hdr[:], 8)
	conn.Write(append(hdr[:], 0xc1, 0xc1, 0xc1, 0xc1, 0xc1, 0xc1, 0xc1, 0xc1))
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("garbage did not end the connection")
	}
}

func TestEncodeRefusesOversizedMessages(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	fc := newFrameConn(a, Deadlines{})
	err := fc.writeFrames(&ApplyRequest{Command: make([]byte, MaxFrame+1)})
	if !errors.Is(err, ErrFrameTooLarge) {
		t.Fatalf("got %v, want ErrFrameTooLarge", err)
	}
}

// A connection reuses its codec and buffers between messages, but keeps
// none larger than keepBuffer after a large message, and what it decoded
// earlier is never overwritten by later messages.
func TestLargeMessagesLeaveNoBuffersAndSmallOnesStayIntact(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	w, r := newFrameConn(a, Deadlines{}), newFrameConn(b, Deadlines{})
	big := make([]byte, 4*keepBuffer)
	for i := range big {
		big[i] = byte(i)
	}
	msgs := []*ApplyRequest{{Command: []byte("one")}, {Command: big}, {Command: []byte("two")}, {Command: []byte("three")}}
	errc := make(chan error, 1)
	go func() {
		for _, m := range msgs {
			if err := w.writeFrames(m); err != nil {
				errc <- err
				return
			}
		}
		errc <- nil
	}()
	got := make([]ApplyRequest, len(msgs))
	for i := range msgs {
		if err := r.readFrame(&got[i], true); err != nil {
			t.Fatal(err)
		}
		if i == 1 && (cap(r.buf) > keepBuffer || r.dec != nil) {
			t.Fatalf("reader kept a %d-byte buffer (or its decoder) after a large message", cap(r.buf))
		}
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	for i, m := range msgs {
		if string(got[i].Command) != string(m.Command) {
			t.Fatalf("message %d decoded as %d bytes %.10q, sent %d bytes", i, len(got[i].Command), got[i].Command, len(m.Command))
		}
	}
	for _, f := range w.frames {
		if cap(f) > keepBuffer {
			t.Fatalf("writer kept a %d-byte frame buffer", cap(f))
		}
	}
}
