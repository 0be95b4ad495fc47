package raftkit

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"

	"github.com/raftkit/raftkit/internal/peer"
	"github.com/raftkit/raftkit/internal/port"
	"github.com/raftkit/raftkit/internal/store"
)

// Bootstrap agreement.
//
// raft's log matching holds only if every node of a cluster bootstrapped
// the same first configuration. A fresh node with Peers therefore does not
// bootstrap at once: NewRaftNode starts it undecided, and a goroutine asks
// the other nodes of its list, over the node's port, for theirs
// (peer.MethodBootstrap). The node bootstraps when a majority of its list
// holds exactly its list (compared by digest) and no rival list has as much
// support; it joins without bootstrapping when a node of its list already
// belongs to a cluster bootstrapped with the same list; it refuses for good
// when a node of its list belongs to a cluster with another list. Until it
// has decided, and forever after a refusal, its port turns away all raft
// traffic, so it cannot accept a log whose first configuration differs from
// its own list.
//
// A node that decided records its cluster's list in its stable store
// (bootstrapKey) and sends the list's digest ahead of its raft traffic
// (port.TagRaftCluster); a node refuses raft traffic from a cluster with another
// digest. A node with state from before raftkit recorded the list, or that
// joined with Join, sends none and accepts any.

// bootstrapKey is the stable-store key holding the canonical list that the
// node's cluster was bootstrapped with.
var bootstrapKey = []byte("raftkit.bootstrap_peers")

const (
	// agreementProbeTimeout bounds one round of asking the peers.
	agreementProbeTimeout = time.Second
	// agreementMinDelay and agreementMaxDelay bound the pause between
	// rounds.
	agreementMinDelay = 50 * time.Millisecond
	agreementMaxDelay = time.Second
)

// digestOf identifies a bootstrap list: SHA-256 of its canonical form.
func digestOf(list []string) port.Digest {
	return sha256.Sum256([]byte(strings.Join(list, "\n")))
}

// canonicalPeers returns peers as "id=addr" entries, sorted: the form
// that nodes compare and that raftkit bootstraps, so that two nodes given
// the same list in another order write the same first entry.
func canonicalPeers(peers []peerAddr) []string {
	out := make([]string, 0, len(peers))
	for _, p := range peers {
		out = append(out, p.ID+"="+p.Addr)
	}
	slices.Sort(out)
	return out
}

// configurationOf is the raft configuration of a canonical list: all voters.
func configurationOf(list []string) raft.Configuration {
	var conf raft.Configuration
	for _, e := range list {
		id, addr, _ := strings.Cut(e, "=")
		conf.Servers = append(conf.Servers, raft.Server{Suffrage: raft.Voter, ID: raft.ServerID(id), Address: raft.ServerAddress(addr)})
	}
	return conf
}

// serverEntries is a configuration as "id=addr" entries, sorted.
func serverEntries(conf raft.Configuration) []string {
	out := make([]string, 0, len(conf.Servers))
	for _, s := range conf.Servers {
		out = append(out, string(s.ID)+"="+string(s.Address))
	}
	slices.Sort(out)
	return out
}

// clusterGate is what a node knows about the cluster it belongs to, and
// the agreement that decides it for a fresh node with Peers.
type clusterGate struct {
	logger    hclog.Logger
	id, addr  string
	own       []string // canonical Peers; nil without Peers
	ownDigest port.Digest
	stable    raft.StableStore

	mu       sync.Mutex
	pending  bool          // deciding: raft traffic waits
	decided  chan struct{} // closed when pending ends
	known    bool          // list is this node's cluster's bootstrap list
	list     []string
	digest   port.Digest
	refused  error // for good, until restarted with other Peers
	conflict error // an undecided peer holds another list
	support  int   // nodes holding own, as last seen
	// outside is the configuration of the cluster this node found
	// bootstrapped with its list but not containing it; nil otherwise.
	outside []string
	logged  map[string]bool

	stop     chan struct{}
	stopOnce sync.Once
	wg       sync.WaitGroup
}

// newClusterGate loads what the node knows of its cluster. A node without
// state and with more than one peer starts undecided.
func newClusterGate(s *settled, stable raft.StableStore, logs raft.LogStore, hasState bool) *clusterGate {
	g := &clusterGate{
		logger:  s.Logger.Named("raftkit"),
		id:      s.ID,
		addr:    s.advertise,
		stable:  stable,
		support: 1,
		logged:  map[string]bool{},
		decided: make(chan struct{}),
		stop:    make(chan struct{}),
	}
	if len(s.peers) > 0 {
		g.own = canonicalPeers(s.peers)
		g.ownDigest = digestOf(g.own)
	}
	switch {
	case hasState:
		if list := recordedCluster(stable, logs); len(list) > 0 {
			g.setKnown(list)
		}
	case len(g.own) > 1:
		g.pending = true
	}
	if !g.pending {
		close(g.decided)
	}
	return g
}

// recordedCluster returns the list recorded in the stable store or, for
// state from before it was recorded, the first configuration in the log
// (then recorded), or nil.
func recordedCluster(stable raft.StableStore, logs raft.LogStore) []string {
	if b, err := stable.Get(bootstrapKey); err == nil && len(b) > 0 {
		return strings.Split(string(b), "\n")
	}
	var first raft.Log
	if err := logs.GetLog(1, &first); err != nil || first.Type != raft.LogConfiguration {
		return nil
	}
	list := serverEntries(raft.DecodeConfiguration(first.Data))
	_ = stable.Set(bootstrapKey, []byte(strings.Join(list, "\n")))
	return list
}

// setKnown makes list this node's cluster's list; g.mu held or unshared.
func (g *clusterGate) setKnown(list []string) {
	g.known = true
	g.list, g.digest = list, digestOf(list)
	g.conflict = nil
	g.endPending()
}

// endPending ends the undecided state; g.mu held or unshared.
func (g *clusterGate) endPending() {
	if g.pending {
		g.pending = false
		close(g.decided)
	}
}

// bootstrapNow bootstraps a one-node list without asking anyone: nobody
// else can disagree with it.
func (g *clusterGate) bootstrapNow(rc *raft.Config, st *store.Stores, trans raft.Transport) error {
	if err := g.stable.Set(bootstrapKey, []byte(strings.Join(g.own, "\n"))); err != nil {
		return fmt.Errorf("raftkit: record bootstrap list: %w", err)
	}
	if err := raft.BootstrapCluster(rc, st.Log, st.Stable, st.Snaps, trans, configurationOf(g.own)); err != nil {
		return fmt.Errorf("raftkit: bootstrap with Peers %v: %w", g.own, err)
	}
	g.setKnown(g.own)
	g.logger.Info("bootstrapped single-node cluster", "id", g.id)
	return nil
}

// Admit decides whether a raft connection from remote, whose cluster has
// digest d (zero: not said), may reach raft. While the node is undecided
// the connection waits (up to raft's I/O timeout), so that a peer's vote
// request or heartbeat is not lost to a node about to agree.
func (g *clusterGate) Admit(remote string, d port.Digest) bool {
	t := time.NewTimer(port.RaftIOTimeout)
	defer t.Stop()
	select {
	case <-g.decided:
	case <-g.stop:
		return false
	case <-t.C:
		return false
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.refused != nil {
		return false
	}
	if !g.known || d == (port.Digest{}) || d == g.digest {
		if d == g.digest {
			// Raft traffic from the cluster: it counts this node in again.
			g.outside = nil
		}
		return true
	}
	g.logOnce("foreign "+d.String(), func() {
		g.logger.Error("refusing raft traffic from a node of another cluster: it was bootstrapped with a different Peers list",
			"remote", remote, "its_list_digest", d.String(), "this_list", g.list, "this_list_digest", g.digest.String())
	})
	return false
}

// Cluster returns the digest this node sends ahead of its raft traffic.
func (g *clusterGate) Cluster() (port.Digest, bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.digest, g.known && !g.pending
}

// err is the refusal or disagreement this node reports, or nil. It
// matches ErrInvalidConfig.
func (g *clusterGate) err() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.refused != nil {
		return g.refused
	}
	if g.pending {
		return g.conflict
	}
	return nil
}

// outsideOf returns the configuration of the cluster this node found
// bootstrapped with its list but without it, or nil.
func (g *clusterGate) outsideOf() []string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.outside
}

// maxLogged bounds what logOnce remembers: keys hold what strangers say
// (an address, a list's digest). Past it, the memory starts again, and a
// line may be logged again.
const maxLogged = 1024

// logOnce runs log the first time key is seen; g.mu held.
func (g *clusterGate) logOnce(key string, log func()) {
	if !g.logged[key] {
		if len(g.logged) >= maxLogged {
			clear(g.logged)
		}
		g.logged[key] = true
		log()
	}
}

// start runs the agreement of an undecided node until it decides or the
// node closes.
func (g *clusterGate) start(n *RaftNode) {
	g.mu.Lock()
	pending := g.pending
	g.mu.Unlock()
	if !pending {
		return
	}
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		// Nodes of a new cluster start within moments of each other:
		// ask often at first, then back off.
		delay := agreementMinDelay
		for i := 0; !g.round(n); i++ {
			select {
			case <-g.stop:
				return
			case <-time.After(delay):
			}
			if i >= 40 {
				delay = min(2*delay, agreementMaxDelay)
			}
		}
	}()
}

// halt stops the agreement and waits for the node's membership goroutines.
func (g *clusterGate) halt() {
	g.release()
	g.wg.Wait()
}

// release refuses the raft connections that wait for the gate's decision
// and tells the membership goroutines to stop, without waiting for them.
func (g *clusterGate) release() {
	g.stopOnce.Do(func() { close(g.stop) })
}

// stopContext returns a context that ends after d or when g halts.
func (g *clusterGate) stopContext(d time.Duration) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	go func() {
		select {
		case <-g.stop:
			cancel()
		case <-ctx.Done():
		}
	}()
	return ctx, cancel
}

// round asks every other node of the list once and acts on the answers.
// It reports whether the node has decided (or is closing).
func (g *clusterGate) round(n *RaftNode) bool {
	ctx, cancel := g.stopContext(agreementProbeTimeout)
	defer cancel()
	req := &peer.BootstrapRequest{ID: g.id, Addr: g.addr, Peers: g.own}
	answers := make([]*peer.BootstrapResponse, len(g.own))
	var wg sync.WaitGroup
	for i, e := range g.own {
		_, addr, _ := strings.Cut(e, "=")
		if addr == g.addr {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			var resp peer.BootstrapResponse
			if err := n.rpc.Call(ctx, addr, peer.MethodBootstrap, req, &resp); err == nil {
				answers[i] = &resp
			}
		}()
	}
	wg.Wait()
	select {
	case <-g.stop:
		return true
	default:
	}

	support, rivalSupport := 1, 0
	var rival, existing *peer.BootstrapResponse
	for _, a := range answers {
		switch {
		case a == nil:
		case len(a.Cluster) > 0:
			if digestOf(a.Cluster) != g.ownDigest {
				return g.refuse(a, a.Cluster, "belongs to a cluster bootstrapped with")
			}
			existing = a
		case a.HasState && len(a.Servers) > 0:
			// State from before raftkit recorded the list: compare with
			// its configuration.
			if !slices.Equal(a.Servers, g.own) {
				return g.refuse(a, a.Servers, "belongs to a cluster whose configuration is")
			}
			existing = a
		case a.Refused:
			// Undecided for good: neither for nor against.
		case digestOf(a.Peers) == g.ownDigest:
			support++
		case max(a.Support, 1) > rivalSupport:
			rival, rivalSupport = a, max(a.Support, 1)
		}
	}
	if existing != nil {
		// Bootstrap the same first entry only if that cluster still counts
		// this node in; otherwise wait for it to be added.
		// A node whose own bootstrap of the same list is still in
		// progress has no configuration yet: its first entry will be
		// this list, which counts this node in.
		local := len(existing.Servers) == 0 || slices.Contains(existing.Servers, g.id+"="+g.addr)
		if !local {
			g.mu.Lock()
			g.outside = existing.Servers
			g.mu.Unlock()
		}
		if local && existing.HasState && n.cfg.LogStore == LogStoreMemory {
			noteMemoryRejoin(g.logger, existing)
		}
		return g.decide(n, local, "found a node of a cluster bootstrapped with the same list", existing)
	}
	g.mu.Lock()
	g.support = support
	g.conflict = nil
	if rival != nil {
		g.conflict = g.disagreement(rival, rival.Peers, "holds")
		g.logOnce("disagree "+digestOf(rival.Peers).String(), func() {
			g.logger.Error("Peers lists disagree: not bootstrapping", "error", g.conflict)
		})
	}
	g.mu.Unlock()
	if support >= len(g.own)/2+1 && support > rivalSupport {
		return g.decide(n, true, "a majority holds the same list", rival)
	}
	return false
}

// noteMemoryRejoin says what a LogStoreMemory node without state risks
// when it takes its place in a running cluster that counts it in. It cannot
// tell a first start (safe: this happens at most formations, to the nodes
// that start after the first two agreed) from a restart that lost its log
// and vote (unsafe: see LogStoreMemory), so it goes on, at Info, saying how
// to come back safely.
func noteMemoryRejoin(logger hclog.Logger, existing *peer.BootstrapResponse) {
	logger.Info("this LogStoreMemory node starts empty in a running cluster that counts it as a voter; "+
		"if it ran before, it forgot its log and vote, which raft's safety needs: "+
		"restart such a node only after RemoveServer, then with Join (see LogStoreMemory)",
		"found", existing.ID, "servers", existing.Servers)
}

// disagreement is the error naming both lists.
func (g *clusterGate) disagreement(a *peer.BootstrapResponse, theirs []string, how string) error {
	return configErr("Peers", "",
		"this node's list %v (digest %s) differs from %v (digest %s): node %s at %s %s it; "+
			"every node of a new cluster needs the same list. Fix Peers and restart this node, or start it with Join instead",
		g.own, g.ownDigest, theirs, digestOf(theirs), a.ID, a.Addr, how)
}

// refuse makes this node refuse to bootstrap or accept any log, for good.
func (g *clusterGate) refuse(a *peer.BootstrapResponse, theirs []string, how string) bool {
	err := g.disagreement(a, theirs, how)
	g.mu.Lock()
	defer g.mu.Unlock()
	g.refused = err
	g.endPending()
	g.logOnce("disagree "+digestOf(theirs).String(), func() {
		g.logger.Error("Peers lists disagree: not bootstrapping", "error", err)
	})
	return true
}

// decide makes own this node's cluster list: it records it, bootstraps it
// if local, and opens the port to raft traffic. It reports false (try
// again) if that fails.
func (g *clusterGate) decide(n *RaftNode, local bool, why string, other *peer.BootstrapResponse) bool {
	if err := g.stable.Set(bootstrapKey, []byte(strings.Join(g.own, "\n"))); err != nil {
		g.logger.Error("cannot record the bootstrap list; will retry", "error", err)
		return false
	}
	// From here on this node answers with its list as its cluster's, so
	// that no peer mistakes its bootstrap in progress for another
	// cluster; raft traffic waits until the bootstrap is done.
	g.mu.Lock()
	g.known, g.list, g.digest, g.conflict = true, g.own, g.ownDigest, nil
	g.mu.Unlock()
	if local {
		ctx, cancel := g.stopContext(n.cfg.ApplyTimeout)
		err := n.waitFuture(ctx, n.raft.BootstrapCluster(configurationOf(g.own)))
		cancel()
		select {
		case <-g.stop:
			return true
		default:
		}
		if err != nil && !errors.Is(err, raft.ErrCantBootstrap) {
			g.logger.Error("bootstrap failed; will retry", "error", err)
			return false
		}
	}
	g.mu.Lock()
	g.setKnown(g.own)
	g.mu.Unlock()
	g.logger.Info("peers agree on the bootstrap list", "why", why, "bootstrapped", local, "servers", len(g.own), "list_digest", g.ownDigest.String())
	if other != nil && digestOf(other.Peers) != g.ownDigest && len(other.Cluster) == 0 {
		g.logger.Warn("a node of the list holds another Peers list and will not join", "node", other.ID, "addr", other.Addr, "its_list", other.Peers)
	}
	return true
}

// answer fills a node's side of a comparison.
func (g *clusterGate) answer(n *RaftNode, req *peer.BootstrapRequest, resp *peer.BootstrapResponse) {
	resp.ID, resp.Addr = n.id, n.addr
	g.mu.Lock()
	defer g.mu.Unlock()
	// An undecided node has no state but its own bootstrap in progress.
	resp.HasState = n.raft.LastIndex() > 0 && !g.pending
	resp.LastIndex = n.raft.LastIndex()
	if f := n.raft.GetConfiguration(); f.Error() == nil {
		resp.Servers = serverEntries(f.Configuration())
	}
	resp.Peers = g.own
	resp.Refused = g.refused != nil
	resp.Support = g.support
	mine := g.own
	if g.known {
		resp.Cluster = g.list
		mine = g.list
	}
	if d := digestOf(req.Peers); d != digestOf(mine) && len(mine) > 0 {
		g.logOnce("asked "+req.Addr+" "+d.String(), func() {
			g.logger.Warn("a node with a different Peers list asked to compare lists; it will not join this cluster",
				"node", req.ID, "addr", req.Addr, "its_list", req.Peers, "this_list", mine)
		})
	}
}

// probeList is the list this node sends when it asks another node who it
// is (see askNode): the one the asked node, if it shares this cluster's
// bootstrap list, compares without complaint.
func (g *clusterGate) probeList() []string {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.known {
		return g.list
	}
	return g.own
}

// notePeersOnRestart logs, at INFO, that a node with state ignores a
// Peers list that differs from its configuration.
func (n *RaftNode) notePeersOnRestart(s *settled) {
	if len(s.Peers) == 0 {
		return
	}
	f := n.raft.GetConfiguration()
	if f.Error() != nil {
		return
	}
	current := serverEntries(f.Configuration())
	if given := canonicalPeers(s.peers); !slices.Equal(given, current) {
		n.logger.Info("node has state: ignoring Peers, which differ from the current configuration",
			"peers", given, "configuration", current)
	}
}

// NewRaftNodeAndBootstrapCluster starts a node listening on addr with its
// data in dir, and bootstraps the cluster made of nodeAddrs if the node has
// no state yet. The node's ID is its address. Every node of a new cluster
// calls it with the same nodeAddrs, which must include addr; restarting a
// node with the same arguments rejoins it with its data. A one-address list
// makes a single-node cluster (for development).
//
// It is NewRaftNode with Config{Addr: addr, Dir: dir, Peers: nodeAddrs,
// Logger: logger}; bootstrap errors are returned, not dropped. A nil logger
// is silent.
func NewRaftNodeAndBootstrapCluster(addr string, nodeAddrs []string, dir string, fsm raft.FSM, logger hclog.Logger) (*RaftNode, error) {
	if len(nodeAddrs) == 0 {
		return nil, configErr("nodeAddrs", "", "must list the cluster's addresses, including %q", addr)
	}
	return NewRaftNode(Config{Addr: addr, Dir: dir, Peers: nodeAddrs, Logger: logger}, fsm)
}
