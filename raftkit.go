// Package raftkit embeds a replicated, fault-tolerant state machine in a Go
// application with a few calls.
//
// hashicorp/raft does the consensus. raftkit builds everything around it that
// applications otherwise write by hand: a durable BoltDB log, file snapshots, a
// TCP transport, bootstrap from an address list, a bounded Apply, leadership
// notifications and a clean shutdown.
//
// A node is created with [NewRaftNode] from a [Config] and the application's own
// [raft.FSM]:
//
//	node, err := raftkit.NewRaftNode(raftkit.Config{
//		Addr:  "10.0.0.1:7000",
//		Dir:   "/var/lib/app/raft",
//		Peers: []string{"10.0.0.1:7000", "10.0.0.2:7000", "10.0.0.3:7000"},
//	}, fsm)
//	if err != nil {
//		return err
//	}
//	defer node.Close()
//	res, err := node.Apply(ctx, cmd)
//
// # Outcomes
//
// Every call ends in one class, the same whichever node served it; see
// [Classify]. A write acknowledged by [RaftNode.Apply] (nil error, or the
// FSM's own error) is committed to a majority and survives any minority of
// crashes. An error matching [ErrNotApplied] means the command is certainly
// not in the log (raftkit has already retried it within the context). An
// error matching [ErrUnknownOutcome] (a deadline or cancellation after
// submission, a lost leadership, a connection lost after sending) means it
// may or may not have been applied: raftkit never retries it.
//
// # Commands and time in the FSM
//
// Apply copies a command before raftkit keeps it, so the caller may reuse
// its buffer as soon as Apply returns; every node applies exactly the
// bytes the command held when Apply was called. The FSM must not change
// raft.Log.Data in place.
//
// An FSM that needs the time (leases, expiries) takes it from
// raft.Log.AppendedAt, which the leader stamps once and raftkit hands every
// node's FSM in one form, wall-clock time in UTC; never from time.Now, which
// differs between nodes and again when a node replays its log after a
// restart. raftkittest's ExampleWithState_expiringLeases is such an FSM.
//
// # Readiness and upgrades
//
// A node is ready ([RaftNode.Ready]) once it is a member with a known
// leader and has applied what its leader had committed when it first
// asked after starting, joining or being added back: before that its FSM
// may lack acknowledged writes. Leaving the configuration ends readiness.
// Nodes
// speak a versioned protocol on the node port ([ProtocolVersion]); a
// release runs in one cluster with the release before it, so a cluster is
// upgraded one node at a time.
//
// The HTTP side (admin handler, health, Prometheus metrics, the outcome's
// HTTP status) is package github.com/raftkit/raftkit/admin.
package raftkit

import (
	"context"
	"fmt"
	"net"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"

	"github.com/raftkit/raftkit/internal/peer"
	"github.com/raftkit/raftkit/internal/port"
)

// ProtocolVersion is the node protocol this build speaks on the node port:
// the version every connection's hello names. A node talks to nodes of its
// own protocol and of the one before, so a cluster can be upgraded one
// node at a time (see the README's "Upgrading"); Status reports what each
// peer speaks.
const ProtocolVersion = peer.Protocol

// modulePath is raftkit's module path, as build information names it.
const modulePath = "github.com/raftkit/raftkit"

// ModuleVersion returns the version of the raftkit module in the running
// program: a release tag (such as v0.10.0) or a pseudo-version when the
// program depends on raftkit, "(devel)" when raftkit is the program's own
// module (its examples and tests), "(devel) replaced by PATH" when a
// replace directive points the program at a local copy, or "unknown"
// without build information.
func ModuleVersion() string { return moduleVersion() }

var moduleVersion = sync.OnceValue(func() string { return versionIn(debug.ReadBuildInfo()) })

// versionIn finds raftkit's version in a program's build information.
func versionIn(bi *debug.BuildInfo, ok bool) string {
	if !ok || bi == nil {
		return "unknown"
	}
	if bi.Main.Path == modulePath {
		return bi.Main.Version
	}
	for _, d := range bi.Deps {
		if d.Path != modulePath {
			continue
		}
		switch r := d.Replace; {
		case r == nil:
			return d.Version
		case r.Version != "":
			return r.Version
		default:
			return "(devel) replaced by " + r.Path
		}
	}
	return "unknown"
}

// Defaults used when the corresponding Config field is zero.
const (
	// DefaultApplyTimeout bounds Apply when its context has no deadline.
	DefaultApplyTimeout = 3 * time.Second
	// DefaultLeaderJobGrace is how long a handover or Close waits for
	// RunWhileLeader's functions to return.
	DefaultLeaderJobGrace = 5 * time.Second
	// DefaultSnapshotRetain is how many snapshots are kept on disk.
	DefaultSnapshotRetain = 2
	// DefaultSnapshotThreshold is how many log entries since the last
	// snapshot make raft take a new one.
	DefaultSnapshotThreshold = 8192
	// DefaultSnapshotInterval is how often raft checks whether a snapshot
	// is due.
	DefaultSnapshotInterval = 120 * time.Second
	// DefaultTrailingLogBytes is how many bytes of log a node keeps behind
	// its latest snapshot for followers that fall behind.
	DefaultTrailingLogBytes = 64 << 20
	// DefaultSnapshotThresholdBytes is how many bytes of log, past the
	// trailing bytes, make a node take a snapshot and compact its log.
	DefaultSnapshotThresholdBytes = 256 << 20
)

// Command sizes. A follower decodes every entry it receives inside raft's
// AppendEntries requests, and hashicorp/raft's msgpack decoding grows a
// byte slice longer than 256 KiB in 256 KiB steps, copying what it has
// read at each step: for one entry the cost rises with the square of its
// size (BenchmarkDecodeAppendEntries, idle 2-core machine: 16 MiB took
// 162 ms and allocated 546 MB). raftkit therefore writes a larger command
// as consecutive entries of at most 256 KiB each, which a follower decodes
// with one allocation each (16 MiB: 4.7 ms, 17 MB), and the FSM receives it
// whole, once, at the index of its last entry; only while a peer does not
// confirm that it reads such entries (an older version) does a large
// command enter the log as one entry. See Config.MaxCommandSize.
const (
	// DefaultMaxCommandSize is Config.MaxCommandSize's default, 1 MiB.
	DefaultMaxCommandSize = 1 << 20
	// MaxCommandSizeLimit is the largest Config.MaxCommandSize: forwarded
	// commands travel in one message, and messages are capped at 64 MiB.
	MaxCommandSizeLimit = 64<<20 - 4096
)

// ConfigError describes one invalid Config field. It matches ErrInvalidConfig.
type ConfigError struct {
	// Field is the Config field at fault, e.g. "Peers[2]".
	Field string
	// Value is the offending value as given.
	Value string
	// Reason says what is wrong with it.
	Reason string
}

// Error names the field, the value and what is wrong.
func (e *ConfigError) Error() string {
	if e.Value == "" {
		return fmt.Sprintf("raftkit: invalid config: %s: %s", e.Field, e.Reason)
	}
	return fmt.Sprintf("raftkit: invalid config: %s %q: %s", e.Field, e.Value, e.Reason)
}

// Unwrap lets errors.Is(err, ErrInvalidConfig) match.
func (e *ConfigError) Unwrap() error { return ErrInvalidConfig }

func configErr(field, value, format string, args ...any) error {
	return &ConfigError{Field: field, Value: value, Reason: fmt.Sprintf(format, args...)}
}

// Config describes one node. The zero value of every field except Addr and
// Dir means the documented default; Dir may be empty only with InMemory or
// LogStoreMemory.
type Config struct {
	// ID is the node's stable identity in the cluster. Default: the
	// advertised address. It must not change across restarts.
	ID string

	// Addr is the host:port the node listens on for all node-to-node traffic.
	// A port of 0 picks a free port (useful with Join, not with Peers). With
	// InMemory it is the node's name on the Network and may be any non-empty
	// string.
	Addr string

	// Listener, if set, is the node's port, already bound to Addr (a
	// socket handed over by systemd's socket activation, say, or one a
	// test reserved with port 0 so that no other process can take the
	// port before the node starts); the node serves on it instead of
	// listening itself and closes it at Close. TCP only.
	Listener net.Listener

	// AdvertiseAddr is the host:port other nodes use to reach this one.
	// Default: Addr. Required when Addr binds an unspecified host such as
	// 0.0.0.0 or [::].
	AdvertiseAddr string

	// Dir holds raft.db (log and stable store) and snapshots/. It is created
	// if missing. Required unless InMemory or LogStore is LogStoreMemory.
	Dir string

	// Peers is the address list of the cluster's initial voters, used to
	// bootstrap a fresh cluster. Entries are "host:port" (ID = address) or
	// "id=host:port". Every initial node must be given the same list (in
	// any order), and it must contain this node. A fresh node bootstraps
	// only once a majority of the list has the same list, asking them over
	// the node port in the background (NewRaftNode does not wait); a node
	// whose list differs from its peers' refuses to bootstrap or to take
	// their log and reports an error matching ErrInvalidConfig. A node
	// that already has state ignores Peers (logging at INFO if they differ
	// from its configuration) and rejoins. Empty Peers means: do not
	// bootstrap; a fresh node then waits to be added (AddVoter or
	// AddNonvoter on a member) and, like a node that joined, is ready
	// once its configuration lists it and it has caught up.
	Peers []string

	// ApplyTimeout bounds Apply when its context has no deadline.
	// Default: DefaultApplyTimeout.
	ApplyTimeout time.Duration

	// FSMErrors lists the errors that the FSM returns and callers match, so
	// that Apply returns them with the same identity on every node (see
	// Apply). An error value, such as one made by errors.New, matches with
	// errors.Is; a typed nil pointer such as (*MyError)(nil) declares an
	// error type that errors.As can target, whose exported fields travel
	// msgpack-encoded. Every node must list the same errors. An FSM error
	// that matches none arrives as an *FSMError carrying its text.
	FSMErrors []error

	// ResultTypes lists types of FSM results that Apply returns as
	// themselves on every node, such as MyResult{} or (*MyResult)(nil):
	// their exported fields travel msgpack-encoded. Other results arrive
	// as msgpack carries them (see Apply). Every node must list the same
	// types.
	ResultTypes []any
	// MaxCommandSize is the largest command, in bytes, that Apply accepts;
	// larger ones fail with ErrTooLarge. Default: DefaultMaxCommandSize
	// (1 MiB); at most MaxCommandSizeLimit. Give every node of a cluster
	// the same value, since the leader applies its own limit to forwarded
	// commands.
	//
	// A command longer than 256 KiB is replicated in chunks: consecutive
	// log entries of at most 256 KiB each (see the comment on
	// DefaultMaxCommandSize for why), unless a peer does not confirm that
	// it reads chunks. The FSM sees no chunks: it receives the whole command once,
	// as one raft.Log whose Index and Term are those of the last chunk.
	// While a node's FSM holds part of such a command, it defers snapshots
	// (RaftNode.Snapshot and Backup wait); a membership change that lands
	// between two chunks leaves the command unapplied, and Apply submits
	// it again. Every node keeps a large command in memory whole while its
	// chunks arrive, and a forwarded one crosses the network in one message.
	MaxCommandSize int

	// SnapshotRetain is how many snapshots are kept. Default:
	// DefaultSnapshotRetain. Must be >= 1 when set.
	SnapshotRetain int

	// SnapshotThreshold is how many log entries since the last snapshot
	// trigger a new one. Default: DefaultSnapshotThreshold.
	SnapshotThreshold uint64

	// SnapshotInterval is how often raft checks whether to snapshot.
	// Default: DefaultSnapshotInterval.
	SnapshotInterval time.Duration

	// TrailingLogBytes bounds, in bytes, the log a node keeps behind its
	// latest snapshot, so that a follower a little behind catches up from
	// the log rather than from a snapshot. raft counts this in entries
	// (raft.Config.TrailingLogs, 10,240); raftkit lowers that count as
	// entries grow so that they fit in TrailingLogBytes, never below 64
	// entries. Default: DefaultTrailingLogBytes.
	TrailingLogBytes int64

	// SnapshotThresholdBytes makes a node snapshot and compact its log as
	// soon as the log holds more than TrailingLogBytes +
	// SnapshotThresholdBytes, without waiting for SnapshotInterval; raft's
	// SnapshotThreshold (in entries) still applies at each interval.
	// Together they bound the log on disk in bytes whatever the size of
	// the commands; see the README's "Disk use" for the whole bound.
	// Default: DefaultSnapshotThresholdBytes.
	SnapshotThresholdBytes int64

	// Logger receives raftkit's and raft's log lines as hclog key/value
	// pairs. Default: silent.
	Logger hclog.Logger

	// InMemory keeps the log, stable store and snapshots in memory and uses
	// an in-memory transport on Network instead of TCP. For tests: all state
	// is lost on Close.
	InMemory bool

	// Storage keeps an in-memory node's log, stable store and snapshots
	// outside the node, so a test can stop the node and start a new one on
	// the same state, as after a process crash. InMemory or LogStoreMemory
	// only. Default: a fresh storage per node.
	Storage *MemStorage

	// Join lists addresses of existing cluster members. A node without
	// state (and without Peers) asks them, in order, to add it as a voter;
	// a member that does not lead names the leader, and the node asks it.
	// The leader adds it as AddVoter does: as a non-voter first, promoted
	// once the leader sees that its log has caught up, so a request to the
	// leader may take the rest of JoinTimeout. A node with state joins again only if its configuration does not
	// contain it (it was removed, see ErrRemoved, or it stopped before it
	// received the configuration that added it); otherwise it is already a
	// member. Join and
	// Peers exclude each other.
	Join []string

	// JoinTimeout bounds how long a new node tries Join's members.
	// Default: DefaultJoinTimeout.
	JoinTimeout time.Duration

	// JoinContext, if set, also bounds the join: when it ends, NewRaftNode
	// stops asking Join's members and returns an error matching its
	// error. NewRaftNode returns once the node has been added; the node
	// is ready (WaitForLeader, GET health) once it has also applied what
	// the cluster had committed when it joined. Default: no bound other
	// than JoinTimeout.
	JoinContext context.Context

	// Network connects in-memory nodes to each other. Nodes must share one
	// Network to form a cluster. Default (InMemory only): a private network,
	// enough for a single node.
	Network *MemNetwork

	// Metrics, if set, receives this node's measurements: apply and
	// read-barrier latency, forwarded writes, leader changes, FSM errors,
	// and its indexes when the sink reports them. Package prom's Metrics
	// (github.com/raftkit/raftkit/prom) exports them (and raft's own) to
	// Prometheus. Default: none.
	Metrics MetricsSink

	// TLS, if set, turns on mutual TLS for all node-to-node traffic; see
	// TLSConfig. Without it, traffic is plain TCP and anyone who can reach
	// the port can speak raft to the node: run such a cluster only on a
	// trusted network.
	TLS *TLSConfig

	// JoinSecret, if set, must be presented by every membership request
	// (join, add, remove, transfer) this node receives, and is presented by
	// this node's own. All members share the same secret. It guards
	// membership on clusters without TLS; it does not make the raft port
	// safe on an untrusted network. With TLS, membership requires an
	// accepted certificate in any case.
	JoinSecret string

	// Timing picks raft's timeouts for the network the cluster runs on:
	// TimingLAN, TimingLocal, TimingDefault (hashicorp/raft's own) or
	// TimingWAN. The zero value, TimingAuto, is TimingLAN for in-memory
	// nodes, TimingLocal for clusters whose addresses are all loopback (one
	// machine), and TimingDefault otherwise. See Timing.
	Timing Timing

	// LeaderJobGrace is how long a leader that hands leadership over
	// (TransferLeadership, Leave, Close) waits for the functions that
	// RunWhileLeader runs to return after their contexts are cancelled,
	// before it hands over anyway. Until the handover no other node can
	// lead, so a job that finishes within the grace never overlaps its
	// successor. Default: DefaultLeaderJobGrace. A TransferLeadership whose
	// context ends first waits only until then.
	LeaderJobGrace time.Duration

	// LogStore picks the log and stable store: LogStoreBolt (the zero
	// value, raft.db in Dir), LogStoreWAL (hashicorp/raft-wal in Dir/wal),
	// or LogStoreMemory (Storage, over TCP; see its data-loss rules). A
	// data directory keeps the store it was created with;
	// opening it with the other one fails with a *ConfigError for LogStore.
	// Ignored by in-memory nodes.
	LogStore LogStoreKind

	// RaftConfig, if set, is called with the raft.Config that raftkit built
	// (timeouts, snapshot settings, logger, LocalID) just before the node
	// starts, and may change any of it. raft.ValidateConfig still applies.
	// LocalID must not be changed.
	RaftConfig func(*raft.Config)
}

// peerAddr is one entry of the bootstrap list.
type peerAddr struct {
	ID   string
	Addr string
}

// settled is a Config with defaults filled in and addresses parsed. settle
// builds it from small validators, each checking one concern and returning
// its resolved value; nothing changes a settled afterwards. What is known
// only once the node runs makes a new one (bound, withLogger).
type settled struct {
	Config
	codecs    *codecs
	advertise string
	peers     []peerAddr
	tls       *port.TLS
	// peersErr is Peers' problem for a node without state: the list does
	// not name this node as it is. A node with state ignores Peers.
	peersErr error
	// idIsAddr is true when ID defaulted to the advertised address, so
	// that resolving port 0 changes both.
	idIsAddr bool
}

// Validate reports the first problem in c, as a *ConfigError matching
// ErrInvalidConfig. It does not touch the network and does not look in
// Dir, so it checks Peers as for a new node, which must be in the list; it
// reads TLS files if TLS is set.
func (c Config) Validate() error {
	s, err := c.settle()
	if err != nil {
		return err
	}
	return s.peersErr
}

// settle validates c and resolves its defaults. Each validator checks the
// fields of one concern and returns their resolved value; a new setting is
// one more validator and one more line here.
func (c Config) settle() (*settled, error) {
	var err error
	if c, err = settleCommandSize(c); err != nil {
		return nil, err
	}
	if c, err = settleTiming(c); err != nil {
		return nil, err
	}
	if c.Logger == nil {
		c.Logger = hclog.NewNullLogger()
	}
	if c, err = settleNetwork(c); err != nil {
		return nil, err
	}
	addr, err := settleAddress(c)
	if err != nil {
		return nil, err
	}
	if c, err = settleStores(c); err != nil {
		return nil, err
	}
	peers, err := settlePeers(c, addr)
	if err != nil {
		return nil, err
	}
	if err := checkJoin(c, peers.list); err != nil {
		return nil, err
	}
	// The fields whose values other files own come last: the registered
	// result and error types, and the TLS files.
	codecs, err := newCodecs(c.ResultTypes, c.FSMErrors)
	if err != nil {
		return nil, err
	}
	ts, err := settleTLS(c.TLS, c.Logger)
	if err != nil {
		return nil, err
	}
	c.ID = peers.id
	return &settled{
		Config:    c,
		codecs:    codecs,
		advertise: addr.advertise,
		peers:     peers.list,
		peersErr:  peers.err,
		tls:       ts,
		idIsAddr:  c.ID == addr.advertise && addr.idIsAddr,
	}, nil
}

// bound returns s as it is once its port is bound, advertised at
// advertise: with port 0 in Addr and no AdvertiseAddr, the advertised
// address, and an ID that defaulted to it, take the port the OS chose. s
// itself is not changed.
func (s *settled) bound(advertise string) *settled {
	if advertise == s.advertise {
		return s
	}
	b := *s
	b.advertise = advertise
	if s.idIsAddr {
		b.ID = advertise
	}
	return &b
}

// withLogger returns s with l as its logger.
func (s *settled) withLogger(l hclog.Logger) *settled {
	c := *s
	c.Logger = l
	return &c
}

// settleTiming checks the durations and the timing profile and fills in
// their defaults.
// settleCommandSize defaults and checks MaxCommandSize.
func settleCommandSize(c Config) (Config, error) {
	if c.MaxCommandSize < 0 || c.MaxCommandSize > MaxCommandSizeLimit {
		return c, configErr("MaxCommandSize", strconv.Itoa(c.MaxCommandSize), "must be from 1 to MaxCommandSizeLimit (%d) bytes, or 0 for the default", MaxCommandSizeLimit)
	}
	if c.MaxCommandSize == 0 {
		c.MaxCommandSize = DefaultMaxCommandSize
	}
	return c, nil
}

func settleTiming(c Config) (Config, error) {
	if c.ApplyTimeout < 0 {
		return c, configErr("ApplyTimeout", c.ApplyTimeout.String(), "must not be negative")
	}
	if c.ApplyTimeout == 0 {
		c.ApplyTimeout = DefaultApplyTimeout
	}
	if c.SnapshotInterval < 0 {
		return c, configErr("SnapshotInterval", c.SnapshotInterval.String(), "must not be negative")
	}
	if c.SnapshotInterval == 0 {
		c.SnapshotInterval = DefaultSnapshotInterval
	}
	if c.JoinTimeout < 0 {
		return c, configErr("JoinTimeout", c.JoinTimeout.String(), "must not be negative")
	}
	if c.JoinTimeout == 0 {
		c.JoinTimeout = DefaultJoinTimeout
	}
	if c.LeaderJobGrace < 0 {
		return c, configErr("LeaderJobGrace", c.LeaderJobGrace.String(), "must not be negative")
	}
	if c.LeaderJobGrace == 0 {
		c.LeaderJobGrace = DefaultLeaderJobGrace
	}
	if c.Timing < TimingAuto || c.Timing > TimingLocal {
		return c, configErr("Timing", "Timing("+strconv.Itoa(int(c.Timing))+")", "is not one of TimingAuto, TimingLAN, TimingLocal, TimingDefault, TimingWAN")
	}
	return c, nil
}

// settleNetwork checks that only an in-memory node has a MemNetwork and
// gives it a private one by default.
func settleNetwork(c Config) (Config, error) {
	if !c.InMemory {
		if c.Network != nil {
			return c, configErr("Network", "", "only in-memory nodes use a MemNetwork; set InMemory or leave Network nil")
		}
		return c, nil
	}
	if c.Network == nil {
		c.Network = NewMemNetwork()
	}
	return c, nil
}

// nodeAddress is how the other nodes reach this one, and its ID before
// Peers may name it.
type nodeAddress struct {
	advertise string
	id        string
	idIsAddr  bool // id defaulted to advertise
}

// settleAddress checks Addr, AdvertiseAddr and ID.
func settleAddress(c Config) (nodeAddress, error) {
	var a nodeAddress
	if c.InMemory {
		if strings.TrimSpace(c.Addr) == "" || strings.ContainsAny(c.Addr, " \t\n=") {
			return a, configErr("Addr", c.Addr, "an in-memory node needs a non-empty name without spaces or '='")
		}
		if c.AdvertiseAddr != "" && c.AdvertiseAddr != c.Addr {
			return a, configErr("AdvertiseAddr", c.AdvertiseAddr, "in-memory nodes are reached at Addr; leave AdvertiseAddr empty")
		}
		a.advertise = c.Addr
	} else {
		host, port, err := splitHostPort("Addr", c.Addr)
		if err != nil {
			return a, err
		}
		a.advertise = c.Addr
		if c.AdvertiseAddr != "" {
			ahost, aport, err := splitHostPort("AdvertiseAddr", c.AdvertiseAddr)
			if err != nil {
				return a, err
			}
			if isUnspecifiedHost(ahost) {
				return a, configErr("AdvertiseAddr", c.AdvertiseAddr, "must be an address other nodes can reach, not a wildcard")
			}
			if aport == "0" {
				return a, configErr("AdvertiseAddr", c.AdvertiseAddr, "needs an explicit port")
			}
			a.advertise = c.AdvertiseAddr
		} else if isUnspecifiedHost(host) {
			return a, configErr("AdvertiseAddr", "", "required when Addr %q binds all interfaces: other nodes need an address they can reach", c.Addr)
		}
		if port == "0" && len(c.Peers) > 0 && c.AdvertiseAddr == "" {
			return a, configErr("Addr", c.Addr, "port 0 cannot be combined with Peers: the other nodes need to know this node's port in advance; to let the system pick it, bind the listener yourself and pass it as Config.Listener, with its address in Addr and in every node's Peers")
		}
	}
	if c.ID == "" {
		a.id, a.idIsAddr = a.advertise, true
		return a, nil
	}
	if strings.TrimSpace(c.ID) != c.ID || strings.ContainsAny(c.ID, "=\n") {
		return a, configErr("ID", c.ID, "must not contain '=', newlines or surrounding spaces")
	}
	a.id = c.ID
	return a, nil
}

// peerSet is the parsed bootstrap list as it concerns this node.
type peerSet struct {
	list []peerAddr
	id   string // the node's ID, which an "id=addr" entry may give
	err  error  // see settled.peersErr
}

// settlePeers parses Peers and checks that they name this node as it is.
func settlePeers(c Config, a nodeAddress) (peerSet, error) {
	ps := peerSet{id: a.id}
	list, err := parsePeers(c.Peers, c.InMemory)
	if err != nil || len(list) == 0 {
		return ps, err
	}
	ps.list = list
	if c.ID == "" {
		// "id=addr" in Peers names this node when Config.ID is empty.
		for _, p := range list {
			if p.Addr == a.advertise {
				ps.id = p.ID
			}
		}
	}
	found := false
	for _, p := range list {
		if p.Addr == a.advertise || (p.ID == ps.id && c.ID != "") {
			if (p.Addr != a.advertise || p.ID != ps.id) && ps.err == nil {
				ps.err = configErr("Peers", strings.Join(c.Peers, ","),
					"lists this node as %s=%s but the node is %s=%s", p.ID, p.Addr, ps.id, a.advertise)
			}
			found = true
		}
	}
	if !found {
		ps.err = configErr("Peers", strings.Join(c.Peers, ","), "does not contain this node's address %q", a.advertise)
	}
	return ps, nil
}

// checkJoin checks Join's entries and that Join and Peers are not both set.
func checkJoin(c Config, peers []peerAddr) error {
	if len(c.Join) > 0 && len(peers) > 0 {
		return configErr("Join", strings.Join(c.Join, ","), "cannot be combined with Peers: bootstrap a new cluster with Peers, or join an existing one with Join")
	}
	for i, a := range c.Join {
		if strings.TrimSpace(a) == "" {
			return configErr(fmt.Sprintf("Join[%d]", i), a, "is empty")
		}
		if !c.InMemory {
			if _, _, err := splitHostPort(fmt.Sprintf("Join[%d]", i), a); err != nil {
				return err
			}
		}
	}
	return nil
}

// splitHostPort checks that addr is host:port with a valid port.
func splitHostPort(field, addr string) (host, port string, err error) {
	if strings.TrimSpace(addr) == "" {
		return "", "", configErr(field, addr, "required: a host:port such as 127.0.0.1:7000")
	}
	host, port, err = net.SplitHostPort(addr)
	if err != nil {
		return "", "", configErr(field, addr, "is not host:port: %v", err)
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 0 || n > 65535 {
		return "", "", configErr(field, addr, "port %q is not a number from 0 to 65535", port)
	}
	if host != "" && strings.ContainsAny(host, " \t/") {
		return "", "", configErr(field, addr, "host %q is not a host name or IP address", host)
	}
	return host, port, nil
}

func isUnspecifiedHost(host string) bool {
	if host == "" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsUnspecified()
}

// parsePeers reads "addr" and "id=addr" entries and rejects duplicates.
func parsePeers(list []string, inMemory bool) ([]peerAddr, error) {
	var out []peerAddr
	ids := map[string]int{}
	addrs := map[string]int{}
	for i, entry := range list {
		field := fmt.Sprintf("Peers[%d]", i)
		entry = strings.TrimSpace(entry)
		p := peerAddr{Addr: entry}
		if id, addr, ok := strings.Cut(entry, "="); ok {
			p = peerAddr{ID: strings.TrimSpace(id), Addr: strings.TrimSpace(addr)}
			if p.ID == "" {
				return nil, configErr(field, entry, "has an empty ID before '='")
			}
		}
		if inMemory {
			if p.Addr == "" || strings.ContainsAny(p.Addr, " \t") {
				return nil, configErr(field, entry, "needs a non-empty address")
			}
		} else {
			host, port, err := splitHostPort(field, p.Addr)
			if err != nil {
				return nil, err
			}
			if isUnspecifiedHost(host) || port == "0" {
				return nil, configErr(field, entry, "must be a reachable host:port, not a wildcard host or port 0")
			}
		}
		if p.ID == "" {
			p.ID = p.Addr
		}
		if j, dup := ids[p.ID]; dup {
			return nil, configErr(field, entry, "repeats ID %q of Peers[%d]", p.ID, j)
		}
		if j, dup := addrs[p.Addr]; dup {
			return nil, configErr(field, entry, "repeats address %q of Peers[%d]", p.Addr, j)
		}
		ids[p.ID], addrs[p.Addr] = i, i
		out = append(out, p)
	}
	return out, nil
}
