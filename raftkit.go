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
// # Outcomes of a write
//
// A write acknowledged by [RaftNode.Apply] (nil error, or the FSM's own error)
// is committed to a majority and survives any minority of crashes. A write that
// fails with an error matching [ErrUnknownOutcome] (a timeout, a cancelled
// context, a lost leadership, a connection lost after sending) may or may not
// have been applied: raftkit never retries it. Errors matching
// [raft.ErrNotLeader], [ErrNoLeader] or [ErrClosed] mean the write was not
// applied.
package raftkit

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
)

// Defaults used when the corresponding Config field is zero.
const (
	// DefaultApplyTimeout bounds Apply when its context has no deadline.
	DefaultApplyTimeout = 3 * time.Second
	// DefaultSnapshotRetain is how many snapshots are kept on disk.
	DefaultSnapshotRetain = 2
	// DefaultSnapshotThreshold is how many log entries since the last
	// snapshot make raft take a new one.
	DefaultSnapshotThreshold = 8192
	// DefaultSnapshotInterval is how often raft checks whether a snapshot
	// is due.
	DefaultSnapshotInterval = 120 * time.Second
)

var (
	// ErrInvalidConfig is matched by every error that Config.Validate and
	// NewRaftNode return for bad input. Use errors.As with *ConfigError to
	// learn the field at fault.
	ErrInvalidConfig = errors.New("raftkit: invalid config")

	// ErrDataDirLocked is returned when another process, or another node in
	// this process, holds the data directory's raft.db open.
	ErrDataDirLocked = errors.New("raftkit: data directory is locked by another node")

	// ErrCorruptStore is returned when raft.db or the snapshots in the data
	// directory cannot be trusted (truncated, damaged, or inconsistent with
	// each other). raftkit never starts such a node with empty state.
	ErrCorruptStore = errors.New("raftkit: data directory is damaged")

	// ErrClosed is returned by calls on a node that has been closed. A write
	// that returns ErrClosed before it was submitted was not applied; one
	// cut short by Close returns ErrUnknownOutcome as well.
	ErrClosed = errors.New("raftkit: node is closed")

	// ErrNoLeader is returned when the cluster has no known leader to serve
	// or forward a request. The request was not applied; it is safe to
	// retry once a leader is known (see RaftNode.WaitForLeader).
	ErrNoLeader = errors.New("raftkit: no known leader")

	// ErrUnknownOutcome is matched by write errors after which raftkit cannot
	// tell whether the write was applied: its deadline passed, its context was
	// cancelled, leadership was lost, or the connection to the leader broke
	// after the command was sent. raftkit never retries such a write; the
	// caller must check the state (or use idempotent commands) before trying
	// again. The error also matches its cause (context.DeadlineExceeded,
	// raft.ErrLeadershipLost, ...).
	ErrUnknownOutcome = errors.New("raftkit: outcome of the write is unknown")

	// ErrTooLarge is returned for a command larger than
	// Config.MaxCommandSize; it was not applied.
	ErrTooLarge = errors.New("raftkit: command too large")
)

// Command sizes. A follower must decode every command it receives inside
// raft's AppendEntries requests, and hashicorp/raft's msgpack decoding of
// one entry grows its buffer in fixed steps, so its cost rises faster than
// the size (BenchmarkDecodeAppendEntries, one entry, idle 2-core machine):
//
//	size    decode   allocated
//	1 MiB   2.9 ms     2.9 MB
//	4 MiB    16 ms      36 MB
//	8 MiB    44 ms     139 MB
//	16 MiB  116 ms     546 MB
//	64 MiB  1.6 s      8.6 GB
//
// and raft sends up to 64 entries in one request. On a busy machine the
// allocation churn stalls the whole process (the 16 MiB figure became
// 465 ms there), long enough to lose leader leases.
const (
	// DefaultMaxCommandSize is Config.MaxCommandSize's default, 1 MiB:
	// decoding such a command costs a follower about 3 ms.
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
// Dir means the documented default; Dir may be empty only with InMemory.
type Config struct {
	// ID is the node's stable identity in the cluster. Default: the
	// advertised address. It must not change across restarts.
	ID string

	// Addr is the host:port the node listens on for all node-to-node traffic.
	// A port of 0 picks a free port (useful with Join, not with Peers). With
	// InMemory it is the node's name on the Network and may be any non-empty
	// string.
	Addr string

	// AdvertiseAddr is the host:port other nodes use to reach this one.
	// Default: Addr. Required when Addr binds an unspecified host such as
	// 0.0.0.0 or [::].
	AdvertiseAddr string

	// Dir holds raft.db (log and stable store) and snapshots/. It is created
	// if missing. Required unless InMemory.
	Dir string

	// Peers is the address list of the cluster's initial voters, used to
	// bootstrap a fresh cluster. Entries are "host:port" (ID = address) or
	// "id=host:port". Every initial node may be given the same list; it must
	// contain this node. A node that already has state ignores Peers and
	// rejoins. Empty Peers means: do not bootstrap.
	Peers []string

	// ApplyTimeout bounds Apply when its context has no deadline.
	// Default: DefaultApplyTimeout.
	ApplyTimeout time.Duration

	// MaxCommandSize is the largest command, in bytes, that Apply accepts;
	// larger ones fail with ErrTooLarge. Default: DefaultMaxCommandSize
	// (1 MiB); at most MaxCommandSizeLimit. Larger commands cost followers
	// more than proportionally to decode (see DefaultMaxCommandSize); give
	// every node of a cluster the same value, since the leader applies its
	// own limit to forwarded commands.
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

	// Logger receives raftkit's and raft's log lines as hclog key/value
	// pairs. Default: silent.
	Logger hclog.Logger

	// InMemory keeps the log, stable store and snapshots in memory and uses
	// an in-memory transport on Network instead of TCP. For tests: all state
	// is lost on Close.
	InMemory bool

	// Storage keeps an in-memory node's log, stable store and snapshots
	// outside the node, so a test can stop the node and start a new one on
	// the same state, as after a process crash. InMemory only. Default: a
	// fresh storage per node.
	Storage *MemStorage

	// Join lists addresses of existing cluster members. A node without
	// state (and without Peers) asks them, in order, to add it as a voter;
	// any member forwards the request to the leader. A node with state
	// never joins again: it is already a member. Join and Peers exclude
	// each other.
	Join []string

	// JoinTimeout bounds how long a new node tries Join's members.
	// Default: DefaultJoinTimeout.
	JoinTimeout time.Duration

	// Network connects in-memory nodes to each other. Nodes must share one
	// Network to form a cluster. Default (InMemory only): a private network,
	// enough for a single node.
	Network *MemNetwork

	// Metrics, if set, receives this node's raftkit metrics (apply and
	// read-barrier latency, forwarded writes, leader changes, FSM errors,
	// and its indexes at scrape time), labelled with the node's ID. Register
	// it with a Prometheus registry; see Metrics for raft's own metrics.
	// Default: none.
	Metrics *Metrics

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
	// TimingLAN, TimingDefault (hashicorp/raft's own) or TimingWAN. The
	// zero value, TimingAuto, is TimingLAN for in-memory and all-loopback
	// clusters and TimingDefault otherwise. See Timing.
	Timing Timing

	// LogStore picks the on-disk log and stable store: LogStoreBolt (the
	// zero value, raft.db in Dir) or LogStoreWAL (hashicorp/raft-wal in
	// Dir/wal). A data directory keeps the store it was created with;
	// opening it with the other one fails with a *ConfigError for LogStore.
	// Ignored by in-memory nodes.
	LogStore LogStoreKind

	// RaftConfig, if set, is called with the raft.Config that raftkit built
	// (timeouts, snapshot settings, logger, LocalID) just before the node
	// starts, and may change any of it. raft.ValidateConfig still applies.
	// LocalID must not be changed.
	RaftConfig func(*raft.Config)
}

// peer is one entry of the bootstrap list.
type peer struct {
	ID   string
	Addr string
}

// settled is a Config with defaults filled in and addresses parsed.
type settled struct {
	Config
	advertise string
	peers     []peer
	tls       *tlsState
}

// Validate reports the first problem in c, as a *ConfigError matching
// ErrInvalidConfig. It does not touch the network; it reads TLS files if
// TLS is set.
func (c Config) Validate() error {
	_, err := c.settle()
	return err
}

func (c Config) settle() (*settled, error) {
	s := &settled{Config: c}
	if c.ApplyTimeout < 0 {
		return nil, configErr("ApplyTimeout", c.ApplyTimeout.String(), "must not be negative")
	}
	if s.ApplyTimeout == 0 {
		s.ApplyTimeout = DefaultApplyTimeout
	}
	if c.MaxCommandSize < 0 || c.MaxCommandSize > MaxCommandSizeLimit {
		return nil, configErr("MaxCommandSize", strconv.Itoa(c.MaxCommandSize), "must be from 1 to MaxCommandSizeLimit (%d) bytes, or 0 for the default", MaxCommandSizeLimit)
	}
	if s.MaxCommandSize == 0 {
		s.MaxCommandSize = DefaultMaxCommandSize
	}
	if c.SnapshotRetain < 0 {
		return nil, configErr("SnapshotRetain", strconv.Itoa(c.SnapshotRetain), "must be at least 1")
	}
	if s.SnapshotRetain == 0 {
		s.SnapshotRetain = DefaultSnapshotRetain
	}
	if s.SnapshotThreshold == 0 {
		s.SnapshotThreshold = DefaultSnapshotThreshold
	}
	if c.SnapshotInterval < 0 {
		return nil, configErr("SnapshotInterval", c.SnapshotInterval.String(), "must not be negative")
	}
	if s.SnapshotInterval == 0 {
		s.SnapshotInterval = DefaultSnapshotInterval
	}
	if c.JoinTimeout < 0 {
		return nil, configErr("JoinTimeout", c.JoinTimeout.String(), "must not be negative")
	}
	if s.JoinTimeout == 0 {
		s.JoinTimeout = DefaultJoinTimeout
	}
	if s.Logger == nil {
		s.Logger = hclog.NewNullLogger()
	}
	if err := validateTiming(c.Timing); err != nil {
		return nil, err
	}
	if err := validateLogStore(c.LogStore); err != nil {
		return nil, err
	}

	if c.InMemory {
		if strings.TrimSpace(c.Addr) == "" || strings.ContainsAny(c.Addr, " \t\n=") {
			return nil, configErr("Addr", c.Addr, "an in-memory node needs a non-empty name without spaces or '='")
		}
		s.advertise = c.Addr
		if c.AdvertiseAddr != "" && c.AdvertiseAddr != c.Addr {
			return nil, configErr("AdvertiseAddr", c.AdvertiseAddr, "in-memory nodes are reached at Addr; leave AdvertiseAddr empty")
		}
		if s.Network == nil {
			s.Network = NewMemNetwork()
		}
		if s.Storage == nil {
			s.Storage = NewMemStorage()
		}
	} else {
		if c.Network != nil {
			return nil, configErr("Network", "", "only in-memory nodes use a MemNetwork; set InMemory or leave Network nil")
		}
		if c.Storage != nil {
			return nil, configErr("Storage", "", "only in-memory nodes use a MemStorage; set InMemory or leave Storage nil")
		}
		host, port, err := splitHostPort("Addr", c.Addr)
		if err != nil {
			return nil, err
		}
		s.advertise = c.Addr
		if c.AdvertiseAddr != "" {
			ahost, aport, err := splitHostPort("AdvertiseAddr", c.AdvertiseAddr)
			if err != nil {
				return nil, err
			}
			if isUnspecifiedHost(ahost) {
				return nil, configErr("AdvertiseAddr", c.AdvertiseAddr, "must be an address other nodes can reach, not a wildcard")
			}
			if aport == "0" {
				return nil, configErr("AdvertiseAddr", c.AdvertiseAddr, "needs an explicit port")
			}
			s.advertise = c.AdvertiseAddr
		} else if isUnspecifiedHost(host) {
			return nil, configErr("AdvertiseAddr", "", "required when Addr %q binds all interfaces: other nodes need an address they can reach", c.Addr)
		}
		if port == "0" && len(c.Peers) > 0 && c.AdvertiseAddr == "" {
			return nil, configErr("Addr", c.Addr, "port 0 cannot be combined with Peers: the other nodes need to know this node's port in advance")
		}
		if strings.TrimSpace(c.Dir) == "" {
			return nil, configErr("Dir", c.Dir, "required (or set InMemory for a node without disk)")
		}
		if fi, err := os.Stat(c.Dir); err == nil && !fi.IsDir() {
			return nil, configErr("Dir", c.Dir, "is a file, not a directory")
		}
		s.Dir = filepath.Clean(c.Dir)
	}
	if s.ID == "" {
		s.ID = s.advertise
	} else if strings.TrimSpace(s.ID) != s.ID || strings.ContainsAny(s.ID, "=\n") {
		return nil, configErr("ID", c.ID, "must not contain '=', newlines or surrounding spaces")
	}

	peers, err := parsePeers(c.Peers, c.InMemory)
	if err != nil {
		return nil, err
	}
	if len(peers) > 0 {
		if c.ID == "" {
			// "id=addr" in Peers names this node when Config.ID is empty.
			for _, p := range peers {
				if p.Addr == s.advertise {
					s.ID = p.ID
				}
			}
		}
		found := false
		for _, p := range peers {
			if p.Addr == s.advertise || (p.ID == s.ID && c.ID != "") {
				if p.Addr != s.advertise || p.ID != s.ID {
					return nil, configErr("Peers", strings.Join(c.Peers, ","),
						"lists this node as %s=%s but the node is %s=%s", p.ID, p.Addr, s.ID, s.advertise)
				}
				found = true
			}
		}
		if !found {
			return nil, configErr("Peers", strings.Join(c.Peers, ","), "does not contain this node's address %q", s.advertise)
		}
	}
	s.peers = peers
	if len(c.Join) > 0 && len(peers) > 0 {
		return nil, configErr("Join", strings.Join(c.Join, ","), "cannot be combined with Peers: bootstrap a new cluster with Peers, or join an existing one with Join")
	}
	if c.TLS != nil {
		ts, err := validateTLS(c.TLS)
		if err != nil {
			return nil, err
		}
		s.tls = ts
	}
	for i, a := range c.Join {
		if strings.TrimSpace(a) == "" {
			return nil, configErr(fmt.Sprintf("Join[%d]", i), a, "is empty")
		}
		if !c.InMemory {
			if _, _, err := splitHostPort(fmt.Sprintf("Join[%d]", i), a); err != nil {
				return nil, err
			}
		}
	}
	return s, nil
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
func parsePeers(list []string, inMemory bool) ([]peer, error) {
	var out []peer
	ids := map[string]int{}
	addrs := map[string]int{}
	for i, entry := range list {
		field := fmt.Sprintf("Peers[%d]", i)
		entry = strings.TrimSpace(entry)
		p := peer{Addr: entry}
		if id, addr, ok := strings.Cut(entry, "="); ok {
			p = peer{ID: strings.TrimSpace(id), Addr: strings.TrimSpace(addr)}
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
