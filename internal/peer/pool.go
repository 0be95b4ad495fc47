package peer

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/rpc"
	"reflect"
	"sync"
	"time"

	"github.com/raftkit/raftkit/internal/sentinel"
)

// RPCDeadlines bound reads on request connections.
var RPCDeadlines = Deadlines{Idle: 5 * time.Minute, Message: 30 * time.Second}

// Dialer opens a request connection to a peer's address, giving up when
// ctx ends.
type Dialer func(ctx context.Context, addr string) (net.Conn, error)

// Pool keeps one net/rpc client per peer address; one multiplexed
// connection carries any number of concurrent calls.
type Pool struct {
	dial Dialer
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
	codec *ClientCodec
}

// NewPool returns a pool that opens its connections with dial.
func NewPool(dial Dialer) *Pool {
	p := &Pool{dial: dial, clients: map[string]pooledClient{}}
	p.closing, p.stopDials = context.WithCancel(context.Background())
	return p
}

// CallError is a request that failed on its way to a peer or back. Sent
// says whether it may have reached the peer; false means it certainly did
// not.
type CallError struct {
	Peer string
	Sent bool
	Err  error
}

func (e *CallError) Error() string {
	if !e.Sent {
		return fmt.Sprintf("%s unreachable: %v", e.Peer, e.Err)
	}
	return fmt.Sprintf("via %s: %v", e.Peer, e.Err)
}

func (e *CallError) Unwrap() error { return e.Err }

// RefusedError is a request that its peer answered without serving it (a
// message over the size limit the peer applies to this node's
// connections, say): it certainly had no effect.
type RefusedError struct {
	Peer, Msg string
}

func (e *RefusedError) Error() string {
	if e.TooLarge() {
		return fmt.Sprintf("%s refused the request: %s (it counts this node's connections as a stranger's: "+
			"they come from an address that is not a member's; see Config.AdvertiseAddr)", e.Peer, e.Msg)
	}
	return fmt.Sprintf("%s refused the request: %s", e.Peer, e.Msg)
}

// TooLarge reports whether the peer refused the request as too large.
func (e *RefusedError) TooLarge() bool { return RefusedAsTooLarge(e.Msg) }

func (p *Pool) client(ctx context.Context, addr string) (*rpc.Client, error) {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil, sentinel.ErrClosed
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
	conn, err := p.dial(dctx, addr)
	stop()
	cancel()
	if err != nil {
		if p.closing.Err() != nil || errors.Is(err, sentinel.ErrClosed) {
			return nil, fmt.Errorf("%w: dial %s: %v", sentinel.ErrClosed, addr, err)
		}
		return nil, &CallError{Peer: addr, Err: err}
	}
	codec := NewClientCodec(conn, RPCDeadlines)
	c := pooledClient{rpc.NewClientWithCodec(codec), codec}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		c.Close()
		return nil, sentinel.ErrClosed
	}
	if old, ok := p.clients[addr]; ok && !old.codec.Broken() {
		c.Close()
		return old.Client, nil
	}
	p.clients[addr] = c
	return c.Client, nil
}

// drop forgets a client whose connection failed.
func (p *Pool) drop(addr string, c *rpc.Client) {
	p.mu.Lock()
	if pc, ok := p.clients[addr]; ok && pc.Client == c {
		delete(p.clients, addr)
	}
	p.mu.Unlock()
	c.Close()
}

// Call invokes method on addr within ctx. A failure is a *CallError (not
// sent, or sent and then lost), a *RefusedError, or sentinel.ErrClosed after
// Close.
func (p *Pool) Call(ctx context.Context, addr, method string, args, reply any) error {
	c, err := p.client(ctx, addr)
	if err != nil {
		return err
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
			// The services report their failures inside their responses:
			// an error from net/rpc's server means that it refused the
			// request before any service ran.
			return &RefusedError{Peer: addr, Msg: string(se)}
		}
		if call.Error != nil {
			// Otherwise a call error means the connection or the stream
			// broke.
			p.drop(addr, c)
			return &CallError{Peer: addr, Sent: true, Err: call.Error}
		}
		reflect.ValueOf(reply).Elem().Set(private.Elem())
		return nil
	case <-ctx.Done():
		return &CallError{Peer: addr, Sent: true, Err: ctx.Err()}
	}
}

// Close closes every connection and makes later calls fail with
// sentinel.ErrClosed; dials under way give up.
func (p *Pool) Close() {
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
