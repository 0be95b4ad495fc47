package raftkit

import (
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"runtime"
	"testing"
	"time"

	fsmexample "github.com/raftkit/raftkit/fsm_example"
	"github.com/raftkit/raftkit/internal/port"
)

// dialFrom opens a TCP connection to addr from the loopback address src.
func dialFrom(t *testing.T, src, addr string) net.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 2 * time.Second}
	conn, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("dial %s from %s: %v", addr, src, err)
	}
	return conn
}

// closedByPeer reports whether the node closed conn within limit.
func closedByPeer(conn net.Conn, limit time.Duration) bool {
	conn.SetReadDeadline(time.Now().Add(limit))
	var b [1]byte
	_, err := conn.Read(b[:])
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		return false
	}
	return err != nil
}

func heapInUse() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapInuse
}

func TestClaimedLengthCostsNothingUntilBytesArrive(t *testing.T) {
	c := newTCPCluster(t, 3)
	l := c.leader()
	before := heapInUse()
	// From the members' own host: the frame limit is the full 64 MiB, and
	// each claim alone used to allocate it.
	var conns []net.Conn
	defer func() {
		for _, conn := range conns {
			conn.Close()
		}
	}()
	for i := 0; i < 8; i++ {
		conn := dialFrom(t, "127.0.0.1", c.addrs[l])
		conns = append(conns, conn)
		var msg [5]byte
		msg[0] = port.TagRPC
		binary.BigEndian.PutUint32(msg[1:], 64<<20-1)
		if _, err := conn.Write(msg[:]); err != nil {
			t.Fatal(err)
		}
		// Some bytes of the claimed frame arrive, most never do.
		if _, err := conn.Write(make([]byte, 100<<10)); err != nil {
			t.Fatal(err)
		}
	}
	// Let the node read what was sent.
	waitFor(t, 5*time.Second, "the node to reserve budget for the claims", func() bool { return c.nodes[l].mux.BudgetInUse() > 0 })
	time.Sleep(200 * time.Millisecond)
	if grew := int64(heapInUse()) - int64(before); grew > 32<<20 {
		t.Fatalf("8 claims of 64 MiB with 100 KiB sent grew the heap by %d MiB", grew>>20)
	}
	if _, err := c.nodes[(l+1)%3].Apply(ctxTimeout(t, 5*time.Second), fsmexample.Set("k", []byte("v"))); err != nil {
		t.Fatalf("forwarded write while claims are pending: %v", err)
	}
}

func TestStrangerRequestFramesAreSmall(t *testing.T) {
	c := newTCPCluster(t, 3)
	l := c.leader()
	conn := dialFrom(t, "127.0.0.2", c.addrs[l])
	defer conn.Close()
	var msg [5]byte
	msg[0] = port.TagRPC
	binary.BigEndian.PutUint32(msg[1:], port.StrangerMaxFrame+1)
	conn.Write(msg[:])
	if !closedByPeer(conn, 5*time.Second) {
		t.Fatalf("a stranger's %d-byte request frame was not refused", port.StrangerMaxFrame+1)
	}
}

func TestSilentStrangersCannotFillTheNode(t *testing.T) {
	c := newTCPCluster(t, 3)
	l := c.leader()
	target := c.addrs[l]
	var flood []net.Conn
	defer func() {
		for _, f := range flood {
			f.Close()
		}
	}()
	// 4 hosts outside the cluster, each opening 40 raft connections that
	// then say nothing.
	for h := 2; h < 6; h++ {
		for i := 0; i < 40; i++ {
			conn := dialFrom(t, fmt.Sprintf("127.0.0.%d", h), target)
			conn.Write([]byte{port.TagRaft})
			flood = append(flood, conn)
		}
	}
	open := 0
	for _, f := range flood {
		if !closedByPeer(f, 50*time.Millisecond) {
			open++
		}
	}
	if limit := 4 * port.MaxStrangerConnsPerHost; open > limit {
		t.Fatalf("%d silent raft connections from 4 strangers stay open, cap %d", open, limit)
	}
	// Members still connect: a restarted follower rejoins and catches up.
	f := (l + 1) % 3
	c.stop(f)
	idx := c.nodes[l].raft.LastIndex()
	if _, err := c.nodes[l].Apply(ctxTimeout(t, 5*time.Second), fsmexample.Set("during", []byte("v"))); err != nil {
		t.Fatalf("write during the flood: %v", err)
	}
	c.start(f)
	c.waitApplied(idx + 1)
	// The survivors are closed once idle for port.StrangerIdleTimeout.
	for _, conn := range flood {
		if !closedByPeer(conn, port.StrangerIdleTimeout+5*time.Second) {
			t.Fatalf("a stranger's silent raft connection outlived %s", port.StrangerIdleTimeout)
		}
	}
}

func TestMemberHostsKeepRoomDuringHandshakeFlood(t *testing.T) {
	c := newTCPCluster(t, 3)
	l := c.leader()
	target := c.addrs[l]
	var flood []net.Conn
	defer func() {
		for _, f := range flood {
			f.Close()
		}
	}()
	// 32 strangers each hold as many unfinished handshakes as they can.
	for h := 2; h < 34; h++ {
		for i := 0; i < port.MaxPendingPerHost+4; i++ {
			conn := dialFrom(t, fmt.Sprintf("127.0.0.%d", h), target)
			flood = append(flood, conn)
		}
	}
	// A member's host still gets through at once, 20 times over.
	for i := 0; i < 20; i++ {
		conn := dialFrom(t, "127.0.0.1", target)
		conn.Write([]byte{port.TagRPC, 0xff, 0xff, 0xff, 0xff}) // over any frame limit: closed at once
		conn.SetReadDeadline(time.Now().Add(3 * time.Second))
		_, err := io.ReadFull(conn, make([]byte, 1))
		conn.Close()
		if ne, ok := err.(net.Error); ok && ne.Timeout() {
			t.Fatalf("member-host connection %d was not served during the flood", i)
		}
	}
}

func TestJoinedNodeForwardsLargeCommandsAtOnce(t *testing.T) {
	// The leader may see the new node's first connections before its
	// configuration names it (it is then a stranger, with 64 KiB request
	// messages); those connections must carry large commands once it is a
	// member, without being replaced.
	net := NewMemNetwork()
	nodes, _ := newMemCluster(t, net, 3)
	l := memLeader(t, nodes)
	leader := nodes[l]
	n, err := NewRaftNode(Config{InMemory: true, Network: net, Addr: "newcomer", Join: []string{leader.Addr()}, RaftConfig: fastRaft}, fsmexample.New())
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	waitFor(t, 10*time.Second, "the newcomer to know the leader", func() bool { return n.GetLeaderAddr() != "" })
	// A small forwarded write opens the newcomer's request connection at
	// once, likely while the leader still counts it a stranger.
	if _, err := n.Apply(ctxTimeout(t, 5*time.Second), fsmexample.Set("small", []byte("v"))); err != nil {
		t.Fatalf("small forwarded write: %v", err)
	}
	waitFor(t, 5*time.Second, "the leader to count the newcomer a member", func() bool { return leader.mux.IsMember("newcomer") })
	if _, err := n.Apply(ctxTimeout(t, 10*time.Second), fsmexample.Set("big", make([]byte, 512<<10))); err != nil {
		t.Fatalf("512 KiB forwarded write on the same connection: %v", err)
	}
}

func TestNodesDialFromTheirAdvertisedAddress(t *testing.T) {
	// A cluster on 127.0.0.3 and a node on 127.0.0.4 that joins it: the
	// kernel would send the newcomer's connections from 127.0.0.1, a host
	// the cluster does not know; leaving from its advertised address makes
	// it a member, whose forwarded commands may be large.
	var addrs []string
	for i := 0; i < 4; i++ {
		host := "127.0.0.3"
		if i == 3 {
			host = "127.0.0.4"
		}
		ln, err := net.Listen("tcp", host+":0")
		if err != nil {
			t.Fatal(err)
		}
		addrs = append(addrs, ln.Addr().String())
		ln.Close()
	}
	var nodes []*RaftNode
	for i := 0; i < 3; i++ {
		n, err := NewRaftNode(Config{Addr: addrs[i], Dir: t.TempDir(), Peers: addrs[:3], RaftConfig: fastRaft}, fsmexample.New())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { n.Close() })
		nodes = append(nodes, n)
	}
	if _, err := nodes[0].WaitForLeader(ctxTimeout(t, 15*time.Second)); err != nil {
		t.Fatal(err)
	}
	n, err := NewRaftNode(Config{Addr: addrs[3], Dir: t.TempDir(), Join: addrs[:1], RaftConfig: fastRaft}, fsmexample.New())
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	waitFor(t, 10*time.Second, "every node to count 127.0.0.4 a member", func() bool {
		for _, m := range nodes {
			if !m.mux.IsMember("127.0.0.4") {
				return false
			}
		}
		return true
	})
	if _, err := n.Apply(ctxTimeout(t, 10*time.Second), fsmexample.Set("big", make([]byte, 512<<10))); err != nil {
		t.Fatalf("512 KiB forwarded write from the newcomer: %v", err)
	}
}

func TestRaftConnectionsFromOneMemberHostAreCapped(t *testing.T) {
	c := newTCPCluster(t, 3)
	l := c.leader()
	var conns []net.Conn
	defer func() {
		for _, conn := range conns {
			conn.Close()
		}
	}()
	for i := 0; i < port.MaxRaftConnsPerHost+50; i++ {
		conn := dialFrom(t, "127.0.0.1", c.addrs[l])
		conn.Write([]byte{port.TagRaft})
		conns = append(conns, conn)
	}
	waitFor(t, 10*time.Second, "the node to settle its raft connections", func() bool {
		return c.nodes[l].mux.RaftConns("127.0.0.1") == port.MaxRaftConnsPerHost
	})
	if _, err := c.nodes[(l+1)%3].Apply(ctxTimeout(t, 5*time.Second), fsmexample.Set("k", []byte("v"))); err != nil {
		t.Fatalf("write with the member host at its raft connection cap: %v", err)
	}
}
