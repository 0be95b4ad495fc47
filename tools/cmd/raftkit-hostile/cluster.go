package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/raftkit/raftkit/tools/internal/freeport"
)

// node is one kvserver process.
type node struct {
	id, raft, http string
	dir            string
	args           []string
	cmd            *exec.Cmd
	stderr         bytes.Buffer
}

// cluster is three kvserver processes on 127.0.0.1, plain or with mutual
// TLS from certificates that gencerts made.
type cluster struct {
	bin      string
	certs    string // "" for plain
	nodes    []*node
	client   *http.Client
	maxValue int // the largest value a PUT may carry
}

// buildTools builds kvserver and gencerts into dir, in raftkit's own
// module (their dependencies are its, not this module's).
func buildTools(dir string) (kvserver, gencerts string, err error) {
	root, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "github.com/raftkit/raftkit").Output()
	if err != nil {
		return "", "", fmt.Errorf("find raftkit's module: %v", err)
	}
	kvserver, gencerts = filepath.Join(dir, "kvserver"), filepath.Join(dir, "gencerts")
	for bin, pkg := range map[string]string{kvserver: "./examples/kvserver", gencerts: "./examples/gencerts"} {
		build := exec.Command("go", "build", "-o", bin, pkg)
		build.Dir = strings.TrimSpace(string(root))
		if out, err := build.CombinedOutput(); err != nil {
			return "", "", fmt.Errorf("build %s: %v\n%s", pkg, err, out)
		}
	}
	return kvserver, gencerts, nil
}

// startCluster starts three kvservers with their data under dir. With
// gencerts set, it makes certificates and turns on mutual TLS.
func startCluster(bin, gencerts, dir string, extra []string) (*cluster, error) {
	c := &cluster{bin: bin, client: &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 16}}}
	if gencerts != "" {
		c.certs = filepath.Join(dir, "certs")
		if out, err := exec.Command(gencerts, "-dir", c.certs, "-nodes", "n1,n2,n3", "-domain", "raft.local").CombinedOutput(); err != nil {
			return nil, fmt.Errorf("gencerts: %v\n%s", err, out)
		}
	}
	ports, err := freeport.Addrs(6)
	if err != nil {
		return nil, err
	}
	var peers []string
	for i := 0; i < 3; i++ {
		n := &node{id: fmt.Sprintf("n%d", i+1), raft: ports[2*i], http: ports[2*i+1], dir: filepath.Join(dir, fmt.Sprintf("n%d", i+1))}
		c.nodes = append(c.nodes, n)
		peers = append(peers, n.id+"="+n.raft)
	}
	for _, n := range c.nodes {
		args := []string{"-id", n.id, "-addr", n.raft, "-http", n.http, "-dir", n.dir, "-peers", strings.Join(peers, ",")}
		if c.certs != "" {
			args = append(args, "-tls-ca", filepath.Join(c.certs, "ca.pem"),
				"-tls-cert", filepath.Join(c.certs, n.id, "cert.pem"), "-tls-key", filepath.Join(c.certs, n.id, "key.pem"))
		}
		n.args = append(args, extra...)
		if err := c.start(n); err != nil {
			c.stop()
			return nil, err
		}
	}
	if _, err := c.waitLeader(30 * time.Second); err != nil {
		c.stop()
		return nil, err
	}
	return c, nil
}

// start (re)starts n's process with its arguments.
func (c *cluster) start(n *node) error {
	n.cmd = exec.Command(c.bin, n.args...)
	n.stderr.Reset()
	n.cmd.Stderr = &n.stderr
	return n.cmd.Start()
}

// kill stops n's process with SIGKILL.
func (c *cluster) kill(n *node) {
	n.cmd.Process.Kill()
	n.cmd.Wait()
}

func (c *cluster) stop() {
	for _, n := range c.nodes {
		if n.cmd != nil && n.cmd.Process != nil {
			n.cmd.Process.Kill()
			n.cmd.Wait()
		}
	}
	c.client.CloseIdleConnections()
}

// status is the part of kvserver's /status this program reads.
type status struct {
	State        string `json:"state"`
	Term         uint64 `json:"term"`
	CommitIndex  uint64 `json:"commit_index"`
	AppliedIndex uint64 `json:"applied_index"`
}

func (c *cluster) status(n *node) (status, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+n.http+"/status", nil)
	resp, err := c.client.Do(req)
	if err != nil {
		return status{}, err
	}
	defer resp.Body.Close()
	var st status
	err = json.NewDecoder(resp.Body).Decode(&st)
	return st, err
}

// waitLeader returns the leader's index once one node says it leads.
func (c *cluster) waitLeader(limit time.Duration) (int, error) {
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		for i, n := range c.nodes {
			if st, err := c.status(n); err == nil && st.State == "Leader" {
				return i, nil
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	var logs []string
	for _, n := range c.nodes {
		logs = append(logs, n.id+": "+lastLines(n.stderr.String(), 5))
	}
	return -1, fmt.Errorf("no leader within %s\n%s", limit, strings.Join(logs, "\n"))
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// maxTerm is the highest term any node reports; ok is false if none
// answered.
func (c *cluster) maxTerm() (uint64, bool) {
	var t uint64
	ok := false
	for _, n := range c.nodes {
		if st, err := c.status(n); err == nil {
			t, ok = max(t, st.Term), true
		}
	}
	return t, ok
}

func (c *cluster) put(n *node, key string, value []byte) error {
	req, _ := http.NewRequest("PUT", "http://"+n.http+"/kv/"+key, bytes.NewReader(value))
	resp, err := c.client.Do(req)
	if err != nil {
		return err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		return fmt.Errorf("PUT %s: HTTP %d", key, resp.StatusCode)
	}
	return nil
}

// rss returns a process's resident set in bytes, from /proc.
func rss(pid int) int64 {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return kb << 10
		}
	}
	return 0
}

// goroutines reads go_goroutines from a node's metrics; -1 if unknown.
func (c *cluster) goroutines(n *node) int {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+n.http+"/raft/metrics", nil)
	resp, err := c.client.Do(req)
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "go_goroutines "); ok {
			v, err := strconv.ParseFloat(strings.TrimSpace(rest), 64)
			if err == nil {
				return int(v)
			}
		}
	}
	return -1
}

// memberTLS is the client side of a member's mutual TLS (n1's certificate).
func (c *cluster) memberTLS() (*tls.Config, error) {
	if c.certs == "" {
		return nil, nil
	}
	cert, err := tls.LoadX509KeyPair(filepath.Join(c.certs, "n1", "cert.pem"), filepath.Join(c.certs, "n1", "key.pem"))
	if err != nil {
		return nil, err
	}
	// The probe checks that the node answers, not who it is.
	return &tls.Config{Certificates: []tls.Certificate{cert}, InsecureSkipVerify: true, MinVersion: tls.VersionTLS12}, nil
}
