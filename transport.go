package raftkit

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
)

// Every connection to a node's port starts with one tag byte that says who
// it is for. Raft traffic and raftkit's own requests share the one port.
const (
	tagRaft byte = 0x52 // 'R': hashicorp/raft's NetworkTransport protocol
	tagRPC  byte = 0x4b // 'K': raftkit's node-to-node requests (net/rpc)
	// tagRaftCluster is tagRaft followed by the digest of the Peers list
	// the sender's cluster was bootstrapped with (see clusterGate).
	tagRaftCluster byte = 0x43 // 'C'
)

const (
	// handshakeTimeout bounds how long an accepted connection may take to
	// send its tag byte before it is closed.
	handshakeTimeout = 5 * time.Second
	// raftIOTimeout is raft's NetworkTransport I/O deadline.
	raftIOTimeout = 10 * time.Second
	// raftMaxPool is how many idle raft connections are kept per peer.
	raftMaxPool = 3
	// maxPendingPerHost and maxPendingTotal cap accepted connections that
	// have not finished their handshake (TLS and tag byte), per remote host
	// and in all, so a flood of idle or garbage connections cannot exhaust
	// a node. Connections over the cap are closed at once.
	maxPendingPerHost = 64
	maxPendingTotal   = 512
	// maxConns caps all open connections of a node.
	maxConns = 4096
)

// dialFunc opens a connection to addr.
type dialFunc func(addr string, timeout time.Duration) (net.Conn, error)

// portMux owns a node's listener and every connection made through it, in
// both directions, and hands accepted connections to raft or to raftkit's
// request server by their tag byte. Close closes all of them.
type portMux struct {
	ln        net.Listener
	advertise string
	dial      dialFunc
	logger    hclog.Logger
	tls       *tlsState // nil: plain TCP

	raftConns chan net.Conn
	// gate decides which raft connections reach raft; nil refuses them
	// all (the node installs it before raft starts).
	gate atomic.Pointer[clusterGate]

	mu      sync.Mutex
	conns   map[net.Conn]struct{}
	handler func(net.Conn) // serves tagRPC connections; nil refuses them
	closed  bool
	pending map[string]int // handshakes under way, by remote host
	npend   int

	done chan struct{}
	wg   sync.WaitGroup
	// raftHandlers counts inbound connections handed to raft that raft has
	// not closed yet. raft handles heartbeats on the connection's goroutine
	// and may touch the stable store there, so the stores must stay open
	// until every such goroutine has returned (it closes its connection as
	// it returns).
	raftHandlers sync.WaitGroup
}

func newPortMux(ln net.Listener, advertise string, dial dialFunc, ts *tlsState, logger hclog.Logger) *portMux {
	m := &portMux{
		ln:        ln,
		advertise: advertise,
		dial:      dial,
		tls:       ts,
		logger:    logger,
		raftConns: make(chan net.Conn),
		conns:     map[net.Conn]struct{}{},
		pending:   map[string]int{},
		done:      make(chan struct{}),
	}
	m.wg.Add(1)
	go m.acceptLoop()
	return m
}

// serveRPC sets the handler for raftkit request connections.
func (m *portMux) serveRPC(h func(net.Conn)) {
	m.mu.Lock()
	m.handler = h
	m.mu.Unlock()
}

func (m *portMux) acceptLoop() {
	defer m.wg.Done()
	delay := time.Duration(0)
	for {
		conn, err := m.ln.Accept()
		if err != nil {
			select {
			case <-m.done:
				return
			default:
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || !errors.Is(err, net.ErrClosed) {
				// Temporary failure such as EMFILE: back off, keep serving.
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				m.logger.Warn("accept failed", "error", err, "retry_in", delay)
				select {
				case <-m.done:
					return
				case <-time.After(delay):
				}
				continue
			}
			return
		}
		delay = 0
		host := remoteHost(conn)
		if !m.admit(host) {
			m.logger.Debug("refusing connection over the handshake limit", "remote", conn.RemoteAddr().String())
			conn.Close()
			continue
		}
		tracked, ok := m.track(conn)
		if !ok {
			m.release(host)
			return
		}
		m.wg.Add(1)
		go m.route(tracked.(*trackedConn), host)
	}
}

func remoteHost(c net.Conn) string {
	host, _, err := net.SplitHostPort(c.RemoteAddr().String())
	if err != nil {
		return c.RemoteAddr().String()
	}
	return host
}

// admit counts a connection that starts its handshake, unless a cap is hit.
func (m *portMux) admit(host string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.npend >= maxPendingTotal || m.pending[host] >= maxPendingPerHost || len(m.conns) >= maxConns {
		return false
	}
	m.pending[host]++
	m.npend++
	return true
}

func (m *portMux) release(host string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.pending[host]--; m.pending[host] <= 0 {
		delete(m.pending, host)
	}
	m.npend--
}

// handshake runs TLS (if on) and reads the tag byte (and the cluster
// digest after tagRaftCluster), all within handshakeTimeout.
func (m *portMux) handshake(tc *trackedConn) (net.Conn, byte, clusterDigest, error) {
	var cluster clusterDigest
	var conn net.Conn = tc
	_ = tc.SetDeadline(time.Now().Add(handshakeTimeout))
	if m.tls != nil {
		tconn := tls.Server(tc, m.tls.serverConfig())
		if err := tconn.Handshake(); err != nil {
			return nil, 0, cluster, fmt.Errorf("TLS handshake: %w", err)
		}
		conn = tconn
	}
	var tag [1]byte
	if _, err := io.ReadFull(conn, tag[:]); err != nil {
		return nil, 0, cluster, fmt.Errorf("read tag: %w", err)
	}
	if tag[0] == tagRaftCluster {
		if _, err := io.ReadFull(conn, cluster[:]); err != nil {
			return nil, 0, cluster, fmt.Errorf("read cluster digest: %w", err)
		}
	}
	_ = tc.SetDeadline(time.Time{})
	return conn, tag[0], cluster, nil
}

// route finishes the handshake and hands the connection on by its tag.
func (m *portMux) route(tc *trackedConn, host string) {
	defer m.wg.Done()
	conn, tag, cluster, err := m.handshake(tc)
	m.release(host)
	if err != nil {
		m.logger.Debug("closing connection that failed its handshake", "remote", tc.RemoteAddr().String(), "error", err)
		tc.Close()
		return
	}
	switch tag {
	case tagRaft, tagRaftCluster:
		if g := m.gate.Load(); g == nil || !g.admit(conn.RemoteAddr().String(), cluster) {
			conn.Close()
			return
		}
		m.raftHandlers.Add(1)
		tc.onClose = m.raftHandlers.Done
		select {
		case m.raftConns <- conn:
		case <-m.done:
			conn.Close()
		}
	case tagRPC:
		m.mu.Lock()
		h := m.handler
		m.mu.Unlock()
		if h == nil {
			conn.Close()
			return
		}
		h(conn)
	default:
		m.logger.Debug("closing connection with unknown tag", "remote", conn.RemoteAddr().String(), "tag", tag)
		conn.Close()
	}
}

// dialTagged opens a connection to addr and sends tag, then extra.
func (m *portMux) dialTagged(addr string, timeout time.Duration, tag byte, extra ...byte) (net.Conn, error) {
	select {
	case <-m.done:
		return nil, ErrClosed
	default:
	}
	conn, err := m.dial(addr, timeout)
	if err != nil {
		return nil, err
	}
	tracked, ok := m.track(conn)
	if !ok {
		return nil, ErrClosed
	}
	_ = tracked.SetDeadline(time.Now().Add(timeout))
	if m.tls != nil {
		tconn := tls.Client(tracked, m.tls.clientConfig())
		if err := tconn.Handshake(); err != nil {
			tracked.Close()
			return nil, fmt.Errorf("raftkit: TLS handshake with %s: %w", addr, err)
		}
		tracked = tconn
	}
	if _, err := tracked.Write(append([]byte{tag}, extra...)); err != nil {
		tracked.Close()
		return nil, err
	}
	_ = tracked.SetDeadline(time.Time{})
	return tracked, nil
}

func (m *portMux) track(c net.Conn) (net.Conn, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		c.Close()
		return nil, false
	}
	t := &trackedConn{Conn: c, mux: m}
	m.conns[t] = struct{}{}
	return t, true
}

// Close stops accepting, closes every connection and waits for the routing
// goroutines. It is idempotent.
func (m *portMux) Close() error {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil
	}
	m.closed = true
	close(m.done)
	conns := m.conns
	m.conns = nil
	m.mu.Unlock()

	err := m.ln.Close()
	for c := range conns {
		c.(*trackedConn).Conn.Close()
	}
	m.wg.Wait()
	handlersDone := make(chan struct{})
	go func() { m.raftHandlers.Wait(); close(handlersDone) }()
	select {
	case <-handlersDone:
	case <-time.After(raftIOTimeout):
		m.logger.Warn("raft connection handlers did not stop in time")
	}
	return err
}

// trackedConn removes itself from its mux when closed.
type trackedConn struct {
	net.Conn
	mux     *portMux
	once    sync.Once
	onClose func() // set before the conn is shared
}

func (t *trackedConn) Close() error {
	err := t.Conn.Close()
	t.once.Do(func() {
		t.mux.mu.Lock()
		if t.mux.conns != nil {
			delete(t.mux.conns, t)
		}
		t.mux.mu.Unlock()
		if t.onClose != nil {
			t.onClose()
		}
	})
	return err
}

// raftStream is the raft.StreamLayer view of a portMux.
type raftStream struct{ mux *portMux }

var _ raft.StreamLayer = raftStream{}

func (s raftStream) Accept() (net.Conn, error) {
	select {
	case c := <-s.mux.raftConns:
		return c, nil
	case <-s.mux.done:
		return nil, net.ErrClosed
	}
}

// Close is a no-op: the node closes the mux after raft has shut down.
func (s raftStream) Close() error { return nil }

func (s raftStream) Addr() net.Addr { return strAddr(s.mux.advertise) }

func (s raftStream) Dial(addr raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	if g := s.mux.gate.Load(); g != nil {
		if d, ok := g.cluster(); ok {
			return s.mux.dialTagged(string(addr), timeout, tagRaftCluster, d[:]...)
		}
	}
	return s.mux.dialTagged(string(addr), timeout, tagRaft)
}

// strAddr is a net.Addr for an advertised address.
type strAddr string

func (a strAddr) Network() string { return "tcp" }
func (a strAddr) String() string  { return string(a) }

// openTransport binds the node's port and builds raft's transport on it.
// It returns s as bound: with Addr's port 0 and no AdvertiseAddr, the
// advertised address has the port the OS chose.
func openTransport(s *settled) (*settled, *portMux, *raft.NetworkTransport, error) {
	var (
		ln   net.Listener
		dial dialFunc
		err  error
	)
	advertise := s.advertise
	if s.InMemory {
		ml, err := s.Network.listen(s.advertise)
		if err != nil {
			return nil, nil, nil, err
		}
		ln = ml
		dial = func(addr string, timeout time.Duration) (net.Conn, error) {
			return s.Network.dial(advertise, addr, timeout)
		}
	} else {
		ln = s.listener
		if ln == nil {
			ln, err = net.Listen("tcp", s.Addr)
		}
		if err != nil {
			return nil, nil, nil, fmt.Errorf("raftkit: listen on Addr %q: %w", s.Addr, err)
		}
		s = s.bound(ln.Addr())
		dialer := &net.Dialer{}
		dial = func(addr string, timeout time.Duration) (net.Conn, error) {
			dialer := *dialer
			dialer.Timeout = timeout
			return dialer.Dial("tcp", addr)
		}
	}
	mux := newPortMux(ln, s.advertise, dial, s.tls, s.Logger.Named("mux"))
	trans := raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
		Stream:  raftStream{mux: mux},
		MaxPool: raftMaxPool,
		Timeout: raftIOTimeout,
		Logger:  s.Logger.Named("transport"),
	})
	return s, mux, trans, nil
}
