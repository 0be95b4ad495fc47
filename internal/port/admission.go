package port

// Admission: which connections a node's port takes, from whom, and how
// much they may cost it. The port mux (mux.go) asks these functions
// at each step of a connection.

import (
	"context"
	"errors"
	"net"
	"time"

	"github.com/hashicorp/raft"

	"github.com/raftkit/raftkit/internal/peer"
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
	// HandshakeTimeout bounds how long an accepted connection from a
	// member's host may take for its TLS handshake and tag byte;
	// StrangerHandshakeTimeout is the same for other hosts.
	HandshakeTimeout         = 5 * time.Second
	StrangerHandshakeTimeout = 2 * time.Second
	// RaftIOTimeout is raft's NetworkTransport I/O deadline; a raft
	// connection waits at most this for the Gate to decide.
	RaftIOTimeout = 10 * time.Second
	// raftMaxPool is how many idle raft connections are kept per peer.
	raftMaxPool = 3
	// MaxPendingPerHost and MaxPendingTotal cap strangers' connections that
	// have not finished their handshake (TLS and tag byte), per remote host
	// and in all; MaxPendingMemberHost caps those of one member host.
	// Connections over a cap are closed at once.
	MaxPendingPerHost    = 16
	MaxPendingTotal      = 256
	MaxPendingMemberHost = 256
	// MaxStrangerConnsPerHost and MaxStrangerConns cap strangers'
	// connections past their handshake (without TLS, strangers can speak
	// raft and send requests); each such connection is closed after
	// StrangerIdleTimeout without a byte.
	MaxStrangerConnsPerHost = 8
	MaxStrangerConns        = 64
	StrangerIdleTimeout     = 15 * time.Second
	// MaxRaftConnsPerHost caps the raft connections from one member host
	// (raft gives each a 256 KiB read buffer; a peer uses about six).
	MaxRaftConnsPerHost = 256
	// MaxConns caps all open connections of a node; strangers may hold at
	// most MaxConns-memberReserve of them.
	MaxConns      = 4096
	memberReserve = 1024
	// StrangerMaxFrame caps one request message from a stranger: a join
	// request is a few hundred bytes; only members forward commands.
	StrangerMaxFrame = 64 << 10
)

// memberRPCLimits and strangerRPCLimits bound the request connections of
// members and of strangers.
var (
	memberRPCLimits   = peer.Limits{Deadlines: peer.RPCDeadlines}
	strangerRPCLimits = peer.Limits{Deadlines: peer.Deadlines{Idle: StrangerIdleTimeout, Message: 5 * time.Second}, MaxFrame: StrangerMaxFrame}
)

// requestBudget is how many bytes of request messages a node reads at a
// time, over all its connections: two of the largest messages its
// followers send (one command of maxCommand bytes, or a batch of smaller
// ones), and never less than 32 MiB. The oldest message being read may
// overdraw it (see peer.Budget), so a larger message (from a node
// configured with a larger MaxCommandSize) is still read.
func requestBudget(maxCommand int) int {
	return max(2*(max(maxCommand, peer.MaxBatchBytes)+64<<10), 32<<20)
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
func (m *Mux) setMembers(addrs []string) {
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
func (m *Mux) lookup(name string) []string {
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

// BudgetInUse is how many bytes of request messages are being read.
func (m *Mux) BudgetInUse() int { return m.budget.InUse() }

// Pending is how many connections from host have not finished their
// handshake.
func (m *Mux) Pending(host string) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.pending[host]
}

// RaftConns is how many raft connections from member host are open.
func (m *Mux) RaftConns(host string) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.raftHosts[host]
}

// IsMember reports whether host is a member's.
func (m *Mux) IsMember(host string) bool { return (*m.members.Load())[host] }

// FollowConfiguration keeps the member hosts in step with r's latest
// configuration until the mux closes.
func (m *Mux) FollowConfiguration(r *raft.Raft) {
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
				m.refreshPeers(addrs)
			}
			select {
			case <-m.done:
				return
			case <-tick.C:
			}
		}
	}()
}

func remoteHost(c net.Conn) string {
	host, _, err := net.SplitHostPort(c.RemoteAddr().String())
	if err != nil {
		return c.RemoteAddr().String()
	}
	return host
}

// admit counts a connection that starts its handshake, unless a cap is hit.
func (m *Mux) admit(host string, member bool) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if member {
		if m.pending[host] >= MaxPendingMemberHost || len(m.conns) >= MaxConns {
			return false
		}
		m.pending[host]++
		return true
	}
	if m.npend >= MaxPendingTotal || m.pending[host] >= MaxPendingPerHost || len(m.conns) >= MaxConns-memberReserve {
		return false
	}
	m.pending[host]++
	m.npend++
	return true
}

func (m *Mux) release(host string, member bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.pending[host]--; m.pending[host] <= 0 {
		delete(m.pending, host)
	}
	if !member {
		m.npend--
	}
}

// admitStranger counts a stranger's connection past its handshake, unless
// a cap is hit; closing tc gives its place back.
func (m *Mux) admitStranger(tc *trackedConn, host string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.nstranger >= MaxStrangerConns || m.strangers[host] >= MaxStrangerConnsPerHost {
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
// MaxRaftConnsPerHost already; closing tc gives its place back.
func (m *Mux) admitRaft(tc *trackedConn, host string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.raftHosts[host] >= MaxRaftConnsPerHost {
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
// StrangerIdleTimeout for its first byte fails, unless the host has become
// a member meanwhile (a node that was just added), which lifts the limit.
type idleConn struct {
	net.Conn
	mux    *Mux
	host   string
	member bool
}

func (c *idleConn) Read(p []byte) (int, error) {
	for {
		if !c.member {
			_ = c.Conn.SetReadDeadline(time.Now().Add(StrangerIdleTimeout))
		}
		n, err := c.Conn.Read(p)
		var ne net.Error
		if n == 0 && errors.As(err, &ne) && ne.Timeout() && !c.member && c.mux.IsMember(c.host) {
			c.member = true
			_ = c.Conn.SetReadDeadline(time.Time{})
			continue
		}
		return n, err
	}
}
