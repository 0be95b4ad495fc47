package main

import (
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// A follower killed while writes go on, then restarted: until it is
// ready its health is 503 and a stale read says so (503), never 404 for a
// key that exists; once health is 200, stale reads see every write
// acknowledged before the restart. On both log stores.
func TestRestartedFollowerServesNoEmptyStaleReads(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "kvserver")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build kvserver: %v\n%s", err, out)
	}
	for _, store := range []string{"bolt", "wal"} {
		t.Run(store, func(t *testing.T) {
			data := t.TempDir()
			ports := freePorts(t, 6)
			var peers []string
			for i := 0; i < 3; i++ {
				peers = append(peers, fmt.Sprintf("n%d=%s", i+1, ports[2*i]))
			}
			cmds := make([]*exec.Cmd, 3)
			start := func(i int) {
				t.Helper()
				id := fmt.Sprintf("n%d", i+1)
				cmd := exec.Command(bin, "-id", id, "-addr", ports[2*i], "-http", ports[2*i+1], "-dir", filepath.Join(data, id),
					"-peers", strings.Join(peers, ","), "-log-store", store)
				if err := cmd.Start(); err != nil {
					t.Fatal(err)
				}
				cmds[i] = cmd
				t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
			}
			for i := range cmds {
				start(i)
			}
			leader := -1
			waitFor(t, 30*time.Second, "a leader", func() bool {
				for i := range cmds {
					if code, body := do(t, "GET", ports[2*i+1], "/status", ""); code == 200 && strings.Contains(body, `"state": "Leader"`) {
						leader = i
						return true
					}
				}
				return false
			})
			lh := ports[2*leader+1]
			put := func(k int) {
				t.Helper()
				if code, body := do(t, "PUT", lh, fmt.Sprintf("/kv/k%03d", k), "v"); code != 204 {
					t.Fatalf("PUT k%03d: %d %s", k, code, body)
				}
			}
			for k := 0; k < 80; k++ {
				put(k)
			}
			f := (leader + 1) % 3
			cmds[f].Process.Kill()
			cmds[f].Wait()
			for k := 80; k < 120; k++ {
				put(k)
			}
			start(f)
			fh := ports[2*f+1]
			waitFor(t, 30*time.Second, "the restarted follower to be healthy", func() bool {
				health, hbody := do(t, "GET", fh, "/raft/health", "")
				code, body := do(t, "GET", fh, "/kv/k000?consistency=stale", "")
				switch {
				case code == 404:
					t.Fatalf("a stale read of an existing key on the restarted follower: 404 %s (health %d %s)", body, health, hbody)
				case health == 200:
					if code != 200 {
						t.Fatalf("healthy, but a stale read gave %d %s", code, body)
					}
					if last, body := do(t, "GET", fh, "/kv/k119?consistency=stale", ""); last != 200 {
						t.Fatalf("healthy, but the last acknowledged write is missing: %d %s", last, body)
					}
					return true
				case code != 503 && code != 0:
					t.Fatalf("not ready yet, a stale read gave %d %s, want 503", code, body)
				}
				return false
			})
		})
	}
}
