package raftkit

// The node's port: TLS settings, the port's options, and MemNetwork, the
// in-memory network that in-memory nodes use in place of TCP.

import (
	"context"
	"fmt"
	"hash/fnv"
	"net"
	"path"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/raftkit/raftkit/internal/port"
)

// TLSConfig turns on mutual TLS for everything on the node's port: raft's
// traffic and raftkit's own requests (forwarded writes, reads, joins). Every
// connection, in both directions, then uses TLS 1.2 or later with a
// certificate that is verified against CAFile and authorised by PeerNames;
// plain connections are refused.
//
// The files are read again whenever they change on disk, checked at each
// handshake, so certificates and CAs can be rotated without a restart. A
// file that fails to load keeps the last good version in use and the error
// is logged.
type TLSConfig struct {
	// CAFile is a PEM bundle of the certificate authorities that sign node
	// certificates. Several CAs may be listed during a rotation.
	CAFile string

	// CertFile and KeyFile hold this node's PEM certificate (chain) and key.
	// The certificate is used as both TLS server and TLS client, so it must
	// allow both the serverAuth and the clientAuth extended key usage.
	CertFile string
	KeyFile  string

	// PeerNames authorises peers: a peer's certificate is accepted only if
	// one of its DNS or URI subject alternative names matches one of these
	// patterns (path.Match syntax, e.g. "*.raft.example.internal"). A valid
	// certificate from the CA is not enough, so client-only or other
	// services' certificates from the same CA cannot reach raft. "*" accepts
	// any node certificate of the CA: use it only with a CA dedicated to
	// raft nodes. Required.
	PeerNames []string
}

// validateTLS checks the TLSConfig fields and loads the files once.
// onError receives later failures to reload them.
func validateTLS(c *TLSConfig, onError func(error)) (*port.TLS, error) {
	for _, f := range []struct{ name, value string }{{"TLS.CAFile", c.CAFile}, {"TLS.CertFile", c.CertFile}, {"TLS.KeyFile", c.KeyFile}} {
		if strings.TrimSpace(f.value) == "" {
			return nil, configErr(f.name, f.value, "required when TLS is set")
		}
	}
	if len(c.PeerNames) == 0 {
		return nil, configErr("TLS.PeerNames", "", "required: name patterns that peers' certificates must carry (\"*\" only with a CA dedicated to raft nodes)")
	}
	for i, p := range c.PeerNames {
		if _, err := path.Match(p, ""); err != nil || p == "" {
			return nil, configErr(fmt.Sprintf("TLS.PeerNames[%d]", i), p, "is not a valid pattern")
		}
	}
	s, err := port.NewTLS(port.TLSFiles{CAFile: c.CAFile, CertFile: c.CertFile, KeyFile: c.KeyFile, PeerNames: c.PeerNames}, onError)
	if err != nil {
		return nil, publicErr(err)
	}
	return s, nil
}

// settleTLS checks TLS and loads its files; nil without TLS. Failures to
// reload the files later are logged to logger.
func settleTLS(c *TLSConfig, logger hclog.Logger) (*port.TLS, error) {
	if c == nil {
		return nil, nil
	}
	logger = logger.Named("tls")
	return validateTLS(c, func(err error) {
		logger.Warn("reloading TLS files failed; keeping the last good ones", "error", err)
	})
}

// MemNetwork connects in-memory nodes (Config.InMemory) without sockets. Its
// connections behave like TCP connections between the nodes' addresses, so
// in-memory nodes run the same transport, forwarding and membership code as
// TCP nodes. Tests cut links with Disconnect, Isolate and Block, and mend
// them with Reconnect and Heal; cutting a link also breaks the connections
// already open on it, as a crashed switch or a firewall reset would.
//
// Faults are reproducible: whether a write is dropped depends only on the
// network's seed (SetSeed), the link (sender and receiver addresses) and
// how many writes that link carried before it, never on a global random
// source. Two networks with the same seed and faults drop the same writes
// of each link: the k-th write from a to b is lost in both or in neither.
// Which message the k-th write carries still depends on how the
// goroutines of the nodes were scheduled.
//
// A MemNetwork is safe for concurrent use. The zero value is not usable;
// call NewMemNetwork.
type MemNetwork struct {
	mu        sync.Mutex
	listeners map[string]*memListener
	blocked   map[[2]string]bool // from, to
	isolated  map[string]bool
	conns     map[*memConn]struct{}
	seed      uint64
	faults    LinkFaults               // links without their own
	links     map[[2]string]LinkFaults // from, to
	sent      map[[2]string]uint64     // writes so far per link
	nodes     map[*RaftNode]struct{}   // open nodes on the network, for StopNodes
}

// LinkFaults are the faults MemNetwork injects on writes in one direction
// of a link.
type LinkFaults struct {
	// DropRate is the probability that a write is lost, clamped to [0, 1].
	// As on TCP, where a lost message ends in a reset once retransmission
	// gives up, the loss breaks the connection it was sent on: both ends
	// see it closed and the write fails. Raft and raftkit then redial, so a
	// drop rate models a lossy, flapping link.
	DropRate float64
	// Delay is how long each write waits before it is delivered. It models
	// a slow link, not reordering.
	Delay time.Duration
}

// NewMemNetwork returns an empty in-memory network with seed 0 and no
// faults.
func NewMemNetwork() *MemNetwork {
	return &MemNetwork{
		listeners: map[string]*memListener{},
		blocked:   map[[2]string]bool{},
		isolated:  map[string]bool{},
		conns:     map[*memConn]struct{}{},
		links:     map[[2]string]LinkFaults{},
		sent:      map[[2]string]uint64{},
		nodes:     map[*RaftNode]struct{}{},
	}
}

// StopNodes stops every open node on the network at once, as a crash
// would (raft stops with no leadership handover, so it is quick), each
// having first told the others that it is closing, so that none of them
// logs its failures to reach the others above Debug: the end of an
// in-memory cluster (raftkittest's Cluster.Close). Like a crash, it keeps
// each node's log, term, vote and snapshots in its MemStorage. It returns
// once every node is closed; nodes started meanwhile are not stopped.
func (m *MemNetwork) StopNodes() {
	m.mu.Lock()
	nodes := make([]*RaftNode, 0, len(m.nodes))
	for n := range m.nodes {
		nodes = append(nodes, n)
	}
	m.mu.Unlock()
	var wg sync.WaitGroup
	for _, n := range nodes {
		wg.Add(1)
		go func() { defer wg.Done(); n.announceClose() }()
	}
	wg.Wait()
	for _, n := range nodes {
		wg.Add(1)
		go func() { defer wg.Done(); _ = n.crash() }()
	}
	wg.Wait()
}

// attach adds n to the nodes StopNodes stops, until the returned function
// removes it.
func (m *MemNetwork) attach(n *RaftNode) (detach func()) {
	m.mu.Lock()
	m.nodes[n] = struct{}{}
	m.mu.Unlock()
	return func() {
		m.mu.Lock()
		delete(m.nodes, n)
		m.mu.Unlock()
	}
}

// SetSeed sets the seed that decides which writes are dropped, and
// restarts every link's count of writes, so that from here on the network
// drops the same writes as any network given the same seed and faults.
func (n *MemNetwork) SetSeed(seed uint64) {
	n.mu.Lock()
	n.seed = seed
	n.sent = map[[2]string]uint64{}
	n.mu.Unlock()
}

// Disconnect cuts the link between a and b in both directions.
func (n *MemNetwork) Disconnect(a, b string) {
	n.mu.Lock()
	n.blocked[[2]string{a, b}] = true
	n.blocked[[2]string{b, a}] = true
	n.mu.Unlock()
	n.sever()
}

// Block cuts the link from one address to another in one direction only:
// from cannot open connections to to. Connections already open between
// them in either direction are broken, since a TCP connection carries
// traffic both ways.
func (n *MemNetwork) Block(from, to string) {
	n.mu.Lock()
	n.blocked[[2]string{from, to}] = true
	n.mu.Unlock()
	n.sever()
}

// Reconnect restores the link between a and b in both directions.
func (n *MemNetwork) Reconnect(a, b string) {
	n.mu.Lock()
	delete(n.blocked, [2]string{a, b})
	delete(n.blocked, [2]string{b, a})
	n.mu.Unlock()
}

// Isolate cuts every link of addr, including links to nodes that join later.
func (n *MemNetwork) Isolate(addr string) {
	n.mu.Lock()
	n.isolated[addr] = true
	n.mu.Unlock()
	n.sever()
}

// Heal restores every link that Disconnect, Block or Isolate cut.
func (n *MemNetwork) Heal() {
	n.mu.Lock()
	n.blocked = map[[2]string]bool{}
	n.isolated = map[string]bool{}
	n.mu.Unlock()
}

// SetDelay makes every write on links without their own faults
// (SetLinkFaults) wait d before it is delivered (0 turns it off); see
// LinkFaults.Delay.
func (n *MemNetwork) SetDelay(d time.Duration) {
	n.mu.Lock()
	n.faults.Delay = d
	n.mu.Unlock()
}

// SetDropRate makes each write on links without their own faults
// (SetLinkFaults) lost with probability p (0 turns it off; values are
// clamped to [0, 1]); see LinkFaults.DropRate.
func (n *MemNetwork) SetDropRate(p float64) {
	n.mu.Lock()
	n.faults.DropRate = min(max(p, 0), 1)
	n.mu.Unlock()
}

// SetLinkFaults sets the faults of writes from one address to another, in
// that direction only, in place of the network-wide ones of SetDropRate
// and SetDelay. Heal leaves them; ClearLinkFaults removes them.
func (n *MemNetwork) SetLinkFaults(from, to string, f LinkFaults) {
	f.DropRate = min(max(f.DropRate, 0), 1)
	n.mu.Lock()
	n.links[[2]string{from, to}] = f
	n.mu.Unlock()
}

// ClearLinkFaults removes every link's own faults (SetLinkFaults): all
// links have the network-wide ones again.
func (n *MemNetwork) ClearLinkFaults() {
	n.mu.Lock()
	n.links = map[[2]string]LinkFaults{}
	n.mu.Unlock()
}

// nextWrite counts a write from one address to another and returns its
// delay and whether it is dropped.
func (n *MemNetwork) nextWrite(from, to string) (time.Duration, bool) {
	link := [2]string{from, to}
	n.mu.Lock()
	f, ok := n.links[link]
	if !ok {
		f = n.faults
	}
	k := n.sent[link]
	n.sent[link] = k + 1
	seed := n.seed
	n.mu.Unlock()
	return f.Delay, f.DropRate > 0 && dropDraw(seed, from, to, k) < f.DropRate
}

// dropDraw is a number in [0, 1) fixed by the seed, the link and the
// write's position on it.
func dropDraw(seed uint64, from, to string, k uint64) float64 {
	h := fnv.New64a()
	h.Write([]byte(from))
	h.Write([]byte{0})
	h.Write([]byte(to))
	x := mix64(mix64(mix64(seed)+h.Sum64()) + k)
	return float64(x>>11) / (1 << 53)
}

// mix64 is splitmix64's step: a bijection that spreads every input bit
// over the whole output.
func mix64(x uint64) uint64 {
	x += 0x9e3779b97f4a7c15
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9
	x = (x ^ (x >> 27)) * 0x94d049bb133111eb
	return x ^ (x >> 31)
}

func (n *MemNetwork) cutLocked(from, to string) bool {
	return n.isolated[from] || n.isolated[to] || n.blocked[[2]string{from, to}]
}

// sever closes the open connections whose link is now cut.
func (n *MemNetwork) sever() {
	n.mu.Lock()
	var doomed []*memConn
	for c := range n.conns {
		if n.cutLocked(c.from, c.to) || n.cutLocked(c.to, c.from) {
			doomed = append(doomed, c)
		}
	}
	n.mu.Unlock()
	for _, c := range doomed {
		c.Close()
	}
}

func (n *MemNetwork) listen(addr string) (*memListener, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if _, taken := n.listeners[addr]; taken {
		return nil, fmt.Errorf("raftkit: listen on in-memory address %q: address already in use", addr)
	}
	l := &memListener{net: n, addr: addr, ch: make(chan net.Conn), done: make(chan struct{})}
	n.listeners[addr] = l
	return l, nil
}

// dial connects from to within timeout.
func (n *MemNetwork) dial(from, to string, timeout time.Duration) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return n.dialContext(ctx, from, to)
}

// dialContext connects from to, unless ctx ends before to's listener
// takes the connection.
func (n *MemNetwork) dialContext(ctx context.Context, from, to string) (net.Conn, error) {
	client, server := net.Pipe()
	cc := &memConn{Conn: client, net: n, from: from, to: to}
	sc := &memConn{Conn: server, net: n, from: to, to: from}
	// The check and the registration are one step, so that a link cut
	// while this dial is under way also breaks the new connection.
	n.mu.Lock()
	l := n.listeners[to]
	cut := n.cutLocked(from, to)
	if !cut && l != nil {
		n.conns[cc] = struct{}{}
		n.conns[sc] = struct{}{}
	}
	n.mu.Unlock()
	if cut || l == nil {
		client.Close()
		server.Close()
	}
	if cut {
		return nil, &net.OpError{Op: "dial", Net: "mem", Addr: memAddr(to), Err: fmt.Errorf("network unreachable (link cut by MemNetwork)")}
	}
	if l == nil {
		return nil, &net.OpError{Op: "dial", Net: "mem", Addr: memAddr(to), Err: fmt.Errorf("connection refused")}
	}
	select {
	case l.ch <- sc:
		return cc, nil
	case <-l.done:
	case <-ctx.Done():
	}
	cc.Close()
	sc.Close()
	return nil, &net.OpError{Op: "dial", Net: "mem", Addr: memAddr(to), Err: fmt.Errorf("connection refused")}
}

// memConn is one end of an in-memory connection.
type memConn struct {
	net.Conn
	net  *MemNetwork
	from string // this end's address
	to   string // the other end's address
	once sync.Once
}

func (c *memConn) LocalAddr() net.Addr  { return memAddr(c.from) }
func (c *memConn) RemoteAddr() net.Addr { return memAddr(c.to) }

func (c *memConn) Write(b []byte) (int, error) {
	d, drop := c.net.nextWrite(c.from, c.to)
	if drop {
		c.Close()
		return 0, &net.OpError{Op: "write", Net: "mem", Addr: memAddr(c.to), Err: fmt.Errorf("connection reset (message dropped by MemNetwork)")}
	}
	if d > 0 {
		time.Sleep(d)
	}
	return c.Conn.Write(b)
}

func (c *memConn) Close() error {
	c.once.Do(func() {
		c.net.mu.Lock()
		delete(c.net.conns, c)
		c.net.mu.Unlock()
	})
	return c.Conn.Close()
}

type memListener struct {
	net  *MemNetwork
	addr string
	ch   chan net.Conn
	done chan struct{}
	once sync.Once
}

func (l *memListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *memListener) Close() error {
	l.once.Do(func() {
		close(l.done)
		l.net.mu.Lock()
		delete(l.net.listeners, l.addr)
		l.net.mu.Unlock()
	})
	return nil
}

func (l *memListener) Addr() net.Addr { return memAddr(l.addr) }

type memAddr string

func (a memAddr) Network() string { return "mem" }
func (a memAddr) String() string  { return string(a) }

// portOptions are what port.Open sets up for this node.
func (s *settled) portOptions() port.Options {
	o := port.Options{Listener: s.Listener, Addr: s.Addr, Advertise: s.advertise, TLS: s.tls, Logger: s.Logger, MaxCommand: s.MaxCommandSize}
	if s.InMemory {
		network, advertise := s.Network, s.advertise
		o.Listen = func() (net.Listener, error) { return network.listen(advertise) }
		o.Dial = func(ctx context.Context, addr string) (net.Conn, error) {
			return network.dialContext(ctx, advertise, addr)
		}
	}
	for _, p := range s.peers {
		o.Members = append(o.Members, p.Addr)
	}
	o.Members = append(o.Members, s.Join...)
	return o
}
