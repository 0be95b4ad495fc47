package raftkit

import (
	"errors"
	"io"
	"net"
	"testing"
	"time"
)

func TestMemNetworkDropRateBreaksConnections(t *testing.T) {
	n := NewMemNetwork()
	l, err := n.listen("b")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	connect := func() (client, server net.Conn) {
		t.Helper()
		accepted := make(chan net.Conn, 1)
		go func() {
			if c, err := l.Accept(); err == nil {
				accepted <- c
			}
		}()
		c, err := n.dial("a", "b", 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		return c, <-accepted
	}

	c, sc := connect()
	n.SetDropRate(1)
	if _, err := c.Write([]byte("lost")); err == nil {
		t.Fatal("write with drop rate 1 succeeded")
	}
	// The loss broke the connection: the other end sees it closed.
	if _, err := sc.Read(make([]byte, 4)); !errors.Is(err, io.EOF) {
		t.Fatalf("read on the other end after a drop: %v, want EOF", err)
	}
	c.Close()
	sc.Close()

	n.SetDropRate(0)
	c, sc = connect()
	defer c.Close()
	defer sc.Close()
	go c.Write([]byte("kept"))
	buf := make([]byte, 4)
	if _, err := io.ReadFull(sc, buf); err != nil || string(buf) != "kept" {
		t.Fatalf("read after drop rate 0: %q, %v", buf, err)
	}
}
