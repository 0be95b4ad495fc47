package raftkit

import (
	"errors"
	"fmt"
	"io"
	"net"
	"reflect"
	"sync"
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

// memSend writes msg from one address to another over a new connection of
// n (the receiver listens on l) and reports whether the write was dropped.
func memSend(t *testing.T, n *MemNetwork, l *memListener, from, to string, msg []byte) (dropped bool) {
	t.Helper()
	got := make(chan []byte, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			got <- nil
			return
		}
		defer c.Close()
		b, _ := io.ReadAll(c)
		got <- b
	}()
	c, err := n.dial(from, to, 5*time.Second)
	if err != nil {
		t.Errorf("dial %s -> %s: %v", from, to, err)
		<-got
		return false
	}
	_, werr := c.Write(msg)
	c.Close()
	b := <-got
	if werr == nil && string(b) != string(msg) {
		t.Errorf("%s -> %s: a write that was not dropped delivered %q, want %q", from, to, b, msg)
	}
	return werr != nil
}

// dropPattern sends writes writes each way between a and b at the given
// drop rate and returns which ones were lost, per direction. concurrent
// sends the two directions at once, so that their writes interleave in an
// order nobody controls.
func dropPattern(t *testing.T, n *MemNetwork, writes int, concurrent bool) (ab, ba []bool) {
	t.Helper()
	la, err := n.listen("a")
	if err != nil {
		t.Fatal(err)
	}
	defer la.Close()
	lb, err := n.listen("b")
	if err != nil {
		t.Fatal(err)
	}
	defer lb.Close()
	ab, ba = make([]bool, writes), make([]bool, writes)
	run := func(from, to string, l *memListener, out []bool) {
		for i := range out {
			out[i] = memSend(t, n, l, from, to, []byte(fmt.Sprintf("%s%d", from, i)))
		}
	}
	if concurrent {
		var wg sync.WaitGroup
		wg.Add(2)
		go func() { defer wg.Done(); run("a", "b", lb, ab) }()
		go func() { defer wg.Done(); run("b", "a", la, ba) }()
		wg.Wait()
	} else {
		for i := 0; i < writes; i++ {
			ab[i] = memSend(t, n, lb, "a", "b", []byte(fmt.Sprintf("a%d", i)))
			ba[i] = memSend(t, n, la, "b", "a", []byte(fmt.Sprintf("b%d", i)))
		}
	}
	return ab, ba
}

func count(bs []bool) int {
	c := 0
	for _, b := range bs {
		if b {
			c++
		}
	}
	return c
}

func TestMemNetworkSameSeedDropsSameWrites(t *testing.T) {
	const writes, rate = 400, 0.2
	seeded := func(seed uint64) *MemNetwork {
		n := NewMemNetwork()
		n.SetSeed(seed)
		n.SetDropRate(rate)
		return n
	}
	ab1, ba1 := dropPattern(t, seeded(42), writes, false)
	ab2, ba2 := dropPattern(t, seeded(42), writes, true)
	if !reflect.DeepEqual(ab1, ab2) || !reflect.DeepEqual(ba1, ba2) {
		t.Fatalf("two networks with seed 42 dropped different writes:\na->b %v\n     %v\nb->a %v\n     %v", ab1, ab2, ba1, ba2)
	}
	for _, dropped := range []int{count(ab1), count(ba1)} {
		if dropped < writes/8 || dropped > writes*3/8 {
			t.Fatalf("dropped %d of %d writes at rate %g", dropped, writes, rate)
		}
	}
	if reflect.DeepEqual(ab1, ba1) {
		t.Fatal("both directions of the link dropped the same writes: the link does not enter the draw")
	}
	ab3, _ := dropPattern(t, seeded(43), writes, false)
	if reflect.DeepEqual(ab1, ab3) {
		t.Fatal("seeds 42 and 43 dropped the same writes")
	}

	// SetSeed restarts the count: the same network replays its drops.
	n := seeded(42)
	dropPattern(t, n, writes/2, false)
	n.SetSeed(42)
	ab4, ba4 := dropPattern(t, n, writes, false)
	if !reflect.DeepEqual(ab1, ab4) || !reflect.DeepEqual(ba1, ba4) {
		t.Fatal("SetSeed(42) on a used network did not replay seed 42's drops")
	}
}

func TestMemNetworkLinkFaultsApplyToOneDirection(t *testing.T) {
	n := NewMemNetwork()
	n.SetSeed(7)
	n.SetLinkFaults("a", "b", LinkFaults{DropRate: 1})
	ab, ba := dropPattern(t, n, 20, false)
	if count(ab) != 20 || count(ba) != 0 {
		t.Fatalf("a->b drop rate 1, b->a none: dropped %d and %d of 20", count(ab), count(ba))
	}
	n.ClearLinkFaults()
	n.SetLinkFaults("b", "a", LinkFaults{Delay: 50 * time.Millisecond})
	la, err := n.listen("a")
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if memSend(t, n, la, "b", "a", []byte("slow")) {
		t.Fatal("a delayed write was dropped")
	}
	if took := time.Since(start); took < 50*time.Millisecond {
		t.Fatalf("a write on a link with 50ms delay took %s", took)
	}
	la.Close()
	ab, _ = dropPattern(t, n, 20, false)
	if count(ab) != 0 {
		t.Fatalf("after ClearLinkFaults a->b dropped %d of 20", count(ab))
	}
}
