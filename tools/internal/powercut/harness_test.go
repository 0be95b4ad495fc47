package powercut

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/raftkit/raftkit/tools/internal/freeport"
	"github.com/raftkit/raftkit/tools/internal/powerloss"
)

// requireFuse skips outside CI, and fails in CI, when this machine cannot
// mount a FUSE file system.
func requireFuse(t *testing.T) {
	t.Helper()
	var missing string
	if _, err := os.Stat("/dev/fuse"); err != nil {
		missing = "/dev/fuse"
	} else if os.Geteuid() != 0 {
		missing = "root (mount(2) of a FUSE file system)"
	}
	if missing == "" {
		return
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("power-loss scenarios need %s, and CI must run them", missing)
	}
	t.Skipf("power-loss scenarios need %s", missing)
}

var kvnode struct {
	once sync.Once
	bin  string
	err  error
}

// kvnodeBinary builds raftkittest/internal/kvnode from the library's tree
// once per test run.
func kvnodeBinary(t *testing.T) string {
	t.Helper()
	kvnode.once.Do(func() {
		root, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "github.com/raftkit/raftkit").Output()
		if err != nil {
			kvnode.err = fmt.Errorf("locate the library's module: %v", err)
			return
		}
		dir, err := os.MkdirTemp("", "powercut-kvnode-")
		if err != nil {
			kvnode.err = err
			return
		}
		bin := filepath.Join(dir, "kvnode")
		build := exec.Command("go", "build", "-o", bin, "./raftkittest/internal/kvnode")
		build.Dir = strings.TrimSpace(string(root))
		if out, err := build.CombinedOutput(); err != nil {
			kvnode.err = fmt.Errorf("build kvnode: %v\n%s", err, out)
			return
		}
		kvnode.bin = bin
	})
	if kvnode.err != nil {
		t.Fatal(kvnode.err)
	}
	return kvnode.bin
}

func TestMain(m *testing.M) {
	code := m.Run()
	if kvnode.bin != "" {
		os.RemoveAll(filepath.Dir(kvnode.bin))
	}
	os.Exit(code)
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string { l.mu.Lock(); defer l.mu.Unlock(); return l.b.String() }

// node is one kvnode process whose data directory is on its own
// power-loss mount.
type node struct {
	id, addr, http, peers, store, bin string
	disk                              *powerloss.FS

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{} // closed once cmd has been reaped
	stdin  io.WriteCloser
	out    *lockedBuffer
}

func (n *node) dir() string { return filepath.Join(n.disk.Dir(), n.id) }

// start starts the process and waits until it serves HTTP; a node that
// exits instead (a store that does not open) is an error with its output.
func (n *node) start() error {
	cmd := exec.Command(n.bin, "-id", n.id, "-addr", n.addr, "-http", n.http, "-dir", n.dir(), "-peers", n.peers, "-store", n.store)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return err
	}
	out := &lockedBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		return err
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	n.mu.Lock()
	n.cmd, n.exited, n.stdin, n.out = cmd, exited, stdin, out
	n.mu.Unlock()
	deadline := time.Now().Add(60 * time.Second)
	for !strings.Contains(out.String(), "ready") {
		select {
		case <-exited:
			n.mu.Lock()
			n.cmd = nil
			n.mu.Unlock()
			return fmt.Errorf("%s exited at start: %s", n.id, out.String())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s did not start within 60s: %s", n.id, out.String())
		}
	}
	return nil
}

// kill sends SIGKILL and reaps the process.
func (n *node) kill() {
	n.mu.Lock()
	cmd, exited := n.cmd, n.exited
	n.cmd = nil
	n.mu.Unlock()
	if cmd != nil {
		cmd.Process.Kill()
		<-exited
	}
}

// stop closes stdin (a clean stop) and waits, killing after 20s.
func (n *node) stop() {
	n.mu.Lock()
	cmd, exited, stdin := n.cmd, n.exited, n.stdin
	n.cmd = nil
	n.mu.Unlock()
	if cmd == nil {
		return
	}
	stdin.Close()
	select {
	case <-exited:
	case <-time.After(20 * time.Second):
		cmd.Process.Kill()
		<-exited
	}
}

func (n *node) running() bool { n.mu.Lock(); defer n.mu.Unlock(); return n.cmd != nil }

// powerCut kills the process and cuts its disk's power.
func (n *node) powerCut() error {
	n.kill()
	return n.disk.Cut()
}

// cluster is kvnode processes, each on its own mount.
type cluster struct {
	t      *testing.T
	nodes  []*node
	client *http.Client
	slow   *http.Client // for dumps, which may be large
}

func newCluster(t *testing.T, size int, store string, opts powerloss.Options) *cluster {
	t.Helper()
	requireFuse(t)
	bin := kvnodeBinary(t)
	addrs, err := freeport.Addrs(2 * size)
	if err != nil {
		t.Fatal(err)
	}
	var peers []string
	for i := 0; i < size; i++ {
		peers = append(peers, fmt.Sprintf("n%d=%s", i, addrs[i]))
	}
	c := &cluster{t: t, client: &http.Client{Timeout: 3 * time.Second}, slow: &http.Client{Timeout: 60 * time.Second}}
	for i := 0; i < size; i++ {
		disk, err := powerloss.Mount(t.TempDir(), opts)
		if err != nil {
			t.Fatal(err)
		}
		// Cleanups run last first: unmount after the nodes stopped and
		// before the temporary directory goes.
		t.Cleanup(func() {
			if err := disk.Close(); err != nil {
				t.Errorf("unmount: %v", err)
			}
		})
		c.nodes = append(c.nodes, &node{
			id: fmt.Sprintf("n%d", i), addr: addrs[i], http: addrs[size+i],
			peers: strings.Join(peers, ","), store: store, bin: bin, disk: disk,
		})
	}
	t.Cleanup(func() {
		for _, n := range c.nodes {
			n.stop()
		}
		c.client.CloseIdleConnections()
	})
	for _, n := range c.nodes {
		if err := n.start(); err != nil {
			t.Fatal(err)
		}
	}
	return c
}

// status is the part of raftkit.Status the scenarios read.
type status struct {
	State string
}

func (c *cluster) state(n *node) string {
	resp, err := c.client.Get("http://" + n.http + "/status")
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	var st status
	json.NewDecoder(resp.Body).Decode(&st)
	return st.State
}

// leader waits up to a minute for a running node that leads.
func (c *cluster) leader() (*node, error) {
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		for _, n := range c.nodes {
			if n.running() && c.state(n) == "Leader" {
				return n, nil
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	return nil, fmt.Errorf("no leader within 60s")
}

// put writes key=value through n; it reports whether the node
// acknowledged the write as applied.
func (c *cluster) put(n *node, key string, value []byte) bool {
	req, _ := http.NewRequest(http.MethodPut, "http://"+n.http+"/kv/"+key, bytes.NewReader(value))
	resp, err := c.client.Do(req)
	if err != nil {
		return false
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.Header.Get("X-Outcome") == "applied"
}

// dump returns n's whole store after a read barrier, retrying for a
// minute while it cannot serve.
func (c *cluster) dump(n *node) (map[string]string, error) {
	var lastErr error
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		resp, err := c.slow.Get("http://" + n.http + "/dump")
		if err != nil {
			lastErr = err
			time.Sleep(100 * time.Millisecond)
			continue
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			lastErr = err
			continue
		}
		if resp.StatusCode != http.StatusOK {
			lastErr = fmt.Errorf("%s: %s", resp.Status, body)
			time.Sleep(100 * time.Millisecond)
			continue
		}
		var all map[string]string
		return all, json.Unmarshal(body, &all)
	}
	return nil, fmt.Errorf("dump on %s: %v", n.id, lastErr)
}

// acks is the set of acknowledged writes: key -> the value's length.
type acks struct {
	mu   sync.Mutex
	keys map[string]int
}

func (a *acks) add(key string, n int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.keys == nil {
		a.keys = map[string]int{}
	}
	a.keys[key] = n
}

// missing returns the acknowledged keys that all lacks or holds with a
// different length.
func (a *acks) missing(all map[string]string) []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []string
	for k, n := range a.keys {
		if v, ok := all[k]; !ok || len(v) != n {
			out = append(out, k)
		}
	}
	return out
}

func (a *acks) count() int { a.mu.Lock(); defer a.mu.Unlock(); return len(a.keys) }
