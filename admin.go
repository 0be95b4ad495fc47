package raftkit

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// DefaultMaxApplyLag is how many committed entries a node may have left to
// apply and still count as healthy, when AdminOptions.MaxApplyLag is zero.
const DefaultMaxApplyLag = 1000

// maxAdminBody bounds the JSON bodies of admin requests.
const maxAdminBody = 1 << 20

// AdminOptions configures AdminHandler. The zero value serves only the
// read-only routes (status, health) and refuses everything that changes
// the cluster or reveals its data.
type AdminOptions struct {
	// AllowMutations enables the POST routes: snapshot,
	// transfer-leadership, remove-server, join and restore. Off by
	// default; protect the handler (network policy, authentication
	// middleware) before turning it on.
	AllowMutations bool

	// AllowBackup enables GET backup, which streams the whole replicated
	// state. Off by default.
	AllowBackup bool

	// Metrics, if set, is served on GET metrics in Prometheus' text format:
	// usually the registry the application registered a *Metrics with.
	// Without it, GET metrics answers 404.
	Metrics prometheus.Gatherer

	// MaxApplyLag is how far this node's applied index may trail its
	// commit index for GET health to pass. Default: DefaultMaxApplyLag.
	MaxApplyLag uint64
}

// Health is the body of GET health.
type Health struct {
	// Healthy is true when the node is a member of a cluster with a known
	// leader and has applied nearly all it knows to be committed.
	Healthy bool `json:"healthy"`
	// Reason says why the node is unhealthy; empty when healthy.
	Reason string `json:"reason,omitempty"`
	// State, LeaderID, CommitIndex and AppliedIndex are the Status values
	// the verdict was based on.
	State        string `json:"state"`
	LeaderID     string `json:"leader_id"`
	CommitIndex  uint64 `json:"commit_index"`
	AppliedIndex uint64 `json:"applied_index"`
}

// AdminError is the JSON body of every failed admin request. The CLI
// reads it back; LeaderID and LeaderAddr are set when the request must go
// to the leader (restore on a follower: HTTP 503, code "not_applied").
type AdminError struct {
	// Error is the failure's message.
	Error string `json:"error"`
	// Code is the failure's outcome class (Outcome.String: "not_applied",
	// "unknown_outcome", "invalid", ...), "not_found" (metrics not
	// configured), "disabled" (a route AdminOptions leaves
	// off), or "internal".
	Code string `json:"code,omitempty"`
	// LeaderID and LeaderAddr name the leader to ask instead.
	LeaderID   string `json:"leader_id,omitempty"`
	LeaderAddr string `json:"leader_addr,omitempty"`
}

// AdminRequest is the JSON body of POST transfer-leadership (ID optional:
// raft picks), remove-server (ID) and join (ID, Addr, Nonvoter).
type AdminRequest struct {
	ID       string `json:"id"`
	Addr     string `json:"addr,omitempty"`
	Nonvoter bool   `json:"nonvoter,omitempty"`
}

// AdminHandler returns an http.Handler with node's operational routes, for
// the application to mount on its own server, for example under /raft/
// with http.StripPrefix:
//
//	GET  status               Status as JSON
//	GET  health               200 if healthy, else 503; Health as JSON
//	GET  metrics              opts.Metrics in Prometheus format
//	GET  backup               a Backup stream (opts.AllowBackup)
//	POST snapshot             take a snapshot now (opts.AllowMutations)
//	POST transfer-leadership  {"id": "..."} or {} (opts.AllowMutations)
//	POST remove-server        {"id": "..."} (opts.AllowMutations)
//	POST join                 {"id", "addr", "nonvoter"} (opts.AllowMutations)
//	POST restore              body: a Backup stream; leader only (opts.AllowMutations)
//
// Disabled routes answer 403, wrong methods 405. Errors are AdminError
// JSON with the outcome class's status and code (see Classify and
// Outcome.HTTPStatus): 400 invalid, 403 not authorized, 503 not applied
// (with Retry-After; restore on a follower names the leader) or closed,
// 504 unknown outcome; 500 only for a failure of the admin operation
// itself. Membership routes work on
// any node: followers forward them. Each request is bounded by its
// context, else by Config.ApplyTimeout.
//
// Successful POST routes answer with the answering node's Status (its ID
// and Addr say which node answered) after the change took effect there:
// join and remove-server once the node's configuration shows the change,
// transfer-leadership once the node knows the new leader, snapshot and
// restore once done.
//
// The handler does no authentication; that is the application's job.
func AdminHandler(node *RaftNode, opts AdminOptions) http.Handler {
	if opts.MaxApplyLag == 0 {
		opts.MaxApplyLag = DefaultMaxApplyLag
	}
	a := &admin{n: node, opts: opts}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /status", a.status)
	mux.HandleFunc("GET /health", a.health)
	mux.HandleFunc("GET /metrics", a.metrics)
	mux.HandleFunc("GET /backup", a.backup)
	mux.HandleFunc("POST /snapshot", a.mutation(a.snapshot))
	mux.HandleFunc("POST /transfer-leadership", a.mutation(a.transfer))
	mux.HandleFunc("POST /remove-server", a.mutation(a.remove))
	mux.HandleFunc("POST /join", a.mutation(a.join))
	mux.HandleFunc("POST /restore", a.mutation(a.restore))
	return mux
}

type admin struct {
	n    *RaftNode
	opts AdminOptions
}

func (a *admin) status(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, a.n.Status())
}

// checkHealth returns why st is unhealthy, or "".
func checkHealth(st Status, closed bool, maxLag uint64) string {
	member := slices.ContainsFunc(st.Servers, func(s ServerInfo) bool { return s.ID == st.ID })
	switch {
	case closed:
		return "node is closed"
	case st.MembershipError != "":
		return st.MembershipError
	case st.State == "Shutdown":
		return "raft has shut down (was the node removed from the cluster?)"
	case !member:
		return "node is not a member of any cluster configuration"
	case st.LeaderID == "":
		return "no known leader"
	case st.State != "Leader" && st.State != "Follower":
		return "node is a " + st.State
	case st.Joining:
		return "node has joined but not yet applied what the cluster had committed when it joined"
	case st.CommitIndex > st.AppliedIndex && st.CommitIndex-st.AppliedIndex > maxLag:
		return fmt.Sprintf("applied index %d trails commit index %d by more than %d", st.AppliedIndex, st.CommitIndex, maxLag)
	}
	return ""
}

func (a *admin) health(w http.ResponseWriter, r *http.Request) {
	st := a.n.Status()
	reason := checkHealth(st, a.n.checkOpen() != nil, a.opts.MaxApplyLag)
	h := Health{Healthy: reason == "", Reason: reason, State: st.State, LeaderID: st.LeaderID, CommitIndex: st.CommitIndex, AppliedIndex: st.AppliedIndex}
	code := http.StatusOK
	if !h.Healthy {
		code = http.StatusServiceUnavailable
	}
	w.Header().Set("Cache-Control", "no-store")
	writeJSON(w, code, h)
}

func (a *admin) metrics(w http.ResponseWriter, r *http.Request) {
	if a.opts.Metrics == nil {
		writeJSON(w, http.StatusNotFound, AdminError{Error: "raftkit admin: metrics are not configured (AdminOptions.Metrics)", Code: "not_found"})
		return
	}
	promhttp.HandlerFor(a.opts.Metrics, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError}).ServeHTTP(w, r)
}

func (a *admin) backup(w http.ResponseWriter, r *http.Request) {
	if !a.opts.AllowBackup {
		writeJSON(w, http.StatusForbidden, AdminError{Error: "raftkit admin: backup is disabled (AdminOptions.AllowBackup)", Code: "disabled"})
		return
	}
	tw := &trackingWriter{w: w}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Disposition", `attachment; filename="raftkit.backup"`)
	if err := a.n.Backup(r.Context(), tw); err != nil {
		if !tw.wrote {
			w.Header().Del("Content-Disposition")
			writeError(w, err)
			return
		}
		// The status line is gone; breaking the connection tells the client
		// the stream is incomplete (the backup's checksum would as well).
		panic(http.ErrAbortHandler)
	}
}

// trackingWriter notes whether anything reached the response.
type trackingWriter struct {
	w     io.Writer
	wrote bool
}

func (t *trackingWriter) Write(p []byte) (int, error) {
	t.wrote = true
	return t.w.Write(p)
}

func (a *admin) mutation(h func(http.ResponseWriter, *http.Request)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if !a.opts.AllowMutations {
			writeJSON(w, http.StatusForbidden, AdminError{Error: "raftkit admin: mutating routes are disabled (AdminOptions.AllowMutations)", Code: "disabled"})
			return
		}
		h(w, r)
	}
}

func (a *admin) snapshot(w http.ResponseWriter, r *http.Request) {
	if err := a.n.Snapshot(r.Context()); err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, a.n.Status())
}

// readRequest decodes an AdminRequest body; an empty body is {}.
func readRequest(w http.ResponseWriter, r *http.Request) (AdminRequest, bool) {
	var req AdminRequest
	err := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxAdminBody)).Decode(&req)
	if err != nil && !errors.Is(err, io.EOF) {
		writeJSON(w, http.StatusBadRequest, AdminError{Error: fmt.Sprintf("raftkit admin: request body is not JSON like {\"id\": ...}: %v", err), Code: "invalid"})
		return req, false
	}
	return req, true
}

func (a *admin) transfer(w http.ResponseWriter, r *http.Request) {
	req, ok := readRequest(w, r)
	if !ok {
		return
	}
	before := a.n.Status().LeaderID
	if err := a.n.TransferLeadership(r.Context(), req.ID); err != nil {
		writeError(w, err)
		return
	}
	a.answerWhen(w, r, func(st Status) bool {
		if req.ID != "" {
			return st.LeaderID == req.ID
		}
		return st.LeaderID != "" && st.LeaderID != before
	})
}

// answerWhen answers a committed change with this node's Status once that
// shows the change (cond), so the answer is never this node's stale view.
// A follower learns of a committed configuration change, or of a new
// leader, a heartbeat later. The wait is bounded by the request's context,
// else Config.ApplyTimeout; after that the node answers with what it sees.
func (a *admin) answerWhen(w http.ResponseWriter, r *http.Request, cond func(Status) bool) {
	ctx, cancel := a.n.bound(r.Context())
	defer cancel()
	t := time.NewTicker(5 * time.Millisecond)
	defer t.Stop()
	st := a.n.Status()
	for !cond(st) && st.State != "Shutdown" {
		select {
		case <-ctx.Done():
			writeJSON(w, http.StatusOK, st)
			return
		case <-t.C:
		}
		st = a.n.Status()
	}
	writeJSON(w, http.StatusOK, st)
}

// hasServer reports whether st's configuration has id at addr with the
// given suffrage ("" matches any address).
func hasServer(st Status, id, addr string, voter bool) bool {
	return slices.ContainsFunc(st.Servers, func(s ServerInfo) bool {
		return s.ID == id && (addr == "" || s.Addr == addr) && (s.Voter == voter || (voter && s.Suffrage == "Staging"))
	})
}

func (a *admin) remove(w http.ResponseWriter, r *http.Request) {
	req, ok := readRequest(w, r)
	if !ok {
		return
	}
	if req.ID == "" {
		writeJSON(w, http.StatusBadRequest, AdminError{Error: `raftkit admin: remove-server needs {"id": "..."}`, Code: "invalid"})
		return
	}
	if err := a.n.RemoveServer(r.Context(), req.ID); err != nil {
		writeError(w, err)
		return
	}
	a.answerWhen(w, r, func(st Status) bool {
		return !slices.ContainsFunc(st.Servers, func(s ServerInfo) bool { return s.ID == req.ID })
	})
}

func (a *admin) join(w http.ResponseWriter, r *http.Request) {
	req, ok := readRequest(w, r)
	if !ok {
		return
	}
	var err error
	if req.Nonvoter {
		err = a.n.AddNonvoter(r.Context(), req.ID, req.Addr)
	} else {
		err = a.n.AddVoter(r.Context(), req.ID, req.Addr)
	}
	if err != nil {
		writeError(w, err)
		return
	}
	a.answerWhen(w, r, func(st Status) bool { return hasServer(st, req.ID, req.Addr, !req.Nonvoter) })
}

func (a *admin) restore(w http.ResponseWriter, r *http.Request) {
	if err := a.n.Restore(r.Context(), r.Body); err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, a.n.Status())
}

// writeError answers a node error with its class's status code (see
// Outcome.HTTPStatus) and an AdminError; an error of no class (a failure
// of the admin operation itself, such as a broken backup stream) is 500.
func writeError(w http.ResponseWriter, err error) {
	class := Classify(err)
	body := AdminError{Error: err.Error(), Code: class.String()}
	code := class.HTTPStatus()
	if class == Rejected {
		code, body.Code = http.StatusInternalServerError, "internal"
	}
	var nle *NotLeaderError
	if errors.As(err, &nle) {
		body.LeaderID, body.LeaderAddr = nle.LeaderID, nle.LeaderAddr
	}
	if code == http.StatusServiceUnavailable {
		w.Header().Set("Retry-After", "1")
	}
	writeJSON(w, code, body)
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}
