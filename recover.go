package raftkit

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/hashicorp/raft"
)

// Recovery from permanent quorum loss works in two steps, as in Consul:
//
//  1. With the node stopped, WriteRecovery (or `raftkit recover`) writes
//     the servers the cluster should consist of to Dir/peers.json, in
//     hashicorp/raft's peers.json format.
//  2. The next NewRaftNode on that Dir finds the file and, before raft
//     starts, calls raft.RecoverCluster with the application's own FSM:
//     it restores the latest snapshot, replays the log, and writes a new
//     snapshot carrying the new configuration. The file is then renamed to
//     peers.json.applied so that it is applied once.
//
// A generic tool cannot do step 2 itself: RecoverCluster needs the
// application's real FSM to rebuild the snapshot, and a stand-in FSM would
// write an empty one, losing the data.

// RecoveryFile is the file in Config.Dir that NewRaftNode applies as a
// recovery configuration (see WriteRecovery). After it is applied it is
// renamed to RecoveryFile + ".applied".
const RecoveryFile = "peers.json"

// recoveryEntry is one server in raft's peers.json (version 3) format.
type recoveryEntry struct {
	ID       string `json:"id"`
	Address  string `json:"address"`
	NonVoter bool   `json:"non_voter"`
}

// WriteRecovery prepares a node's data directory for recovery from
// permanent quorum loss: it writes servers to dir/peers.json, which the
// next NewRaftNode on dir applies with raft.RecoverCluster before raft
// starts. Write the same list into the directory of every surviving server
// that is to be part of the recovered cluster, then start them.
//
// The node must be stopped (WriteRecovery fails with ErrDataDirLocked if
// it is running) and dir must hold its data. servers must list at least
// one voter, with unique non-empty IDs and addresses; the IDs must be the
// nodes' Config.ID (by default their address).
//
// WARNING: recovery forces the configuration. Every entry in the
// surviving log is treated as committed, even one that never reached a
// majority, and servers left out must never be restarted with their old
// data: they would form a second cluster. Use it only when the lost
// servers are gone for good.
func WriteRecovery(dir string, servers []ServerInfo) error {
	if err := checkRecovery(servers); err != nil {
		return err
	}
	db := filepath.Join(dir, boltFile)
	if _, err := os.Stat(db); err != nil {
		return fmt.Errorf("%w: %s is not a node's data directory: %v", ErrRecovery, dir, err)
	}
	if err := checkNotRunning(db); err != nil {
		return err
	}
	entries := make([]recoveryEntry, 0, len(servers))
	for _, s := range servers {
		entries = append(entries, recoveryEntry{ID: s.ID, Address: s.Addr, NonVoter: !s.Voter})
	}
	data, err := json.MarshalIndent(entries, "", "  ")
	if err != nil {
		return fmt.Errorf("%w: %v", ErrRecovery, err)
	}
	path := filepath.Join(dir, RecoveryFile)
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, append(data, '\n'), 0o600); err != nil {
		return fmt.Errorf("raftkit: write recovery file %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("raftkit: write recovery file %s: %w", path, err)
	}
	return nil
}

func checkRecovery(servers []ServerInfo) error {
	if len(servers) == 0 {
		return fmt.Errorf("%w: no servers given", ErrRecovery)
	}
	ids, addrs, voters := map[string]bool{}, map[string]bool{}, 0
	for i, s := range servers {
		if s.ID == "" || s.Addr == "" || strings.ContainsAny(s.ID, "=\n") {
			return fmt.Errorf("%w: servers[%d] needs an ID (without '=') and an address, got %q at %q", ErrRecovery, i, s.ID, s.Addr)
		}
		if ids[s.ID] || addrs[s.Addr] {
			return fmt.Errorf("%w: servers[%d] repeats ID %q or address %q", ErrRecovery, i, s.ID, s.Addr)
		}
		ids[s.ID], addrs[s.Addr] = true, true
		if s.Voter {
			voters++
		}
	}
	if voters == 0 {
		return fmt.Errorf("%w: no voter among the servers", ErrRecovery)
	}
	return nil
}

// applyRecovery runs raft.RecoverCluster if Dir holds a recovery file,
// then renames the file. It runs before raft starts, with the node's own
// FSM; raft's NewRaft later restores that FSM from the new snapshot.
func applyRecovery(s *settled, rc *raft.Config, fsm raft.FSM, st *nodeStores, trans raft.Transport) error {
	if s.InMemory {
		return nil
	}
	path := filepath.Join(s.Dir, RecoveryFile)
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	conf, err := raft.ReadConfigJSON(path)
	if err != nil {
		return fmt.Errorf("%w: recovery file %s: %v", ErrRecovery, path, err)
	}
	found := false
	for _, srv := range conf.Servers {
		found = found || string(srv.ID) == s.ID
	}
	if !found {
		return fmt.Errorf("%w: recovery file %s does not list this node (ID %q); fix the file or remove it", ErrRecovery, path, s.ID)
	}
	logger := s.Logger.Named("raftkit")
	logger.Warn("applying recovery configuration: forcing the cluster configuration", "file", path, "servers", len(conf.Servers))
	if err := raft.RecoverCluster(rc, fsm, st.log, st.stable, st.snaps, trans, conf); err != nil {
		return fmt.Errorf("%w: apply %s: %v", ErrRecovery, path, err)
	}
	if err := os.Rename(path, path+".applied"); err != nil {
		return fmt.Errorf("raftkit: recovery applied, but %s could not be renamed (remove it before the next start): %w", path, err)
	}
	logger.Warn("recovery configuration applied", "file", path+".applied")
	return nil
}
