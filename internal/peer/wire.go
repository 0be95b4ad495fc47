// Package peer is how raftkit nodes talk to each other beside raft: the
// request types, the net/rpc codec that carries them (every message a
// length-prefixed msgpack frame with a size limit, every read with a
// deadline, so a slow or hostile peer can neither pin memory nor hold a
// goroutine forever), the one list of requests a node serves (service.go),
// the pool of client connections, and the batcher of forwarded writes.
//
// It must never import package raftkit or internal/port: connections
// reach it as net.Conns, and the pool dials through a function it is
// given.
package peer

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/rpc"
	"reflect"
	"slices"
	"strings"
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
	MethodClosing    = Service + ".Closing"
	MethodFeatures   = Service + ".Features"
)

// MaxFrame is the largest message either side accepts.
const MaxFrame = 64 << 20

// Error kinds carried in Error.Kind.
const (
	KindNotLeader   = "not_leader"  // not applied; Leader* name the leader
	KindNoLeader    = "no_leader"   // not applied; retry when a leader is known
	KindTransfer    = "transfer"    // not applied; a leadership transfer is in progress
	KindNotApplied  = "not_applied" // not applied; retrying cannot help
	KindInterrupted = "interrupted" // not applied; a chunked command was cut by another entry, retry
	KindUnknown     = "unknown"     // outcome unknown
	KindFSM         = "fsm"         // the FSM returned an error
	KindInvalid     = "invalid"     // bad request, not applied
	KindDenied      = "denied"      // missing or wrong credentials
	KindOther       = "other"
)

// Reasons carried in Error.Reason: a finer cause within a kind, which a
// node that does not know it reads as the kind alone.
const (
	ReasonTooLarge = "too_large" // KindInvalid: a command over the leader's MaxCommandSize
)

// Error is an error that crosses the wire.
type Error struct {
	Kind       string
	Message    string
	LeaderID   string
	LeaderAddr string
	// Reason refines Kind (a Reason constant), or is empty.
	Reason string `codec:",omitempty"`

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
	// Force, with OpAddVoter, adds the voter at once, without first
	// checking that it answers and has caught up. A leader of a release
	// that does not know the field ignores it, and adds every voter so.
	Force bool `codec:",omitempty"`
}

// MembershipResponse carries an error, if any.
type MembershipResponse struct {
	Err *Error
}

// ClosingRequest tells a peer that the sender is closing cleanly, so that
// the peer logs the connection failures that follow at Debug.
type ClosingRequest struct {
	ID   string
	Addr string
	// Secret is the sender's Config.JoinSecret.
	Secret string
}

// ClosingResponse is empty.
type ClosingResponse struct{}

// FeaturesRequest asks a node which of raftkit's log formats it reads.
type FeaturesRequest struct{}

// FeaturesResponse answers a FeaturesRequest. Chunks is true on a node
// that reassembles commands split into chunks (chunk format "rkc1").
type FeaturesResponse struct {
	Chunks bool
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

// Limits bound what one server connection can make its node hold.
type Limits struct {
	Deadlines
	// MaxFrame is the largest frame the connection may send; 0 means
	// MaxFrame.
	MaxFrame int
	// Upgrade, if set, is asked before each message whether the
	// connection has earned other limits (a stranger that became a
	// member); once it answers true, the limits it returned apply for the
	// rest of the connection.
	Upgrade func() (Limits, bool)
	// Budget, if set, is shared by the node's connections: a frame's
	// buffer (beyond a first small chunk) is reserved from it as it grows
	// with the bytes that arrive, and given back once the frame is
	// decoded, so frames being read never hold more than the budget in
	// all. A frame that cannot get budget within its message deadline
	// fails with ErrBusy: the server refuses that request alone and skips
	// the rest of its body.
	Budget *Budget
}

// frameConn reads and writes length-prefixed frames.
type frameConn struct {
	conn   net.Conn
	r      *bufio.Reader
	w      *bufio.Writer
	h      *codec.MsgpackHandle
	limits Limits
	buf    []byte // the reader's, kept only up to readChunk
	// deadline ends the reading of the current message (zero: none).
	deadline time.Time
	// broken is set once a frame was left part-read (ErrOutOfStep); the
	// reader's fields are used by one goroutine at a time, as net/rpc
	// reads.
	broken error

	wmu    sync.Mutex
	enc    *codec.Encoder
	frames [][]byte // encoded frames of one message, storage kept
	whdr   [4]byte
}

// keepBuffer is the largest frame buffer the writer keeps for its next
// message: a forwarded command of many MiB should not stay in memory for
// the connection's life.
const keepBuffer = 64 << 10

func newFrameConn(conn net.Conn, l Limits) *frameConn {
	if l.MaxFrame <= 0 || l.MaxFrame > MaxFrame {
		l.MaxFrame = MaxFrame
	}
	return &frameConn{conn: conn, r: bufio.NewReaderSize(conn, readChunk), w: bufio.NewWriter(conn), h: Handle(), limits: l}
}

// readChunk is how much of a frame is read before its buffer grows; a
// connection keeps a buffer of at most this size between frames.
const readChunk = 16 << 10

// ErrFrameTooLarge is returned for a message over the connection's limit.
var ErrFrameTooLarge = errors.New("raftkit wire: message exceeds size limit")

// RefusedAsTooLarge reports whether serverErr, the text of a net/rpc
// server error (net/rpc carries no more than text), says that the server
// refused the request's message as over its size limit (ErrFrameTooLarge).
func RefusedAsTooLarge(serverErr string) bool {
	return strings.HasPrefix(serverErr, ErrFrameTooLarge.Error())
}

// ErrOutOfStep is returned by every read on a connection after a frame
// was left part-read: the reader no longer knows where the next frame
// starts, and never reads a header from inside a body, so the connection
// must close.
var ErrOutOfStep = errors.New("raftkit wire: connection out of step: an earlier message was left part-read")

// readFrame reads one frame and decodes it into v (nil discards it). idle
// says whether this frame starts a new message. Memory grows with the
// bytes that arrive, never ahead of them: a length prefix alone costs
// nothing.
//
// The stream stays in step or the connection is marked broken: when a
// frame fails after its length prefix was read, the rest of it is skipped
// (a body refused as busy or too large: the server answers that request
// alone, and its sender knows it had no effect), or, if that cannot be
// done, this and every later read fail (ErrOutOfStep), so that the server
// closes the connection rather than take bytes of a body for a request.
func (c *frameConn) readFrame(v any, idle bool) error {
	if c.broken != nil {
		return c.broken
	}
	n, err := c.readPrefix(idle)
	if err != nil {
		return err
	}
	if n > c.limits.MaxFrame {
		err := fmt.Errorf("%w: %d bytes, limit %d", ErrFrameTooLarge, n, c.limits.MaxFrame)
		// A message body over this connection's limit, after a header that
		// was not: skip its bytes (the read deadline bounds how long that
		// takes, and nothing is kept), so that the server answers this one
		// request with the error.
		if !idle && n <= MaxFrame {
			c.skip(n, err, false)
		} else {
			c.outOfStep(err)
		}
		return err
	}
	buf, err := c.readBody(n)
	if err != nil {
		switch {
		case idle:
			c.outOfStep(err)
		case errors.Is(err, ErrBusy):
			// The request is refused, not the connection: skip the rest of
			// its body within a message deadline of its own (the first one
			// was spent waiting for budget), holding no budget meanwhile.
			c.skip(n-len(buf), err, true)
		default:
			err = fmt.Errorf("raftkit wire: message cut after %d of its %d bytes: %w", len(buf), n, err)
			c.outOfStep(err)
		}
		return err
	}
	if cap(buf) <= readChunk {
		c.buf = buf
	} else {
		c.buf = nil
	}
	if v == nil {
		return nil
	}
	// A frame read in full keeps the stream in step even if it does not
	// decode: the server answers that request alone.
	if err := codec.NewDecoderBytes(buf, c.h).Decode(v); err != nil {
		return fmt.Errorf("raftkit wire: decode: %w", err)
	}
	return nil
}

// readPrefix reads a frame's length prefix, waiting for it up to the idle
// deadline if idle says that the frame starts a message, and sets the
// deadline for the rest of the message.
func (c *frameConn) readPrefix(idle bool) (int, error) {
	var hdr [4]byte
	for {
		c.upgrade()
		d := c.limits.Message
		if idle {
			d = c.limits.Idle
		}
		if d > 0 {
			_ = c.conn.SetReadDeadline(time.Now().Add(d))
		}
		n, err := io.ReadFull(c.r, hdr[:])
		if err == nil {
			break
		}
		// An idle wait that timed out starts again if the connection
		// has earned other limits meanwhile.
		var ne net.Error
		if n == 0 && idle && errors.As(err, &ne) && ne.Timeout() && c.upgrade() {
			continue
		}
		if n > 0 {
			c.outOfStep(err)
		}
		return 0, err
	}
	c.deadline = time.Time{}
	if c.limits.Message > 0 {
		c.deadline = time.Now().Add(c.limits.Message)
		if idle {
			_ = c.conn.SetReadDeadline(c.deadline)
		}
	}
	return int(binary.BigEndian.Uint32(hdr[:])), nil
}

// readBody reads the n bytes of a frame whose prefix was read, and returns
// what it read, all of them unless it fails.
func (c *frameConn) readBody(n int) ([]byte, error) {
	// Budget is reserved for buffer growth beyond the first chunk, as the
	// bytes arrive; a sender that stops half-way holds only what it sent.
	b := c.limits.Budget
	reserved, ticket, drawing := 0, uint64(0), false
	defer func() {
		if drawing {
			b.end(ticket, reserved)
		}
	}()
	buf := c.buf[:0]
	for len(buf) < n {
		if len(buf) == cap(buf) {
			size := min(n, max(2*cap(buf), readChunk))
			if b != nil && size > readChunk {
				more := size - max(cap(buf), readChunk)
				if !drawing {
					ticket, drawing = b.begin(), true
				}
				if err := b.acquire(ticket, more, c.deadline); err != nil {
					return buf, err
				}
				reserved += more
			}
			grown := make([]byte, len(buf), size)
			copy(grown, buf)
			buf = grown
		}
		m, err := c.r.Read(buf[len(buf):min(n, cap(buf))])
		buf = buf[:len(buf)+m]
		if err != nil && len(buf) < n {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return buf, err
		}
	}
	return buf, nil
}

// skip discards the next n bytes, the rest of a frame that failed with
// cause, within the message deadline (a fresh one if fresh is set). If
// they do not all arrive in time the connection is out of step.
func (c *frameConn) skip(n int, cause error, fresh bool) {
	c.buf = nil // it may have grown past readChunk
	if fresh && c.limits.Message > 0 {
		_ = c.conn.SetReadDeadline(time.Now().Add(c.limits.Message))
	}
	if _, err := io.CopyN(io.Discard, c.r, int64(n)); err != nil {
		c.outOfStep(fmt.Errorf("%v; skipping the rest of that message: %w", cause, err))
	}
}

// outOfStep marks the connection broken by cause: every later read fails.
func (c *frameConn) outOfStep(cause error) {
	c.broken = fmt.Errorf("%w (%v)", ErrOutOfStep, cause)
}

// upgrade applies the limits that Limits.Upgrade offers, if any, and
// reports whether it did.
func (c *frameConn) upgrade() bool {
	if c.limits.Upgrade == nil {
		return false
	}
	l, ok := c.limits.Upgrade()
	if ok {
		c.limits = newFrameConn(nil, l).limits
	}
	return ok
}

// ErrBusy is returned when a frame waited for the node's in-flight byte
// budget longer than its message deadline.
var ErrBusy = errors.New("raftkit wire: node busy: in-flight request bytes at their limit")

// Budget is a count of bytes that frames being read may hold, shared by a
// node's connections. The frame that started drawing on it first may always
// draw more, even past the total, so frames that each hold part of the
// budget and wait for more never wait on each other for good: the oldest
// finishes and gives its bytes back. The budget can thus be exceeded by at
// most one frame.
type Budget struct {
	mu     sync.Mutex
	free   int
	total  int
	wake   chan struct{} // closed and replaced when bytes are released
	next   uint64        // the next frame's ticket
	active []uint64      // tickets of frames holding budget, oldest first
}

// NewBudget returns a budget of total bytes.
func NewBudget(total int) *Budget {
	return &Budget{free: total, total: total, wake: make(chan struct{})}
}

// begin gives a frame its ticket.
func (b *Budget) begin() uint64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	t := b.next
	b.next++
	b.active = append(b.active, t)
	return t
}

// end gives back the held bytes of frame t and retires its ticket.
func (b *Budget) end(t uint64, held int) {
	b.mu.Lock()
	b.free += held
	if i := slices.Index(b.active, t); i >= 0 {
		b.active = slices.Delete(b.active, i, i+1)
	}
	close(b.wake)
	b.wake = make(chan struct{})
	b.mu.Unlock()
}

// acquire reserves n more bytes for frame t, waiting until deadline (zero:
// forever) for them unless t is the oldest frame holding budget.
func (b *Budget) acquire(t uint64, n int, deadline time.Time) error {
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		b.mu.Lock()
		if b.free >= n || b.active[0] == t {
			b.free -= n
			b.mu.Unlock()
			return nil
		}
		wake := b.wake
		b.mu.Unlock()
		var expired <-chan time.Time
		if !deadline.IsZero() {
			wait := time.Until(deadline)
			if wait <= 0 {
				return fmt.Errorf("%w: %d bytes wanted", ErrBusy, n)
			}
			if timer == nil {
				timer = time.NewTimer(wait)
			}
			expired = timer.C
		}
		select {
		case <-wake:
		case <-expired:
			return fmt.Errorf("%w: %d bytes wanted", ErrBusy, n)
		}
	}
}

// InUse returns how many bytes are reserved.
func (b *Budget) InUse() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.total - b.free
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

// NewServerCodec returns a net/rpc server codec on conn, bounded by l.
func NewServerCodec(conn net.Conn, l Limits) rpc.ServerCodec {
	return serverCodec{newFrameConn(conn, l), make(chan struct{}, MaxInFlight)}
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
	return &ClientCodec{frameConn: newFrameConn(conn, Limits{Deadlines: Deadlines{Message: d.Message}})}
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
