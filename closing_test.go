package raftkit

import (
	"context"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/raftkit/raftkit/internal/peer"
	"github.com/raftkit/raftkit/internal/port"
)

// rawPool is a request client whose connections leave from the loopback
// address src with the bare request tag, as any process there can open
// them.
func rawPool(t *testing.T, src string) *peer.Pool {
	t.Helper()
	pool := peer.NewPool(func(ctx context.Context, addr string) (net.Conn, error) {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
		conn, err := d.DialContext(ctx, "tcp", addr)
		if err == nil {
			_, err = conn.Write([]byte{port.TagRPC})
		}
		return conn, err
	})
	t.Cleanup(pool.Close)
	return pool
}

func departuresHeld(n *RaftNode) int {
	n.departures.mu.Lock()
	defer n.departures.mu.Unlock()
	return len(n.departures.current())
}

func sayClosing(t *testing.T, pool *peer.Pool, addr string, req *peer.ClosingRequest) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := pool.Call(ctx, addr, peer.MethodClosing, req, &peer.ClosingResponse{}); err != nil {
		t.Fatalf("closing notice %+v: %v", req, err)
	}
}

// Clean-close notices count only from members: a flood of them naming no
// server, from the members' host or another, and notices naming a member
// from another host, record nothing; a member's own notice is recorded.
func TestClosingNoticesFromStrangersGrowNothing(t *testing.T) {
	c := newTCPCluster(t, 3)
	l := c.leader()
	n := c.nodes[l]
	other := (l + 1) % 3
	stranger, local := rawPool(t, "127.0.0.2"), rawPool(t, "127.0.0.1")
	for i := 0; i < 2000; i++ {
		for _, pool := range []*peer.Pool{stranger, local} {
			sayClosing(t, pool, c.addrs[l], &peer.ClosingRequest{ID: fmt.Sprintf("flood-%d", i), Addr: fmt.Sprintf("127.0.0.9:%d", 1000+i)})
		}
	}
	sayClosing(t, stranger, c.addrs[l], &peer.ClosingRequest{ID: c.nodes[other].ID(), Addr: c.addrs[other]})
	if got := departuresHeld(n); got != 0 {
		t.Fatalf("after a flood of notices from no member, the node holds %d departures", got)
	}
	// A member's notice, from its host: recorded.
	sayClosing(t, local, c.addrs[l], &peer.ClosingRequest{ID: c.nodes[other].ID(), Addr: c.addrs[other]})
	if got := departuresHeld(n); got != 1 {
		t.Fatalf("a member's notice: %d departures held, want 1", got)
	}
}

// What departures holds is bounded whatever adds to it.
func TestDeparturesStayBounded(t *testing.T) {
	d := newDepartures()
	for i := 0; i < 4*maxDepartures; i++ {
		d.add(fmt.Sprintf("n%d", i), fmt.Sprintf("127.0.0.1:%d", 1000+i))
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if got := len(d.peers); got > maxDepartures {
		t.Fatalf("%d departures held, want at most %d", got, maxDepartures)
	}
}

// What the bootstrap agreement remembers of the lines it logged stays
// bounded, whatever strangers' comparison requests claim.
func TestBootstrapRequestsFromStrangersStayBounded(t *testing.T) {
	c := newTCPCluster(t, 1)
	n := c.nodes[c.leader()]
	stranger := rawPool(t, "127.0.0.2")
	for i := 0; i < maxLogged+500; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err := stranger.Call(ctx, c.addrs[0], peer.MethodBootstrap,
			&peer.BootstrapRequest{ID: fmt.Sprint("s", i), Addr: fmt.Sprintf("127.0.0.9:%d", 1000+i), Peers: []string{fmt.Sprintf("s%d=127.0.0.9:%d", i, 1000+i)}},
			&peer.BootstrapResponse{})
		cancel()
		if err != nil {
			t.Fatal(err)
		}
	}
	n.gate.mu.Lock()
	got := len(n.gate.logged)
	n.gate.mu.Unlock()
	if got > maxLogged {
		t.Fatalf("the bootstrap agreement remembers %d logged lines, want at most %d", got, maxLogged)
	}
}
