package peer

import (
	"encoding/binary"
	"errors"
	"net"
	"net/rpc"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/go-msgpack/v2/codec"
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
	go func() { srv.ServeCodec(NewServerCodec(s, Limits{Deadlines: d})); close(done) }()
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
	fc := newFrameConn(a, Limits{})
	err := fc.writeFrames(&ApplyRequest{Command: make([]byte, MaxFrame+1)})
	if !errors.Is(err, ErrFrameTooLarge) {
		t.Fatalf("got %v, want ErrFrameTooLarge", err)
	}
}

func TestBudgetBoundsFramesInFlight(t *testing.T) {
	b := NewBudget(256 << 10)
	// A sender that stops half-way holds the budget for what it sent, not
	// for what it claimed.
	a, peer := net.Pipe()
	defer a.Close()
	defer peer.Close()
	stalled := newFrameConn(a, Limits{Deadlines: Deadlines{Message: time.Minute}, Budget: b})
	go func() {
		var hdr [4]byte
		binary.BigEndian.PutUint32(hdr[:], 60<<20)
		peer.Write(hdr[:])
		peer.Write(make([]byte, 100<<10))
	}()
	go stalled.readFrame(nil, true)
	deadline := time.Now().Add(5 * time.Second)
	for b.InUse() == 0 || b.InUse() > 256<<10 {
		if time.Now().After(deadline) {
			t.Fatalf("budget in use %d after 100 KiB of a 60 MiB claim", b.InUse())
		}
		time.Sleep(time.Millisecond)
	}
	if got := b.InUse(); got > 128<<10 {
		t.Fatalf("100 KiB received reserved %d bytes", got)
	}
	// Another frame that needs more than is left waits, then gives up at
	// its deadline with ErrBusy.
	c, peer2 := net.Pipe()
	defer c.Close()
	defer peer2.Close()
	waiting := newFrameConn(c, Limits{Deadlines: Deadlines{Message: 200 * time.Millisecond}, Budget: b})
	go func() {
		var hdr [4]byte
		binary.BigEndian.PutUint32(hdr[:], 300<<10)
		peer2.Write(hdr[:])
		peer2.Write(make([]byte, 300<<10))
	}()
	if err := waiting.readFrame(nil, true); !errors.Is(err, ErrBusy) {
		t.Fatalf("frame over the remaining budget: %v, want ErrBusy", err)
	}
}

func TestLoneFrameLargerThanBudgetIsRead(t *testing.T) {
	b := NewBudget(64 << 10)
	a, peer := net.Pipe()
	defer a.Close()
	defer peer.Close()
	fc := newFrameConn(a, Limits{Deadlines: Deadlines{Message: 5 * time.Second}, Budget: b})
	go func() {
		var hdr [4]byte
		binary.BigEndian.PutUint32(hdr[:], 1<<20)
		peer.Write(hdr[:])
		peer.Write(make([]byte, 1<<20))
	}()
	if err := fc.readFrame(nil, true); err != nil {
		t.Fatalf("a 1 MiB frame alone with a 64 KiB budget: %v", err)
	}
	if b.InUse() != 0 {
		t.Fatalf("budget in use after the frame: %d", b.InUse())
	}
}

func TestUpgradedConnectionKeepsWaitingAndTakesLargerFrames(t *testing.T) {
	var member atomic.Bool
	l := Limits{Deadlines: Deadlines{Idle: 100 * time.Millisecond, Message: time.Second}, MaxFrame: 16}
	l.Upgrade = func() (Limits, bool) {
		return Limits{Deadlines: Deadlines{Idle: time.Minute, Message: time.Second}}, member.Load()
	}
	a, peer := net.Pipe()
	defer a.Close()
	defer peer.Close()
	fc := newFrameConn(a, l)
	go func() {
		time.Sleep(50 * time.Millisecond)
		member.Store(true)
		// Past the stranger's idle deadline, then a frame over its limit.
		time.Sleep(200 * time.Millisecond)
		var hdr [4]byte
		binary.BigEndian.PutUint32(hdr[:], 1000)
		peer.Write(hdr[:])
		peer.Write(make([]byte, 1000))
	}()
	if err := fc.readFrame(nil, true); err != nil {
		t.Fatalf("connection that became a member: %v", err)
	}
	// Without the upgrade, the same wait ends at the idle deadline.
	b, peer2 := net.Pipe()
	defer b.Close()
	defer peer2.Close()
	l.Upgrade = nil
	if err := newFrameConn(b, l).readFrame(nil, true); err == nil {
		t.Fatal("a stranger's idle wait did not end")
	}
}

func TestFramesThatEachHoldPartOfTheBudgetAllFinish(t *testing.T) {
	// Four 300 KiB frames arrive at once on a 256 KiB budget: each could
	// hold part of it and wait for the rest; the oldest always proceeds.
	b := NewBudget(256 << 10)
	errs := make(chan error, 4)
	for i := 0; i < 4; i++ {
		a, peer := net.Pipe()
		defer a.Close()
		defer peer.Close()
		fc := newFrameConn(a, Limits{Deadlines: Deadlines{Message: 5 * time.Second}, Budget: b})
		go func() {
			var hdr [4]byte
			binary.BigEndian.PutUint32(hdr[:], 300<<10)
			peer.Write(hdr[:])
			for sent := 0; sent < 300<<10; sent += 10 << 10 {
				peer.Write(make([]byte, 10<<10))
			}
		}()
		go func() { errs <- fc.readFrame(nil, true) }()
	}
	for i := 0; i < 4; i++ {
		if err := <-errs; err != nil {
			t.Fatalf("frame %d: %v", i, err)
		}
	}
	if b.InUse() != 0 {
		t.Fatalf("budget in use after all frames: %d", b.InUse())
	}
}

// A connection reuses its codec and buffers between messages, but keeps
// none larger than keepBuffer after a large message, and what it decoded
// earlier is never overwritten by later messages.
func TestLargeMessagesLeaveNoBuffersAndSmallOnesStayIntact(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	w, r := newFrameConn(a, Limits{}), newFrameConn(b, Limits{})
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
		if i == 1 && cap(r.buf) > readChunk {
			t.Fatalf("reader kept a %d-byte buffer after a large message", cap(r.buf))
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

// A request whose body is over the connection's limit (a stranger's 64
// KiB, say) is answered with ErrFrameTooLarge's text, and the connection
// goes on serving: the sender learns that the request had no effect,
// rather than losing the connection with the outcome unknown.
func TestOversizedBodyIsRefusedAndTheConnectionLivesOn(t *testing.T) {
	srv := rpc.NewServer()
	if err := srv.RegisterName(Service, echo{}); err != nil {
		t.Fatal(err)
	}
	c, s := net.Pipe()
	done := make(chan struct{})
	go func() {
		srv.ServeCodec(NewServerCodec(s, Limits{Deadlines: Deadlines{Idle: time.Minute, Message: 5 * time.Second}, MaxFrame: 1 << 10}))
		close(done)
	}()
	t.Cleanup(func() { c.Close(); <-done })
	client := rpc.NewClientWithCodec(NewClientCodec(c, Deadlines{Message: 5 * time.Second}))
	var resp ApplyResponse
	err := client.Call(MethodApply, &ApplyRequest{Command: make([]byte, 4<<10)}, &resp)
	var se rpc.ServerError
	if !errors.As(err, &se) || !RefusedAsTooLarge(string(se)) {
		t.Fatalf("a 4 KiB request on a 1 KiB connection: %v, want the server's refusal as too large", err)
	}
	if err := client.Call(MethodApply, &ApplyRequest{Command: []byte("hi")}, &resp); err != nil {
		t.Fatalf("a small request after the refusal: %v", err)
	}
	if b, ok := resp.Result.([]byte); !ok || string(b) != "hi" {
		t.Fatalf("result %#v", resp.Result)
	}
}

// Commands decoded from a request own their bytes: the leader hands them
// to raft as they are, so they must not share the connection's buffer.
func TestDecodedCommandsDoNotShareTheFramesBuffer(t *testing.T) {
	var frame []byte
	h := Handle()
	if err := codec.NewEncoderBytes(&frame, h).Encode(&ApplyBatchRequest{Commands: [][]byte{[]byte("one"), []byte("two")}}); err != nil {
		t.Fatal(err)
	}
	var req ApplyBatchRequest
	if err := codec.NewDecoderBytes(frame, h).Decode(&req); err != nil {
		t.Fatal(err)
	}
	for i := range frame {
		frame[i] = 'X'
	}
	if string(req.Commands[0]) != "one" || string(req.Commands[1]) != "two" {
		t.Fatalf("decoded commands changed with the frame's buffer: %q", req.Commands)
	}
}
