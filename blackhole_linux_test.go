package raftkit

import (
	"fmt"
	"net"
	"syscall"
	"testing"
	"time"
)

// blackholeAddr returns a loopback address whose listener never accepts
// and whose accept queue is full: a TCP dial to it waits (its SYNs are
// dropped) until the dialler gives up, as a dial to a host that vanished
// does.
func blackholeAddr(t *testing.T) string {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", sa.(*syscall.SockaddrInet4).Port)
	// The first connection fills the queue of a backlog of 0.
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if c, err := net.DialTimeout("tcp", addr, 300*time.Millisecond); err == nil {
		c.Close()
		t.Fatalf("a dial to %s completed: the accept queue did not fill", addr)
	}
	return addr
}

func TestCloseCancelsADialToAnUnreachableLeaderOverTCP(t *testing.T) {
	c := newTCPCluster(t, 1)
	c.leader()
	closeWhileForwarding(t, c.nodes[0], blackholeAddr(t))
}
