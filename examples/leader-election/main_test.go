package main

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// cluster is three leader-election processes appending to one tick file.
type cluster struct {
	t     *testing.T
	bin   string
	ticks string // the shared tick file
	peers string
	dir   string

	mu      sync.Mutex
	procs   map[string]*exec.Cmd
	addrs   map[string]string
	leads   map[string]uint64 // the last term each node said it leads in
	stopped map[string]int    // how many times each node said it stopped the work
	skipped map[string]int    // ticks skipped for want of a valid lease
	serving map[string]string // the leader's service as each node last heard it
	exited  map[string]chan struct{}
}

func startCluster(t *testing.T) *cluster {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "leader-election")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	c := &cluster{t: t, bin: bin, dir: t.TempDir(), procs: map[string]*exec.Cmd{}, addrs: map[string]string{},
		leads: map[string]uint64{}, stopped: map[string]int{}, skipped: map[string]int{}, serving: map[string]string{}, exited: map[string]chan struct{}{}}
	c.ticks = filepath.Join(c.dir, "ticks")
	var peers []string
	for i := 1; i <= 3; i++ {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		id := fmt.Sprintf("n%d", i)
		c.addrs[id] = ln.Addr().String()
		peers = append(peers, id+"="+ln.Addr().String())
		ln.Close()
	}
	c.peers = strings.Join(peers, ",")
	for i := 1; i <= 3; i++ {
		c.start(fmt.Sprintf("n%d", i))
	}
	return c
}

// start (re)starts node id: its job ticks every 20 ms and takes 300 ms to
// finish its last unit after a planned stop.
func (c *cluster) start(id string) {
	c.t.Helper()
	cmd := exec.Command(c.bin, "-id", id, "-addr", c.addrs[id], "-dir", filepath.Join(c.dir, id), "-peers", c.peers,
		"-out", c.ticks, "-every", "20ms", "-finish", "300ms", "-serve", "svc-"+id)
	out, err := cmd.StdoutPipe()
	if err != nil {
		c.t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		c.t.Fatal(err)
	}
	exited := make(chan struct{})
	c.mu.Lock()
	c.procs[id], c.exited[id] = cmd, exited
	c.mu.Unlock()
	c.t.Cleanup(func() { cmd.Process.Kill(); <-exited })
	go func() {
		defer close(exited)
		defer cmd.Wait()
		s := bufio.NewScanner(out)
		for s.Scan() {
			line := s.Text()
			c.mu.Lock()
			switch {
			case strings.Contains(line, "became leader in term "):
				f := strings.Fields(line[strings.Index(line, "in term ")+len("in term "):])
				term, _ := strconv.ParseUint(strings.TrimSuffix(f[0], ","), 10, 64)
				c.leads[id] = term
			case strings.Contains(line, "stopped the leader's work"):
				c.stopped[id]++
			case strings.Contains(line, "skipped a tick"):
				c.skipped[id]++
			case strings.Contains(line, " serves at "):
				c.serving[id] = line[strings.LastIndex(line, " ")+1:]
			}
			c.mu.Unlock()
		}
	}()
}

// readTicks returns the tick file's ticks in the order they were written.
func (c *cluster) readTicks() []Tick {
	c.t.Helper()
	b, err := os.ReadFile(c.ticks)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		c.t.Fatal(err)
	}
	if i := bytes.LastIndexByte(b, '\n'); i >= 0 {
		b = b[:i+1] // a line being written is not a tick yet
	}
	ticks, err := readTicks(bytes.NewReader(b))
	if err != nil {
		c.t.Fatal(err)
	}
	return ticks
}

// waitTickAbove waits for a tick with a token above min and returns it.
func (c *cluster) waitTickAbove(min uint64, what string) Tick {
	c.t.Helper()
	deadline := time.Now().Add(45 * time.Second)
	for time.Now().Before(deadline) {
		ticks := c.readTicks()
		if len(ticks) > 0 && ticks[len(ticks)-1].Token > min {
			return ticks[len(ticks)-1]
		}
		time.Sleep(20 * time.Millisecond)
	}
	c.t.Fatalf("timed out waiting for %s", what)
	return Tick{}
}

func (c *cluster) waitFor(what string, cond func() bool) {
	c.t.Helper()
	deadline := time.Now().Add(45 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			c.t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (c *cluster) signal(id string, sig syscall.Signal) {
	c.t.Helper()
	c.mu.Lock()
	p := c.procs[id].Process
	c.mu.Unlock()
	if err := p.Signal(sig); err != nil {
		c.t.Fatalf("signal %v to %s: %v", sig, id, err)
	}
}

// checkTicks is the oracle: in the order the ticks were written, no tick
// carries a lower token than an earlier one (a guarded tick never follows
// a newer leader's first), each token belongs to one node, and the
// consumer's fence admits every tick.
func (c *cluster) checkTicks() []Tick {
	c.t.Helper()
	ticks := c.readTicks()
	var fence Fence
	owner := map[uint64]string{}
	for i, tk := range ticks {
		if i > 0 && tk.Token < ticks[i-1].Token {
			c.t.Errorf("tick %d (%s #%d, token %d) written after a tick of token %d from %s",
				i, tk.Node, tk.N, tk.Token, ticks[i-1].Token, ticks[i-1].Node)
		}
		if o, ok := owner[tk.Token]; ok && o != tk.Node {
			c.t.Errorf("token %d used by %s and %s", tk.Token, o, tk.Node)
		}
		owner[tk.Token] = tk.Node
		if !fence.Admit(tk.Token) {
			c.t.Errorf("the consumer refused tick %d (%s #%d, token %d)", i, tk.Node, tk.N, tk.Token)
		}
	}
	return ticks
}

// pauseRepetitions is how many times TestPausedLeaderNeverTicksAfterItsSuccessor
// stops the leader: 3 by default (about 25 s), LEADER_ELECTION_PAUSES to
// change it (the acceptance run is 10).
func pauseRepetitions(t *testing.T) int {
	if s := os.Getenv("LEADER_ELECTION_PAUSES"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			t.Fatalf("LEADER_ELECTION_PAUSES=%q: want a positive number", s)
		}
		return n
	}
	return 3
}

// TestPausedLeaderNeverTicksAfterItsSuccessor stops the leader with
// SIGSTOP for 5 s while the others elect a successor, then resumes it: the
// resumed leader finds its lease expired and skips its ticks, so no tick
// of an older term follows a newer one in the file. Then it stops the
// leader with SIGTERM (its last unit of work lands before the successor's
// first tick) and with kill -9.
func TestPausedLeaderNeverTicksAfterItsSuccessor(t *testing.T) {
	c := startCluster(t)
	last := c.waitTickAbove(0, "the first leader's tick")
	c.waitFor("every node to learn where the leader serves", func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		for i := 1; i <= 3; i++ {
			if c.serving[fmt.Sprintf("n%d", i)] != "svc-"+last.Node {
				return false
			}
		}
		return true
	})
	for rep := 0; rep < pauseRepetitions(t); rep++ {
		paused := last.Node
		c.mu.Lock()
		stopsBefore := c.stopped[paused]
		c.mu.Unlock()
		c.signal(paused, syscall.SIGSTOP)
		began := time.Now()
		next := c.waitTickAbove(last.Token, fmt.Sprintf("a successor's tick while %s is stopped", paused))
		if next.Node == paused {
			t.Fatalf("stopped %s ticked in token %d", paused, next.Token)
		}
		time.Sleep(time.Until(began.Add(5 * time.Second))) // the pause itself
		c.signal(paused, syscall.SIGCONT)
		c.waitFor(paused+" to notice it no longer leads", func() bool {
			c.mu.Lock()
			defer c.mu.Unlock()
			return c.stopped[paused] > stopsBefore
		})
		last = c.waitTickAbove(next.Token-1, "ticks after the resume")
		c.mu.Lock()
		t.Logf("pause %d: %s stopped 5 s; %s ticked in term %d; %s skipped %d ticks so far for want of a lease",
			rep+1, paused, next.Node, next.Token, paused, c.skipped[paused])
		c.mu.Unlock()
		c.checkTicks()
		if t.Failed() {
			return
		}
	}

	// SIGTERM: the job's last unit (300 ms) lands before the successor's first tick.
	termed := last.Node
	c.signal(termed, syscall.SIGTERM)
	select {
	case <-c.exited[termed]:
	case <-time.After(45 * time.Second):
		t.Fatalf("%s did not exit after SIGTERM", termed)
	}
	next := c.waitTickAbove(last.Token, "a successor's tick after SIGTERM")
	ticks := c.checkTicks()
	sawLast := false
	for _, tk := range ticks {
		if tk.Node == termed && tk.Token == last.Token && tk.Last {
			sawLast = true
		}
	}
	if !sawLast {
		t.Errorf("%s's last unit of work after SIGTERM is not in the file", termed)
	}
	c.start(termed)

	// kill -9: nothing to finish; the others take over.
	killed := next.Node
	c.signal(killed, syscall.SIGKILL)
	<-c.exited[killed]
	c.waitTickAbove(next.Token, "a successor's tick after kill -9")
	c.checkTicks()
}

func TestConsumerRefusesAStaleToken(t *testing.T) {
	ticks, err := readTicks(strings.NewReader("3 n1 1\n3 n1 2\n5 n2 1\n3 n1 3\n5 n2 2 last\n"))
	if err != nil {
		t.Fatal(err)
	}
	var fence Fence
	var got []bool
	for _, tk := range ticks {
		got = append(got, fence.Admit(tk.Token))
	}
	want := []bool{true, true, true, false, true}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("admitted %v, want %v", got, want)
	}
	if !ticks[4].Last || ticks[3].Last {
		t.Fatal("the last-unit mark was misread")
	}
}

// TestOneLeaderWorksAtATime runs three processes, kills the one doing the
// leader's work and checks that exactly one other takes over.
func TestOneLeaderWorksAtATime(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "leader-election")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	var addrs, peers []string
	for i := 0; i < 3; i++ {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addrs = append(addrs, ln.Addr().String())
		peers = append(peers, fmt.Sprintf("n%d=%s", i+1, ln.Addr()))
		ln.Close()
	}
	var mu sync.Mutex
	working := map[string]bool{} // who said it works and has not said it stopped
	overlap := ""
	dead := map[string]bool{}
	cmds := map[string]*exec.Cmd{}
	dir := t.TempDir()
	for i := range addrs {
		id := fmt.Sprintf("n%d", i+1)
		cmd := exec.Command(bin, "-id", id, "-addr", addrs[i], "-dir", filepath.Join(dir, id), "-peers", strings.Join(peers, ","), "-every", "50ms")
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		cmds[id] = cmd
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		go func() {
			s := bufio.NewScanner(out)
			for s.Scan() {
				mu.Lock()
				if dead[id] {
					mu.Unlock()
					continue
				}
				switch line := s.Text(); {
				case strings.Contains(line, "doing the leader's work"):
					working[id] = true
					for other, w := range working {
						if w && other != id && overlap == "" {
							overlap = other + " and " + id
						}
					}
				case strings.Contains(line, "stopped the leader's work"):
					working[id] = false
				}
				mu.Unlock()
			}
		}()
	}
	current := func() string {
		mu.Lock()
		defer mu.Unlock()
		for id, w := range working {
			if w {
				return id
			}
		}
		return ""
	}
	deadline := time.Now().Add(30 * time.Second)
	for current() == "" && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	first := current()
	if first == "" {
		t.Fatal("no process did the leader's work")
	}
	mu.Lock()
	dead[first] = true
	working[first] = false // a killed process cannot say it stopped
	mu.Unlock()
	cmds[first].Process.Kill()
	cmds[first].Wait()
	deadline = time.Now().Add(30 * time.Second)
	for current() == "" && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if current() == "" {
		t.Fatal("nobody took over the leader's work after the leader was killed")
	}
	mu.Lock()
	defer mu.Unlock()
	if overlap != "" {
		t.Fatalf("%s did the leader's work at the same time", overlap)
	}
}
