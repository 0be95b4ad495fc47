package raftkit

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"time"

	"github.com/raftkit/raftkit/internal/chunk"
	"github.com/raftkit/raftkit/internal/peer"
	"github.com/raftkit/raftkit/internal/port"
)

// raftkit's own node-to-node requests (forwarded writes, read indexes,
// membership changes, bootstrap agreement, clean-close notices) travel as
// net/rpc calls on the node's one port (see internal/peer, whose service
// lists them all). peerHandler serves them here; the rest of this file is
// the asking side and the errors' wire form.

// peerHandler serves this node's peers' requests (peer.Handler).
type peerHandler struct {
	n *RaftNode
	// member reports whether the connection served comes from a member's
	// host; nil: it does (see internal/port's Admission).
	member func() bool
}

var _ peer.Handler = peerHandler{}

func (h peerHandler) Apply(timeout int64, cmds [][]byte) []peer.ApplyResponse {
	return h.n.serveApply(timeout, cmds)
}

func (h peerHandler) ReadIndex(timeout int64) peer.ReadIndexResponse {
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(timeout))
	defer cancel()
	idx, err := h.n.leaderReads.wait(ctx)
	return peer.ReadIndexResponse{Index: idx, Err: toWire(err)}
}

func (h peerHandler) Membership(req *peer.MembershipRequest) peer.MembershipResponse {
	n := h.n
	if want := n.cfg.JoinSecret; want != "" && subtle.ConstantTimeCompare([]byte(want), []byte(req.Secret)) != 1 {
		n.logger.Warn("refused membership request with a wrong join secret", "op", req.Op, "id", req.ID, "addr", req.Addr)
		return peer.MembershipResponse{Err: toWire(wrapErr(ErrNotAuthorized, "membership request "+req.Op+" "+req.ID, errors.New("wrong or missing join secret")))}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(req.Timeout))
	defer cancel()
	op := req.Op
	if op == peer.OpAddVoter && req.Force {
		op = opForceAddVoter
	}
	return peer.MembershipResponse{Err: toWire(n.membershipHere(ctx, op, req.ID, req.Addr))}
}

// Closing records a clean-close notice only from a member: sent from a
// member's host (or with the join secret, when one is set), naming a
// server of the latest configuration at its address. So a stranger's
// notices grow nothing, and departures holds at most the configuration.
func (h peerHandler) Closing(req *peer.ClosingRequest) {
	n := h.n
	secret := n.cfg.JoinSecret
	if secret != "" && subtle.ConstantTimeCompare([]byte(secret), []byte(req.Secret)) != 1 {
		return
	}
	if secret == "" && h.member != nil && !h.member() {
		n.logger.Debug("ignoring a clean-close notice from a host that is no member's", "id", req.ID, "addr", req.Addr)
		return
	}
	if s, ok := n.server(req.ID); !ok || string(s.Address) != req.Addr {
		n.logger.Debug("ignoring a clean-close notice naming no server of the configuration", "id", req.ID, "addr", req.Addr)
		return
	}
	n.departures.add(req.ID, req.Addr)
	n.logger.Debug("peer announced a clean close; failures to reach it are logged at Debug for a while", "peer", req.ID, "addr", req.Addr)
}

func (h peerHandler) Bootstrap(req *peer.BootstrapRequest) peer.BootstrapResponse {
	var resp peer.BootstrapResponse
	h.n.gate.answer(h.n, req, &resp)
	return resp
}

func (h peerHandler) Features() peer.FeaturesResponse {
	// Asked by leaders of protocol 1 only: later ones learn it from the
	// hello.
	return peer.FeaturesResponse{Chunks: h.n.mux.Profile().Speaks(peer.FeatureChunks)}
}

// toWire turns a classified error into its wire form. FSM errors have
// their own (codecs.encodeFSMError).
func toWire(err error) *peer.Error {
	if err == nil {
		return nil
	}
	msg := bare(err)
	var nle *NotLeaderError
	switch {
	case errors.As(err, &nle):
		return &peer.Error{Kind: peer.KindNotLeader, Message: msg, LeaderID: nle.LeaderID, LeaderAddr: nle.LeaderAddr}
	case errors.Is(err, ErrUnknownOutcome):
		return &peer.Error{Kind: peer.KindUnknown, Message: msg}
	case errors.Is(err, ErrTransferInProgress):
		return &peer.Error{Kind: peer.KindTransfer, Message: msg}
	case errors.Is(err, ErrNoLeader), errors.Is(err, ErrClosed):
		// A closing leader did not take the request; the next one will.
		return &peer.Error{Kind: peer.KindNoLeader, Message: msg}
	case errors.Is(err, chunk.ErrIncomplete):
		return &peer.Error{Kind: peer.KindInterrupted, Message: msg}
	case errors.Is(err, ErrNotApplied):
		return &peer.Error{Kind: peer.KindNotApplied, Message: msg}
	case errors.Is(err, ErrNotAuthorized):
		return &peer.Error{Kind: peer.KindDenied, Message: msg}
	case errors.Is(err, ErrTooLarge):
		return &peer.Error{Kind: peer.KindInvalid, Reason: peer.ReasonTooLarge, Message: msg}
	case errors.Is(err, ErrInvalidRequest), errors.Is(err, ErrInvalidConfig):
		return &peer.Error{Kind: peer.KindInvalid, Message: msg}
	}
	return &peer.Error{Kind: peer.KindOther, Message: msg}
}

// fromWire turns a wire error from the node at addr back into an error of
// the same class.
func (n *RaftNode) fromWire(addr string, e *peer.Error) error {
	if e == nil {
		return nil
	}
	cause := errors.New(e.Message)
	what := "leader " + addr
	switch e.Kind {
	case peer.KindNotLeader:
		return &NotLeaderError{LeaderID: e.LeaderID, LeaderAddr: e.LeaderAddr}
	case peer.KindUnknown:
		return wrapErr(ErrUnknownOutcome, what, cause)
	case peer.KindNoLeader:
		return wrapErr(ErrNoLeader, what, cause)
	case peer.KindTransfer:
		return wrapErr(ErrTransferInProgress, what, nil)
	case peer.KindNotApplied:
		return wrapErr(ErrNotApplied, what, cause)
	case peer.KindInterrupted:
		return wrapErr(ErrNotApplied, what, chunk.ErrIncomplete)
	case peer.KindInvalid:
		if e.Reason == peer.ReasonTooLarge {
			return wrapErr(ErrTooLarge, what, cause)
		}
		return wrapErr(ErrInvalidRequest, what, cause)
	case peer.KindDenied:
		return wrapErr(ErrNotAuthorized, what, cause)
	case peer.KindFSM:
		return n.cfg.codecs.decodeFSMError(e)
	}
	return &RemoteError{Message: e.Message}
}

// leaderAddr waits (within ctx) until a leader is known and returns it.
func (n *RaftNode) leaderAddr(ctx context.Context) (string, error) {
	if addr := n.GetLeaderAddr(); addr != "" {
		return addr, nil
	}
	addr, err := n.WaitForLeader(ctx)
	if err != nil {
		if errors.Is(err, ErrClosed) {
			return "", err
		}
		return "", wrapErr(ErrNoLeader, "", ctx.Err())
	}
	return addr, nil
}

// forward sends a request to the leader once, and classifies a failure to
// reach it: not sent is ErrNoLeader (not applied, worth retrying); after
// sending, ErrUnknownOutcome. A node that believes itself the leader gets
// a *NotLeaderError, so that its caller's next attempt decides afresh.
func (n *RaftNode) forward(ctx context.Context, what, method string, args, reply any) (string, error) {
	addr, err := n.leaderAddr(ctx)
	if err != nil {
		return "", err
	}
	if addr == n.addr {
		return "", n.notLeader()
	}
	return addr, n.forwardTo(ctx, what, addr, method, args, reply)
}

// forwardTo sends a request to the leader at addr, with forward's error
// classification.
func (n *RaftNode) forwardTo(ctx context.Context, what, addr, method string, args, reply any) error {
	return n.forwardErr(what, addr, n.rpc.Call(ctx, addr, method, args, reply))
}

// forwardErr is transportErr for a request this node sent, told apart
// when the request failed because this node closed under it (Close, or a
// crash in tests): the connection's own error would name the leader and
// the transport's internals ("via leader n2: io: read/write on closed
// pipe") when the cause is here. A request already sent keeps its
// unknown outcome; one not sent fails as closed.
func (n *RaftNode) forwardErr(what, addr string, err error) error {
	err = transportErr(what, addr, err)
	if err == nil || n.checkOpen() == nil || errors.Is(err, ErrClosed) {
		return err
	}
	if errors.Is(err, ErrUnknownOutcome) {
		return wrapErr(ErrUnknownOutcome, what, fmt.Errorf("this node closed while the request was with leader %s: %w", addr, ErrClosed))
	}
	return wrapErr(ErrClosed, what, nil)
}

// transportErr classifies a request to the leader at addr that failed on
// its way (see internal/peer): not sent is ErrNoLeader (not applied, and
// retried: the leader may have moved), refused or cancelled before it was
// sent is not applied, and anything after sending is an unknown outcome.
func transportErr(what, addr string, err error) error {
	var call *peer.CallError
	var refused *peer.RefusedError
	var cancel *peer.CanceledError
	var incompatible *port.IncompatibleError
	switch {
	case err == nil:
		return nil
	case errors.Is(err, ErrClosed):
		return err
	case errors.As(err, &incompatible):
		return wrapErr(ErrIncompatible, what, fmt.Errorf("leader %s", incompatible))
	case errors.As(err, &refused):
		return wrapErr(ErrNotApplied, what, err)
	case errors.As(err, &cancel) && !cancel.Sent:
		return wrapErr(ErrNotApplied, what, err)
	case errors.As(err, &cancel):
		return wrapErr(ErrUnknownOutcome, what, fmt.Errorf("via leader %s: %w", addr, cancel.Err))
	case errors.As(err, &call) && !call.Sent:
		return wrapErr(ErrNoLeader, what, fmt.Errorf("leader %s unreachable: %w", addr, call.Err))
	case errors.As(err, &call):
		return wrapErr(ErrUnknownOutcome, what, fmt.Errorf("via leader %s: %w", addr, call.Err))
	}
	return wrapErr(ErrUnknownOutcome, what, fmt.Errorf("via leader %s: %w", addr, err))
}

// forwardApply sends cmd to the leader and returns its FSM response.
// Concurrent calls travel together in batches (see applyBatcher).
func (n *RaftNode) forwardApply(ctx context.Context, cmd ownedCmd) (any, error) {
	addr, err := n.leaderAddr(ctx)
	if err != nil {
		return nil, err
	}
	if addr == n.addr {
		return nil, n.notLeader()
	}
	resp, err := n.fwd.Submit(ctx, addr, cmd)
	if err != nil {
		return nil, n.forwardErr("apply", addr, err)
	}
	if resp.Err != nil {
		return nil, n.fromWire(addr, resp.Err)
	}
	res, err := n.cfg.codecs.decodeResult(resp)
	if err != nil {
		return nil, unencodable(err)
	}
	return res, nil
}
