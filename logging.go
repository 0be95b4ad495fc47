package raftkit

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"

	"github.com/raftkit/raftkit/internal/peer"
)

// LevelTrace is the slog level that SlogLogger gives hclog's Trace lines
// (raft's most verbose ones): four below slog.LevelDebug.
const LevelTrace = slog.LevelDebug - 4

// SlogLogger adapts a *slog.Logger to the hclog.Logger that Config.Logger
// takes, so that raftkit's and raft's lines go to the application's slog
// handler as structured records. Key/value pairs become slog attributes; a
// logger's name (raftkit, raft, snapshots, ...) becomes the "logger"
// attribute; hclog levels map to slog's, with Trace at LevelTrace.
//
// Which records are written is the slog handler's decision. SetLevel adds a
// floor of its own on top (hclog.NoLevel, the default, means none). A nil l
// gives a logger that discards everything, like a nil Config.Logger.
func SlogLogger(l *slog.Logger) hclog.Logger {
	if l == nil {
		return hclog.NewNullLogger()
	}
	return &slogLogger{l: l, level: new(atomic.Int32)}
}

// slogLogger is an hclog.Logger that writes to a slog.Logger.
type slogLogger struct {
	l     *slog.Logger
	name  string
	args  []any
	level *atomic.Int32 // hclog.Level floor, shared with loggers derived from this one
}

func slogLevel(level hclog.Level) slog.Level {
	switch level {
	case hclog.Trace:
		return LevelTrace
	case hclog.Debug:
		return slog.LevelDebug
	case hclog.Warn:
		return slog.LevelWarn
	case hclog.Error:
		return slog.LevelError
	}
	return slog.LevelInfo
}

func (s *slogLogger) enabled(level hclog.Level) bool {
	if level == hclog.Off {
		return false
	}
	if floor := hclog.Level(s.level.Load()); floor != hclog.NoLevel && level < floor {
		return false
	}
	return s.l.Enabled(context.Background(), slogLevel(level))
}

// Log writes msg with args (key/value pairs) at level.
func (s *slogLogger) Log(level hclog.Level, msg string, args ...any) {
	if !s.enabled(level) {
		return
	}
	args = hclogValues(args)
	if s.name != "" {
		args = append([]any{"logger", s.name}, args...)
	}
	s.l.Log(context.Background(), slogLevel(level), msg, args...)
}

// hclogValues renders the values that hclog formats itself (hclog.Fmt,
// Hex, Octal, Binary, Quote, a trailing CapturedStacktrace) as hclog's own
// loggers do, which slog cannot know: hclog.Fmt("%d ms", 5) is "5 ms", not
// "[%d ms 5]". Quote's string is passed as it is, for the slog handler to
// quote as its format wants. A value without a key gets hclog's
// MissingKey. Other values pass unchanged.
func hclogValues(args []any) []any {
	if len(args) == 0 {
		return args
	}
	out := make([]any, 0, len(args)+1)
	if len(args)%2 != 0 {
		last := args[len(args)-1]
		args = args[:len(args)-1]
		if cs, ok := last.(hclog.CapturedStacktrace); ok {
			args = append(args, "stacktrace", string(cs))
		} else {
			args = append(args, hclog.MissingKey, last)
		}
	}
	for i := 0; i+1 < len(args); i += 2 {
		out = append(out, args[i], hclogValue(args[i+1]))
	}
	return out
}

// hclogValue is one value as hclog's text format renders it (see
// hclogValues).
func hclogValue(v any) any {
	switch v := v.(type) {
	case hclog.Format:
		if len(v) == 0 {
			return ""
		}
		if f, ok := v[0].(string); ok {
			return fmt.Sprintf(f, v[1:]...)
		}
		return fmt.Sprint(v...)
	case hclog.Hex:
		return "0x" + strconv.FormatUint(uint64(v), 16)
	case hclog.Octal:
		return "0" + strconv.FormatUint(uint64(v), 8)
	case hclog.Binary:
		return "0b" + strconv.FormatUint(uint64(v), 2)
	case hclog.Quote:
		return string(v)
	case hclog.CapturedStacktrace:
		return string(v)
	}
	return v
}

func (s *slogLogger) Trace(msg string, args ...any) { s.Log(hclog.Trace, msg, args...) }
func (s *slogLogger) Debug(msg string, args ...any) { s.Log(hclog.Debug, msg, args...) }
func (s *slogLogger) Info(msg string, args ...any)  { s.Log(hclog.Info, msg, args...) }
func (s *slogLogger) Warn(msg string, args ...any)  { s.Log(hclog.Warn, msg, args...) }
func (s *slogLogger) Error(msg string, args ...any) { s.Log(hclog.Error, msg, args...) }

func (s *slogLogger) IsTrace() bool { return s.enabled(hclog.Trace) }
func (s *slogLogger) IsDebug() bool { return s.enabled(hclog.Debug) }
func (s *slogLogger) IsInfo() bool  { return s.enabled(hclog.Info) }
func (s *slogLogger) IsWarn() bool  { return s.enabled(hclog.Warn) }
func (s *slogLogger) IsError() bool { return s.enabled(hclog.Error) }

func (s *slogLogger) ImpliedArgs() []any { return append([]any(nil), s.args...) }

func (s *slogLogger) With(args ...any) hclog.Logger {
	c := *s
	c.l = s.l.With(hclogValues(args)...)
	c.args = append(append([]any(nil), s.args...), args...)
	return &c
}

func (s *slogLogger) Name() string { return s.name }

func (s *slogLogger) Named(name string) hclog.Logger {
	c := *s
	if s.name != "" {
		name = s.name + "." + name
	}
	c.name = name
	return &c
}

func (s *slogLogger) ResetNamed(name string) hclog.Logger {
	c := *s
	c.name = name
	return &c
}

func (s *slogLogger) SetLevel(level hclog.Level) { s.level.Store(int32(level)) }

func (s *slogLogger) GetLevel() hclog.Level { return hclog.Level(s.level.Load()) }

func (s *slogLogger) StandardLogger(opts *hclog.StandardLoggerOptions) *log.Logger {
	return log.New(s.StandardWriter(opts), "", 0)
}

// StandardWriter returns a writer whose lines become records; with
// opts.InferLevels a leading "[DEBUG]", "[WARN]", ... picks the level.
func (s *slogLogger) StandardWriter(opts *hclog.StandardLoggerOptions) io.Writer {
	infer := opts != nil && opts.InferLevels
	return &slogLineWriter{s: s, infer: infer}
}

type slogLineWriter struct {
	s     *slogLogger
	infer bool
}

func (w *slogLineWriter) Write(p []byte) (int, error) {
	sc := bufio.NewScanner(strings.NewReader(string(p)))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" {
			continue
		}
		level := hclog.Info
		if w.infer {
			for prefix, l := range map[string]hclog.Level{"[TRACE]": hclog.Trace, "[DEBUG]": hclog.Debug, "[INFO]": hclog.Info, "[WARN]": hclog.Warn, "[ERR]": hclog.Error, "[ERROR]": hclog.Error} {
				if strings.HasPrefix(line, prefix) {
					level, line = l, strings.TrimSpace(strings.TrimPrefix(line, prefix))
					break
				}
			}
		}
		w.s.Log(level, line)
	}
	return len(p), nil
}

// A node that closes cleanly tells its peers first (announceClose), and
// every node's raft and transport lines pass through a quietLogger, so that
// what a clean shutdown does to the cluster is not reported as a failure:
//
//   - read and write errors on a connection this node closed itself
//     (net.ErrClosed: its own Close) are Debug;
//   - raft's complaints about a peer that announced a clean close (failed
//     heartbeats, appends, votes, contact, its connections reset) are
//     Debug for closeQuietPeriod after the notice: long enough for the
//     close and for a whole cluster's shutdown, short enough that a peer
//     that stays away is reported again as raft reports any lost peer;
//   - losing quorum, and the elections that follow, are Debug when the
//     peers that announced a clean close are what took the quorum away;
//   - a node without a configuration finding it has no peers to elect
//     (it waits to be added, to join, or for a bootstrap agreement), a
//     follower whose log ends before what the leader sends next, and the
//     leader's rejected append to a non-voter it is catching up (every
//     new voter is one first) are Info: the normal steps of a join;
//   - raft's first election when no leader was ever known (a fresh or
//     restarted node), a split vote before any leader was known, and a
//     vote this node refuses because it has a leader (raft's guard against
//     a disruptive candidate, working) are Info, not Warn.
//
// Anything else keeps its level: a peer that vanishes without notice still
// gives raft's Errors and Warns.

// closeQuietPeriod is how long after a peer's clean-close notice raft's
// complaints about it are logged at Debug: at least this, or ten election
// timeouts if longer.
const closeQuietPeriod = 10 * time.Second

// departures records the peers that announced a clean close.
type departures struct {
	mu    sync.Mutex
	peers map[string]departure // by server ID
	raft  atomic.Pointer[raft.Raft]
	// handedOver is set when this leader starts a leadership transfer and
	// cleared when it leads again: the new leader's higher term that its
	// replication then meets is the transfer working.
	handedOver atomic.Bool
	// seenLeader is set once this node knows of any leader.
	seenLeader atomic.Bool
	// campaign holds back a leaderless node's repeated lines (alone.go).
	campaign campaign
}

// departure is one peer's clean-close notice.
type departure struct {
	addr  string
	until time.Time // the notice's quiet period ends
}

func newDepartures() *departures { return &departures{peers: map[string]departure{}} }

// maxDepartures bounds the notices kept in their quiet period: past it, a
// new one is dropped (its peer's failures are then logged as any lost
// peer's). Only members' notices are recorded (peerHandler.Closing), so it
// is reached only by a configuration of more servers.
const maxDepartures = 256

// add records that peer id at addr is closing cleanly.
func (d *departures) add(id, addr string) {
	quiet := closeQuietPeriod
	if r := d.raft.Load(); r != nil {
		quiet = max(quiet, 10*r.ReloadableConfig().ElectionTimeout)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if _, ok := d.peers[id]; !ok && len(d.current()) >= maxDepartures {
		return
	}
	d.peers[id] = departure{addr: addr, until: time.Now().Add(quiet)}
}

// current returns the notices still in their quiet period, forgetting
// the others. d.mu must be held.
func (d *departures) current() map[string]departure {
	now := time.Now()
	for id, p := range d.peers {
		if now.After(p.until) {
			delete(d.peers, id)
		}
	}
	return d.peers
}

// announceClose tells every other member that this node is closing
// cleanly, so that they log the failures to reach it at Debug. It is best
// effort and bounded by the election timeout. A node whose raft already
// stopped (removed, or shut down as in a simulated crash) says nothing.
func (n *RaftNode) announceClose() {
	if n.raft.State() == raft.Shutdown {
		return // crashed or removed: nothing clean to announce
	}
	f := n.raft.GetConfiguration()
	if f.Error() != nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), n.raft.ReloadableConfig().ElectionTimeout)
	defer cancel()
	req := &peer.ClosingRequest{ID: n.id, Addr: n.addr, Secret: n.cfg.JoinSecret}
	var wg sync.WaitGroup
	for _, s := range f.Configuration().Servers {
		if string(s.ID) == n.id {
			continue
		}
		wg.Add(1)
		go func(addr string) {
			defer wg.Done()
			if err := n.rpc.Call(ctx, addr, peer.MethodClosing, req, &peer.ClosingResponse{}); err != nil {
				n.logger.Debug("could not tell a peer that this node is closing", "peer", addr, "error", err)
			}
		}(string(s.Address))
	}
	wg.Wait()
}

// observer tracks leadership for level: whether a leader was ever known,
// and the end of a handover. It works in raft's filter call and sends
// nothing, so it needs no goroutine.
func (d *departures) observer(self raft.ServerID) *raft.Observer {
	return raft.NewObserver(nil, false, func(o *raft.Observation) bool {
		if v, ok := o.Data.(raft.LeaderObservation); ok {
			if v.LeaderID != "" {
				d.seenLeader.Store(true)
				d.campaign.leaderKnown()
			}
			if v.LeaderID == self {
				d.handedOver.Store(false)
			}
		}
		return false
	})
}

// departed reports whether a log argument names a peer that announced a
// clean close.
func (d *departures) departed(v any) bool {
	var id, addr string
	switch p := v.(type) {
	case raft.Server:
		id, addr = string(p.ID), string(p.Address)
	case raft.ServerID:
		id = string(p)
	case raft.ServerAddress:
		addr = string(p)
	case string:
		id, addr = p, p
	default:
		return false
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	for pid, p := range d.current() {
		if (id != "" && id == pid) || (addr != "" && addr == p.addr) {
			return true
		}
	}
	return false
}

// departedReset reports whether err is a connection reset or broken pipe
// on a connection from the host of a peer that announced a clean close:
// that peer closing its end (raft's inbound connections name no peer).
func (d *departures) departedReset(err error) bool {
	var op *net.OpError
	if !errors.As(err, &op) || op.Addr == nil || !(errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)) {
		return false
	}
	host, _, splitErr := net.SplitHostPort(op.Addr.String())
	if splitErr != nil {
		return false
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, p := range d.current() {
		if h, _, err := net.SplitHostPort(p.addr); err == nil && h == host {
			return true
		}
	}
	return false
}

// quorumDeparted reports whether the voters that did not announce a clean
// close are too few for a quorum: then losing it is what was asked for.
func (d *departures) quorumDeparted() bool {
	r := d.raft.Load()
	if r == nil {
		return false
	}
	f := r.GetConfiguration() // does not block: safe on raft's goroutines
	if f.Error() != nil {
		return false
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	peers := d.current()
	if len(peers) == 0 {
		return false
	}
	voters, gone := 0, 0
	for _, s := range f.Configuration().Servers {
		if s.Suffrage != raft.Voter {
			continue
		}
		voters++
		if _, ok := peers[string(s.ID)]; ok {
			gone++
		}
	}
	return voters-gone < voters/2+1
}

// raft's own words that level matches: hashicorp/raft's log messages and
// the keys of its arguments that name a peer. TestQuietLoggingMatchesRaftsWords
// fails if raft no longer writes one of them, so that a new raft release
// cannot silently turn this quieting off.
const (
	msgHeartbeatTimeout    = "heartbeat timeout reached, starting election"
	msgQuorumLost          = "failed to contact quorum of nodes, stepping down"
	msgElectionTimeout     = "Election timeout reached, restarting election"
	msgRejectVoteLeader    = "rejecting vote request since we have a leader"
	msgRejectPreVoteLeader = "rejecting pre-vote request since we have a leader"
	msgRejectPreVoteTerm   = "rejecting pre-vote request since our last term is greater"
	msgRejectPreVoteIndex  = "rejecting pre-vote request since our last index is greater"
	msgRejectVoteTerm      = "rejecting vote request since our last term is greater"
	msgRejectVoteIndex     = "rejecting vote request since our last index is greater"
	msgPeerNewerTerm       = "peer has newer term, stopping replication"
	msgNoKnownPeers        = "no known peers, aborting election"
	msgPrevLogMissing      = "failed to get previous log"
	msgSendingOlderLogs    = "appendEntries rejected, sending older logs"
	keyLastLeaderID        = "last-leader-id"
)

// raftPeerKeys are raft's argument keys whose values name a peer.
var raftPeerKeys = []string{"peer", "target", "server-id", keyLastLeaderID, "last-leader-addr"}

// closedByThisNode reports whether err is a read or write on a connection
// this node closed itself (its own Close): on TCP net.ErrClosed, on
// raftkit's in-memory network io.ErrClosedPipe.
func closedByThisNode(err error) bool {
	return errors.Is(err, net.ErrClosed) || errors.Is(err, io.ErrClosedPipe) || errors.Is(err, raft.ErrTransportShutdown) ||
		strings.Contains(err.Error(), "use of closed network connection") // net's text, for errors that lost net.ErrClosed
}

// level is the level a raft or transport line is logged at.
func (d *departures) level(level hclog.Level, msg string, args []any) hclog.Level {
	if level < hclog.Warn {
		return level
	}
	for i := 1; i < len(args); i += 2 {
		if err, ok := args[i].(error); ok && (closedByThisNode(err) || d.departedReset(err)) {
			return hclog.Debug
		}
		if key, ok := args[i-1].(string); ok && slices.Contains(raftPeerKeys, key) && d.departed(args[i]) {
			return hclog.Debug
		}
	}
	switch msg {
	case msgHeartbeatTimeout:
		for i := 1; i < len(args); i += 2 {
			if args[i-1] == keyLastLeaderID && fmt.Sprint(args[i]) == "" {
				return hclog.Info
			}
		}
		fallthrough
	case msgQuorumLost, msgElectionTimeout:
		if d.quorumDeparted() {
			return hclog.Debug
		}
		if msg == msgElectionTimeout && !d.seenLeader.Load() {
			return hclog.Info // a split vote in a new cluster's first election
		}
	case msgRejectVoteLeader, msgRejectPreVoteLeader, msgRejectPreVoteTerm, msgRejectPreVoteIndex, msgRejectVoteTerm, msgRejectVoteIndex:
		// Raft's guards against a disruptive or outdated candidate
		// working (in a new cluster's first election, say); this node is
		// fine, and the candidate logs its own side.
		return hclog.Info
	case msgPeerNewerTerm:
		if d.handedOver.Load() {
			return hclog.Debug
		}
	case msgNoKnownPeers:
		// A node without any configuration: one that waits to be added,
		// to join, or for its peers to agree on a bootstrap.
		return hclog.Info
	case msgPrevLogMissing:
		// A follower whose log ends before the leader's previous entry
		// (a new node, or one back from a stop) is only behind; a hole
		// inside its log is not.
		last, lok := argValue(args, "last-index").(uint64)
		prev, pok := argValue(args, "previous-index").(uint64)
		if lok && pok && last < prev {
			return hclog.Info
		}
	case msgSendingOlderLogs:
		// A non-voter being caught up (as every new voter is first, see
		// AddVoter) starts behind the leader's log.
		if p, ok := argValue(args, "peer").(raft.Server); ok && p.Suffrage == raft.Nonvoter {
			return hclog.Info
		}
	}
	return level
}

// argValue is the value of key among a log line's key/value args, or nil.
func argValue(args []any, key string) any {
	for i := 1; i < len(args); i += 2 {
		if args[i-1] == key {
			return args[i]
		}
	}
	return nil
}

// quietLogger is an hclog.Logger that logs expected closes below Warn
// (see departures.level) and passes everything else on unchanged.
type quietLogger struct {
	hclog.Logger
	d *departures
}

// Log writes msg at the level departures assigns it.
func (q *quietLogger) Log(level hclog.Level, msg string, args ...any) {
	level, summary := q.d.campaign.level(q.d.level(level, msg, args), msg, args)
	q.Logger.Log(level, msg, args...)
	if summary != "" {
		q.Logger.Warn(summary)
	}
}

func (q *quietLogger) Info(msg string, args ...any)  { q.Log(hclog.Info, msg, args...) }
func (q *quietLogger) Warn(msg string, args ...any)  { q.Log(hclog.Warn, msg, args...) }
func (q *quietLogger) Error(msg string, args ...any) { q.Log(hclog.Error, msg, args...) }

func (q *quietLogger) With(args ...any) hclog.Logger {
	return &quietLogger{Logger: q.Logger.With(args...), d: q.d}
}

func (q *quietLogger) Named(name string) hclog.Logger {
	return &quietLogger{Logger: q.Logger.Named(name), d: q.d}
}

func (q *quietLogger) ResetNamed(name string) hclog.Logger {
	return &quietLogger{Logger: q.Logger.ResetNamed(name), d: q.d}
}
