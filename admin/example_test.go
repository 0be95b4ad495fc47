package admin_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"time"

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
