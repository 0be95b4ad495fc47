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
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"

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

// Admission. A connection comes from a member or from a stranger. Members
// are hosts of the node's configured Peers and Join addresses and of the
// servers in raft's latest configuration (refreshed every second) and,
// with TLS, every connection that passed the mutual TLS handshake.
// Strangers get short deadlines and small caps of their own, so that no
// number of them can take the room reserved for members: a flood of silent
// or half-open connections from other hosts never locks out a peer or a
// restarting member.
const (
	// handshakeTimeout bounds how long an accepted connection from a
	// member's host may take for its TLS handshake and tag byte;
	// strangerHandshakeTimeout is the same for other hosts.
	handshakeTimeout         = 5 * time.Second
	strangerHandshakeTimeout = 2 * time.Second
	// raftIOTimeout is raft's NetworkTransport I/O deadline.
	raftIOTimeout = 10 * time.Second
	// raftMaxPool is how many idle raft connections are kept per peer.
	raftMaxPool = 3
	// maxPendingPerHost and maxPendingTotal cap strangers' connections that
	// have not finished their handshake (TLS and tag byte), per remote host
	// and in all; maxPendingMemberHost caps those of one member host.
	// Connections over a cap are closed at once.
	maxPendingPerHost    = 16
	maxPendingTotal      = 256
	maxPendingMemberHost = 256
	// maxStrangerConnsPerHost and maxStrangerConns cap strangers'
	// connections past their handshake (without TLS, strangers can speak
	// raft and send requests); each such connection is closed after
	// strangerIdleTimeout without a byte.
	maxStrangerConnsPerHost = 8
	maxStrangerConns        = 64
	strangerIdleTimeout     = 15 * time.Second
	// maxRaftConnsPerHost caps the raft connections from one member host
	// (raft gives each a 256 KiB read buffer; a peer uses about six).
	maxRaftConnsPerHost = 256
	// maxConns caps all open connections of a node; strangers may hold at
	// most maxConns-memberReserve of them.
	maxConns      = 4096
	memberReserve = 1024
	// strangerMaxFrame caps one request message from a stranger: a join
	// request is a few hundred bytes; only members forward commands.
	strangerMaxFrame = 64 << 10
)

// memberRPCLimits and strangerRPCLimits bound the request connections of
// members and of strangers.
var (
	memberRPCLimits   = wire.Limits{Deadlines: rpcDeadlines}
	strangerRPCLimits = wire.Limits{Deadlines: wire.Deadlines{Idle: strangerIdleTimeout, Message: 5 * time.Second}, MaxFrame: strangerMaxFrame}
)

// requestBudget is how many bytes of request messages a node reads at a
// time, over all its connections: two of the largest messages its
// followers send (one command of maxCommand bytes, or a batch of smaller
// ones), and never less than 32 MiB. The oldest message being read may
// overdraw it (see wire.Budget), so a larger message (from a node
// configured with a larger MaxCommandSize) is still read.
func requestBudget(maxCommand int) int {
	return max(2*(max(maxCommand, maxBatchBytes)+64<<10), 32<<20)
}

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
	wg   sync.WaitGroup
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
	for _, a := range members {
		m.staticMembers = append(m.staticMembers, hostOf(a))
	}
	m.setMembers(nil)
	m.wg.Add(1)
	go m.acceptLoop()
	return m
}

func hostOf(addr string) string {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	return host
}

// memberNameTTL is how long the addresses of a member's host name are
// trusted before they are looked up again; memberLookupTimeout bounds one
// lookup.
const (
	memberNameTTL       = 30 * time.Second
	memberLookupTimeout = time.Second
)

type resolvedName struct {
	addrs []string
	at    time.Time
}

// setMembers makes the hosts of addrs, and the static ones, the members.
// A host name counts as every address it resolves to.
func (m *portMux) setMembers(addrs []string) {
	set := map[string]bool{}
	hosts := append([]string(nil), m.staticMembers...)
	for _, a := range addrs {
		hosts = append(hosts, hostOf(a))
	}
	for _, h := range hosts {
		set[h] = true
		if m.resolve && net.ParseIP(h) == nil {
			for _, ip := range m.lookup(h) {
				set[ip] = true
			}
		}
	}
	m.members.Store(&set)
}

// lookup returns name's addresses, from the cache while they are fresh. A
// failed lookup keeps the last answer.
func (m *portMux) lookup(name string) []string {
	m.resolveMu.Lock()
	defer m.resolveMu.Unlock()
	r, ok := m.resolved[name]
	if ok && time.Since(r.at) < memberNameTTL {
		return r.addrs
	}
	ctx, cancel := context.WithTimeout(context.Background(), memberLookupTimeout)
	defer cancel()
	addrs, err := net.DefaultResolver.LookupHost(ctx, name)
	if err != nil {
		m.logger.Debug("cannot resolve a member's host name", "host", name, "error", err)
		r.at = time.Now()
		m.resolved[name] = r
		return r.addrs
	}
	for i, a := range addrs {
		if ip := net.ParseIP(a); ip != nil {
			addrs[i] = ip.String()
		}
	}
	m.resolved[name] = resolvedName{addrs: addrs, at: time.Now()}
	return addrs
}

func (m *portMux) isMember(host string) bool { return (*m.members.Load())[host] }

// followConfiguration keeps the member hosts in step with r's latest
// configuration until the mux closes.
func (m *portMux) followConfiguration(r *raft.Raft) {
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for {
			f := r.GetConfiguration()
			if f.Error() == nil {
				var addrs []string
				for _, srv := range f.Configuration().Servers {
					addrs = append(addrs, string(srv.Address))
				}
				m.setMembers(addrs)
			}
			select {
			case <-m.done:
				return
			case <-tick.C:
			}
		}
	}()
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

func remoteHost(c net.Conn) string {
	host, _, err := net.SplitHostPort(c.RemoteAddr().String())
	if err != nil {
		return c.RemoteAddr().String()
	}
	return host
}

// admit counts a connection that starts its handshake, unless a cap is hit.
func (m *portMux) admit(host string, member bool) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if member {
		if m.pending[host] >= maxPendingMemberHost || len(m.conns) >= maxConns {
			return false
		}
		m.pending[host]++
		return true
	}
	if m.npend >= maxPendingTotal || m.pending[host] >= maxPendingPerHost || len(m.conns) >= maxConns-memberReserve {
		return false
	}
	m.pending[host]++
	m.npend++
	return true
}

func (m *portMux) release(host string, member bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.pending[host]--; m.pending[host] <= 0 {
		delete(m.pending, host)
	}
	if !member {
		m.npend--
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

// admitStranger counts a stranger's connection past its handshake, unless
// a cap is hit; closing tc gives its place back.
func (m *portMux) admitStranger(tc *trackedConn, host string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.nstranger >= maxStrangerConns || m.strangers[host] >= maxStrangerConnsPerHost {
		return false
	}
	m.strangers[host]++
	m.nstranger++
	tc.addOnClose(func() {
		m.mu.Lock()
		defer m.mu.Unlock()
		if m.strangers[host]--; m.strangers[host] <= 0 {
			delete(m.strangers, host)
		}
		m.nstranger--
	})
	return true
}

// admitRaft counts a member's raft connection, unless its host has
// maxRaftConnsPerHost already; closing tc gives its place back.
func (m *portMux) admitRaft(tc *trackedConn, host string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.raftHosts[host] >= maxRaftConnsPerHost {
		return false
	}
	m.raftHosts[host]++
	tc.addOnClose(func() {
		m.mu.Lock()
		defer m.mu.Unlock()
		if m.raftHosts[host]--; m.raftHosts[host] <= 0 {
			delete(m.raftHosts, host)
		}
	})
	return true
}

// idleConn is a stranger's raft connection: a read that waits longer than
// strangerIdleTimeout for its first byte fails, unless the host has become
// a member meanwhile (a node that was just added), which lifts the limit.
type idleConn struct {
	net.Conn
	mux    *portMux
	host   string
	member bool
}

func (c *idleConn) Read(p []byte) (int, error) {
	for {
		if !c.member {
			_ = c.Conn.SetReadDeadline(time.Now().Add(strangerIdleTimeout))
		}
		n, err := c.Conn.Read(p)
		var ne net.Error
		if n == 0 && errors.As(err, &ne) && ne.Timeout() && !c.member && c.mux.isMember(c.host) {
			c.member = true
			_ = c.Conn.SetReadDeadline(time.Time{})
			continue
		}
		return n, err
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

// localIP returns host as a source address to dial from, if it is an IP
// address of one of this machine's interfaces.
func localIP(host string) *net.TCPAddr {
	ip := net.ParseIP(host)
	if ip == nil || ip.IsUnspecified() {
		return nil
	}
	if ip.IsLoopback() {
		return &net.TCPAddr{IP: ip}
	}
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && n.IP.Equal(ip) {
			return &net.TCPAddr{IP: ip}
		}
	}
	return nil
}

// sameFamily reports whether host is not an IP address of the other family
// than ip (a name may resolve to either).
func sameFamily(ip net.IP, host string) bool {
	other := net.ParseIP(host)
	return other == nil || (ip.To4() == nil) == (other.To4() == nil)
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
		// Connections leave from the advertised address when it is one of
		// this machine's, so that peers recognise this node as a member.
		local := localIP(hostOf(s.advertise))
		dial = func(addr string, timeout time.Duration) (net.Conn, error) {
			dialer := net.Dialer{Timeout: timeout}
			if local != nil && sameFamily(local.IP, hostOf(addr)) {
				dialer.LocalAddr = local
			}
			conn, err := dialer.Dial("tcp", addr)
			var ae *net.AddrError
			if err != nil && dialer.LocalAddr != nil && (errors.As(err, &ae) || errors.Is(err, syscall.EADDRNOTAVAIL) || errors.Is(err, syscall.EINVAL)) {
				dialer.LocalAddr = nil
				return dialer.Dial("tcp", addr)
			}
			return conn, err
		}
	}
	var members []string
	for _, p := range s.peers {
		members = append(members, p.Addr)
	}
	members = append(members, s.Join...)
	mux := newPortMux(ln, s.advertise, dial, s.tls, s.Logger.Named("mux"), members, !s.InMemory, requestBudget(s.MaxCommandSize))
	trans := raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
		Stream:  raftStream{mux: mux},
		MaxPool: raftMaxPool,
		Timeout: raftIOTimeout,
		Logger:  s.Logger.Named("transport"),
	})
	return s, mux, trans, nil
}
