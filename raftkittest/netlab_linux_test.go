package raftkittest

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// netLab is a small network of Linux network namespaces made for one
// test: a hub namespace holding a bridge, one namespace per node and one
// for the clients, each joined to the bridge by a veth pair and given an
// address of labSubnet. The addresses exist only inside the lab's
// namespaces, so parallel labs do not collide and nothing is routed
// outside them; the namespaces' names carry the test process's pid and a
// counter, and a new lab removes those of labs whose process has died.
//
// Faults cut real links: Down takes a node's cable out of the bridge (no
// carrier, nothing passes either way, clients included); Block drops, on
// the sending node's interface, every IP packet to another node (one
// direction only; the reverse direction and the clients are untouched).
// Block needs the htb and pfifo qdiscs and the u32 classifier: a pfifo of
// limit 0 drops whatever u32 sends to it (kernels without tc actions have
// no other way to drop).
type netLab struct {
	t      testing.TB
	prefix string
	hub    string
	client string
	nodes  []string // namespace of node i
	nsFile *os.File // the client namespace, for dialing

	mu      sync.Mutex
	blocked map[[2]int]bool
	down    map[int]bool
}

// labSubnet is the lab's /24: .2 is the client, .10+i node i.
const labSubnet = "10.213.0."

var labCount struct {
	sync.Mutex
	n int
}

// labNamePrefix starts the name of every namespace a lab makes.
const labNamePrefix = "rklab"

// needNetLab skips the test (fails it in CI) unless this process can
// make network namespaces and the lab's tc setup works here.
func needNetLab(t testing.TB) {
	t.Helper()
	missing := ""
	for _, tool := range []string{"ip", "tc"} {
		if _, err := exec.LookPath(tool); err != nil {
			missing += tool + " (iproute2) not found; "
		}
	}
	if os.Geteuid() != 0 {
		missing += "needs root for network namespaces; "
	}
	if missing == "" {
		return
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("the partition tests must run in CI: %s", missing)
	}
	t.Skip(missing)
}

// newNetLab makes a lab with n node namespaces; it is removed when the
// test ends, whether it passed or not.
func newNetLab(t testing.TB, n int) *netLab {
	t.Helper()
	needNetLab(t)
	sweepDeadLabs(t)
	labCount.Lock()
	labCount.n++
	id := labCount.n
	labCount.Unlock()
	l := &netLab{t: t, prefix: fmt.Sprintf("%s-%d-%d", labNamePrefix, os.Getpid(), id),
		blocked: map[[2]int]bool{}, down: map[int]bool{}}
	l.hub, l.client = l.prefix+"-hub", l.prefix+"-cl"
	for i := 0; i < n; i++ {
		l.nodes = append(l.nodes, fmt.Sprintf("%s-n%d", l.prefix, i))
	}
	t.Cleanup(l.remove)
	l.must("ip", "netns", "add", l.hub)
	l.must("ip", "-n", l.hub, "link", "add", "br0", "type", "bridge")
	l.must("ip", "-n", l.hub, "link", "set", "br0", "up")
	l.attach(l.client, "vcl", labSubnet+"2")
	for i, ns := range l.nodes {
		l.attach(ns, fmt.Sprintf("vn%d", i), l.NodeIP(i))
		// Block's classes: 1:1 passes, 1:2 drops (a pfifo of limit 0).
		l.must("ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", "eth0", "root", "handle", "1:", "htb", "default", "1")
		l.must("ip", "netns", "exec", ns, "tc", "class", "add", "dev", "eth0", "parent", "1:", "classid", "1:1", "htb", "rate", "10gbit")
		l.must("ip", "netns", "exec", ns, "tc", "class", "add", "dev", "eth0", "parent", "1:", "classid", "1:2", "htb", "rate", "10gbit")
		l.must("ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", "eth0", "parent", "1:2", "handle", "20:", "pfifo", "limit", "0")
	}
	f, err := os.Open("/run/netns/" + l.client)
	if err != nil {
		t.Fatalf("open the client namespace: %v", err)
	}
	l.nsFile = f
	return l
}

// attach makes namespace ns, with lo up and eth0 at addr, cabled to the
// bridge through hubEnd.
func (l *netLab) attach(ns, hubEnd, addr string) {
	l.must("ip", "netns", "add", ns)
	l.must("ip", "-n", l.hub, "link", "add", hubEnd, "type", "veth", "peer", "name", "eth0")
	l.must("ip", "-n", l.hub, "link", "set", "eth0", "netns", ns)
	l.must("ip", "-n", l.hub, "link", "set", hubEnd, "master", "br0", "up")
	l.must("ip", "-n", ns, "link", "set", "lo", "up")
	l.must("ip", "-n", ns, "addr", "add", addr+"/24", "dev", "eth0")
	l.must("ip", "-n", ns, "link", "set", "eth0", "up")
}

func (l *netLab) must(args ...string) {
	l.t.Helper()
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		l.t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// remove deletes the lab's namespaces, which deletes their veths and the
// bridge with them.
func (l *netLab) remove() {
	if l.nsFile != nil {
		l.nsFile.Close()
	}
	for _, ns := range append([]string{l.hub, l.client}, l.nodes...) {
		if _, err := os.Stat("/run/netns/" + ns); err == nil {
			if out, err := exec.Command("ip", "netns", "del", ns).CombinedOutput(); err != nil {
				l.t.Errorf("remove namespace %s: %v\n%s", ns, err, out)
			}
		}
	}
}

// sweepDeadLabs removes namespaces left by labs whose process is gone
// (a test binary killed by its timeout cannot clean up).
func sweepDeadLabs(t testing.TB) {
	entries, _ := os.ReadDir("/run/netns")
	for _, e := range entries {
		rest, ok := strings.CutPrefix(e.Name(), labNamePrefix+"-")
		if !ok {
			continue
		}
		pidText, _, _ := strings.Cut(rest, "-")
		pid, err := strconv.Atoi(pidText)
		if err != nil || pid == os.Getpid() {
			continue
		}
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); err == nil {
			continue
		}
		if out, err := exec.Command("ip", "netns", "del", e.Name()).CombinedOutput(); err != nil {
			t.Logf("remove the stale namespace %s: %v %s", e.Name(), err, out)
		}
	}
}

// NodeIP is node i's address.
func (l *netLab) NodeIP(i int) string { return labSubnet + strconv.Itoa(10+i) }

// Namespace is node i's namespace.
func (l *netLab) Namespace(i int) string { return l.nodes[i] }

// Down takes node i's cable out (down true) or puts it back.
func (l *netLab) Down(i int, down bool) {
	state := "up"
	if down {
		state = "down"
	}
	l.must("ip", "-n", l.hub, "link", "set", fmt.Sprintf("vn%d", i), state)
	l.mu.Lock()
	l.down[i] = down
	l.mu.Unlock()
}

// Block drops every IP packet node from sends to node to.
func (l *netLab) Block(from, to int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.blocked[[2]int{from, to}] {
		return
	}
	l.must("ip", "netns", "exec", l.nodes[from], "tc", "filter", "add", "dev", "eth0", "parent", "1:",
		"protocol", "ip", "prio", "1", "u32", "match", "ip", "dst", l.NodeIP(to)+"/32", "flowid", "1:2")
	l.blocked[[2]int{from, to}] = true
}

// Heal removes every Block and puts every cable back.
func (l *netLab) Heal() {
	l.mu.Lock()
	defer l.mu.Unlock()
	from := map[int]bool{}
	for k := range l.blocked {
		from[k[0]] = true
	}
	for i := range from {
		l.must("ip", "netns", "exec", l.nodes[i], "tc", "filter", "del", "dev", "eth0", "parent", "1:")
	}
	for i, d := range l.down {
		if d {
			l.must("ip", "-n", l.hub, "link", "set", fmt.Sprintf("vn%d", i), "up")
		}
	}
	l.blocked, l.down = map[[2]int]bool{}, map[int]bool{}
}

// Split cuts the nodes into groups that reach only their own group
// (clients still reach every node).
func (l *netLab) Split(groups ...[]int) {
	group := map[int]int{}
	for g, members := range groups {
		for _, i := range members {
			group[i] = g
		}
	}
	for i := range l.nodes {
		for j := range l.nodes {
			if i != j && group[i] != group[j] {
				l.Block(i, j)
			}
		}
	}
}

// DialContext dials from the client namespace; http.Transport takes it.
func (l *netLab) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	var conn net.Conn
	err := inNamespace(l.nsFile, func() error {
		var d net.Dialer
		var err error
		conn, err = d.DialContext(ctx, network, addr)
		return err
	})
	return conn, err
}

// inNamespace runs fn on an OS thread of its own that has entered the
// network namespace ns; sockets fn makes belong to ns for their life.
// The thread is never unlocked, so Go ends it with the goroutine rather
// than handing it, still in ns, to other goroutines.
func inNamespace(ns *os.File, fn func() error) error {
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := unix.Setns(int(ns.Fd()), unix.CLONE_NEWNET); err != nil {
			done <- fmt.Errorf("setns %s: %w", ns.Name(), err)
			return
		}
		done <- fn()
	}()
	return <-done
}

// inNode runs fn as inNamespace does, in node i's namespace.
func (l *netLab) inNode(i int, fn func() error) error {
	f, err := os.Open("/run/netns/" + l.nodes[i])
	if err != nil {
		return err
	}
	defer f.Close()
	return inNamespace(f, fn)
}

// wrapNode writes an executable that runs bin inside node i's namespace
// with the arguments it is given, for proc.bin; exec keeps one pid from
// the wrapper to bin, so signals reach the node itself.
func (l *netLab) wrapNode(dir string, i int, bin string) string {
	path := fmt.Sprintf("%s/in-%s", dir, l.nodes[i])
	script := fmt.Sprintf("#!/bin/sh\nexec ip netns exec %s %s \"$@\"\n", l.nodes[i], bin)
	if err := os.WriteFile(path, []byte(script), 0o755); err != nil {
		l.t.Fatal(err)
	}
	return path
}

func TestNetLabCutsAndHealsRealLinks(t *testing.T) {
	l := newNetLab(t, 2)
	var listeners []net.Listener
	var udp []net.PacketConn
	for i := 0; i < 2; i++ {
		err := l.inNode(i, func() error {
			ln, err := net.Listen("tcp", l.NodeIP(i)+":9000")
			if err != nil {
				return err
			}
			listeners = append(listeners, ln)
			pc, err := net.ListenPacket("udp", l.NodeIP(i)+":9001")
			udp = append(udp, pc)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		for _, c := range append([]io.Closer{}, udp[0], udp[1], listeners[0], listeners[1]) {
			c.Close()
		}
	})
	for _, ln := range listeners {
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				c.Close()
			}
		}()
	}
	clientReaches := func(i int) bool {
		ctx, cancel := context.WithTimeout(context.Background(), 700*time.Millisecond)
		defer cancel()
		c, err := l.DialContext(ctx, "tcp", l.NodeIP(i)+":9000")
		if err == nil {
			c.Close()
		}
		return err == nil
	}
	seq := 0
	// reaches sends a datagram from node from to node to and reports
	// whether it arrived.
	reaches := func(from, to int) bool {
		seq++
		msg := fmt.Sprintf("probe-%d", seq)
		dst := &net.UDPAddr{IP: net.ParseIP(l.NodeIP(to)), Port: 9001}
		for try := 0; try < 3; try++ {
			if _, err := udp[from].WriteTo([]byte(msg), dst); err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, 64)
			udp[to].SetReadDeadline(time.Now().Add(300 * time.Millisecond))
			for {
				n, _, err := udp[to].ReadFrom(buf)
				if err != nil {
					break
				}
				if string(buf[:n]) == msg {
					return true
				}
			}
		}
		return false
	}
	if !clientReaches(0) || !clientReaches(1) || !reaches(0, 1) || !reaches(1, 0) {
		t.Fatalf("a fresh lab does not connect everything: client->n0 %v, client->n1 %v, n0->n1 %v, n1->n0 %v",
			clientReaches(0), clientReaches(1), reaches(0, 1), reaches(1, 0))
	}

	l.Block(0, 1)
	if reaches(0, 1) {
		t.Fatal("n0 reaches n1 through Block(0, 1)")
	}
	if !reaches(1, 0) || !clientReaches(0) || !clientReaches(1) {
		t.Fatal("Block(0, 1) cut more than n0->n1")
	}
	l.Heal()
	if !reaches(0, 1) {
		t.Fatal("n0 does not reach n1 after Heal")
	}

	l.Down(0, true)
	if clientReaches(0) || reaches(1, 0) || reaches(0, 1) {
		t.Fatal("n0 is still reachable with its cable out")
	}
	if !clientReaches(1) {
		t.Fatal("n0's cable out cut the client from n1")
	}
	l.Heal()
	waitUntil(t, 5*time.Second, "n0 reachable after Heal", func() bool { return clientReaches(0) && reaches(1, 0) })

	l.remove()
	for _, ns := range append([]string{l.hub, l.client}, l.nodes...) {
		if _, err := os.Stat("/run/netns/" + ns); err == nil {
			t.Errorf("namespace %s outlives the lab", ns)
		}
	}
}

func TestSweepDeadLabsRemovesOnlyTheLabsOfDeadProcesses(t *testing.T) {
	needNetLab(t)
	dead := 0
	for pid := 4000000; pid < 4100000; pid++ {
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); os.IsNotExist(err) {
			dead = pid
			break
		}
	}
	deadNS := fmt.Sprintf("%s-%d-1-hub", labNamePrefix, dead)
	liveNS := fmt.Sprintf("%s-%d-1-hub", labNamePrefix, os.Getppid())
	for _, ns := range []string{deadNS, liveNS} {
		if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
			t.Fatalf("ip netns add %s: %v %s", ns, err, out)
		}
		t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
	}
	sweepDeadLabs(t)
	if _, err := os.Stat("/run/netns/" + deadNS); err == nil {
		t.Errorf("%s (pid %d is gone) survived the sweep", deadNS, dead)
	}
	if _, err := os.Stat("/run/netns/" + liveNS); err != nil {
		t.Errorf("%s (pid %d is alive) was swept: %v", liveNS, os.Getppid(), err)
	}
}
