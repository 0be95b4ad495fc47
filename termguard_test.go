package raftkit

import (
	"bufio"
	"math"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-msgpack/v2/codec"
	"github.com/hashicorp/raft"

	fsmexample "github.com/raftkit/raftkit/fsm_example"
	"github.com/raftkit/raftkit/internal/port"
)

// rpcRequestVote is raft's NetworkTransport type byte for RequestVote.
const rpcRequestVote = 1

// sendStrangerVote sends one hand-made RequestVote to addr from 127.0.0.2,
// as a host outside the cluster would, and returns the error string raft's
// transport answered with.
func sendStrangerVote(t *testing.T, addr string, term uint64) string {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}, Timeout: 2 * time.Second}
	conn, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	w := bufio.NewWriter(conn)
	w.WriteByte(port.TagRaft)
	w.WriteByte(rpcRequestVote)
	// No ID (raft then skips its configuration check) and LeadershipTransfer
	// (raft then ignores that it knows a leader): the request reaches the
	// term comparison on every node, leader included.
	req := raft.RequestVoteRequest{
		RPCHeader:          raft.RPCHeader{ProtocolVersion: raft.ProtocolVersionMax, Addr: []byte("127.0.0.2:1")},
		Term:               term,
		LastLogIndex:       math.MaxUint64,
		LastLogTerm:        term,
		LeadershipTransfer: true,
	}
	if err := codec.NewEncoder(w, &codec.MsgpackHandle{}).Encode(&req); err != nil {
		t.Fatal(err)
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	dec := codec.NewDecoder(bufio.NewReader(conn), &codec.MsgpackHandle{})
	var rpcErr string
	if err := dec.Decode(&rpcErr); err != nil {
		t.Fatalf("read answer from %s: %v", addr, err)
	}
	var resp raft.RequestVoteResponse
	if err := dec.Decode(&resp); err != nil {
		t.Fatalf("read answer from %s: %v", addr, err)
	}
	return rpcErr
}

func nodeTerm(t *testing.T, n *RaftNode) uint64 {
	t.Helper()
	v, err := strconv.ParseUint(n.raft.Stats()["term"], 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func TestAbsurdTermFromStrangerIsRefused(t *testing.T) {
	c := newTCPCluster(t, 3)
	c.leader()

	// A plausible term gets through the guard to raft, which adopts it:
	// the hand-made request is one raft really acts on.
	before := nodeTerm(t, c.nodes[0])
	if got := sendStrangerVote(t, c.addrs[0], before+5); strings.Contains(got, "term out of range") {
		t.Fatalf("term %d refused as out of range: %s", before+5, got)
	}
	waitFor(t, 5*time.Second, "node 0 to adopt the stranger's plausible term", func() bool { return nodeTerm(t, c.nodes[0]) >= before+5 })

	for _, term := range []uint64{math.MaxUint64, 1 << 63, nodeTerm(t, c.nodes[0]) + 1<<32 + 1} {
		for i, addr := range c.addrs {
			got := sendStrangerVote(t, addr, term)
			if !strings.Contains(got, "term out of range") {
				t.Fatalf("node %d answered a RequestVote with term %d with %q, want a refusal", i, term, got)
			}
		}
	}
	for i, n := range c.nodes {
		if term := nodeTerm(t, n); term >= 1<<32 {
			t.Fatalf("node %d took term %d from a stranger", i, term)
		}
	}

	// The cluster still elects: the leader's successor is chosen and serves.
	l := c.leader()
	c.stop(l)
	c.nodes[l] = nil
	next := -1
	waitFor(t, 15*time.Second, "a new leader", func() bool {
		for i, n := range c.nodes {
			if n != nil && n.IsLeader() {
				next = i
			}
		}
		return next >= 0
	})
	if _, err := c.nodes[next].Apply(ctxTimeout(t, 5*time.Second), fsmexample.Set("k", []byte("v"))); err != nil {
		t.Fatalf("write after the attack: %v", err)
	}
}
