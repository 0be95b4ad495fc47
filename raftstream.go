package raftkit

// The raft transport on a node's port: raft's stream layer over the port
// mux, and openTransport, which binds the port (TCP, with TLS if set, or
// the in-memory network) and builds raft's NetworkTransport on it.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"syscall"
	"time"

	"github.com/hashicorp/raft"
)

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
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if g := s.mux.gate.Load(); g != nil {
		if d, ok := g.cluster(); ok {
			return s.mux.dialTagged(ctx, string(addr), tagRaftCluster, d[:]...)
		}
	}
	return s.mux.dialTagged(ctx, string(addr), tagRaft)
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
		dial = func(ctx context.Context, addr string) (net.Conn, error) {
			return s.Network.dialContext(ctx, advertise, addr)
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
		dial = func(ctx context.Context, addr string) (net.Conn, error) {
			var dialer net.Dialer
			if local != nil && sameFamily(local.IP, hostOf(addr)) {
				dialer.LocalAddr = local
			}
			conn, err := dialer.DialContext(ctx, "tcp", addr)
			var ae *net.AddrError
			if err != nil && dialer.LocalAddr != nil && (errors.As(err, &ae) || errors.Is(err, syscall.EADDRNOTAVAIL) || errors.Is(err, syscall.EINVAL)) {
				dialer.LocalAddr = nil
				return dialer.DialContext(ctx, "tcp", addr)
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
