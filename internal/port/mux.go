// Package port is a raftkit node's one TCP port: the mux that routes each
// connection by its first byte to raft or to raftkit's request server,
// admission (which hosts may connect, and how much they may cost), raft's
// stream layer on the port, the term guard in front of raft, and the
// mutual-TLS state. The bootstrap agreement reaches it through Gate.
//
// It must never import package raftkit or internal/store; request
// connections are served by a handler it is given (internal/peer's).
package port

import (
	"context"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/raftkit/raftkit/internal/peer"
	"github.com/raftkit/raftkit/internal/sentinel"
)

// Every connection to a node's port starts with one tag byte that says who
// it is for. Raft traffic and raftkit's own requests share the one port.
const (
	TagRaft byte = 0x52 // 'R': hashicorp/raft's NetworkTransport protocol
	TagRPC  byte = 0x4b // 'K': raftkit's node-to-node requests (net/rpc)
	// TagRaftCluster is TagRaft followed by the digest of the Peers list
	// the sender's cluster was bootstrapped with (see Gate).
	TagRaftCluster byte = 0x43 // 'C'
)

// Digest identifies the Peers list a cluster was bootstrapped with:
// SHA-256 of its canonical form.
type Digest [32]byte

// String is the digest's first six bytes in hex, for logs.
func (d Digest) String() string { return hex.EncodeToString(d[:6]) }

// Gate decides which raft connections reach raft: package raftkit's
// bootstrap agreement, which knows the node's cluster.
type Gate interface {
	// Admit reports whether a raft connection from remote, whose cluster
	// has digest d (zero: not said), may reach raft. It may wait while
	// the node is undecided.
	Admit(remote string, d Digest) bool
	// Cluster returns the digest this node sends ahead of its raft
	// traffic, if it knows its cluster.
	Cluster() (Digest, bool)
}

// Dialer opens a connection to addr, giving up when ctx ends.
type Dialer func(ctx context.Context, addr string) (net.Conn, error)

// Mux owns a node's listener and every connection made through it, in
// both directions, and hands accepted connections to raft or to raftkit's
// request server by their tag byte. Close closes all of them.
type Mux struct {
	ln        net.Listener
	advertise string
	dial      Dialer
	logger    hclog.Logger
	tls       *TLS // nil: plain TCP

	raftConns chan net.Conn
	budget    *peer.Budget
	// gate decides which raft connections reach raft; nil refuses them
	// all (the node installs it before raft starts).
	gate atomic.Pointer[Gate]

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
	handler   func(net.Conn, peer.Limits) // serves TagRPC connections; nil refuses them
	closed    bool
	pending   map[string]int // handshakes under way, by remote host
	npend     int            // strangers' handshakes under way
	strangers map[string]int // strangers' connections past the handshake, by host
	nstranger int
	raftHosts map[string]int // members' raft connections, by host

	// profile is what this node says of itself in its hellos; peers is
	// what it learned of its peers' by dialling them (see protocol.go),
	// kept for the members' addresses (setMemberAddrs): the static ones and
	// those of raft's latest configuration. refusedLogged holds the refusals logged
	// (bounded by maxRefusalsLogged).
	profile       peer.Profile
	peers         peerTable
	staticAddrs   []string
	refusedMu     sync.Mutex
	refusedLogged map[string]bool

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

// newMux serves ln. members lists addresses (host:port) whose hosts are
// members from the start, with host names looked up if resolve is set;
// budget is the bytes of request messages the node reads at a time.
func newMux(ln net.Listener, advertise string, dial Dialer, ts *TLS, logger hclog.Logger, members []string, resolve bool, budget int, profile peer.Profile) *Mux {
	m := &Mux{
		profile:       profile,
		refusedLogged: map[string]bool{},
		ln:            ln,
		advertise:     advertise,
		dial:          dial,
		tls:           ts,
		logger:        logger,
		raftConns:     make(chan net.Conn),
		budget:        peer.NewBudget(budget),
		conns:         map[net.Conn]struct{}{},
		pending:       map[string]int{},
		strangers:     map[string]int{},
		raftHosts:     map[string]int{},
		resolve:       resolve,
		resolved:      map[string]resolvedName{},
		done:          make(chan struct{}),
	}
	m.closing, m.stopDials = context.WithCancel(context.Background())
	for _, a := range members {
		m.staticMembers = append(m.staticMembers, hostOf(a))
	}
	m.staticAddrs = members
	m.setMembers(nil)
	m.setMemberAddrs(nil)
	m.wg.Add(1)
	go m.acceptLoop()
	return m
}

// SetGate installs the gate that raft connections pass.
func (m *Mux) SetGate(g Gate) { m.gate.Store(&g) }

func (m *Mux) loadGate() Gate {
	if g := m.gate.Load(); g != nil {
		return *g
	}
	return nil
}

// ServeRPC sets the handler for raftkit request connections; nil refuses
// them.
func (m *Mux) ServeRPC(h func(net.Conn, peer.Limits)) {
	m.mu.Lock()
	m.handler = h
	m.mu.Unlock()
}

func (m *Mux) acceptLoop() {
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
		member := m.IsMember(host)
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

// opening is how an accepted connection opened: its tag, and after it the
// cluster digest (TagRaftCluster) or the dialer's hello (TagHello).
type opening struct {
	conn    net.Conn
	tag     byte
	cluster Digest
	hello   *peer.Hello
}

// handshake runs TLS (if on) and reads the tag byte and what follows it,
// all within the handshake timeout.
func (m *Mux) handshake(tc *trackedConn, member bool) (opening, error) {
	o := opening{conn: tc}
	timeout := HandshakeTimeout
	if !member {
		timeout = StrangerHandshakeTimeout
	}
	_ = tc.SetDeadline(time.Now().Add(timeout))
	if m.tls != nil {
		tconn := tls.Server(tc, m.tls.serverConfig())
		if err := tconn.Handshake(); err != nil {
			return o, fmt.Errorf("TLS handshake: %w", err)
		}
		o.conn = tconn
	}
	var tag [1]byte
	if _, err := io.ReadFull(o.conn, tag[:]); err != nil {
		return o, fmt.Errorf("read tag: %w", err)
	}
	o.tag = tag[0]
	switch {
	case o.tag == TagRaftCluster:
		if _, err := io.ReadFull(o.conn, o.cluster[:]); err != nil {
			return o, fmt.Errorf("read cluster digest: %w", err)
		}
	case o.tag == TagHello && m.profile.Protocol >= 2:
		h, err := peer.ReadHello(o.conn)
		if err != nil {
			return o, fmt.Errorf("read hello: %w", err)
		}
		if len(h.Cluster) == len(o.cluster) {
			copy(o.cluster[:], h.Cluster)
		}
		o.hello = h
	}
	_ = tc.SetDeadline(time.Time{})
	return o, nil
}

// answer says this node's hello on a connection that opened with one, or
// refuses the dialer (and closes the connection); it reports the purpose
// the connection is for, or "" when it is done with.
//
// The hello decides this connection alone: nothing it says is recorded
// of the address it claims (From), since any process on a member's host
// could claim a member's. What the mux records of its members it learns
// from its own dials (see protocol.go).
func (m *Mux) answer(o opening, host string) string {
	h := o.hello
	p := peer.Of(h)
	reply := m.hello("")
	if reason, ours := peer.Incompatible(m.profile, p); reason != "" {
		m.refuse(host, reason, ours, p, false, false)
		reply.Refused = reason
		_ = o.conn.SetWriteDeadline(time.Now().Add(HandshakeTimeout))
		_ = peer.WriteHello(o.conn, reply)
		o.conn.Close()
		return ""
	}
	_ = o.conn.SetWriteDeadline(time.Now().Add(HandshakeTimeout))
	if err := peer.WriteHello(o.conn, reply); err != nil {
		o.conn.Close()
		return ""
	}
	_ = o.conn.SetWriteDeadline(time.Time{})
	if h.Purpose == peer.PurposeAsk {
		o.conn.Close()
		return ""
	}
	return h.Purpose
}

// route finishes the handshake and hands the connection on by its tag.
func (m *Mux) route(tc *trackedConn, host string, member bool) {
	defer m.wg.Done()
	o, err := m.handshake(tc, member)
	m.release(host, member)
	if err != nil {
		m.logger.Debug("closing connection that failed its handshake", "remote", tc.RemoteAddr().String(), "error", err)
		tc.Close()
		return
	}
	conn, tag, cluster := o.conn, o.tag, o.cluster
	// With TLS, a completed handshake proves membership.
	stranger := m.tls == nil && !member && !m.IsMember(host)
	if stranger {
		if !m.admitStranger(tc, host) {
			m.logger.Debug("closing connection over the limit for hosts outside the cluster", "remote", tc.RemoteAddr().String())
			tc.Close()
			return
		}
	}
	purpose := ""
	switch {
	case o.hello != nil:
		if purpose = m.answer(o, host); purpose == "" {
			return
		}
	case tag == TagRaft || tag == TagRaftCluster || tag == TagRPC:
		// A node of protocol 1: no hello, the bare tag.
		if reason, ours := peer.Incompatible(m.profile, peer.Protocol1()); reason != "" {
			m.refuse(host, reason, ours, peer.Protocol1(), true, false)
			conn.Close()
			return
		}
		purpose = peer.PurposeRaft
		if tag == TagRPC {
			purpose = peer.PurposeRPC
		}
	}
	switch purpose {
	case peer.PurposeRaft:
		if g := m.loadGate(); g == nil || !g.Admit(conn.RemoteAddr().String(), cluster) {
			conn.Close()
			return
		}
		if stranger {
			// raft's reads have no deadline of their own.
			conn = &idleConn{Conn: conn, mux: m, host: host}
		} else if !m.admitRaft(tc, host) {
			m.logger.Debug("closing raft connection over the limit for one host", "remote", tc.RemoteAddr().String(), "limit", MaxRaftConnsPerHost)
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
	case peer.PurposeRPC:
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
			limits.Upgrade = func() (peer.Limits, bool) { return member, m.IsMember(host) }
		}
		h(conn, limits)
	default:
		m.logger.Debug("closing connection with unknown tag", "remote", conn.RemoteAddr().String(), "tag", tag)
		conn.Close()
	}
}

// dialTagged opens a connection to addr and sends tag, then extra, within
// ctx's deadline; it gives up when ctx ends or the mux closes.
func (m *Mux) dialTagged(ctx context.Context, addr string, tag byte, extra ...byte) (net.Conn, error) {
	select {
	case <-m.done:
		return nil, sentinel.ErrClosed
	default:
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(m.closing, cancel)
	defer stop()
	conn, err := m.dial(ctx, addr)
	if err != nil {
		if m.closing.Err() != nil {
			return nil, fmt.Errorf("%w: dial %s: %v", sentinel.ErrClosed, addr, err)
		}
		return nil, err
	}
	tracked, ok := m.track(conn)
	if !ok {
		return nil, sentinel.ErrClosed
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

func (m *Mux) track(c net.Conn) (net.Conn, bool) {
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
func (m *Mux) Close() error {
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
	case <-time.After(RaftIOTimeout):
		m.logger.Warn("raft connection handlers did not stop in time")
	}
	return err
}

// trackedConn removes itself from its mux when closed.
type trackedConn struct {
	net.Conn
	mux     *Mux
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
