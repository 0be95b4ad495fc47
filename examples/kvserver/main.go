// Command kvserver serves raftkit's reference key-value FSM over HTTP, one
// OS process per node. Any node accepts reads and writes: followers forward
// writes to the leader and ask it for a read index for linearizable reads.
//
// Start a new cluster (same -peers everywhere):
//
//	kvserver -id n1 -addr 127.0.0.1:7001 -http 127.0.0.1:8001 -dir data/n1 -peers n1=127.0.0.1:7001,n2=127.0.0.1:7002,n3=127.0.0.1:7003
//
// Join a running cluster through any member:
//
//	kvserver -id n4 -addr 127.0.0.1:7004 -http 127.0.0.1:8004 -dir data/n4 -join 127.0.0.1:7001
//
// Mutual TLS between nodes (certificates from go run ./examples/gencerts):
//
//	kvserver ... -tls-ca certs/ca.pem -tls-cert certs/n1/cert.pem -tls-key certs/n1/key.pem
//
// HTTP API:
//
//	PUT    /kv/{key}        body is the value
//	GET    /kv/{key}        ?consistency=linearizable (default) or stale
//	DELETE /kv/{key}
//	GET    /status          the node's raft status as JSON
//	/raft/...               raftkit's admin.Handler: GET /raft/status, /raft/health,
//	                        /raft/metrics; POST routes with -admin-mutations
//
// Errors are JSON, {"code": ..., "error": ...}, with a stable code:
//
//	404 key_not_found    GET of a key that does not exist
//	404 not_found        no such route
//	400 invalid          bad request (value over 16 MiB, bad consistency)
//	422 rejected         the FSM refused the command (it is in the log)
//	503 not_applied      nothing was written (no leader within the request's time), or a
//	                     stale read on a node that is not ready: retry
//	410 removed          this node was removed from the cluster: use another
//	503 closed           the node is shutting down: use another
//	504 unknown_outcome  the write may or may not have been applied
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/raftkit/raftkit"
	"github.com/raftkit/raftkit/admin"
	fsmexample "github.com/raftkit/raftkit/fsm_example"
	"github.com/raftkit/raftkit/prom"
	_ "github.com/raftkit/raftkit/walstore" // -log-store wal
)

func main() {
	var (
		id       = flag.String("id", "", "node ID (default: -addr)")
		addr     = flag.String("addr", "127.0.0.1:7001", "raft address (host:port) for node-to-node traffic")
		httpAddr = flag.String("http", "127.0.0.1:8001", "HTTP address for clients")
		dir      = flag.String("dir", "", "data directory (required)")
		peers    = flag.String("peers", "", "comma-separated initial cluster (id=host:port or host:port), to bootstrap a new cluster")
		join     = flag.String("join", "", "comma-separated addresses of members to join through")
		verbose  = flag.Bool("v", false, "log raft's and raftkit's lines to stderr")
		tlsCA    = flag.String("tls-ca", "", "PEM CA bundle: turns on mutual TLS between nodes (with -tls-cert, -tls-key)")
		tlsCert  = flag.String("tls-cert", "", "this node's PEM certificate (serverAuth and clientAuth usage)")
		tlsKey   = flag.String("tls-key", "", "this node's PEM key")
		tlsPeers = flag.String("tls-peer-names", "*.raft.local", "comma-separated name patterns peers' certificates must carry")
		secret   = flag.String("join-secret", "", "shared secret that membership requests must carry (for clusters without TLS)")
		joinWait = flag.Duration("join-timeout", raftkit.DefaultJoinTimeout, "how long to keep trying -join")
		mutate   = flag.Bool("admin-mutations", false, "enable the admin handler's POST routes under /raft/ (snapshot, transfer, join, remove, restore)")
		timing   = flag.String("timing", "auto", "raft timeouts: auto, lan, local, default or wan (see raftkit.Timing)")
		maxCmd   = flag.Int("max-command-size", raftkit.DefaultMaxCommandSize, "largest command in bytes (a PUT's key and value, encoded); every node should use the same value")
		logStore = flag.String("log-store", "bolt", "log store: bolt (raft.db) or wal (hashicorp/raft-wal)")
		inmem    = flag.Bool("inmem", false, "keep the log, term, vote and snapshots in memory (development only: all is lost on exit; restart such a node only after removing it from the cluster, then with -join)")
	)
	flag.Parse()
	if *inmem {
		*logStore, *dir = "memory", ""
	} else if *dir == "" {
		log.Fatal("kvserver: -dir is required (or -inmem)")
	}
	logger := hclog.New(&hclog.LoggerOptions{Name: "kvserver", Level: hclog.Warn, Output: os.Stderr})
	if *verbose {
		logger.SetLevel(hclog.Info)
	}
	var tlsConfig *raftkit.TLSConfig
	if *tlsCA != "" || *tlsCert != "" || *tlsKey != "" {
		tlsConfig = &raftkit.TLSConfig{CAFile: *tlsCA, CertFile: *tlsCert, KeyFile: *tlsKey, PeerNames: split(*tlsPeers)}
	}
	metrics := prom.NewMetrics()
	uninstall, err := metrics.InstallGlobal() // raft's and BoltDB's own metrics too
	if err != nil {
		log.Fatalf("kvserver: %v", err)
	}
	defer uninstall()
	registry := prometheus.NewRegistry()
	registry.MustRegister(metrics, collectors.NewGoCollector())
	profiles := map[string]raftkit.Timing{"auto": raftkit.TimingAuto, "lan": raftkit.TimingLAN, "local": raftkit.TimingLocal, "default": raftkit.TimingDefault, "wan": raftkit.TimingWAN}
	stores := map[string]raftkit.LogStoreKind{"bolt": raftkit.LogStoreBolt, "wal": raftkit.LogStoreWAL, "memory": raftkit.LogStoreMemory}
	if _, ok := stores[*logStore]; !ok {
		log.Fatalf("kvserver: -log-store %q: want bolt or wal", *logStore)
	}
	profile, ok := profiles[*timing]
	if !ok {
		log.Fatalf("kvserver: -timing %q: want auto, lan, local, default or wan", *timing)
	}
	kv := fsmexample.New()
	node, err := raftkit.NewRaftNode(raftkit.Config{
		Metrics:        metrics,
		ID:             *id,
		Addr:           *addr,
		Dir:            *dir,
		Peers:          split(*peers),
		Join:           split(*join),
		Logger:         logger,
		TLS:            tlsConfig,
		JoinSecret:     *secret,
		JoinTimeout:    *joinWait,
		MaxCommandSize: *maxCmd,
		LogStore:       stores[*logStore],
		Timing:         profile,
		FSMErrors:      fsmexample.Errors,
	}, kv)
	if err != nil {
		log.Fatalf("kvserver: %v", err)
	}
	handler := newHandler(node, kv, *maxCmd)
	// The raftkit admin handler (status, health, metrics, and with
	// -admin-mutations the POST routes) is mounted under /raft/, where the
	// raftkit CLI can reach it: raftkit -admin http://HOST/raft status
	handler.Handle("/raft/", http.StripPrefix("/raft", admin.Handler(node, admin.Options{AllowMutations: *mutate, Metrics: prom.Handler(registry)})))
	srv := newHTTPServer(*httpAddr, handler)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go func() {
		<-ctx.Done()
		shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(shutdown)
	}()
	fmt.Printf("kvserver %s: raft on %s, HTTP on %s, data in %s\n", node.ID(), node.Addr(), *httpAddr, *dir)
	if err := srv.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
		node.Close()
		log.Fatalf("kvserver: %v", err)
	}
	if err := node.Close(); err != nil {
		log.Fatalf("kvserver: %v", err)
	}
}

func split(s string) []string {
	if strings.TrimSpace(s) == "" {
		return nil
	}
	return strings.Split(s, ",")
}

func newHandler(node *raftkit.RaftNode, kv *fsmexample.Store, maxCommand int) *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("PUT /kv/{key}", func(w http.ResponseWriter, r *http.Request) {
		limit := min(fsmexample.MaxValueLen, maxCommand-len(fsmexample.Set(r.PathValue("key"), nil)))
		value, release, err := readBody(r, limit)
		defer release()
		switch {
		case errors.Is(err, errBodyTooLarge):
			writeJSONError(w, http.StatusRequestEntityTooLarge, "invalid", fmt.Sprintf("value larger than %d bytes", max(limit, 0)))
			return
		case errors.Is(err, errServerBusy):
			w.Header().Set("Retry-After", "1")
			writeJSONError(w, http.StatusServiceUnavailable, "not_applied", err.Error())
			return
		case err != nil:
			writeJSONError(w, http.StatusBadRequest, "invalid", "value unreadable: "+err.Error())
			return
		}
		if _, err := node.Apply(r.Context(), fsmexample.Set(r.PathValue("key"), value)); err != nil {
			admin.WriteError(w, err)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("DELETE /kv/{key}", func(w http.ResponseWriter, r *http.Request) {
		if _, err := node.Apply(r.Context(), fsmexample.Delete(r.PathValue("key"))); err != nil {
			admin.WriteError(w, err)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("GET /kv/{key}", func(w http.ResponseWriter, r *http.Request) {
		switch c := r.URL.Query().Get("consistency"); c {
		case "", "linearizable":
			if err := node.LinearizableRead(r.Context()); err != nil {
				admin.WriteError(w, err)
				return
			}
		case "stale":
			// A node that is not ready (it restarted and has not caught up,
			// say) may lack acknowledged writes: an answer from it could
			// call an existing key absent.
			if err := node.Ready(); err != nil {
				admin.WriteError(w, err)
				return
			}
		default:
			writeJSONError(w, http.StatusBadRequest, "invalid", fmt.Sprintf("consistency %q: want linearizable or stale", c))
			return
		}
		v, ok := kv.Get(r.PathValue("key"))
		if !ok {
			writeJSONError(w, http.StatusNotFound, "key_not_found", "key not found")
			return
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Write(v)
	})
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		enc.Encode(node.Status())
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeJSONError(w, http.StatusNotFound, "not_found", fmt.Sprintf("no route %s %s", r.Method, r.URL.Path))
	})
	return mux
}

// Every error answer's body is an admin.Error. Its code is stable for
// programs: key_not_found, not_found (no such route), and for raftkit's
// errors (admin.WriteError) the outcome class: invalid, rejected (the FSM
// refused the command), not_applied (retry: nothing was written; 503 with
// Retry-After), unknown_outcome (the write may have been applied),
// not_authorized, closed, or removed (this node left the cluster for good:
// ask another).
func writeJSONError(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(admin.Error{Code: code, Error: msg})
}
