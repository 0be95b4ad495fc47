// Command kvnode is the node process of raftkittest's process tests: a
// raftkit node with fsmexample's key/value store behind a small HTTP API,
// until its stdin closes (a clean stop) or it is killed. It uses only the
// API that raftkit's releases have in common since protocol 1, so that
// the rolling-upgrade test can build it from the previous release's tree
// as well as from this one.
//
//	PUT /kv/{key}   body = value          204 applied; 503 not applied; 504 unknown (header X-Outcome)
//	GET /kv/{key}?consistency=linearizable 200 value; 404 absent; 503 no read
//	GET /dump                             this node's whole store, JSON, after a read barrier
//	GET /status                           raftkit.Status, JSON
//
// Answers to calls that failed carry the error's class in X-Class
// (raftkit.Classify's String).
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"

	"github.com/raftkit/raftkit"
	fsmexample "github.com/raftkit/raftkit/fsm_example"
)

func main() {
	var (
		id       = flag.String("id", "", "node ID")
		addr     = flag.String("addr", "", "node address")
		httpAddr = flag.String("http", "", "HTTP address")
		dir      = flag.String("dir", "", "data directory")
		peers    = flag.String("peers", "", "comma-separated id=addr list")
		store    = flag.String("store", "bolt", "log store: bolt or wal")
	)
	flag.Parse()
	logger := hclog.New(&hclog.LoggerOptions{Name: *id, Level: hclog.Warn, Output: os.Stderr})
	kind := raftkit.LogStoreBolt
	if *store == "wal" {
		kind = raftkit.LogStoreWAL
	}
	kv := fsmexample.New()
	node, err := raftkit.NewRaftNode(raftkit.Config{
		ID:                *id,
		Addr:              *addr,
		Dir:               *dir,
		Peers:             strings.Split(*peers, ","),
		LogStore:          kind,
		ApplyTimeout:      time.Second,
		SnapshotThreshold: 64,
		SnapshotInterval:  100 * time.Millisecond,
		Logger:            logger,
		RaftConfig: func(rc *raft.Config) {
			// raftkittest.FastTimeouts, written out: the previous
			// release's tree builds this file too.
			rc.HeartbeatTimeout = 400 * time.Millisecond
			rc.ElectionTimeout = 400 * time.Millisecond
			rc.LeaderLeaseTimeout = 200 * time.Millisecond
			rc.CommitTimeout = 5 * time.Millisecond
			rc.TrailingLogs = 32
		},
	}, kv)
	if err != nil {
		fmt.Println("error:", err)
		os.Exit(1)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("PUT /kv/{key}", func(w http.ResponseWriter, r *http.Request) {
		value, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		_, err = node.Apply(r.Context(), fsmexample.Set(r.PathValue("key"), value))
		w.Header().Set("X-Class", raftkit.Classify(err).String())
		switch raftkit.Classify(err) {
		case raftkit.Applied:
			w.Header().Set("X-Outcome", "applied")
			w.WriteHeader(http.StatusNoContent)
		case raftkit.NotApplied, raftkit.Closed, raftkit.Invalid, raftkit.NotAuthorized:
			w.Header().Set("X-Outcome", "not-applied")
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
		default:
			w.Header().Set("X-Outcome", "unknown")
			http.Error(w, err.Error(), http.StatusGatewayTimeout)
		}
	})
	mux.HandleFunc("GET /kv/{key}", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("consistency") != "stale" {
			if err := node.LinearizableRead(r.Context()); err != nil {
				w.Header().Set("X-Class", raftkit.Classify(err).String())
				http.Error(w, err.Error(), http.StatusServiceUnavailable)
				return
			}
		}
		v, ok := kv.Get(r.PathValue("key"))
		if !ok {
			http.Error(w, "absent", http.StatusNotFound)
			return
		}
		w.Write(v)
	})
	mux.HandleFunc("GET /dump", func(w http.ResponseWriter, r *http.Request) {
		if err := node.LinearizableRead(r.Context()); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		all := map[string]string{}
		for k, v := range kv.All() {
			all[k] = string(v)
		}
		json.NewEncoder(w).Encode(all)
	})
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode(node.Status())
	})
	ln, err := net.Listen("tcp", *httpAddr)
	if err != nil {
		fmt.Println("error:", err)
		node.Close()
		os.Exit(1)
	}
	srv := &http.Server{Handler: mux}
	go srv.Serve(ln)
	fmt.Println("ready")
	io.Copy(io.Discard, os.Stdin)
	srv.Close()
	node.Close()
}
