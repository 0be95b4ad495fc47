package port

import (
	"context"
	"errors"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/raftkit/raftkit/internal/peer"
)

var current = peer.Profile{Protocol: peer.Protocol, Features: peer.Features, Version: "test"}

// testMux serves a mux on a loopback port whose request handler closes
// each connection it gets, and reports them. members are the addresses of
// its cluster's other nodes.
func testMux(t *testing.T, p peer.Profile, members ...string) (*Mux, chan struct{}) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	m, _, err := Open(Options{Listener: ln, Addr: ln.Addr().String(), Advertise: ln.Addr().String(), Logger: hclog.NewNullLogger(), MaxCommand: 1 << 20, Profile: p, Members: members})
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan struct{}, 16)
	m.ServeRPC(func(c net.Conn, _ peer.Limits) { c.Close(); served <- struct{}{} })
	t.Cleanup(func() { m.Close() })
	return m, served
}

func ctx5s(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// Two nodes of this version learn each other's profile from the hellos
// of the connections each opens: the dialer from the answer; the
// answering node records nothing of the dialer's hello, and learns the
// dialer's profile when it dials (asks) it in turn.
func TestHelloTellsEachSideWhatTheOtherSpeaks(t *testing.T) {
	a, _ := testMux(t, current)
	b, served := testMux(t, current, a.Advertise())
	conn, err := a.Dial(ctx5s(t), b.Advertise(), peer.PurposeRPC)
	if err != nil {
		t.Fatal(err)
	}
	conn.Close()
	<-served
	if s, ok := a.Peer(b.Advertise()); !ok || s.Legacy || s.Profile.Protocol != peer.Protocol || !s.Profile.Speaks(peer.FeatureChunks) {
		t.Fatalf("the dialer learned %+v, %v", s, ok)
	}
	if s, ok := b.Peer(a.Advertise()); ok {
		t.Fatalf("the answering node recorded an inbound hello: %+v", s)
	}
	if s, err := b.Ask(ctx5s(t), a.Advertise()); err != nil || s.Profile.Protocol != peer.Protocol || !s.Profile.Speaks(peer.FeatureChunks) {
		t.Fatalf("the answering node, asking, learned %+v, %v", s, err)
	}
}

// A node of protocol 1 closes a hello unanswered; a node of this version
// then speaks to it with the bare tag, and marks it as protocol 1. A node
// of protocol 1 dialling this version is served as before.
func TestProtocol1PeersAreSpokenToAsTheyExpect(t *testing.T) {
	newer, _ := testMux(t, current)
	old, oldServed := testMux(t, peer.Protocol1())
	conn, err := newer.Dial(ctx5s(t), old.Advertise(), peer.PurposeRPC)
	if err != nil {
		t.Fatal(err)
	}
	conn.Close()
	<-oldServed
	// It said nothing of chunks: a release from before them closes
	// hellos too. Whether it reads them is asked, never assumed.
	if s, ok := newer.Peer(old.Advertise()); !ok || !s.Legacy || s.Profile.Protocol != 1 || s.Profile.Speaks(peer.FeatureChunks) {
		t.Fatalf("the node of protocol 1 is known as %+v, %v", s, ok)
	}
	// Next time, the bare tag at once.
	conn, err = newer.Dial(ctx5s(t), old.Advertise(), peer.PurposeRPC)
	if err != nil {
		t.Fatal(err)
	}
	conn.Close()
	<-oldServed
}

// A node of protocol 1 dials a node of this version with its bare tag.
func TestNodeOfProtocol1IsServed(t *testing.T) {
	newer, served := testMux(t, current)
	old, _ := testMux(t, peer.Protocol1())
	conn, err := old.Dial(ctx5s(t), newer.Advertise(), peer.PurposeRPC)
	if err != nil {
		t.Fatal(err)
	}
	conn.Close()
	select {
	case <-served:
	case <-time.After(5 * time.Second):
		t.Fatal("the newer node did not serve the bare-tag connection")
	}
}

// A node that requires a feature its peer lacks refuses it, both ways:
// the error says which side lacks what, and neither serves the other.
func TestRequiredFeatureIsRefusedBothWays(t *testing.T) {
	demanding := current
	demanding.Requires = []string{"test-required"}
	demanding.Features = append(append([]string(nil), current.Features...), "test-required")
	d, dServed := testMux(t, demanding)
	plain, plainServed := testMux(t, current)

	_, err := d.Dial(ctx5s(t), plain.Advertise(), peer.PurposeRPC)
	var ie *IncompatibleError
	if !errors.As(err, &ie) || !ie.Ours {
		t.Fatalf("the demanding node dialling: %v, want its own refusal", err)
	}
	_, err = plain.Dial(ctx5s(t), d.Advertise(), peer.PurposeRPC)
	if !errors.As(err, &ie) || ie.Ours {
		t.Fatalf("the plain node dialling: %v, want the demanding node's refusal", err)
	}
	if s, _ := plain.Peer(d.Advertise()); s.Refused == "" || s.Ours {
		t.Fatalf("the plain node's view of the demanding one: %+v", s)
	}
	select {
	case <-dServed:
		t.Fatal("the demanding node served a refused connection")
	case <-plainServed:
		t.Fatal("the plain node served a refused connection")
	case <-time.After(100 * time.Millisecond):
	}
}

// helloFrom opens a connection to addr from the loopback address src, says
// h, and reads the answer (nil if the node closed the connection).
func helloFrom(t *testing.T, src, addr string, h *peer.Hello) *peer.Hello {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 2 * time.Second}
	conn, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := conn.Write([]byte{TagHello}); err != nil {
		t.Fatal(err)
	}
	if err := peer.WriteHello(conn, h); err != nil {
		t.Fatal(err)
	}
	answer, err := peer.ReadHello(conn)
	if err != nil {
		return nil
	}
	return answer
}

// An inbound hello decides its own connection and nothing more, from
// any host, the members' own included (any process there can send one):
// claiming a member's address, too old to talk or without chunks, it
// records nothing of that member, so it cannot make the node refuse its
// members (which would fail every call with ErrIncompatible) nor turn
// chunking off; claiming other addresses, it cannot fill the peer table.
func TestHellosCannotSpeakForMembersOrFillThePeerTable(t *testing.T) {
	member, _ := testMux(t, current)
	m, _ := testMux(t, current, member.Advertise())
	withoutChunks := &peer.Hello{Protocol: peer.Protocol, Features: []string{peer.FeatureHello, peer.FeatureClusterDigest},
		From: member.Advertise(), Purpose: peer.PurposeAsk}

	for _, src := range []string{"127.0.0.2", "127.0.0.1"} { // another host; the member's own
		if a := helloFrom(t, src, m.Advertise(), &peer.Hello{Protocol: 0, From: member.Advertise(), Purpose: peer.PurposeAsk}); a == nil || a.Refused == "" {
			t.Fatalf("from %s, an incompatible hello was answered %+v, want a refusal", src, a)
		}
		if a := helloFrom(t, src, m.Advertise(), withoutChunks); a == nil || a.Refused != "" {
			t.Fatalf("from %s, a compatible hello was answered %+v", src, a)
		}
		if s, ok := m.Peer(member.Advertise()); ok {
			t.Fatalf("a hello from %s is recorded as the member's: %+v", src, s)
		}
	}
	// From any host, claiming addresses that are no member's.
	for i := 0; i < 50; i++ {
		for _, src := range []string{"127.0.0.1", "127.0.0.2"} {
			helloFrom(t, src, m.Advertise(), &peer.Hello{Protocol: peer.Protocol, Features: peer.Features, Version: fmt.Sprint(i), From: fmt.Sprintf("127.0.0.1:%d", 1000+i), Purpose: peer.PurposeAsk})
		}
	}
	if ps := m.Peers(); len(ps) != 0 {
		t.Fatalf("inbound hellos fill the peer table: %d entries", len(ps))
	}
	// The member is recorded from the node's own dial, whatever was
	// claimed for it before; later claims change nothing.
	if s, err := m.Ask(ctx5s(t), member.Advertise()); err != nil || s.Refused != "" || !s.Profile.Speaks(peer.FeatureChunks) {
		t.Fatalf("asked, the member is %+v, %v", s, err)
	}
	helloFrom(t, "127.0.0.1", m.Advertise(), &peer.Hello{Protocol: 0, From: member.Advertise(), Purpose: peer.PurposeAsk})
	helloFrom(t, "127.0.0.1", m.Advertise(), withoutChunks)
	if s, ok := m.Peer(member.Advertise()); !ok || s.Refused != "" || s.Profile.Protocol != peer.Protocol || !s.Profile.Speaks(peer.FeatureChunks) {
		t.Fatalf("after more claims, the member is recorded as %+v, %v", s, ok)
	}
}

// A member this node found it does not talk to is asked again in the
// background, with a backoff: once it is restarted compatible, the node
// finds out without waiting for a dial of its own to that member.
func TestRefusedMembersAreAskedAgain(t *testing.T) {
	demanding := current
	demanding.Requires = []string{"test-required"}
	demanding.Features = append(append([]string(nil), current.Features...), "test-required")
	d, _ := testMux(t, demanding)
	addr := d.Advertise()
	m, _ := testMux(t, current, addr)
	if _, err := m.Ask(ctx5s(t), addr); err != nil {
		t.Fatal(err)
	}
	first, ok := m.Peer(addr)
	if !ok || first.Refused == "" {
		t.Fatalf("the demanding member is known as %+v, %v; want refused", first, ok)
	}
	// Within its backoff, it is not asked again.
	m.refreshPeers([]string{addr})
	if s, _ := m.Peer(addr); !s.At.Equal(first.At) {
		t.Fatalf("a refused member was asked again at once: %+v", s)
	}
	// Restarted without the requirement, at the same address.
	d.Close()
	var ln net.Listener
	waitFor(t, 5*time.Second, "the address to be free", func() bool {
		var err error
		ln, err = net.Listen("tcp", addr)
		return err == nil
	})
	plain, _, err := Open(Options{Listener: ln, Addr: addr, Advertise: addr, Logger: hclog.NewNullLogger(), MaxCommand: 1 << 20, Profile: current})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { plain.Close() })
	waitFor(t, 10*time.Second, "the member to be asked again", func() bool {
		m.refreshPeers([]string{addr})
		s, _ := m.Peer(addr)
		return s.Refused == "" && s.Profile.Protocol == peer.Protocol
	})
}

func waitFor(t *testing.T, limit time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", limit, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// What the mux remembers of logged refusals stays bounded, whatever
// strangers send.
func TestRefusalsLoggedStayBounded(t *testing.T) {
	m, _ := testMux(t, current)
	for i := 0; i < 3*maxRefusalsLogged; i++ {
		m.refuse(fmt.Sprintf("10.0.%d.%d", i/256, i%256), "too old", true, peer.Profile{}, false, false)
	}
	m.refusedMu.Lock()
	n := len(m.refusedLogged)
	m.refusedMu.Unlock()
	if n > maxRefusalsLogged {
		t.Fatalf("%d refusals remembered, want at most %d", n, maxRefusalsLogged)
	}
	if len(m.Peers()) != 0 {
		t.Fatalf("refusals of peers not recorded fill the peer table: %v", m.Peers())
	}
}
