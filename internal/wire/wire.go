// Package wire holds raftkit's node-to-node request types and the net/rpc
// codec that carries them: every message is a length-prefixed msgpack frame
// with a size limit, and every read has a deadline, so a slow or hostile
// peer can neither pin memory nor hold a goroutine forever.
package wire

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/rpc"
	"reflect"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-msgpack/v2/codec"
)

// Service is the net/rpc service name of raftkit's requests.
const Service = "Raftkit"

// Method names, as net/rpc spells them.
const (
	MethodApply      = Service + ".Apply"
	MethodApplyBatch = Service + ".ApplyBatch"
	MethodReadIndex  = Service + ".ReadIndex"
	MethodMembership = Service + ".Membership"
)

// MaxFrame is the largest message either side accepts.
const MaxFrame = 64 << 20

// Error kinds carried in Error.Kind.
const (
	KindNotLeader  = "not_leader"  // not applied; Leader* name the leader
	KindNoLeader   = "no_leader"   // not applied; retry when a leader is known
	KindTransfer   = "transfer"    // not applied; a leadership transfer is in progress
	KindNotApplied = "not_applied" // not applied; retrying cannot help
	KindUnknown    = "unknown"     // outcome unknown
	KindFSM        = "fsm"         // the FSM returned an error
	KindInvalid    = "invalid"     // bad request, not applied
	KindDenied     = "denied"      // missing or wrong credentials
	KindOther      = "other"
)

// Error is an error that crosses the wire.
type Error struct {
	Kind       string
	Message    string
	LeaderID   string
	LeaderAddr string

	// For KindFSM: Exact names the registered error value ("v:" + key) or
	// type ("t:" + key, its value in Typed) that the FSM returned itself;
	// otherwise Matches lists the keys of registered values it matched and
	// Typed the values of registered types it matched.
	Exact   string       `codec:",omitempty"`
	Matches []string     `codec:",omitempty"`
	Typed   []TypedValue `codec:",omitempty"`
}

// TypedValue is a value of a registered type, msgpack-encoded.
type TypedValue struct {
	Type string
	Data []byte
}

// ApplyRequest forwards a command to the leader.
type ApplyRequest struct {
	Command []byte
	// Timeout is how long the leader may take, in nanoseconds.
	Timeout int64
}

// ApplyResponse carries the FSM's response or an error. A result of a
// registered type travels as ResultType (its key) and ResultData (its
// msgpack encoding); any other result as Result.
type ApplyResponse struct {
	Result     any
	Err        *Error
	ResultType string `codec:",omitempty"`
	ResultData []byte `codec:",omitempty"`
}

// ApplyBatchRequest forwards several commands to the leader in one
// message; the leader submits them to raft in order, back to back.
type ApplyBatchRequest struct {
	Commands [][]byte
	// Timeout is how long the leader may take for the whole batch, in
	// nanoseconds.
	Timeout int64
}

// ApplyBatchResponse carries one ApplyResponse per command, in order.
type ApplyBatchResponse struct {
	Results []ApplyResponse
}

// ReadIndexRequest asks the leader for a commit index that is safe to read at.
type ReadIndexRequest struct {
	Timeout int64
}

// ReadIndexResponse carries the index, or an error.
type ReadIndexResponse struct {
	Index uint64
	Err   *Error
}

// Membership operations.
const (
	OpAddVoter    = "add-voter"
	OpAddNonvoter = "add-nonvoter"
	OpRemove      = "remove"
	OpTransfer    = "transfer"
)

// MembershipRequest changes the cluster configuration through the leader.
type MembershipRequest struct {
	Op      string
	ID      string
	Addr    string
	Timeout int64
	// Secret is the sender's Config.JoinSecret.
	Secret string
}

// MembershipResponse carries an error, if any.
type MembershipResponse struct {
	Err *Error
}

// Handle returns the msgpack handle both sides use. Strings stay strings,
// []byte stays []byte, integers decode as int64 (uint64 beyond its range)
// and maps as map[string]any.
func Handle() *codec.MsgpackHandle {
	h := &codec.MsgpackHandle{WriteExt: true}
	h.MapType = reflect.TypeOf(map[string]any(nil))
	h.SignedInteger = true
	return h
}

// Deadlines for reads on a connection.
type Deadlines struct {
	// Idle bounds the wait for the next message to start.
	Idle time.Duration
	// Message bounds reading the rest of a message once it has started.
	Message time.Duration
}

// frameConn reads and writes length-prefixed frames. One goroutine reads
// (net/rpc's input loop); writers take wmu. Each side keeps its codec and
// buffers between messages, buffers only up to keepBuffer: a larger frame
// gets its own, which it does not keep.
type frameConn struct {
	conn      net.Conn
	r         *bufio.Reader
	w         *bufio.Writer
	h         *codec.MsgpackHandle
	deadlines Deadlines

	buf  []byte // the reader's
	dec  *codec.Decoder
	rhdr [4]byte

	wmu    sync.Mutex
	enc    *codec.Encoder
	frames [][]byte // encoded frames of one message, storage kept
	whdr   [4]byte
}

// keepBuffer is the largest buffer a connection keeps for its next
// message: a forwarded command of many MiB should not stay in memory for
// the connection's life.
const keepBuffer = 64 << 10

func newFrameConn(conn net.Conn, d Deadlines) *frameConn {
	return &frameConn{conn: conn, r: bufio.NewReader(conn), w: bufio.NewWriter(conn), h: Handle(), deadlines: d}
}

// ErrFrameTooLarge is returned for a message over MaxFrame.
var ErrFrameTooLarge = errors.New("raftkit wire: message exceeds size limit")

// readFrame reads one frame and decodes it into v (nil discards it). idle
// says whether this frame starts a new message.
func (c *frameConn) readFrame(v any, idle bool) error {
	d := c.deadlines.Message
	if idle {
		d = c.deadlines.Idle
	}
	if d > 0 {
		_ = c.conn.SetReadDeadline(time.Now().Add(d))
	}
	if _, err := io.ReadFull(c.r, c.rhdr[:]); err != nil {
		return err
	}
	if idle && c.deadlines.Message > 0 {
		_ = c.conn.SetReadDeadline(time.Now().Add(c.deadlines.Message))
	}
	n := int(binary.BigEndian.Uint32(c.rhdr[:]))
	if n > MaxFrame {
		return fmt.Errorf("%w: %d bytes, limit %d", ErrFrameTooLarge, n, MaxFrame)
	}
	var b []byte
	if n <= keepBuffer {
		if cap(c.buf) < n {
			c.buf = make([]byte, n)
		}
		b = c.buf[:n]
	} else {
		b = make([]byte, n)
	}
	if _, err := io.ReadFull(c.r, b); err != nil {
		return err
	}
	if v == nil {
		return nil
	}
	// Decoded values never share b (the handle is not ZeroCopy).
	if c.dec == nil {
		c.dec = codec.NewDecoderBytes(b, c.h)
	} else {
		c.dec.ResetBytes(b)
	}
	err := c.dec.Decode(v)
	if n > keepBuffer {
		c.dec = nil // it refers to b
	}
	if err != nil {
		return fmt.Errorf("raftkit wire: decode: %w", err)
	}
	return nil
}

// writeFrames encodes each value as a frame and flushes them together.
// Nothing is written unless every value encodes within the size limit, so
// a refused message never leaves half a request on the stream.
func (c *frameConn) writeFrames(vs ...any) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	for len(c.frames) < len(vs) {
		c.frames = append(c.frames, nil)
	}
	frames := c.frames[:len(vs)]
	defer func() {
		for i, b := range frames {
			if cap(b) > keepBuffer {
				frames[i] = nil
				c.enc = nil // it refers to b too
			}
		}
	}()
	for i, v := range vs {
		frames[i] = frames[i][:0]
		if c.enc == nil {
			c.enc = codec.NewEncoderBytes(&frames[i], c.h)
		} else {
			c.enc.ResetBytes(&frames[i])
		}
		if err := c.enc.Encode(v); err != nil {
			return fmt.Errorf("raftkit wire: encode: %w", err)
		}
		if len(frames[i]) > MaxFrame {
			return fmt.Errorf("%w: %d bytes, limit %d", ErrFrameTooLarge, len(frames[i]), MaxFrame)
		}
	}
	for _, b := range frames {
		binary.BigEndian.PutUint32(c.whdr[:], uint32(len(b)))
		if _, err := c.w.Write(c.whdr[:]); err != nil {
			return err
		}
		if _, err := c.w.Write(b); err != nil {
			return err
		}
	}
	_ = c.conn.SetWriteDeadline(time.Now().Add(writeTimeout))
	return c.w.Flush()
}

// writeTimeout bounds a flush to a peer that does not read.
const writeTimeout = 10 * time.Second

// MaxInFlight is how many requests one connection may have in progress;
// the server reads no further request until one of them is answered.
const MaxInFlight = 128

// serverCodec is net/rpc's server side of a frameConn.
type serverCodec struct {
	*frameConn
	inFlight chan struct{}
}

// NewServerCodec returns a net/rpc server codec on conn.
func NewServerCodec(conn net.Conn, d Deadlines) rpc.ServerCodec {
	return serverCodec{newFrameConn(conn, d), make(chan struct{}, MaxInFlight)}
}

func (c serverCodec) ReadRequestHeader(r *rpc.Request) error {
	if err := c.readFrame(r, true); err != nil {
		return err
	}
	// net/rpc answers every request whose header it read, so each slot
	// taken here is given back in WriteResponse.
	c.inFlight <- struct{}{}
	return nil
}

func (c serverCodec) ReadRequestBody(body any) error { return c.readFrame(body, false) }

func (c serverCodec) WriteResponse(r *rpc.Response, body any) error {
	defer func() { <-c.inFlight }()
	if r.Error != "" {
		body = struct{}{}
	}
	return c.writeFrames(r, body)
}
func (c serverCodec) Close() error { return c.conn.Close() }

// ClientCodec is net/rpc's client side of a frameConn. It remembers when
// its connection failed, so a pool can replace it before sending on it.
type ClientCodec struct {
	*frameConn
	broken atomic.Bool
}

// NewClientCodec returns a net/rpc client codec on conn. Its reads have no
// idle deadline (responses may take as long as the call's own timeout) but
// each message must arrive within d.Message once started.
func NewClientCodec(conn net.Conn, d Deadlines) *ClientCodec {
	return &ClientCodec{frameConn: newFrameConn(conn, Deadlines{Message: d.Message})}
}

// Broken reports whether reading or writing on the connection has failed;
// net/rpc then refuses to send further calls on it.
func (c *ClientCodec) Broken() bool { return c.broken.Load() }

func (c *ClientCodec) fail(err error) error {
	if err != nil {
		c.broken.Store(true)
	}
	return err
}

// WriteRequest implements rpc.ClientCodec.
func (c *ClientCodec) WriteRequest(r *rpc.Request, body any) error {
	return c.fail(c.writeFrames(r, body))
}

// ReadResponseHeader implements rpc.ClientCodec.
func (c *ClientCodec) ReadResponseHeader(r *rpc.Response) error {
	_ = c.conn.SetReadDeadline(time.Time{})
	return c.fail(c.readFrame(r, true))
}

// ReadResponseBody implements rpc.ClientCodec.
func (c *ClientCodec) ReadResponseBody(body any) error { return c.fail(c.readFrame(body, false)) }

// Close implements rpc.ClientCodec.
func (c *ClientCodec) Close() error {
	c.broken.Store(true)
	return c.conn.Close()
}
