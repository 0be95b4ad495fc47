package raftkit

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

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
