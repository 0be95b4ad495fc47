package port

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/raftkit/raftkit/internal/peer"
)

// The node protocol on the port (see internal/peer's protocol.go): a
// connection of this version opens with TagHello and a hello each way; a
// node of protocol 1 closes such a connection unanswered, and is then
// spoken to with the bare tags it knows. The mux remembers what each peer
// speaks, so that a node learns it from the connections it opens anyway.
//
// A peer's claims count only where it proves them: what the mux records
// of a member (its profile, that it closes hellos, a refusal) comes only
// from the mux's own dials to that member's address. A hello that arrives
// on an inbound connection decides that connection alone (answered, or
// refused and closed): any process on a member's host can send one, and
// name any member in From.

// TagHello opens a connection whose hello follows (protocol 2 on).
const TagHello byte = 0x56 // 'V'

// legacyTTL is how long a peer found to speak protocol 1 is dialled with
// bare tags before a hello is tried again (it may have been upgraded).
const legacyTTL = 10 * time.Second

// A member this node and which do not talk is asked again in the
// background (refreshPeers), after refusedRetry, doubling with each
// refusal in a row up to refusedRetryMax: it may have been upgraded or
// restarted with other settings.
const (
	refusedRetry    = time.Second
	refusedRetryMax = time.Minute
)

// IncompatibleError is a peer this node will not talk to, or that will not
// talk to this node (see peer.Incompatible).
type IncompatibleError struct {
	Peer   string
	Reason string
	// Ours is true when this node refused: the peer lacks what it
	// requires, or is too old.
	Ours bool
}

func (e *IncompatibleError) Error() string {
	return fmt.Sprintf("%s: incompatible protocol: %s", e.Peer, e.Reason)
}

// PeerState is what the mux knows of one peer's protocol.
type PeerState struct {
	// Addr is the peer's advertised address.
	Addr    string
	Profile peer.Profile
	// Legacy is true when the peer answered no hello (protocol 1).
	Legacy bool
	// Refused says why the two do not talk ("" when they do); Ours says
	// this node refused.
	Refused string
	Ours    bool
	// At is when the mux learned this; Gen numbers what it learned, new
	// with each dial that told it (what was learned from one connection
	// holds for that generation).
	At  time.Time
	Gen uint64
	// refusals counts the dials in a row that ended refused.
	refusals int
}

// legacyProfile is what the mux records of a peer that closes a hello
// unanswered: protocol 1, or a release older still. Such a peer says
// nothing of what it reads; whether it reassembles chunks in particular
// is for the node to ask (internal/peer's FeaturesRequest), never
// assumed: a release from before chunks also closes hellos, and would
// apply each chunk as a command.
func legacyProfile() peer.Profile {
	p := peer.Protocol1()
	p.Features = slices.DeleteFunc(slices.Clone(p.Features), func(f string) bool { return f == peer.FeatureChunks })
	return p
}

// retryAfter is how long after a refusal the member is asked again.
func (s PeerState) retryAfter() time.Duration {
	return min(refusedRetry<<min(s.refusals-1, 10), refusedRetryMax)
}

// peerTable is what the mux learned of its peers, by advertised address.
type peerTable struct {
	mu     sync.Mutex
	states map[string]PeerState
	gen    uint64
}

func (t *peerTable) put(s PeerState) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.states == nil {
		t.states = map[string]PeerState{}
	}
	s.At = time.Now()
	t.gen++
	s.Gen = t.gen
	if s.Refused != "" {
		s.refusals = t.states[s.Addr].refusals + 1
	}
	t.states[s.Addr] = s
}

// keepOnly forgets the peers whose addresses are not in keep.
func (t *peerTable) keepOnly(keep map[string]bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for a := range t.states {
		if !keep[a] {
			delete(t.states, a)
		}
	}
}

func (t *peerTable) get(addr string) (PeerState, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	s, ok := t.states[addr]
	return s, ok
}

// Peer returns what the mux knows of the protocol of the peer at addr.
func (m *Mux) Peer(addr string) (PeerState, bool) { return m.peers.get(addr) }

// Peers returns what the mux knows of every peer, by address.
func (m *Mux) Peers() []PeerState {
	m.peers.mu.Lock()
	defer m.peers.mu.Unlock()
	out := make([]PeerState, 0, len(m.peers.states))
	for _, s := range m.peers.states {
		out = append(out, s)
	}
	slices.SortFunc(out, func(a, b PeerState) int { return strings.Compare(a.Addr, b.Addr) })
	return out
}

// setMemberAddrs makes addrs, and the static addresses, the members'
// addresses, and forgets what the mux knew of any other peer.
func (m *Mux) setMemberAddrs(addrs []string) {
	set := map[string]bool{}
	for _, a := range append(slices.Clone(m.staticAddrs), addrs...) {
		set[a] = true
	}
	m.peers.keepOnly(set)
}

// Profile is what this node says of itself.
func (m *Mux) Profile() peer.Profile { return m.profile }

// hello is this node's side of a connection's hello.
func (m *Mux) hello(purpose string) *peer.Hello {
	return &peer.Hello{Protocol: m.profile.Protocol, Features: m.profile.Features, Requires: m.profile.Requires,
		Version: m.profile.Version, From: m.advertise, Purpose: purpose}
}

// maxRefusalsLogged bounds the refusals remembered as logged; past it,
// the memory starts again (and a refusal may be logged again).
const maxRefusalsLogged = 1024

// refuse logs at ERROR that this node and the peer at who do not talk,
// once per peer and reason, and records it in the peer table if record
// (who is the address this node dialled). A peer not recorded (one that
// dialled this node) is named by its host, and logged once whatever its
// reasons: an inbound hello says what its sender likes.
func (m *Mux) refuse(who, reason string, ours bool, p peer.Profile, legacy, record bool) {
	key := who
	if record {
		m.peers.put(PeerState{Addr: who, Profile: p, Legacy: legacy, Refused: reason, Ours: ours})
		key += "\x00" + reason
	}
	m.refusedMu.Lock()
	first := !m.refusedLogged[key]
	if len(m.refusedLogged) >= maxRefusalsLogged {
		clear(m.refusedLogged)
	}
	m.refusedLogged[key] = true
	m.refusedMu.Unlock()
	if !first {
		return
	}
	todo := "upgrade the peer to a release that speaks what this node requires, or run this node's previous release"
	if !ours {
		todo = "upgrade this node to a release that speaks what the peer requires"
	}
	m.logger.Error("refusing a node of an incompatible protocol: it and this node cannot replicate together",
		"peer", who, "reason", reason, "this_protocol", m.profile.Protocol, "peer_protocol", p.Protocol, "what_to_do", todo)
}

// Dial opens a connection to addr for purpose (peer.PurposeRaft,
// PurposeRPC or PurposeAsk) within ctx: with a hello, or with the bare tag
// of protocol 1 to a peer that speaks only that. It gives up when ctx ends
// or the mux closes. A peer this node will not talk to, or that will not
// talk to it, is an *IncompatibleError.
func (m *Mux) Dial(ctx context.Context, addr, purpose string) (net.Conn, error) {
	if m.profile.Protocol < 2 {
		return m.dialLegacy(ctx, addr, purpose)
	}
	if s, ok := m.peers.get(addr); ok && s.Legacy && s.Refused == "" && time.Since(s.At) < legacyTTL {
		return m.dialLegacy(ctx, addr, purpose)
	}
	conn, answer, err := m.dialHello(ctx, addr, purpose)
	if errors.Is(err, errNoHello) {
		// A node of protocol 1 closes a connection that opens with
		// TagHello, unanswered.
		p := peer.Protocol1()
		if reason, ours := peer.Incompatible(m.profile, p); reason != "" {
			m.refuse(addr, reason, ours, p, true, true)
			return nil, &IncompatibleError{Peer: addr, Reason: reason, Ours: ours}
		}
		m.peers.put(PeerState{Addr: addr, Profile: legacyProfile(), Legacy: true})
		if purpose == peer.PurposeAsk {
			return nil, nil
		}
		return m.dialLegacy(ctx, addr, purpose)
	}
	if err != nil {
		return nil, err
	}
	p := peer.Of(answer)
	reason, ours := peer.Incompatible(m.profile, p)
	if reason == "" && answer.Refused != "" {
		reason = answer.Refused
	}
	if reason != "" {
		conn.Close()
		m.refuse(addr, reason, ours, p, false, true)
		return nil, &IncompatibleError{Peer: addr, Reason: reason, Ours: ours}
	}
	m.peers.put(PeerState{Addr: addr, Profile: p})
	if purpose == peer.PurposeAsk {
		conn.Close()
		return nil, nil
	}
	return conn, nil
}

// Ask learns what the peer at addr speaks, with a connection of its own,
// unless the mux knows already.
func (m *Mux) Ask(ctx context.Context, addr string) (PeerState, error) {
	if s, ok := m.peers.get(addr); ok {
		return s, nil
	}
	if _, err := m.Dial(ctx, addr, peer.PurposeAsk); err != nil {
		var ie *IncompatibleError
		if !errors.As(err, &ie) {
			return PeerState{}, err
		}
	}
	s, _ := m.peers.get(addr)
	return s, nil
}

// refreshPeers asks, one at a time, the members at addrs that the mux
// knows nothing of, knows as protocol 1 for longer than legacyTTL (a
// peer upgraded since then is heard as such, though raft may keep its old
// connections to it for long), or refused longer ago than their backoff
// (retryAfter).
func (m *Mux) refreshPeers(addrs []string) {
	m.setMemberAddrs(addrs)
	if m.profile.Protocol < 2 {
		return
	}
	for _, a := range addrs {
		if a == m.advertise {
			continue
		}
		if s, ok := m.peers.get(a); ok && !m.stale(s) {
			continue
		}
		ctx, cancel := context.WithTimeout(m.closing, time.Second)
		_, _ = m.Dial(ctx, a, peer.PurposeAsk)
		cancel()
	}
}

// stale reports whether what the mux knows of a peer is to be asked
// again.
func (m *Mux) stale(s PeerState) bool {
	switch {
	case s.Refused != "":
		return time.Since(s.At) >= s.retryAfter()
	case s.Legacy:
		return time.Since(s.At) >= legacyTTL
	}
	return false
}

// errNoHello is a peer that closed the connection without answering its
// hello: a node of protocol 1.
var errNoHello = errors.New("the peer closed the connection without answering the hello")

// dialHello opens a connection, says this node's hello and reads the
// peer's.
func (m *Mux) dialHello(ctx context.Context, addr, purpose string) (net.Conn, *peer.Hello, error) {
	h := m.hello(purpose)
	if purpose == peer.PurposeRaft {
		if g := m.loadGate(); g != nil {
			if d, ok := g.Cluster(); ok {
				h.Cluster = d[:]
			}
		}
	}
	conn, err := m.dialTagged(ctx, addr, TagHello)
	if err != nil {
		return nil, nil, err
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	if err := peer.WriteHello(conn, h); err != nil {
		conn.Close()
		if closedUnanswered(err) {
			return nil, nil, errNoHello
		}
		return nil, nil, err
	}
	answer, err := peer.ReadHello(conn)
	if err != nil {
		conn.Close()
		if closedUnanswered(err) {
			return nil, nil, errNoHello
		}
		return nil, nil, fmt.Errorf("read the hello of %s: %w", addr, err)
	}
	_ = conn.SetDeadline(time.Time{})
	return conn, answer, nil
}

// closedUnanswered reports whether err is the peer closing the connection.
func closedUnanswered(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, syscall.EPIPE) || errors.Is(err, io.ErrClosedPipe)
}

// dialLegacy opens a connection as a node of protocol 1 does: its bare
// tag, and a raft connection's cluster digest once known.
func (m *Mux) dialLegacy(ctx context.Context, addr, purpose string) (net.Conn, error) {
	switch purpose {
	case peer.PurposeRPC:
		return m.dialTagged(ctx, addr, TagRPC)
	case peer.PurposeRaft:
		if g := m.loadGate(); g != nil {
			if d, ok := g.Cluster(); ok {
				return m.dialTagged(ctx, addr, TagRaftCluster, d[:]...)
			}
		}
		return m.dialTagged(ctx, addr, TagRaft)
	}
	return nil, nil // PurposeAsk: a node of protocol 1 says nothing of itself
}
