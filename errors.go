package raftkit

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/hashicorp/raft"

	"github.com/raftkit/raftkit/internal/chunk"
	"github.com/raftkit/raftkit/internal/sentinel"
	"github.com/raftkit/raftkit/internal/store"
)

// Every call of a node ends in exactly one outcome class (see Outcome and
// Classify), the same whichever node served it:
//
//   - applied: nil, or the FSM's own error (the command is in the log);
//   - not applied (ErrNotApplied): the command is certainly not in the log;
//     raftkit has already retried it within the caller's budget where that
//     could help;
//   - unknown outcome (ErrUnknownOutcome): the command may have been
//     committed; raftkit never retries it;
//   - invalid request (ErrInvalidRequest), not authorized (ErrNotAuthorized),
//     closed (ErrClosed): fix the call, the credentials, or use another node.
var (
	// ErrNotApplied is matched by every error after which the request is
	// certainly not applied: no leader is known, leadership moved, a
	// leadership transfer was in progress, the connection to the leader
	// failed before the request was sent, or the caller's context ended
	// before it was submitted. Apply, LinearizableRead and the membership
	// calls retry such failures, following the new leader, until their
	// context ends; the error they return is the last one. errors.As with a
	// *NotLeaderError gives the leader's identity where one is known.
	ErrNotApplied = errors.New("raftkit: not applied")

	// ErrNoLeader is returned when the cluster has no known leader to serve
	// or forward a request. It matches ErrNotApplied.
	ErrNoLeader error = &classed{msg: "raftkit: no known leader", class: ErrNotApplied}

	// ErrTransferInProgress is returned for a write or membership change
	// that the leader refused because it is handing leadership over. It
	// matches ErrNotApplied.
	ErrTransferInProgress error = &classed{msg: "raftkit: leadership transfer in progress", class: ErrNotApplied}

	// ErrRemoved is returned by a node that has state but is not in its
	// cluster's latest configuration: it was removed (RemoveServer, Leave),
	// or it restarted with state from before its removal. A new node whose
	// Peers match a cluster that no longer contains it returns it too, and
	// so does a data directory restarted under another ID (the error then
	// says the ID changed and names both: restart it with its old ID). It
	// matches ErrNotApplied, but is not retried: the node will not become a
	// member again by itself. To bring it back, restart it with Config.Join
	// (it keeps its data and is added back), add it from a member with
	// AddVoter, or wipe its Dir and start it as a new node.
	ErrRemoved error = &classed{msg: "raftkit: node is not a member of its cluster", class: ErrNotApplied}

	// ErrIncompatible is returned when this node and a peer do not talk:
	// one speaks a protocol too old for the other, or requires a feature
	// the other lacks (see ProtocolVersion and Status.Peers). Both log it
	// at ERROR, naming both versions. A node that cannot talk to a
	// majority of its cluster's voters returns it from every call, at once.
	// It matches ErrNotApplied and is not retried: upgrade the older node.
	ErrIncompatible error = &classed{msg: "raftkit: incompatible protocol", class: ErrNotApplied}

	// ErrNotReady is returned by Ready for a node that does not serve as
	// a member yet: it knows no leader, is not in its configuration, or
	// has not caught up with its cluster. It matches ErrNotApplied.
	ErrNotReady error = &classed{msg: "raftkit: node is not ready", class: ErrNotApplied}

	// ErrUnknownOutcome is matched by errors after which raftkit cannot tell
	// whether a write (or membership change) was applied: its deadline
	// passed or its context was cancelled after it was submitted, leadership
	// was lost, or the connection to the leader broke after the request was
	// sent. raftkit never retries such a write; the caller must check the
	// state (or use idempotent commands) before trying again. The error
	// also matches its cause (context.DeadlineExceeded, ...).
	ErrUnknownOutcome = errors.New("raftkit: outcome unknown")

	// ErrInvalidRequest is matched by errors for requests that can never
	// succeed as given (an empty server ID, a transfer to a non-voter, a
	// command over Config.MaxCommandSize). Nothing was applied.
	ErrInvalidRequest = errors.New("raftkit: invalid request")

	// ErrTooLarge is returned for a command larger than
	// Config.MaxCommandSize (the leader's, for a forwarded command); it
	// matches ErrInvalidRequest and was not applied.
	ErrTooLarge error = &classed{msg: "raftkit: command too large", class: ErrInvalidRequest}

	// ErrNotAuthorized is matched by errors for requests or connections that
	// a node refused for lack of credentials: a peer certificate that fails
	// verification or authorisation, or a wrong Config.JoinSecret.
	ErrNotAuthorized = sentinel.ErrNotAuthorized

	// ErrClosed is returned by calls on a node that has been closed. A write
	// that returns ErrClosed alone was not applied; one cut short by Close
	// also matches ErrUnknownOutcome.
	ErrClosed = sentinel.ErrClosed

	// ErrInvalidConfig is matched by every error that Config.Validate and
	// NewRaftNode return for bad input. Use errors.As with *ConfigError to
	// learn the field at fault.
	ErrInvalidConfig = sentinel.ErrInvalidConfig

	// ErrDataDirLocked is returned when another process, or another node in
	// this process, holds the data directory's raft.db open.
	ErrDataDirLocked = sentinel.ErrDataDirLocked

	// ErrCorruptStore is returned when raft.db or the snapshots in the data
	// directory cannot be trusted (truncated, damaged, or inconsistent with
	// each other). raftkit never starts such a node with empty state.
	ErrCorruptStore = sentinel.ErrCorruptStore

	// ErrBadBackup is returned by Restore and ReadBackupInfo for a stream
	// that is not a complete raftkit backup: wrong header, truncated, or
	// failing its checksum. Nothing was restored.
	ErrBadBackup = errors.New("raftkit: not a valid backup")

	// ErrRecovery is matched by errors about a recovery configuration: one
	// that WriteRecovery refuses to write, or a Dir/peers.json that
	// NewRaftNode cannot apply. A node that fails this way has not started
	// and its data is unchanged.
	ErrRecovery = errors.New("raftkit: cannot recover")
)

// errTransferFailed is a leadership transfer that raft gave up, again and
// again until the caller's context ended, while this node kept leading.
var errTransferFailed error = &classed{msg: "raftkit: leadership did not move", class: ErrNotApplied}

// publicErr returns an error of an internal package as callers see it: an
// invalid field as a *ConfigError; others keep their sentinels, which are
// this package's (see internal/sentinel).
func publicErr(err error) error {
	var fe *sentinel.FieldError
	if errors.As(err, &fe) {
		return &ConfigError{Field: fe.Field, Value: fe.Value, Reason: fe.Reason}
	}
	var ke *store.KindError
	if errors.As(err, &ke) {
		want := LogStoreBolt
		if ke.Want == store.WAL {
			want = LogStoreWAL
		}
		return configErr("LogStore", want.String(), "but %v", ke)
	}
	return err
}

// classed is a sentinel that also matches the class it belongs to.
type classed struct {
	msg   string
	class error
}

func (e *classed) Error() string        { return e.msg }
func (e *classed) Is(target error) bool { return target == e.class }

// NotLeaderError is returned when a request reached a node that is not the
// leader: by ApplyLocal on a follower, and by Apply and the other calls
// when leadership kept moving until their context ended. It matches
// ErrNotApplied and raft.ErrNotLeader; the request was not applied. Leader
// fields are empty when no leader is known.
type NotLeaderError struct {
	// LeaderID and LeaderAddr name the leader this node knows of.
	LeaderID, LeaderAddr string
}

// Error says that the node is not the leader, and who is.
func (e *NotLeaderError) Error() string {
	if e.LeaderAddr == "" {
		return "raftkit: node is not the leader and no leader is known"
	}
	return fmt.Sprintf("raftkit: node is not the leader; the leader is %s at %s", e.LeaderID, e.LeaderAddr)
}

// Is lets errors.Is(err, ErrNotApplied) match.
func (e *NotLeaderError) Is(target error) bool { return target == ErrNotApplied }

// Unwrap lets errors.Is(err, raft.ErrNotLeader) match.
func (e *NotLeaderError) Unwrap() error { return raft.ErrNotLeader }

// FSMError is how Apply returns an error that the FSM returned for a
// command, on every node alike (the command was applied; the FSM rejected
// it). Its text is the FSM error's text. It matches, with errors.Is and
// errors.As, the error values and types registered in Config.FSMErrors that
// the FSM's error matched on the leader. An FSM error that is itself a
// registered value, or of a registered type, is returned as itself instead.
type FSMError struct {
	// Message is the FSM error's Error() text.
	Message string
	// matches are the registered errors the FSM's error matched.
	matches []error
}

// Error returns the FSM error's text.
func (e *FSMError) Error() string { return e.Message }

// Unwrap returns the registered error values and types that the FSM's error
// matched.
func (e *FSMError) Unwrap() []error { return e.matches }

// RemoteError is an error that a leader reported in a form raftkit does not
// know. Current nodes classify every error they send; RemoteError remains
// for answers from other versions, and Classify sorts it as an unknown
// outcome.
type RemoteError struct {
	// Message is the remote error's Error() text.
	Message string
}

// Error returns the remote error's message.
func (e *RemoteError) Error() string { return e.Message }

// Outcome is the class of a call's result: what the caller may do next.
type Outcome int

// The outcome classes. Each error that a node's calls return belongs to
// exactly one of them.
const (
	// Applied: the call succeeded (nil error).
	Applied Outcome = iota
	// Rejected: the command was applied and the FSM returned an error.
	Rejected
	// NotApplied: certainly not applied; retried already within the
	// context, so retry later or elsewhere (errors match ErrNotApplied).
	NotApplied
	// Unknown: may have been applied (errors match ErrUnknownOutcome).
	Unknown
	// Invalid: the request can never succeed as given (ErrInvalidRequest,
	// ErrInvalidConfig, ErrBadBackup).
	Invalid
	// NotAuthorized: refused credentials (ErrNotAuthorized).
	NotAuthorized
	// Closed: the node is closed (ErrClosed).
	Closed
)

// Classify returns the outcome class of an error returned by a node's
// calls (Apply, LinearizableRead, membership changes, Backup, Restore):
// Applied for nil, the class of raftkit's own errors, and Rejected for any
// other error, which for Apply is the FSM's.
func Classify(err error) Outcome {
	var fe *FSMError
	switch {
	case err == nil:
		return Applied
	case errors.As(err, &fe):
		return Rejected
	case errors.Is(err, ErrUnknownOutcome):
		return Unknown
	case errors.Is(err, ErrClosed):
		return Closed
	case errors.Is(err, ErrNotAuthorized):
		return NotAuthorized
	case errors.Is(err, ErrNotApplied):
		return NotApplied
	case errors.Is(err, ErrInvalidRequest), errors.Is(err, ErrInvalidConfig), errors.Is(err, ErrBadBackup):
		return Invalid
	}
	var re *RemoteError
	if errors.As(err, &re) {
		return Unknown
	}
	return Rejected
}

// String returns the class's code: "applied", "rejected", "not_applied",
// "unknown_outcome", "invalid", "not_authorized" or "closed". Programs may
// use it as a stable error code in their own answers.
func (o Outcome) String() string {
	switch o {
	case Applied:
		return "applied"
	case Rejected:
		return "rejected"
	case NotApplied:
		return "not_applied"
	case Unknown:
		return "unknown_outcome"
	case Invalid:
		return "invalid"
	case NotAuthorized:
		return "not_authorized"
	case Closed:
		return "closed"
	}
	return fmt.Sprintf("Outcome(%d)", int(o))
}

// kitError is raftkit's wrapped error: one "raftkit:" prefix, then what
// failed, the class and the cause, each once. It matches both class and
// cause.
type kitError struct {
	msg          string
	class, cause error
}

func (e *kitError) Error() string { return e.msg }
func (e *kitError) Unwrap() []error {
	if e.cause == nil {
		return []error{e.class}
	}
	return []error{e.class, e.cause}
}

// wrapErr returns an error matching class and cause (cause may be nil)
// whose text is "raftkit: what: class: cause": one "raftkit: " prefix
// (nested ones dropped), and the class left out where the cause's text
// already begins with it.
func wrapErr(class error, what string, cause error) error {
	text := bare(class)
	if cause != nil && cause != class {
		if ct := bare(cause); hasSegment(ct, text) {
			text = ct
		} else {
			text += ": " + ct
		}
	}
	// what is left out where the text already begins with it (a failed
	// read barrier retried and reported again, say).
	if what != "" && text != what && !strings.HasPrefix(text, what+": ") {
		text = what + ": " + text
	}
	return &kitError{msg: "raftkit: " + text, class: class, cause: cause}
}

// hasSegment reports whether seg is one of text's ": "-separated parts,
// or a run of them: the cause already names the class (a leader's error
// text, say), so it is not repeated.
func hasSegment(text, seg string) bool {
	return strings.Contains(": "+text+": ", ": "+seg+": ")
}

// bare is err's text without a leading "raftkit: ".
func bare(err error) string { return strings.TrimPrefix(err.Error(), "raftkit: ") }

// annotate prefixes err's text with what failed, keeping its class and
// its single "raftkit:" prefix.
func annotate(what string, err error) error { return wrapErr(err, what, nil) }

// notApplied wraps cause as not applied (cause's own class kept where it
// has one).
func notApplied(what string, cause error) error {
	if errors.Is(cause, ErrNotApplied) {
		return wrapErr(cause, what, nil)
	}
	return wrapErr(ErrNotApplied, what, cause)
}

// unknownOutcome wraps cause as an unknown outcome.
func unknownOutcome(what string, cause error) error { return wrapErr(ErrUnknownOutcome, what, cause) }

// invalidRequest returns an invalid-request error with a formatted reason.
func invalidRequest(format string, args ...any) error {
	return wrapErr(ErrInvalidRequest, "", fmt.Errorf(format, args...))
}

// retryable reports whether a failed call may be tried again: it was
// certainly not applied, and for a reason that a new leader, or the same
// one a moment later, can lift.
func retryable(err error) bool {
	var nle *NotLeaderError
	return errors.As(err, &nle) || errors.Is(err, ErrNoLeader) || errors.Is(err, ErrTransferInProgress) ||
		errors.Is(err, chunk.ErrIncomplete)
}

// doneErr returns a not-applied error if ctx has ended or its deadline
// has passed: such a call must submit nothing.
func doneErr(ctx context.Context, what string) error {
	err := ctx.Err()
	if dl, ok := ctx.Deadline(); ok && err == nil && !time.Now().Before(dl) {
		err = context.DeadlineExceeded
	}
	if err == nil {
		return nil
	}
	return wrapErr(ErrNotApplied, what, fmt.Errorf("context ended before the request was submitted: %w", err))
}

// classifyRaft sorts an error from a raft future that raftkit submitted on
// the leader into the outcome classes. notLeader gives this node's view of
// the leader.
func classifyRaft(what string, err error, notLeader func() error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, raft.ErrNotLeader):
		return notLeader()
	case errors.Is(err, raft.ErrLeadershipTransferInProgress):
		return wrapErr(ErrTransferInProgress, what, nil)
	case errors.Is(err, raft.ErrEnqueueTimeout):
		// Never entered the log.
		return notApplied(what, err)
	case errors.Is(err, chunk.ErrIncomplete):
		// The FSM dropped the command's chunks (see chunk.go).
		return notApplied(what, err)
	case errors.Is(err, raft.ErrRaftShutdown):
		return wrapErr(ErrUnknownOutcome, what, ErrClosed)
	case errors.Is(err, ErrNotApplied):
		// raftkit's own refusal before raft took the command (see submit).
		return notApplied(what, err)
	}
	return unknownOutcome(what, err)
}
