package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/raftkit/raftkit"
	"github.com/raftkit/raftkit/admin"
)

// TestNoServerErrorDuringFaults writes and reads through every node of a
// three-process cluster while leadership is transferred, the leader is
// paused (SIGSTOP) and the leader is killed (SIGKILL), and checks that
// every answer is one of the documented ones: never a 500, and every
// error a JSON body with its code.
func TestNoServerErrorDuringFaults(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "kvserver")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build kvserver: %v\n%s", err, out)
	}
	data := t.TempDir()
	ports := freePorts(t, 6)
	type proc struct {
		id, raft, http string
		cmd            *exec.Cmd
		dead           atomic.Bool
	}
	procs := make([]*proc, 3)
	var peers []string
	for i := range procs {
		procs[i] = &proc{id: fmt.Sprintf("n%d", i+1), raft: ports[2*i], http: ports[2*i+1]}
		peers = append(peers, procs[i].id+"="+procs[i].raft)
	}
	for _, p := range procs {
		p.cmd = exec.Command(bin, "-id", p.id, "-addr", p.raft, "-http", p.http, "-dir", filepath.Join(data, p.id),
			"-peers", strings.Join(peers, ","), "-admin-mutations")
		if err := p.cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			p.cmd.Process.Signal(syscall.SIGCONT)
			p.cmd.Process.Kill()
			p.cmd.Wait()
		})
	}
	leaderOf := func() *proc {
		t.Helper()
		var leader *proc
		waitFor(t, 30*time.Second, "a leader", func() bool {
			for _, p := range procs {
				if p.dead.Load() {
					continue
				}
				if code, body := do(t, "GET", p.http, "/status", ""); code == 200 && strings.Contains(body, `"state": "Leader"`) {
					leader = p
					return true
				}
			}
			return false
		})
		return leader
	}
	leaderOf()

	// Clients on every node; each request has a 4 s budget (the
	// server's own ApplyTimeout is 3 s).
	var (
		mu     sync.Mutex
		counts = map[string]int{}
		bad    []string
		stop   = make(chan struct{})
		wg     sync.WaitGroup
	)
	record := func(op string, code int, body string) {
		mu.Lock()
		defer mu.Unlock()
		counts[fmt.Sprintf("%s %d", op, code)]++
		var eb admin.Error
		switch {
		case code == 0:
			// The process is stopped or dead: no answer at all.
		case code == 204 || code == 200:
		case code == 503 || code == 504:
			if json.Unmarshal([]byte(body), &eb) != nil || (eb.Code != "not_applied" && eb.Code != "unknown_outcome" && eb.Code != "closed") {
				bad = append(bad, fmt.Sprintf("%s: %d with body %q", op, code, body))
			}
		default:
			bad = append(bad, fmt.Sprintf("%s: %d %q", op, code, body))
		}
	}
	for i, p := range procs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			client := &http.Client{Timeout: 4 * time.Second}
			for k := 0; ; k++ {
				select {
				case <-stop:
					return
				default:
				}
				if p.dead.Load() {
					return
				}
				key := fmt.Sprintf("/kv/c%d-%d", i, k)
				code, body := doWith(client, "PUT", p.http, key, "v")
				record("PUT", code, body)
				code, body = doWith(client, "GET", p.http, key, "")
				if code == 404 {
					// Only a write whose outcome was unknown or refused may be missing.
					var eb admin.Error
					if json.Unmarshal([]byte(body), &eb) != nil || eb.Code != "key_not_found" {
						record("GET", code, body)
					}
					continue
				}
				record("GET", code, body)
			}
		}()
	}
	progress := func(what string) {
		t.Helper()
		mu.Lock()
		start := counts["PUT 204"]
		mu.Unlock()
		waitFor(t, 30*time.Second, "writes to succeed after "+what, func() bool {
			mu.Lock()
			defer mu.Unlock()
			return counts["PUT 204"] >= start+30
		})
	}
	progress("start")

	// Three transfers through the admin handler of a follower.
	for i := 0; i < 3; i++ {
		l := leaderOf()
		for _, p := range procs {
			if p != l {
				if code, body := do(t, "POST", p.http, "/raft/transfer-leadership", "{}"); code != 200 {
					t.Fatalf("transfer: %d %s", code, body)
				}
				break
			}
		}
		progress("a transfer")
	}
	// Pause the leader for longer than an election, then resume it.
	l := leaderOf()
	l.cmd.Process.Signal(syscall.SIGSTOP)
	time.Sleep(3 * time.Second) // the fault itself: a leader stalled for 3 s
	l.cmd.Process.Signal(syscall.SIGCONT)
	progress("a pause")
	// Kill the leader.
	l = leaderOf()
	l.dead.Store(true)
	l.cmd.Process.Kill()
	progress("a kill")

	close(stop)
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	t.Logf("answers: %v", counts)
	for _, b := range bad {
		t.Error(b)
	}
}

func doWith(client *http.Client, method, host, path, body string) (int, string) {
	req, err := http.NewRequest(method, "http://"+host+path, strings.NewReader(body))
	if err != nil {
		return -1, err.Error()
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	var b strings.Builder
	_, _ = io.Copy(&b, resp.Body)
	return resp.StatusCode, b.String()
}

// TestErrorAnswersCarryStableCodes checks the error bodies that tell a
// missing key from a missing route.
func TestErrorAnswersCarryStableCodes(t *testing.T) {
	h := newHandler(nil, nil, raftkit.DefaultMaxCommandSize)
	for _, tc := range []struct {
		method, path string
		code         int
		want         string
	}{
		{"GET", "/nope", 404, "not_found"},
		{"POST", "/kv/x", 404, "not_found"},
		{"GET", "/kv/x?consistency=maybe", 400, "invalid"},
	} {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(tc.method, tc.path, nil))
		var eb admin.Error
		if rec.Code != tc.code || json.Unmarshal(rec.Body.Bytes(), &eb) != nil || eb.Code != tc.want {
			t.Errorf("%s %s: %d %s, want %d with code %s", tc.method, tc.path, rec.Code, rec.Body, tc.code, tc.want)
		}
	}
}
