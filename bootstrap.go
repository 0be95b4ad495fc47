package raftkit

import (
	"fmt"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
)

// bootstrap writes the initial configuration (s.peers, all voters) for a
// node that has no raft state yet. Every initial node may do this with the
// same list: raft treats identical bootstrap configurations as one. A node
// with state never gets here: it rejoins its cluster and ignores the list.
func bootstrap(s *settled, rc *raft.Config, st *nodeStores, trans raft.Transport) error {
	if len(s.peers) == 0 {
		return nil
	}
	conf := raft.Configuration{}
	for _, p := range s.peers {
		addr := p.Addr
		if p.ID == s.ID {
			addr = s.advertise
		}
		conf.Servers = append(conf.Servers, raft.Server{Suffrage: raft.Voter, ID: raft.ServerID(p.ID), Address: raft.ServerAddress(addr)})
	}
	if err := raft.BootstrapCluster(rc, st.log, st.stable, st.snaps, trans, conf); err != nil {
		return fmt.Errorf("raftkit: bootstrap with Peers %v: %w", s.Peers, err)
	}
	s.Logger.Named("raftkit").Info("bootstrapped cluster", "id", s.ID, "servers", len(conf.Servers))
	return nil
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
