package main

import (
	"bufio"
	"fmt"
	"net"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

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
