package raftkit

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/hashicorp/raft"

	"github.com/raftkit/raftkit/internal/store"
)

// DirInfo is what InspectDir reads from a stopped node's data directory.
type DirInfo struct {
	// Dir is the directory inspected.
	Dir string `json:"dir"`
	// LogStore is the store that holds the log and stable state:
	// "LogStoreBolt" or "LogStoreWAL" (see LogStoreKind).
	LogStore string `json:"log_store"`
	// CurrentTerm is the latest term the node had seen.
	CurrentTerm uint64 `json:"current_term"`
	// LastVoteTerm and LastVoteFor record the node's last vote: the term
	// and the server ID it voted for.
	LastVoteTerm uint64 `json:"last_vote_term"`
	LastVoteFor  string `json:"last_vote_for"`
	// FirstIndex and LastIndex bound the entries in the log (both 0 when
	// it is empty, e.g. right after a compaction of everything).
	FirstIndex uint64 `json:"first_index"`
	LastIndex  uint64 `json:"last_index"`
	// LastLogTerm is the term of the last entry in the log (0 when it is
	// empty).
	LastLogTerm uint64 `json:"last_log_term"`
	// Servers is the latest cluster configuration the node knows, from its
	// log or, if the log holds none, from its newest snapshot;
	// ConfigurationIndex is the log index it was written at.
	Servers            []ServerInfo `json:"servers"`
	ConfigurationIndex uint64       `json:"configuration_index"`
	// Snapshots lists the snapshots on disk, newest first.
	Snapshots []SnapshotInfo `json:"snapshots"`
	// PendingRecovery is true when a recovery file (RecoveryFile) waits to
	// be applied at the next start.
	PendingRecovery bool `json:"pending_recovery"`
}

// SnapshotInfo describes one snapshot on disk.
type SnapshotInfo struct {
	ID    string `json:"id"`
	Index uint64 `json:"index"`
	Term  uint64 `json:"term"`
	// Size is the snapshot's size in bytes, from its metadata.
	Size int64 `json:"size"`
	// CRCOK is true when the data's CRC-64 and length match the metadata.
	CRCOK bool `json:"crc_ok"`
	// Error says what is wrong when CRCOK is false.
	Error string `json:"error,omitempty"`
}

// InspectDir reads a stopped node's data directory without changing its
// state: its term and vote, the bounds of its log, its latest
// configuration, and its snapshots, each checked against its CRC. It reads
// both log stores (LogStoreBolt and LogStoreWAL, told apart by their
// files); see DirInfo.LogStore. A directory in use by a running node fails
// with ErrDataDirLocked (and no node can start on it while InspectDir
// runs); one that holds no node's state with an error matching
// fs.ErrNotExist; a damaged one with ErrCorruptStore. Checking large
// snapshots reads them completely; ctx stops that.
//
// A BoltDB directory is opened read-only. A raft-wal directory is opened by
// raft-wal, which recovers its tail segment as at a node's start and
// deletes segment files that a crash left unreferenced.
func InspectDir(ctx context.Context, dir string) (*DirInfo, error) {
	d, err := store.OpenStopped(dir, false)
	if err != nil {
		return nil, fmt.Errorf("raftkit: inspect %s: %w", dir, err)
	}
	defer d.Close()
	info := &DirInfo{Dir: dir, LogStore: LogStoreBolt.String()}
	if d.Kind == store.WAL {
		info.LogStore = LogStoreWAL.String()
	}
	v, err := d.Vote()
	if err != nil {
		return nil, fmt.Errorf("raftkit: inspect %s: %w", dir, err)
	}
	info.CurrentTerm, info.LastVoteTerm, info.LastVoteFor = v.CurrentTerm, v.LastVoteTerm, v.LastVoteCand
	l, err := d.ReadLog()
	if err != nil {
		return nil, fmt.Errorf("raftkit: inspect %s: %w", dir, err)
	}
	info.FirstIndex, info.LastIndex, info.LastLogTerm = l.First, l.Last, l.LastTerm
	if l.Conf != nil {
		info.Servers, info.ConfigurationIndex = serverInfos(*l.Conf), l.ConfIndex
	}
	snaps, err := d.Snapshots(ctx)
	if err != nil {
		return nil, fmt.Errorf("raftkit: inspect %s: %w", dir, err)
	}
	for _, f := range snaps {
		info.Snapshots = append(info.Snapshots, SnapshotInfo{ID: f.ID, Index: f.Index, Term: f.Term, Size: f.Size, CRCOK: f.CRCOK, Error: f.Error})
	}
	if info.Servers == nil {
		// The log holds no configuration: the newest readable snapshot's is
		// the latest.
		for _, s := range snaps {
			if conf, idx, ok := d.SnapshotConfiguration(s.ID); ok {
				info.Servers, info.ConfigurationIndex = serverInfos(conf), idx
				break
			}
		}
	}
	if _, err := os.Stat(filepath.Join(dir, RecoveryFile)); err == nil {
		info.PendingRecovery = true
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("raftkit: inspect %s: %w", dir, err)
	}
	return info, nil
}

func serverInfos(c raft.Configuration) []ServerInfo {
	out := make([]ServerInfo, 0, len(c.Servers))
	for _, s := range c.Servers {
		out = append(out, ServerInfo{ID: string(s.ID), Addr: string(s.Address), Voter: s.Suffrage == raft.Voter, Suffrage: s.Suffrage.String()})
	}
	return out
}

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
// The node must be stopped: WriteRecovery locks dir as a node does, and
// fails with ErrDataDirLocked if a node is running on it. dir must hold a
// node's state in either log store (LogStoreBolt or LogStoreWAL); a
// directory that does not fails with ErrRecovery, and one the node could
// not start from (damaged files, a log that does not reach its snapshots)
// with ErrCorruptStore. servers must list at least one voter, with unique
// non-empty IDs and addresses; the IDs must be the nodes' Config.ID (by
// default their address).
//
// A poisoned term is repaired. Raft cannot elect a leader once a node's
// stored current term is 2^63 or more, as after granting a stranger's
// RequestVote with term 2^64-1: a candidate's term+1 wraps around. When
// the stored current term (or last vote's term) is that large,
// WriteRecovery sets the current term to the highest term in the node's
// log and snapshots (1 if both are empty) and records the node's vote in
// that term as already cast, for no server. Nothing else changes: the log,
// the snapshots and the configuration stay as they are. This is safe
// offline because the lock keeps the node stopped while it is written, and
// because it keeps what raft's safety rests on for this node: its term is
// at least the term of every entry it holds, so entries it may write as a
// future leader carry a higher term than any it has; and it cannot vote in
// the reset term, in which it may have voted before, so from here on it
// votes at most once per term. The terms between the reset value and the
// poisoned one are forgotten. A member whose log ends in a higher term
// than another's rejects that member's candidacy in the lower terms, as
// raft always does; what no tool can recover is an entry a lost leader
// wrote in such a term to only a minority, and recovery already treats
// every surviving log as committed (see the warning below). So recover
// every member of the cluster with the same list, and start first the one
// whose log ends with the highest term and index (DirInfo.LastLogTerm and
// LastIndex).
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
	d, err := store.OpenStopped(dir, true)
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%w: %v", ErrRecovery, err)
	}
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.CheckSnapshots(); err != nil {
		return err
	}
	if _, err := d.ResetPoisonedTerm(); err != nil {
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
	if err := writeSynced(tmp, append(data, '\n')); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("raftkit: write recovery file %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("raftkit: write recovery file %s: %w", path, err)
	}
	if err := store.SyncDir(dir); err != nil {
		return fmt.Errorf("raftkit: write recovery file %s: %w", path, err)
	}
	return d.Close()
}

// writeSynced writes data to a new file at path and fsyncs it.
func writeSynced(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	return errors.Join(err, f.Close())
}

func checkRecovery(servers []ServerInfo) error {
	if len(servers) == 0 {
		return fmt.Errorf("%w: no servers given", ErrRecovery)
	}
	ids, addrs, voters := map[string]bool{}, map[string]bool{}, 0
	for i, s := range servers {
		if s.ID == "" || s.Addr == "" || strings.ContainsAny(s.ID, "=\n") || s.ID == store.NoVote {
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
func applyRecovery(s *settled, rc *raft.Config, fsm raft.FSM, st *store.Stores, trans raft.Transport) error {
	if s.memoryStore() {
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
	if err := raft.RecoverCluster(rc, newRecoveryFSM(fsm, st.Log), st.Log, st.Stable, st.Snaps, trans, conf); err != nil {
		return fmt.Errorf("%w: apply %s: %v", ErrRecovery, path, err)
	}
	// A recovery file that a power cut brings back would force the
	// configuration again at a later start, over whatever changed since.
	if err := os.Rename(path, path+".applied"); err != nil {
		return fmt.Errorf("raftkit: recovery applied, but %s could not be renamed (remove it before the next start): %w", path, err)
	}
	if err := store.SyncDir(s.Dir); err != nil {
		return fmt.Errorf("raftkit: recovery applied, but the rename of %s could not be synced (remove it before the next start): %w", path, err)
	}
	logger.Warn("recovery configuration applied", "file", path+".applied")
	return nil
}

// recoveryFSM is the FSM that raft.RecoverCluster replays the log into: the
// node's FSM behind a trackedFSM, so that chunked commands reach it whole
// and by the same rule as in a running node (chunk.go). RecoverCluster
// hands over only command entries, so recoveryFSM looks up what lies
// between two chunks itself: a configuration entry drops the sequence, as
// a running node's FSM sees it do. A sequence still incomplete at the end
// of the log can never be finished (RecoverCluster then compacts the log):
// Snapshot drops it, and the command is not applied.
type recoveryFSM struct {
	*trackedFSM
	logs raft.LogStore
	last uint64 // index of the last command entry applied
}

func newRecoveryFSM(fsm raft.FSM, logs raft.LogStore) *recoveryFSM {
	return &recoveryFSM{trackedFSM: newTrackedFSM(fsm), logs: logs}
}

func (r *recoveryFSM) Apply(l *raft.Log) any {
	if r.chunks.Pending() {
		for i := r.last + 1; i < l.Index; i++ {
			var e raft.Log
			if err := r.logs.GetLog(i, &e); err != nil || e.Type == raft.LogConfiguration {
				r.chunks.Drop()
				break
			}
		}
	}
	r.last = l.Index
	return r.trackedFSM.Apply(l)
}

func (r *recoveryFSM) Snapshot() (raft.FSMSnapshot, error) {
	r.chunks.Drop()
	return r.trackedFSM.Snapshot()
}
