package raftkit_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/raftkit/raftkit"
	fsmexample "github.com/raftkit/raftkit/fsm_example"
)

// Mount the admin routes on the application's own mux. Mutating routes
// stay off unless AdminOptions turns them on.
func ExampleAdminHandler() {
	node, err := raftkit.NewRaftNode(raftkit.Config{InMemory: true, Addr: "node1", Peers: []string{"node1"}}, fsmexample.New())
	if err != nil {
		fmt.Println(err)
		return
	}
	defer node.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := node.WaitForLeader(ctx); err != nil {
		fmt.Println(err)
		return
	}

	mux := http.NewServeMux()
	mux.Handle("/raft/", http.StripPrefix("/raft", raftkit.AdminHandler(node, raftkit.AdminOptions{})))
	srv := httptest.NewServer(mux)
	defer srv.Close()

	resp, err := http.Get(srv.URL + "/raft/health")
	if err != nil {
		fmt.Println(err)
		return
	}
	resp.Body.Close()
	fmt.Println("GET health:", resp.StatusCode)

	resp, err = http.Post(srv.URL+"/raft/snapshot", "application/json", nil)
	if err != nil {
		fmt.Println(err)
		return
	}
	resp.Body.Close()
	fmt.Println("POST snapshot:", resp.StatusCode)
	// Output:
	// GET health: 200
	// POST snapshot: 403
}

// The application picks the registry; InstallGlobal routes raft's own
// go-metrics (which only has a process-wide sink) into the same Metrics.
func ExampleMetrics() {
	m := raftkit.NewMetrics()
	uninstall, err := m.InstallGlobal()
	if err != nil {
		fmt.Println(err)
		return
	}
	defer uninstall()
	reg := prometheus.NewRegistry()
	reg.MustRegister(m)

	node, err := raftkit.NewRaftNode(raftkit.Config{InMemory: true, Addr: "node1", Peers: []string{"node1"}, Metrics: m}, fsmexample.New())
	if err != nil {
		fmt.Println(err)
		return
	}
	defer node.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := node.WaitForLeader(ctx); err != nil {
		fmt.Println(err)
		return
	}
	if _, err := node.Apply(ctx, fsmexample.Set("k", []byte("v"))); err != nil {
		fmt.Println(err)
		return
	}

	rec := httptest.NewRecorder()
	promhttp.HandlerFor(reg, promhttp.HandlerOpts{}).ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	sc := bufio.NewScanner(rec.Body)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "raftkit_is_leader") || strings.HasPrefix(line, "raftkit_apply_duration_seconds_count") || strings.HasPrefix(line, "raft_apply ") {
			fmt.Println(line)
		}
	}
	// Output:
	// raft_apply 1
	// raftkit_apply_duration_seconds_count{node_id="node1",outcome="ok",path="local"} 1
	// raftkit_is_leader{node_id="node1"} 1
}

// Applications on log/slog pass their logger through SlogLogger.
func ExampleSlogLogger() {
	logger := slog.New(slog.NewTextHandler(os.Stdout, &slog.HandlerOptions{
		Level: slog.LevelWarn,
		ReplaceAttr: func(groups []string, a slog.Attr) slog.Attr {
			if a.Key == slog.TimeKey {
				return slog.Attr{} // deterministic output
			}
			return a
		},
	}))
	hl := raftkit.SlogLogger(logger).Named("raftkit")
	hl.Info("not shown: below the handler's level")
	hl.Warn("disk almost full", "dir", "/var/lib/app/raft", "free_mb", 12)
	// Output:
	// level=WARN msg="disk almost full" logger=raftkit dir=/var/lib/app/raft free_mb=12
}

// Back up one cluster and restore the backup into another (here: two
// single-node in-memory clusters). Restore runs on the leader.
func ExampleRaftNode_Backup() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	start := func(name string, kv *fsmexample.Store) (*raftkit.RaftNode, error) {
		node, err := raftkit.NewRaftNode(raftkit.Config{InMemory: true, Addr: name, Peers: []string{name}}, kv)
		if err != nil {
			return nil, err
		}
		if _, err := node.WaitForLeader(ctx); err != nil {
			node.Close()
			return nil, err
		}
		return node, nil
	}

	old, err := start("old", fsmexample.New())
	if err != nil {
		fmt.Println(err)
		return
	}
	defer old.Close()
	if _, err := old.Apply(ctx, fsmexample.Set("greeting", []byte("hello"))); err != nil {
		fmt.Println(err)
		return
	}
	var backup bytes.Buffer // usually a file
	if err := old.Backup(ctx, &backup); err != nil {
		fmt.Println(err)
		return
	}

	kv := fsmexample.New()
	fresh, err := start("fresh", kv)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer fresh.Close()
	if err := fresh.Restore(ctx, &backup); err != nil {
		fmt.Println(err)
		return
	}
	v, _ := kv.Get("greeting")
	fmt.Println("greeting:", string(v))
	// Output: greeting: hello
}
