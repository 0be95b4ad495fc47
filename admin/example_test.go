package admin_test

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/raftkit/raftkit"
	"github.com/raftkit/raftkit/admin"
	fsmexample "github.com/raftkit/raftkit/fsm_example"
)

// Mount the admin routes on the application's own mux. Mutating routes
// stay off unless Options turns them on.
func ExampleHandler() {
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
	mux.Handle("/raft/", http.StripPrefix("/raft", admin.Handler(node, admin.Options{})))
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
	m := admin.NewMetrics()
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
