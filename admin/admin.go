// Package admin is raftkit's optional HTTP side: an operational handler
// for a node (status, health, metrics, backup, membership, snapshot,
// restore), and the mapping of raftkit's outcome classes to HTTP status
// codes that any HTTP service on raftkit can use (WriteError, HTTPStatus).
// An application that imports only package raftkit compiles none of it.
//
// It imports no Prometheus: the metrics route serves whatever handler
// Options.Metrics names, usually prom.Handler of a registry holding a
// prom.Metrics (package github.com/raftkit/raftkit/prom).
package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/raftkit/raftkit"
)

// DefaultMaxApplyLag is how many committed entries a node may have left to
// apply and still count as healthy, when Options.MaxApplyLag is zero.
const DefaultMaxApplyLag = 1000

// maxAdminBody bounds the JSON bodies of admin requests.
const maxAdminBody = 1 << 20

// Options configures AdminHandler. The zero value serves only the
// read-only routes (status, health) and refuses everything that changes
// the cluster or reveals its data.
type Options struct {
	// AllowMutations enables the POST routes: snapshot,
	// transfer-leadership, remove-server, join and restore. Off by
	// default; protect the handler (network policy, authentication
	// middleware) before turning it on.
	AllowMutations bool

	// AllowBackup enables GET backup, which streams the whole replicated
	// state. Off by default.
	AllowBackup bool

	// Metrics, if set, serves GET metrics: usually prom.Handler(reg), where
	// reg is the Prometheus registry the application registered a
	// *prom.Metrics with (package github.com/raftkit/raftkit/prom). Without
	// it, GET metrics answers 404.
	Metrics http.Handler

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

// Error is the JSON body of every failed admin request. The CLI
// reads it back; LeaderID and LeaderAddr are set when the request must go
// to the leader (restore on a follower: HTTP 503, code "not_applied").
type Error struct {
	// Error is the failure's message.
	Error string `json:"error"`
	// Code is the failure's outcome class (Outcome.String: "not_applied",
	// "unknown_outcome", "invalid", ...), "removed" (CodeRemoved),
	// "not_found" (metrics not configured), "disabled" (a route Options
	// leaves off), or "internal".
	Code string `json:"code,omitempty"`
	// LeaderID and LeaderAddr name the leader to ask instead.
	LeaderID   string `json:"leader_id,omitempty"`
	LeaderAddr string `json:"leader_addr,omitempty"`
}

// Request is the JSON body of POST transfer-leadership (ID optional:
// raft picks), remove-server (ID) and join (ID, Addr, Nonvoter, Force).
type Request struct {
	ID       string `json:"id"`
	Addr     string `json:"addr,omitempty"`
	Nonvoter bool   `json:"nonvoter,omitempty"`
	// Force adds a voter with RaftNode.ForceAddVoter: at once, without
	// AddVoter's check that it answers and has caught up. See its risk.
	Force bool `json:"force,omitempty"`
}

// Handler returns an http.Handler with node's operational routes, for
// the application to mount on its own server, for example under /raft/
// with http.StripPrefix:
//
//	GET  status               Status as JSON
//	GET  health               200 if healthy, else 503; Health as JSON
//	GET  metrics              opts.Metrics (e.g. prom.Handler: Prometheus format)
//	GET  backup               a Backup stream (opts.AllowBackup)
//	POST snapshot             take a snapshot now (opts.AllowMutations)
//	POST transfer-leadership  {"id": "..."} or {} (opts.AllowMutations)
//	POST remove-server        {"id": "..."} (opts.AllowMutations)
//	POST join                 {"id", "addr", "nonvoter", "force"} (opts.AllowMutations)
//	POST restore              body: a Backup stream; leader only (opts.AllowMutations)
//
// Disabled routes answer 403, wrong methods 405. Errors are Error
// JSON with the outcome class's status and code (see raftkit.Classify
// and HTTPStatus): 400 invalid, 403 not authorized, 503 not applied
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
func Handler(node *raftkit.RaftNode, opts Options) http.Handler {
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
	n    *raftkit.RaftNode
	opts Options
}

func (a *admin) status(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, a.n.Status())
}

// checkHealth returns why a node whose readiness is ready (nil: ready)
// and whose status is st is unhealthy, or "".
func checkHealth(ready error, st raftkit.Status, maxLag uint64) string {
	switch {
	case ready != nil:
		return strings.TrimPrefix(ready.Error(), "raftkit: ")
	case st.CommitIndex > st.AppliedIndex && st.CommitIndex-st.AppliedIndex > maxLag:
		return fmt.Sprintf("applied index %d trails commit index %d by more than %d", st.AppliedIndex, st.CommitIndex, maxLag)
	}
	return ""
}

func (a *admin) health(w http.ResponseWriter, r *http.Request) {
	ready := a.n.Ready()
	st := a.n.Status()
	reason := checkHealth(ready, st, a.opts.MaxApplyLag)
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
		writeJSON(w, http.StatusNotFound, Error{Error: "raftkit admin: metrics are not configured (Options.Metrics)", Code: "not_found"})
		return
	}
	a.opts.Metrics.ServeHTTP(w, r)
}

func (a *admin) backup(w http.ResponseWriter, r *http.Request) {
	if !a.opts.AllowBackup {
		writeJSON(w, http.StatusForbidden, Error{Error: "raftkit admin: backup is disabled (Options.AllowBackup)", Code: "disabled"})
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
			writeJSON(w, http.StatusForbidden, Error{Error: "raftkit admin: mutating routes are disabled (Options.AllowMutations)", Code: "disabled"})
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

// readRequest decodes an Request body; an empty body is {}.
func readRequest(w http.ResponseWriter, r *http.Request) (Request, bool) {
	var req Request
	err := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxAdminBody)).Decode(&req)
	if err != nil && !errors.Is(err, io.EOF) {
		writeJSON(w, http.StatusBadRequest, Error{Error: fmt.Sprintf("raftkit admin: request body is not JSON like {\"id\": ...}: %v", err), Code: "invalid"})
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
	a.answerWhen(w, r, func(st raftkit.Status) bool {
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
// else raftkit.DefaultApplyTimeout; after that the node answers with what it
// sees.
func (a *admin) answerWhen(w http.ResponseWriter, r *http.Request, cond func(raftkit.Status) bool) {
	ctx := r.Context()
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, raftkit.DefaultApplyTimeout)
		defer cancel()
	}
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
func hasServer(st raftkit.Status, id, addr string, voter bool) bool {
	return slices.ContainsFunc(st.Servers, func(s raftkit.ServerInfo) bool {
		return s.ID == id && (addr == "" || s.Addr == addr) && (s.Voter == voter || (voter && s.Suffrage == "Staging"))
	})
}

func (a *admin) remove(w http.ResponseWriter, r *http.Request) {
	req, ok := readRequest(w, r)
	if !ok {
		return
	}
	if req.ID == "" {
		writeJSON(w, http.StatusBadRequest, Error{Error: `raftkit admin: remove-server needs {"id": "..."}`, Code: "invalid"})
		return
	}
	if err := a.n.RemoveServer(r.Context(), req.ID); err != nil {
		writeError(w, err)
		return
	}
	a.answerWhen(w, r, func(st raftkit.Status) bool {
		return !slices.ContainsFunc(st.Servers, func(s raftkit.ServerInfo) bool { return s.ID == req.ID })
	})
}

func (a *admin) join(w http.ResponseWriter, r *http.Request) {
	req, ok := readRequest(w, r)
	if !ok {
		return
	}
	var err error
	switch {
	case req.Nonvoter && req.Force:
		writeJSON(w, http.StatusBadRequest, Error{Error: "raftkit admin: join: force applies to voters only, not with nonvoter", Code: "invalid"})
		return
	case req.Nonvoter:
		err = a.n.AddNonvoter(r.Context(), req.ID, req.Addr)
	case req.Force:
		err = a.n.ForceAddVoter(r.Context(), req.ID, req.Addr)
	default:
		err = a.n.AddVoter(r.Context(), req.ID, req.Addr)
	}
	if err != nil {
		writeError(w, err)
		return
	}
	a.answerWhen(w, r, func(st raftkit.Status) bool { return hasServer(st, req.ID, req.Addr, !req.Nonvoter) })
}

func (a *admin) restore(w http.ResponseWriter, r *http.Request) {
	if err := a.n.Restore(r.Context(), r.Body); err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, a.n.Status())
}

// CodeRemoved is the Error.Code of a node that was removed from its
// cluster (raftkit.ErrRemoved), answered with 410 Gone.
const CodeRemoved = "removed"

// HTTPStatus is the HTTP status code for an outcome class: 200 applied,
// 422 rejected by the FSM, 503 not applied or closed (retry, maybe
// elsewhere), 504 unknown outcome, 400 invalid, 403 not authorized.
func HTTPStatus(o raftkit.Outcome) int {
	switch o {
	case raftkit.Applied:
		return http.StatusOK
	case raftkit.Rejected:
		return http.StatusUnprocessableEntity
	case raftkit.NotApplied, raftkit.Closed:
		return http.StatusServiceUnavailable
	case raftkit.Unknown:
		return http.StatusGatewayTimeout
	case raftkit.Invalid:
		return http.StatusBadRequest
	case raftkit.NotAuthorized:
		return http.StatusForbidden
	}
	return http.StatusInternalServerError
}

// WriteError answers err, an error of a node's call, with its class's
// status code (HTTPStatus), Retry-After: 1 on a 503, and an Error as
// JSON whose Code is the class (Outcome.String) and that names the leader
// when the request must go there. An FSM's own error (class Rejected) is
// 422 with code "rejected"; the admin handler's own routes, where no FSM
// runs, answer such an error 500 "internal".
//
// One error has a mapping of its own: ErrRemoved (the node was removed
// from its cluster) is 410 Gone with code "removed" and no Retry-After,
// since this node will not serve again by itself; a client should use
// another node. Its class stays NotApplied, and its health check 503.
func WriteError(w http.ResponseWriter, err error) {
	class := raftkit.Classify(err)
	if errors.Is(err, raftkit.ErrRemoved) {
		writeJSON(w, http.StatusGone, Error{Error: err.Error(), Code: CodeRemoved})
		return
	}
	body := Error{Error: err.Error(), Code: class.String()}
	code := HTTPStatus(class)
	var nle *raftkit.NotLeaderError
	if errors.As(err, &nle) {
		body.LeaderID, body.LeaderAddr = nle.LeaderID, nle.LeaderAddr
	}
	if code == http.StatusServiceUnavailable {
		w.Header().Set("Retry-After", "1")
	}
	writeJSON(w, code, body)
}

// writeError is WriteError for the handler's own routes: an error of no
// class (a failure of the admin operation itself, such as a broken backup
// stream) is 500.
func writeError(w http.ResponseWriter, err error) {
	if raftkit.Classify(err) == raftkit.Rejected {
		writeJSON(w, http.StatusInternalServerError, Error{Error: err.Error(), Code: "internal"})
		return
	}
	WriteError(w, err)
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}
