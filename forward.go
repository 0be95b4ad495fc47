package raftkit

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"net"
	"net/rpc"
	"reflect"
	"sync"
	"time"

	"github.com/hashicorp/raft"

	"github.com/raftkit/raftkit/internal/wire"
)

// raftkit's own node-to-node requests (forwarded writes, read indexes,
// membership changes) travel as net/rpc calls on the node's one port, in
// connections tagged tagRPC. One multiplexed connection per peer carries
// any number of concurrent calls.

// rpcDeadlines bound reads on request connections.
var rpcDeadlines = wire.Deadlines{Idle: 5 * time.Minute, Message: 30 * time.Second}

// RemoteError is an error that the leader's FSM returned for a forwarded
// write, or that the leader reported, carried back as text: its type and
// identity do not survive forwarding, only its message. The write it
// belongs to was applied (for FSM errors) exactly as on the leader.
type RemoteError struct {
	// Message is the remote error's Error() text.
	Message string
}

// Error returns the remote error's message.
func (e *RemoteError) Error() string { return e.Message }

// rpcService is what remote nodes call. Its methods follow net/rpc's rules.
type rpcService struct{ n *RaftNode }

func (s *rpcService) Apply(req *wire.ApplyRequest, resp *wire.ApplyResponse) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(req.Timeout))
	defer cancel()
	res, err := s.n.applyRaw(ctx, req.Command)
	switch ferr, isErr := res.(error); {
	case err != nil:
		resp.Err = toWire(err, false)
	case isErr:
		resp.Err = toWire(ferr, true)
	default:
		resp.Result = res
	}
	return nil
}

func (s *rpcService) ReadIndex(req *wire.ReadIndexRequest, resp *wire.ReadIndexResponse) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(req.Timeout))
	defer cancel()
	idx, err := s.n.leaderReads.wait(ctx)
	resp.Index, resp.Err = idx, toWire(err, false)
	return nil
}

func (s *rpcService) Membership(req *wire.MembershipRequest, resp *wire.MembershipResponse) error {
	if want := s.n.cfg.JoinSecret; want != "" && subtle.ConstantTimeCompare([]byte(want), []byte(req.Secret)) != 1 {
		s.n.logger.Warn("refused membership request with a wrong join secret", "op", req.Op, "id", req.ID, "addr", req.Addr)
		resp.Err = toWire(fmt.Errorf("%w: membership request %s %s: wrong or missing join secret", ErrNotAuthorized, req.Op, req.ID), false)
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(req.Timeout))
	defer cancel()
	var err error
	switch req.Op {
	case wire.OpAddVoter:
		err = s.n.addServer(ctx, req.ID, req.Addr, true)
	case wire.OpAddNonvoter:
		err = s.n.addServer(ctx, req.ID, req.Addr, false)
	case wire.OpRemove:
		err = s.n.RemoveServer(ctx, req.ID)
	case wire.OpTransfer:
		err = s.n.TransferLeadership(ctx, req.ID)
	default:
		err = fmt.Errorf("%w: unknown membership operation %q", errInvalidRequest, req.Op)
	}
	resp.Err = toWire(err, false)
	return nil
}

var errInvalidRequest = errors.New("raftkit: invalid request")

// toWire turns an error into its wire form. fsm says whether a plain error
// is the FSM's own response.
func toWire(err error, fsm bool) *wire.Error {
	if err == nil {
		return nil
	}
	var nle *NotLeaderError
	switch {
	case errors.As(err, &nle):
		return &wire.Error{Kind: wire.KindNotLeader, Message: err.Error(), LeaderID: nle.LeaderID, LeaderAddr: nle.LeaderAddr}
	case errors.Is(err, ErrUnknownOutcome):
		return &wire.Error{Kind: wire.KindUnknown, Message: err.Error()}
	case errors.Is(err, ErrNoLeader), errors.Is(err, ErrClosed),
		errors.Is(err, raft.ErrLeadershipTransferInProgress), errors.Is(err, raft.ErrEnqueueTimeout):
		// Not applied: the command never entered the leader's log.
		return &wire.Error{Kind: wire.KindNoLeader, Message: err.Error()}
	case errors.Is(err, errInvalidRequest), errors.Is(err, ErrInvalidConfig):
		return &wire.Error{Kind: wire.KindInvalid, Message: err.Error()}
	case errors.Is(err, ErrNotAuthorized):
		return &wire.Error{Kind: wire.KindDenied, Message: err.Error()}
	case fsm:
		return &wire.Error{Kind: wire.KindFSM, Message: err.Error()}
	}
	return &wire.Error{Kind: wire.KindOther, Message: err.Error()}
}

// fromWire turns a wire error back into an error callers can match.
func fromWire(e *wire.Error) error {
	if e == nil {
		return nil
	}
	switch e.Kind {
	case wire.KindNotLeader:
		return &NotLeaderError{LeaderID: e.LeaderID, LeaderAddr: e.LeaderAddr}
	case wire.KindUnknown:
		return fmt.Errorf("%w: leader reported: %s", ErrUnknownOutcome, e.Message)
	case wire.KindNoLeader:
		return fmt.Errorf("%w: leader reported: %s", ErrNoLeader, e.Message)
	case wire.KindInvalid:
		return fmt.Errorf("%w: %s", errInvalidRequest, e.Message)
	case wire.KindDenied:
		return fmt.Errorf("%w: %s", ErrNotAuthorized, e.Message)
	}
	return &RemoteError{Message: e.Message}
}

// serveRPC serves one tagged request connection until it closes.
func (n *RaftNode) serveRPC(conn net.Conn, l wire.Limits) {
	n.rpcServer.ServeCodec(wire.NewServerCodec(conn, l))
}

// rpcPool keeps one net/rpc client per peer address.
type rpcPool struct {
	mux     *portMux
	mu      sync.Mutex
	clients map[string]pooledClient
	closed  bool
}

// pooledClient is a client with its codec, which knows when the connection
// died: a dead client is replaced before a call is sent on it, so that a
// stale connection (say, to a restarted leader) never turns a request that
// was never sent into one of unknown outcome.
type pooledClient struct {
	*rpc.Client
	codec *wire.ClientCodec
}

func newRPCPool(mux *portMux) *rpcPool {
	return &rpcPool{mux: mux, clients: map[string]pooledClient{}}
}

func (p *rpcPool) client(addr string, timeout time.Duration) (*rpc.Client, error) {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil, ErrClosed
	}
	if c, ok := p.clients[addr]; ok {
		if !c.codec.Broken() {
			p.mu.Unlock()
			return c.Client, nil
		}
		delete(p.clients, addr)
		c.Close()
	}
	p.mu.Unlock()
	conn, err := p.mux.dialTagged(addr, timeout, tagRPC)
	if err != nil {
		return nil, err
	}
	codec := wire.NewClientCodec(conn, rpcDeadlines)
	c := pooledClient{rpc.NewClientWithCodec(codec), codec}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		c.Close()
		return nil, ErrClosed
	}
	if old, ok := p.clients[addr]; ok && !old.codec.Broken() {
		c.Close()
		return old.Client, nil
	}
	p.clients[addr] = c
	return c.Client, nil
}

// drop forgets a client whose connection failed.
func (p *rpcPool) drop(addr string, c *rpc.Client) {
	p.mu.Lock()
	if pc, ok := p.clients[addr]; ok && pc.Client == c {
		delete(p.clients, addr)
	}
	p.mu.Unlock()
	c.Close()
}

// call invokes method on addr within ctx. sent reports whether the request
// may have reached the peer (false: it certainly did not).
func (p *rpcPool) call(ctx context.Context, addr, method string, args, reply any) (sent bool, err error) {
	dl, _ := ctx.Deadline()
	c, err := p.client(addr, max(time.Until(dl), 10*time.Millisecond))
	if err != nil {
		return false, err
	}
	// net/rpc fills the reply whenever the response comes, which may be
	// after ctx ended and this call returned: give it a private value and
	// copy it out only once the call is complete.
	private := reflect.New(reflect.TypeOf(reply).Elem())
	call := c.Go(method, args, private.Interface(), make(chan *rpc.Call, 1))
	select {
	case <-call.Done:
		if call.Error != nil {
			// raftkit's services report failures inside their responses,
			// so a call error means the connection or the stream broke.
			p.drop(addr, c)
			return true, call.Error
		}
		reflect.ValueOf(reply).Elem().Set(private.Elem())
		return true, nil
	case <-ctx.Done():
		return true, ctx.Err()
	}
}

func (p *rpcPool) Close() {
	p.mu.Lock()
	p.closed = true
	clients := p.clients
	p.clients = nil
	p.mu.Unlock()
	for _, c := range clients {
		c.Close()
	}
}

// leaderAddr waits (within ctx) until a leader is known and returns it.
func (n *RaftNode) leaderAddr(ctx context.Context) (string, error) {
	if addr := n.GetLeaderAddr(); addr != "" {
		return addr, nil
	}
	addr, err := n.WaitForLeader(ctx)
	if err != nil {
		if errors.Is(err, ErrClosed) {
			return "", err
		}
		return "", fmt.Errorf("%w: %w", ErrNoLeader, err)
	}
	return addr, nil
}

// forward sends a request to the leader. A failure to reach it is
// reported as ErrNoLeader (nothing sent); a failure after sending as
// ErrUnknownOutcome when unknownAfterSend, else as the raw error.
func (n *RaftNode) forward(ctx context.Context, method string, args, reply any, unknownAfterSend bool) error {
	addr, err := n.leaderAddr(ctx)
	if err != nil {
		return err
	}
	if addr == n.addr {
		// We are the leader by now, or a stale view says so; the local path
		// decides.
		return errLeaderIsSelf
	}
	return n.forwardTo(ctx, addr, method, args, reply, unknownAfterSend)
}

// forwardTo sends a request to the leader at addr, with forward's error
// classification.
func (n *RaftNode) forwardTo(ctx context.Context, addr, method string, args, reply any, unknownAfterSend bool) error {
	sent, err := n.rpc.call(ctx, addr, method, args, reply)
	switch {
	case err == nil:
		return nil
	case !sent:
		return fmt.Errorf("%w: leader %s unreachable: %w", ErrNoLeader, addr, err)
	case unknownAfterSend:
		return fmt.Errorf("raftkit: forwarded to leader %s: %w: %w", addr, ErrUnknownOutcome, err)
	}
	return fmt.Errorf("raftkit: forwarded to leader %s: %w", addr, err)
}

var errLeaderIsSelf = errors.New("raftkit: this node is the leader")

// forwardApply sends cmd to the leader and returns its FSM response.
// Concurrent calls travel together in batches (see applyBatcher).
func (n *RaftNode) forwardApply(ctx context.Context, cmd []byte) (any, error) {
	ctx, cancel, _ := n.bound(ctx)
	defer cancel()
	addr, err := n.leaderAddr(ctx)
	if err != nil {
		return nil, err
	}
	if addr == n.addr {
		// We are the leader by now, or a stale view says so; the local
		// path decides.
		return n.applyLocal(ctx, cmd)
	}
	resp, err := n.fwd.submit(ctx, addr, cmd)
	if err != nil {
		return nil, err
	}
	if resp.Err != nil {
		return nil, fromWire(resp.Err)
	}
	return resp.Result, nil
}
