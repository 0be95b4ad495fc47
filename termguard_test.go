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
	w.WriteByte(tagRaft)
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

func TestTermGuardChecks(t *testing.T) {
	g := &termGuard{}
	g.term.Store(100)
	entries := func(terms ...uint64) []*raft.Log {
		var out []*raft.Log
		for _, term := range terms {
			out = append(out, &raft.Log{Term: term})
		}
		return out
	}
	for _, tc := range []struct {
		name string
		cmd  any
		ok   bool
	}{
		{"vote next term", &raft.RequestVoteRequest{Term: 101, LastLogTerm: 100}, true},
		{"vote old term", &raft.RequestVoteRequest{Term: 3, LastLogTerm: 3}, true},
		{"vote 2^32 ahead", &raft.RequestVoteRequest{Term: 100 + 1<<32}, true},
		{"vote past 2^32 ahead", &raft.RequestVoteRequest{Term: 101 + 1<<32}, false},
		{"vote max", &raft.RequestVoteRequest{Term: math.MaxUint64}, false},
		{"vote 2^63", &raft.RequestVoteRequest{Term: 1 << 63}, false},
		{"vote log term above term", &raft.RequestVoteRequest{Term: 101, LastLogTerm: 102}, false},
		{"pre-vote max", &raft.RequestPreVoteRequest{Term: math.MaxUint64}, false},
		{"pre-vote next", &raft.RequestPreVoteRequest{Term: 101, LastLogTerm: 99}, true},
		{"append heartbeat", &raft.AppendEntriesRequest{Term: 100}, true},
		{"append max", &raft.AppendEntriesRequest{Term: math.MaxUint64}, false},
		{"append entries", &raft.AppendEntriesRequest{Term: 100, PrevLogTerm: 99, Entries: entries(99, 100)}, true},
		{"append entry above term", &raft.AppendEntriesRequest{Term: 100, Entries: entries(100, math.MaxUint64)}, false},
		{"append prev above term", &raft.AppendEntriesRequest{Term: 100, PrevLogTerm: 101}, false},
		{"snapshot max", &raft.InstallSnapshotRequest{Term: math.MaxUint64}, false},
		{"snapshot log above term", &raft.InstallSnapshotRequest{Term: 100, LastLogTerm: 200}, false},
		{"snapshot", &raft.InstallSnapshotRequest{Term: 100, LastLogTerm: 90}, true},
		{"timeout now", &raft.TimeoutNowRequest{}, true},
	} {
		err := g.check(tc.cmd)
		if (err == nil) != tc.ok {
			t.Errorf("%s: check = %v, want ok=%v", tc.name, err, tc.ok)
		}
	}
}
