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

	"github.com/raftkit/raftkit/internal/chunk"
	"github.com/raftkit/raftkit/internal/wire"
)

// raftkit's own node-to-node requests (forwarded writes, read indexes,
// membership changes) travel as net/rpc calls on the node's one port, in
// connections tagged tagRPC. One multiplexed connection per peer carries
// any number of concurrent calls.

// rpcDeadlines bound reads on request connections.
var rpcDeadlines = wire.Deadlines{Idle: 5 * time.Minute, Message: 30 * time.Second}

// rpcService is what remote nodes call. Its methods follow net/rpc's rules
// and report failures inside their responses; each serves the request on
// this node or refuses it (a *NotLeaderError names the leader), and never
// forwards it again: a request travels at most one hop.
type rpcService struct{ n *RaftNode }

func (s *rpcService) Apply(req *wire.ApplyRequest, resp *wire.ApplyResponse) error {
	*resp = s.n.serveApply(req.Timeout, [][]byte{req.Command})[0]
	return nil
}

// ApplyBatch is the leader's side of a forwarded batch.
func (s *rpcService) ApplyBatch(req *wire.ApplyBatchRequest, resp *wire.ApplyBatchResponse) error {
	resp.Results = s.n.serveApply(req.Timeout, req.Commands)
	return nil
}

func (s *rpcService) ReadIndex(req *wire.ReadIndexRequest, resp *wire.ReadIndexResponse) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(req.Timeout))
	defer cancel()
	idx, err := s.n.leaderReads.wait(ctx)
	resp.Index, resp.Err = idx, toWire(err)
	return nil
}

func (s *rpcService) Membership(req *wire.MembershipRequest, resp *wire.MembershipResponse) error {
	if want := s.n.cfg.JoinSecret; want != "" && subtle.ConstantTimeCompare([]byte(want), []byte(req.Secret)) != 1 {
		s.n.logger.Warn("refused membership request with a wrong join secret", "op", req.Op, "id", req.ID, "addr", req.Addr)
		resp.Err = toWire(wrapErr(ErrNotAuthorized, "membership request "+req.Op+" "+req.ID, errors.New("wrong or missing join secret")))
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(req.Timeout))
	defer cancel()
	resp.Err = toWire(s.n.membershipHere(ctx, req.Op, req.ID, req.Addr))
	return nil
}

// toWire turns a classified error into its wire form. FSM errors have
// their own (codecs.encodeFSMError).
func toWire(err error) *wire.Error {
	if err == nil {
		return nil
	}
	msg := bare(err)
	var nle *NotLeaderError
	switch {
	case errors.As(err, &nle):
		return &wire.Error{Kind: wire.KindNotLeader, Message: msg, LeaderID: nle.LeaderID, LeaderAddr: nle.LeaderAddr}
	case errors.Is(err, ErrUnknownOutcome):
		return &wire.Error{Kind: wire.KindUnknown, Message: msg}
	case errors.Is(err, ErrTransferInProgress):
		return &wire.Error{Kind: wire.KindTransfer, Message: msg}
	case errors.Is(err, ErrNoLeader), errors.Is(err, ErrClosed):
		// A closing leader did not take the request; the next one will.
		return &wire.Error{Kind: wire.KindNoLeader, Message: msg}
	case errors.Is(err, chunk.ErrIncomplete):
		return &wire.Error{Kind: wire.KindInterrupted, Message: msg}
	case errors.Is(err, ErrNotApplied):
		return &wire.Error{Kind: wire.KindNotApplied, Message: msg}
	case errors.Is(err, ErrNotAuthorized):
		return &wire.Error{Kind: wire.KindDenied, Message: msg}
	case errors.Is(err, ErrTooLarge):
		return &wire.Error{Kind: wire.KindInvalid, Reason: wire.ReasonTooLarge, Message: msg}
	case errors.Is(err, ErrInvalidRequest), errors.Is(err, ErrInvalidConfig):
		return &wire.Error{Kind: wire.KindInvalid, Message: msg}
	}
	return &wire.Error{Kind: wire.KindOther, Message: msg}
}

// fromWire turns a wire error from the node at addr back into an error of
// the same class.
func (n *RaftNode) fromWire(addr string, e *wire.Error) error {
	if e == nil {
		return nil
	}
	cause := errors.New(e.Message)
	what := "leader " + addr
	switch e.Kind {
	case wire.KindNotLeader:
		return &NotLeaderError{LeaderID: e.LeaderID, LeaderAddr: e.LeaderAddr}
	case wire.KindUnknown:
		return wrapErr(ErrUnknownOutcome, what, cause)
	case wire.KindNoLeader:
		return wrapErr(ErrNoLeader, what, cause)
	case wire.KindTransfer:
		return wrapErr(ErrTransferInProgress, what, nil)
	case wire.KindNotApplied:
		return wrapErr(ErrNotApplied, what, cause)
	case wire.KindInterrupted:
		return wrapErr(ErrNotApplied, what, chunk.ErrIncomplete)
	case wire.KindInvalid:
		if e.Reason == wire.ReasonTooLarge {
			return wrapErr(ErrTooLarge, what, cause)
		}
		return wrapErr(ErrInvalidRequest, what, cause)
	case wire.KindDenied:
		return wrapErr(ErrNotAuthorized, what, cause)
	case wire.KindFSM:
		return n.cfg.codecs.decodeFSMError(e)
	}
	return &RemoteError{Message: e.Message}
}

// serveRPC serves one tagged request connection until it closes.
func (n *RaftNode) serveRPC(conn net.Conn, l wire.Limits) {
	n.rpcServer.ServeCodec(wire.NewServerCodec(conn, l))
}

// rpcPool keeps one net/rpc client per peer address.
type rpcPool struct {
	mux *portMux
	// closing ends at Close, so that a dial under way (to an unreachable
	// leader, say) gives up at once rather than at its caller's deadline.
	closing   context.Context
	stopDials context.CancelFunc

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
	p := &rpcPool{mux: mux, clients: map[string]pooledClient{}}
	p.closing, p.stopDials = context.WithCancel(context.Background())
	return p
}

func (p *rpcPool) client(ctx context.Context, addr string) (*rpc.Client, error) {
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
	dctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(p.closing, cancel)
	conn, err := p.mux.dialTagged(dctx, addr, tagRPC)
	stop()
	cancel()
	if err != nil {
		if p.closing.Err() != nil {
			return nil, fmt.Errorf("%w: dial %s: %v", ErrClosed, addr, err)
		}
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
	c, err := p.client(ctx, addr)
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
		var se rpc.ServerError
		if errors.As(call.Error, &se) {
			// raftkit's services report their failures inside their
			// responses: an error from net/rpc's server means that it
			// refused the request before any service ran.
			return false, &refusedError{peer: addr, msg: string(se)}
		}
		if call.Error != nil {
			// Otherwise a call error means the connection or the stream
			// broke.
			p.drop(addr, c)
			return true, call.Error
		}
		reflect.ValueOf(reply).Elem().Set(private.Elem())
		return true, nil
	case <-ctx.Done():
		return true, ctx.Err()
	}
}

// refusedError is a request that its peer answered without serving it (a
// message over the size limit the peer applies to this node's
// connections, say): it certainly had no effect.
type refusedError struct {
	peer, msg string
}

func (e *refusedError) Error() string {
	if wire.RefusedAsTooLarge(e.msg) {
		return fmt.Sprintf("%s refused the request: %s (it counts this node's connections as a stranger's: "+
			"they come from an address that is not a member's; see Config.AdvertiseAddr)", e.peer, e.msg)
	}
	return fmt.Sprintf("%s refused the request: %s", e.peer, e.msg)
}

// tooLarge reports whether the peer refused the request as too large.
func (e *refusedError) tooLarge() bool { return wire.RefusedAsTooLarge(e.msg) }

func (p *rpcPool) Close() {
	p.stopDials()
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
		return "", wrapErr(ErrNoLeader, "", ctx.Err())
	}
	return addr, nil
}

// forward sends a request to the leader once, and classifies a failure to
// reach it: not sent is ErrNoLeader (not applied, worth retrying); after
// sending, ErrUnknownOutcome. A node that believes itself the leader gets
// a *NotLeaderError, so that its caller's next attempt decides afresh.
func (n *RaftNode) forward(ctx context.Context, what, method string, args, reply any) (string, error) {
	addr, err := n.leaderAddr(ctx)
	if err != nil {
		return "", err
	}
	if addr == n.addr {
		return "", n.notLeader()
	}
	return addr, n.forwardTo(ctx, what, addr, method, args, reply)
}

// forwardTo sends a request to the leader at addr, with forward's error
// classification.
func (n *RaftNode) forwardTo(ctx context.Context, what, addr, method string, args, reply any) error {
	sent, err := n.rpc.call(ctx, addr, method, args, reply)
	var refused *refusedError
	switch {
	case err == nil:
		return nil
	case errors.Is(err, ErrClosed):
		return err
	case errors.As(err, &refused):
		return wrapErr(ErrNotApplied, what, err)
	case !sent:
		return wrapErr(ErrNoLeader, what, fmt.Errorf("leader %s unreachable: %w", addr, err))
	}
	return wrapErr(ErrUnknownOutcome, what, fmt.Errorf("via leader %s: %w", addr, err))
}

// forwardApply sends cmd to the leader and returns its FSM response.
// Concurrent calls travel together in batches (see applyBatcher).
func (n *RaftNode) forwardApply(ctx context.Context, cmd ownedCmd) (any, error) {
	addr, err := n.leaderAddr(ctx)
	if err != nil {
		return nil, err
	}
	if addr == n.addr {
		return nil, n.notLeader()
	}
	resp, err := n.fwd.submit(ctx, addr, cmd)
	if err != nil {
		return nil, err
	}
	if resp.Err != nil {
		return nil, n.fromWire(addr, resp.Err)
	}
	res, err := n.cfg.codecs.decodeResult(resp)
	if err != nil {
		return nil, unencodable(err)
	}
	return res, nil
}
