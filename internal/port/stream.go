package port

// The raft transport on a node's port: raft's stream layer over the port
// mux, and Open, which binds the port (TCP, with TLS if set, or raftkit's
// in-memory network) and builds raft's NetworkTransport on it.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"

	"github.com/raftkit/raftkit/internal/peer"
)

// raftStream is the raft.StreamLayer view of a Mux.
type raftStream struct{ mux *Mux }

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
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return s.mux.Dial(ctx, string(addr), peer.PurposeRaft)
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

func (a strAddr) String() string { return string(a) }

// Options say how Open sets up a node's port.
type Options struct {
	// Listener, if set, is the node's port, already bound; otherwise Open
	// listens on Addr (TCP), or calls Listen.
	Listener net.Listener
	Addr     string
	// Listen and Dial, if set, replace TCP (raftkit's in-memory network).
	Listen func() (net.Listener, error)
	Dial   Dialer
	// Advertise is how other nodes reach this one; a port of 0 stands for
	// the port the listener got.
	Advertise string
	// TLS, if set, runs mutual TLS on every connection.
	TLS    *TLS
	Logger hclog.Logger
	// Members are addresses whose hosts count as members from the start
	// (the Peers and Join addresses).
	Members []string
	// MaxCommand is the node's largest command, which sizes the bytes of
	// request messages it reads at a time.
	MaxCommand int
	// Profile is what the node says of itself in its hellos (see
	// internal/peer's protocol.go).
	Profile peer.Profile
}

// Open binds the node's port and builds raft's NetworkTransport on it.
// The mux's Advertise is the advertised address, its port filled in.
func Open(o Options) (*Mux, *raft.NetworkTransport, error) {
	ln, dial := o.Listener, o.Dial
	advertise := o.Advertise
	memory := o.Listen != nil
	var err error
	switch {
	case ln != nil:
	case memory:
		ln, err = o.Listen()
	default:
		ln, err = net.Listen("tcp", o.Addr)
		if err != nil {
			err = fmt.Errorf("raftkit: listen on Addr %q: %w", o.Addr, err)
		}
	}
	if err != nil {
		return nil, nil, err
	}
	if !memory {
		advertise = boundAddr(advertise, ln.Addr())
		// Connections leave from the advertised address when it is one of
		// this machine's, so that peers recognise this node as a member.
		local := localIP(hostOf(advertise))
		dial = func(ctx context.Context, addr string) (net.Conn, error) {
			var dialer net.Dialer
			if local != nil && sameFamily(local.IP, hostOf(addr)) {
				dialer.LocalAddr = local
			}
			conn, err := dialer.DialContext(ctx, "tcp", addr)
			var ae *net.AddrError
			if err != nil && dialer.LocalAddr != nil && (errors.As(err, &ae) || errors.Is(err, syscall.EADDRNOTAVAIL) || errors.Is(err, syscall.EINVAL)) {
				dialer.LocalAddr = nil
				conn, err = dialer.DialContext(ctx, "tcp", addr)
			}
			return conn, withoutSource(err)
		}
	}
	mux := newMux(ln, advertise, dial, o.TLS, o.Logger.Named("mux"), o.Members, !memory, requestBudget(o.MaxCommand), o.Profile)
	// MaxRPCsInFlight 1 turns raft's pipelined replication off. Its
	// pipeline can deadlock a follower's replication for good: with the
	// default of 2 both of its channels are unbuffered, and after a
	// follower answers Success=false (a leader change, a transfer) the
	// sender can park one more request on inprogressCh while the decoder
	// parks on doneCh, which nobody reads any more; heartbeats go on, so
	// no election heals it (seen here as a test hung in raft's pipeline;
	// described in grafana/pyroscope's fix, PR 5518, which turned it off
	// too). raft's own measurements (hashicorp/raft PR 541) found the
	// pipeline of little benefit with batched appends, which raftkit
	// uses (MaxAppendEntries 512).
	trans := raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
		Stream:          raftStream{mux: mux},
		MaxPool:         raftMaxPool,
		MaxRPCsInFlight: 1,
		Timeout:         RaftIOTimeout,
		Logger:          o.Logger.Named("transport"),
	})
	return mux, trans, nil
}

// boundAddr is advertise with a port of 0 replaced by ln's port.
func boundAddr(advertise string, ln net.Addr) string {
	host, port, err := net.SplitHostPort(advertise)
	if err != nil || port != "0" {
		return advertise
	}
	_, real, err := net.SplitHostPort(ln.String())
	if err != nil {
		return advertise
	}
	return net.JoinHostPort(host, real)
}

// Advertise is the address other nodes reach this node at.
func (m *Mux) Advertise() string { return m.advertise }

// withoutSource drops a failed dial's source address from its text: the
// dialer binds only the advertised host, so the source reads "host:0->"
// and says nothing of use.
func withoutSource(err error) error {
	var op *net.OpError
	if errors.As(err, &op) && op.Source != nil {
		op.Source = nil
	}
	return err
}
