package peer

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net"
	"net/rpc"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-msgpack/v2/codec"
)

// The wire stays in step or closes: a request whose body fails after its
// header was read is answered alone, and the server never reads a header
// from inside that body. Each case sends a request that the server
// refuses part-way through its body, with a complete request ("smuggled")
// where the old codec would have taken the next header from; the
// smuggled request must never run. Where the rest of the refused body
// arrives, the connection goes on serving the request after it ("after").
func TestRefusedBodyNeverSmugglesARequest(t *testing.T) {
	smuggled := rawRequest(t, 99, MethodApply, &ApplyRequest{Command: []byte("smuggled"), Timeout: int64(time.Second)})
	after := rawRequest(t, 2, MethodApply, &ApplyRequest{Command: []byte("after"), Timeout: int64(time.Second)})
	short := Deadlines{Idle: time.Minute, Message: 200 * time.Millisecond}
	cases := []struct {
		name   string
		limits Limits
		// holdBudget: another connection holds the whole budget first.
		holdBudget bool
		// send is what the client sends, in order; a step that waits
		// for an answer is sent once request 1 was answered.
		send    []step
		refusal string // in the answer to request 1
		inStep  bool
	}{{
		// The reviewer's case: a 40 KiB command refused as busy after
		// the first 16 KiB of its body, with a request at that point.
		name:       "busy, the rest of the body arrives",
		limits:     Limits{Deadlines: short},
		holdBudget: true,
		send:       []step{{b: smugglingRequest(t, 1, MethodApply, 40<<10, readChunk, smuggled)}, {b: after}},
		refusal:    ErrBusy.Error(),
		inStep:     true,
	}, {
		name:    "over the connection's limit, the rest of the body arrives",
		limits:  Limits{Deadlines: short, MaxFrame: 1 << 10},
		send:    []step{{b: smugglingRequest(t, 1, MethodApply, 4<<10, 512, smuggled)}, {b: after}},
		refusal: ErrFrameTooLarge.Error(),
		inStep:  true,
	}, {
		name:    "over the connection's limit, the rest of the body is late",
		limits:  Limits{Deadlines: short, MaxFrame: 1 << 10},
		send:    []step{{b: partialRequest(t, 1, MethodApply, 4<<10, 1<<10)}, {b: smuggled, wait: true}, {b: after}},
		refusal: ErrFrameTooLarge.Error(),
	}, {
		name:    "over MaxFrame",
		limits:  Limits{Deadlines: short},
		send:    []step{{b: partialRequest(t, 1, MethodApply, MaxFrame+1, 0)}, {b: smuggled}, {b: after}},
		refusal: ErrFrameTooLarge.Error(),
	}, {
		name:    "body cut by its deadline",
		limits:  Limits{Deadlines: short},
		send:    []step{{b: partialRequest(t, 1, MethodApply, 4<<10, 1<<10)}, {b: smuggled, wait: true}, {b: after}},
		refusal: "timeout",
	}, {
		// net/rpc reads the body of a request for a method it does not
		// know, and ignores the error of that read.
		name:    "unknown method, body cut by its deadline",
		limits:  Limits{Deadlines: short},
		send:    []step{{b: partialRequest(t, 1, Service+".Nope", 4<<10, 1<<10)}, {b: smuggled, wait: true}, {b: after}},
		refusal: "can't find method",
	}}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if tc.holdBudget {
				tc.limits.Budget = heldBudget(t, 64<<10)
			}
			s := serveRecording(t, tc.limits)
			go func() {
				for _, st := range tc.send {
					if st.wait && !s.answered(1, 10*time.Second) {
						return
					}
					if _, err := s.client.Write(st.b); err != nil {
						return
					}
				}
			}()
			if r := s.answer(t, 1); !strings.Contains(r.Error, tc.refusal) {
				t.Errorf("request 1 answered %q, want a refusal mentioning %q", r.Error, tc.refusal)
			}
			if tc.inStep {
				if !s.answered(2, 10*time.Second) {
					t.Error("the request after the refused one was not answered: the connection fell out of step")
				} else if r := s.answer(t, 2); r.Error != "" {
					t.Errorf("the request after the refused one: %q", r.Error)
				}
			} else {
				select {
				case <-s.done:
				case <-time.After(10 * time.Second):
					t.Error("the server kept a connection that it had left part-way through a body")
				}
			}
			s.client.Close()
			<-s.done
			if got := s.commands(); slices.Contains(got, "smuggled") {
				t.Fatalf("the server ran a request from inside a refused body; applied %q", got)
			}
			s.mu.Lock()
			defer s.mu.Unlock()
			if _, ok := s.resps[99]; ok {
				t.Fatal("the server answered a request from inside a refused body")
			}
		})
	}
}

type step struct {
	b    []byte
	wait bool
}

// recordingServer serves Apply on one end of a pipe and records the
// commands it ran and the answers the client received.
type recordingServer struct {
	client net.Conn
	done   chan struct{}

	mu      sync.Mutex
	applied []string
	resps   map[uint64]rawResponse
	changed chan struct{}
}

type rawResponse struct {
	Error  string
	Result any
}

type recordingApply struct{ s *recordingServer }

func (a recordingApply) Apply(req *ApplyRequest, resp *ApplyResponse) error {
	a.s.mu.Lock()
	a.s.applied = append(a.s.applied, string(req.Command))
	a.s.mu.Unlock()
	resp.Result = "ok"
	return nil
}

func serveRecording(t *testing.T, l Limits) *recordingServer {
	t.Helper()
	s := &recordingServer{done: make(chan struct{}), resps: map[uint64]rawResponse{}, changed: make(chan struct{})}
	srv := rpc.NewServer()
	if err := srv.RegisterName(Service, recordingApply{s}); err != nil {
		t.Fatal(err)
	}
	c, sc := net.Pipe()
	s.client = c
	go func() { srv.ServeCodec(NewServerCodec(sc, l)); close(s.done) }()
	go func() {
		fc := newFrameConn(c, Limits{})
		for {
			var r rpc.Response
			if err := fc.readFrame(&r, true); err != nil {
				return
			}
			var body ApplyResponse
			if err := fc.readFrame(&body, false); err != nil {
				return
			}
			s.mu.Lock()
			s.resps[r.Seq] = rawResponse{Error: r.Error, Result: body.Result}
			close(s.changed)
			s.changed = make(chan struct{})
			s.mu.Unlock()
		}
	}()
	t.Cleanup(func() { c.Close(); <-s.done })
	return s
}

// answer waits for the answer to request seq.
func (s *recordingServer) answer(t *testing.T, seq uint64) rawResponse {
	t.Helper()
	if !s.answered(seq, 10*time.Second) {
		t.Fatalf("no answer to request %d", seq)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.resps[seq]
}

// answered waits up to limit for the answer to request seq, and reports
// whether it came.
func (s *recordingServer) answered(seq uint64, limit time.Duration) bool {
	timeout := time.After(limit)
	for {
		s.mu.Lock()
		_, ok := s.resps[seq]
		changed := s.changed
		s.mu.Unlock()
		if ok {
			return true
		}
		select {
		case <-changed:
		case <-timeout:
			return false
		}
	}
}

func (s *recordingServer) commands() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.applied)
}

// heldBudget returns a budget of total bytes that another connection holds
// in full, stalled half-way through a large message, until the test ends.
func heldBudget(t *testing.T, total int) *Budget {
	t.Helper()
	b := NewBudget(total)
	a, hog := net.Pipe()
	t.Cleanup(func() { a.Close(); hog.Close() })
	go newFrameConn(a, Limits{Deadlines: Deadlines{Message: time.Minute}, Budget: b}).readFrame(nil, true)
	go func() {
		hog.Write(binary.BigEndian.AppendUint32(nil, uint32(4*total)))
		hog.Write(make([]byte, 2*total))
	}()
	waitUntil(t, 10*time.Second, "a stalled message to hold the budget", func() bool { return b.InUse() >= total })
	return b
}

// frame returns v as one length-prefixed msgpack frame.
func frame(t *testing.T, v any) []byte {
	t.Helper()
	var b []byte
	if err := codec.NewEncoderBytes(&b, Handle()).Encode(v); err != nil {
		t.Fatal(err)
	}
	return append(binary.BigEndian.AppendUint32(nil, uint32(len(b))), b...)
}

// rawRequest returns a whole request: its header frame and its body frame.
func rawRequest(t *testing.T, seq uint64, method string, body any) []byte {
	t.Helper()
	return append(frame(t, &rpc.Request{ServiceMethod: method, Seq: seq}), frame(t, body)...)
}

// smugglingRequest returns a whole Apply request whose command of size
// bytes carries inner so that it starts at offset at of the body frame.
func smugglingRequest(t *testing.T, seq uint64, method string, size, at int, inner []byte) []byte {
	t.Helper()
	cmd := bytes.Repeat([]byte{'x'}, size)
	body := frame(t, &ApplyRequest{Command: cmd, Timeout: int64(time.Second)})[4:]
	off := bytes.Index(body, cmd)
	if at < off || at-off+len(inner) > size {
		t.Fatalf("cannot place %d bytes at offset %d of a body with a %d-byte command at %d", len(inner), at, size, off)
	}
	copy(cmd[at-off:], inner)
	return rawRequest(t, seq, method, &ApplyRequest{Command: cmd, Timeout: int64(time.Second)})
}

// partialRequest returns a request header and the first sent bytes of a
// body frame that announces size bytes.
func partialRequest(t *testing.T, seq uint64, method string, size, sent int) []byte {
	t.Helper()
	b := frame(t, &rpc.Request{ServiceMethod: method, Seq: seq})
	b = binary.BigEndian.AppendUint32(b, uint32(size))
	return append(b, make([]byte, sent)...)
}

// The reader marks itself out of step once a frame was left part-read,
// and every later read fails: nothing reads on from inside the frame.
func TestReadsAfterAPartReadFrameFail(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	fc := newFrameConn(a, Limits{Deadlines: Deadlines{Idle: time.Minute, Message: 50 * time.Millisecond}})
	go func() {
		b.Write(binary.BigEndian.AppendUint32(nil, 100))
		b.Write(make([]byte, 10))
	}()
	if err := fc.readFrame(nil, false); err == nil {
		t.Fatal("a frame cut by its deadline was read")
	}
	go b.Write(frame(t, &ApplyRequest{Command: []byte("next")}))
	var req ApplyRequest
	if err := fc.readFrame(&req, true); !errors.Is(err, ErrOutOfStep) {
		t.Fatalf("read after a part-read frame: %v (%q), want ErrOutOfStep", err, req.Command)
	}
}
