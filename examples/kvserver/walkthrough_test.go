package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/raftkit/raftkit"
)

// TestReadmeWalkthrough runs the README's kvserver walkthrough with real OS
// processes: start three, write via a follower, kill -9 the leader, read
// from the survivors, restart it, and join a fourth node.
func TestReadmeWalkthrough(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "kvserver")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build kvserver: %v\n%s", err, out)
	}
	data := t.TempDir()
	ports := freePorts(t, 8)
	type proc struct {
		id, raft, http string
		cmd            *exec.Cmd
	}
	procs := make([]*proc, 4)
	var peers []string
	for i := range procs {
		procs[i] = &proc{id: fmt.Sprintf("n%d", i+1), raft: ports[2*i], http: ports[2*i+1]}
		if i < 3 {
			peers = append(peers, procs[i].id+"="+procs[i].raft)
		}
	}
	start := func(p *proc, extra ...string) {
		t.Helper()
		args := append([]string{"-id", p.id, "-addr", p.raft, "-http", p.http, "-dir", filepath.Join(data, p.id)}, extra...)
		p.cmd = exec.Command(bin, args...)
		var stderr bytes.Buffer
		p.cmd.Stderr = &stderr
		if err := p.cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if p.cmd.ProcessState == nil {
				p.cmd.Process.Kill()
				p.cmd.Wait()
			}
		})
	}
	for _, p := range procs[:3] {
		start(p, "-peers", strings.Join(peers, ","))
	}
	status := func(p *proc) (raftkit.Status, bool) {
		resp, err := http.Get("http://" + p.http + "/status")
		if err != nil {
			return raftkit.Status{}, false
		}
		defer resp.Body.Close()
		var st raftkit.Status
		return st, json.NewDecoder(resp.Body).Decode(&st) == nil
	}
	leaderOf := func(live []*proc) *proc {
		t.Helper()
		var leader *proc
		waitFor(t, 30*time.Second, "a leader", func() bool {
			for _, p := range live {
				if st, ok := status(p); ok && st.State == "Leader" {
					leader = p
					return true
				}
			}
			return false
		})
		return leader
	}
	leader := leaderOf(procs[:3])
	var follower *proc
	for _, p := range procs[:3] {
		if p != leader {
			follower = p
			break
		}
	}

	// The admin handler is mounted under /raft/.
	waitFor(t, 15*time.Second, "the follower's health check to pass", func() bool {
		code, _ := do(t, "GET", follower.http, "/raft/health", "")
		return code == 200
	})

	// Write through a follower.
	for i := 0; i < 5; i++ {
		if code, body := do(t, "PUT", follower.http, fmt.Sprintf("/kv/k%d", i), fmt.Sprintf("v%d", i)); code != http.StatusNoContent {
			t.Fatalf("PUT via follower: %d %s", code, body)
		}
	}
	for _, p := range procs[:3] {
		if code, body := do(t, "GET", p.http, "/kv/k4", ""); code != 200 || body != "v4" {
			t.Fatalf("linearizable GET on %s: %d %q", p.id, code, body)
		}
	}

	// kill -9 the leader; the survivors elect a new one and keep the data.
	if err := leader.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	leader.cmd.Wait()
	var survivors []*proc
	for _, p := range procs[:3] {
		if p != leader {
			survivors = append(survivors, p)
		}
	}
	leaderOf(survivors)
	for _, p := range survivors {
		if code, body := do(t, "GET", p.http, "/kv/k2?consistency=linearizable", ""); code != 200 || body != "v2" {
			t.Fatalf("GET on survivor %s: %d %q", p.id, code, body)
		}
	}
	if code, body := do(t, "PUT", survivors[0].http, "/kv/after-crash", "yes"); code != http.StatusNoContent {
		t.Fatalf("PUT after crash: %d %s", code, body)
	}

	// Restart the killed node from its directory: it catches up.
	start(leader, "-peers", strings.Join(peers, ","))
	waitFor(t, 30*time.Second, "the restarted node to catch up", func() bool {
		code, body := do(t, "GET", leader.http, "/kv/after-crash?consistency=stale", "")
		return code == 200 && body == "yes"
	})

	// Join a fourth node through a follower. Its health never passes
	// before it is a member that has applied what the cluster had
	// committed when it joined.
	start(procs[3], "-join", follower.raft)
	waitFor(t, 30*time.Second, "the fourth node to report healthy", func() bool {
		code, _ := do(t, "GET", procs[3].http, "/raft/health", "")
		if code != 200 {
			return false
		}
		st, _ := status(procs[3])
		if len(st.Servers) != 4 {
			t.Fatalf("fourth node healthy while its status lists %d servers: %+v", len(st.Servers), st.Servers)
		}
		for _, k := range []string{"k0", "k4", "after-crash"} {
			if code, body := do(t, "GET", procs[3].http, "/kv/"+k+"?consistency=stale", ""); code != 200 || body == "" {
				t.Fatalf("fourth node healthy before applying %s: %d %q", k, code, body)
			}
		}
		return true
	})

	// SIGTERM closes a node cleanly (exit 0).
	procs[3].cmd.Process.Signal(os.Interrupt)
	if err := procs[3].cmd.Wait(); err != nil {
		t.Fatalf("kvserver did not exit cleanly on SIGINT: %v", err)
	}
}

func do(t *testing.T, method, host, path, body string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, "http://"+host+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	client := &http.Client{Timeout: 10 * time.Second}
	resp, err := client.Do(req)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func freePorts(t *testing.T, n int) []string {
	var out []string
	for i := 0; i < n; i++ {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		out = append(out, ln.Addr().String())
	}
	return out
}

func waitFor(t *testing.T, limit time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", limit, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestSecuredCluster runs the README's secured-cluster recipe: certificates
// from examples/gencerts, three nodes with mutual TLS, a write through a
// follower, and a node without a certificate that cannot join.
func TestSecuredCluster(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "kvserver")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build kvserver: %v\n%s", err, out)
	}
	certs := filepath.Join(dir, "certs")
	if out, err := exec.Command("go", "run", "../gencerts", "-dir", certs, "-nodes", "n1,n2,n3").CombinedOutput(); err != nil {
		t.Fatalf("gencerts: %v\n%s", err, out)
	}
	ports := freePorts(t, 8)
	peers := fmt.Sprintf("n1=%s,n2=%s,n3=%s", ports[0], ports[2], ports[4])
	for i := 0; i < 3; i++ {
		id := fmt.Sprintf("n%d", i+1)
		cmd := exec.Command(bin, "-id", id, "-addr", ports[2*i], "-http", ports[2*i+1], "-dir", filepath.Join(dir, id), "-peers", peers,
			"-tls-ca", filepath.Join(certs, "ca.pem"), "-tls-cert", filepath.Join(certs, id, "cert.pem"), "-tls-key", filepath.Join(certs, id, "key.pem"))
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	}
	var leaderHTTP string
	waitFor(t, 30*time.Second, "a leader", func() bool {
		for i := 0; i < 3; i++ {
			if code, body := do(t, "GET", ports[2*i+1], "/status", ""); code == 200 && strings.Contains(body, `"state": "Leader"`) {
				leaderHTTP = ports[2*i+1]
				return true
			}
		}
		return false
	})
	follower := ports[1]
	if follower == leaderHTTP {
		follower = ports[3]
	}
	if code, body := do(t, "PUT", follower, "/kv/secret", "mtls"); code != http.StatusNoContent {
		t.Fatalf("PUT via follower over mTLS: %d %s", code, body)
	}
	if code, body := do(t, "GET", ports[5], "/kv/secret", ""); code != 200 || body != "mtls" {
		t.Fatalf("GET: %d %q", code, body)
	}
	// A node without certificates cannot join; kvserver exits non-zero.
	out, err := exec.Command(bin, "-id", "intruder", "-addr", ports[6], "-http", ports[7], "-dir", filepath.Join(dir, "intruder"), "-join", ports[0], "-join-timeout", "3s").CombinedOutput()
	if err == nil {
		t.Fatalf("node without TLS joined a TLS cluster:\n%s", out)
	}
}
