package raftkit

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/raftkit/raftkit/internal/wire"
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

// dialFunc opens a connection to addr, giving up when ctx ends.
type dialFunc func(ctx context.Context, addr string) (net.Conn, error)

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
	budget    *wire.Budget
	// gate decides which raft connections reach raft; nil refuses them
	// all (the node installs it before raft starts).
	gate atomic.Pointer[clusterGate]

	// members holds the member hosts (see Admission) as connections show
	// them (IP addresses, or in-memory names); staticMembers are those from
	// the Config. With resolve, host names are looked up, and the answers
	// kept for memberNameTTL in resolved.
	members       atomic.Pointer[map[string]bool]
	staticMembers []string
	resolve       bool
	resolved      map[string]resolvedName
	resolveMu     sync.Mutex

	mu        sync.Mutex
	conns     map[net.Conn]struct{}
	handler   func(net.Conn, wire.Limits) // serves tagRPC connections; nil refuses them
	closed    bool
	pending   map[string]int // handshakes under way, by remote host
	npend     int            // strangers' handshakes under way
	strangers map[string]int // strangers' connections past the handshake, by host
	nstranger int
	raftHosts map[string]int // members' raft connections, by host

	done chan struct{}
	// closing ends when the mux closes: dials under way give up.
	closing   context.Context
	stopDials context.CancelFunc
	wg        sync.WaitGroup
	// raftHandlers counts inbound connections handed to raft that raft has
	// not closed yet. raft handles heartbeats on the connection's goroutine
	// and may touch the stable store there, so the stores must stay open
	// until every such goroutine has returned (it closes its connection as
	// it returns).
	raftHandlers sync.WaitGroup
}

// newPortMux serves ln. members lists addresses (host:port) whose hosts are
// members from the start, with host names looked up if resolve is set;
// budget is the bytes of request messages the node reads at a time.
func newPortMux(ln net.Listener, advertise string, dial dialFunc, ts *tlsState, logger hclog.Logger, members []string, resolve bool, budget int) *portMux {
	m := &portMux{
		ln:        ln,
		advertise: advertise,
		dial:      dial,
		tls:       ts,
		logger:    logger,
		raftConns: make(chan net.Conn),
		budget:    wire.NewBudget(budget),
		conns:     map[net.Conn]struct{}{},
		pending:   map[string]int{},
		strangers: map[string]int{},
		raftHosts: map[string]int{},
		resolve:   resolve,
		resolved:  map[string]resolvedName{},
		done:      make(chan struct{}),
	}
	m.closing, m.stopDials = context.WithCancel(context.Background())
	for _, a := range members {
		m.staticMembers = append(m.staticMembers, hostOf(a))
	}
	m.setMembers(nil)
	m.wg.Add(1)
	go m.acceptLoop()
	return m
}

// serveRPC sets the handler for raftkit request connections.
func (m *portMux) serveRPC(h func(net.Conn, wire.Limits)) {
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
		member := m.isMember(host)
		if !m.admit(host, member) {
			m.logger.Debug("refusing connection over the handshake limit", "remote", conn.RemoteAddr().String(), "member_host", member)
			conn.Close()
			continue
		}
		tracked, ok := m.track(conn)
		if !ok {
			m.release(host, member)
			return
		}
		m.wg.Add(1)
		go m.route(tracked.(*trackedConn), host, member)
	}
}

// handshake runs TLS (if on) and reads the tag byte (and the cluster
// digest after tagRaftCluster), all within the handshake timeout.
func (m *portMux) handshake(tc *trackedConn, member bool) (net.Conn, byte, clusterDigest, error) {
	var cluster clusterDigest
	var conn net.Conn = tc
	timeout := handshakeTimeout
	if !member {
		timeout = strangerHandshakeTimeout
	}
	_ = tc.SetDeadline(time.Now().Add(timeout))
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
func (m *portMux) route(tc *trackedConn, host string, member bool) {
	defer m.wg.Done()
	conn, tag, cluster, err := m.handshake(tc, member)
	m.release(host, member)
	if err != nil {
		m.logger.Debug("closing connection that failed its handshake", "remote", tc.RemoteAddr().String(), "error", err)
		tc.Close()
		return
	}
	// With TLS, a completed handshake proves membership.
	stranger := m.tls == nil && !member && !m.isMember(host)
	if stranger {
		if !m.admitStranger(tc, host) {
			m.logger.Debug("closing connection over the limit for hosts outside the cluster", "remote", tc.RemoteAddr().String())
			tc.Close()
			return
		}
	}
	switch tag {
	case tagRaft, tagRaftCluster:
		if g := m.gate.Load(); g == nil || !g.admit(conn.RemoteAddr().String(), cluster) {
			conn.Close()
			return
		}
		if stranger {
			// raft's reads have no deadline of their own.
			conn = &idleConn{Conn: conn, mux: m, host: host}
		} else if !m.admitRaft(tc, host) {
			m.logger.Debug("closing raft connection over the limit for one host", "remote", tc.RemoteAddr().String(), "limit", maxRaftConnsPerHost)
			tc.Close()
			return
		}
		m.raftHandlers.Add(1)
		tc.addOnClose(m.raftHandlers.Done)
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
		limits := memberRPCLimits
		limits.Budget = m.budget
		if stranger {
			// A node that joins through this one is a stranger until the
			// configuration names it; its connection then gets a member's
			// limits.
			member := limits
			limits = strangerRPCLimits
			limits.Budget = m.budget
			limits.Upgrade = func() (wire.Limits, bool) { return member, m.isMember(host) }
		}
		h(conn, limits)
	default:
		m.logger.Debug("closing connection with unknown tag", "remote", conn.RemoteAddr().String(), "tag", tag)
		conn.Close()
	}
}

// dialTagged opens a connection to addr and sends tag, then extra, within
// ctx's deadline; it gives up when ctx ends or the mux closes.
func (m *portMux) dialTagged(ctx context.Context, addr string, tag byte, extra ...byte) (net.Conn, error) {
	select {
	case <-m.done:
		return nil, ErrClosed
	default:
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(m.closing, cancel)
	defer stop()
	conn, err := m.dial(ctx, addr)
	if err != nil {
		if m.closing.Err() != nil {
			return nil, fmt.Errorf("%w: dial %s: %v", ErrClosed, addr, err)
		}
		return nil, err
	}
	tracked, ok := m.track(conn)
	if !ok {
		return nil, ErrClosed
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = tracked.SetDeadline(dl)
	}
	if m.tls != nil {
		tconn := tls.Client(tracked, m.tls.clientConfig())
		if err := tconn.HandshakeContext(ctx); err != nil {
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
	m.stopDials()
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
	onClose []func() // added to before the conn is shared
}

func (t *trackedConn) addOnClose(f func()) { t.onClose = append(t.onClose, f) }

func (t *trackedConn) Close() error {
	err := t.Conn.Close()
	t.once.Do(func() {
		t.mux.mu.Lock()
		if t.mux.conns != nil {
			delete(t.mux.conns, t)
		}
		t.mux.mu.Unlock()
		for _, f := range t.onClose {
			f()
		}
	})
	return err
}
