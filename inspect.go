package raftkit

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc64"
	"io"
	"os"
	"path/filepath"
	"sort"

	"github.com/hashicorp/go-msgpack/v2/codec"
	"github.com/hashicorp/raft"
	"go.etcd.io/bbolt"
)

// DirInfo is what InspectDir reads from a stopped node's data directory.
type DirInfo struct {
	// Dir is the directory inspected.
	Dir string `json:"dir"`
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

// InspectDir reads a stopped node's data directory without changing it:
// its term and vote, the bounds of its log, its latest configuration, and
// its snapshots, each checked against its CRC. A directory in use by a
// running node fails with ErrDataDirLocked; one that is not a node's data
// directory, or is damaged, with ErrCorruptStore or a file error. Checking
// large snapshots reads them completely; ctx stops that.
func InspectDir(ctx context.Context, dir string) (*DirInfo, error) {
	info := &DirInfo{Dir: dir}
	db := filepath.Join(dir, boltFile)
	if _, err := os.Stat(db); err != nil {
		return nil, fmt.Errorf("raftkit: inspect %s: not a node's data directory: %w", dir, err)
	}
	err := safely(func() error {
		bdb, err := openBoltReadOnly(db)
		if err != nil {
			return err
		}
		defer bdb.Close()
		return bdb.View(func(tx *bbolt.Tx) error { return readBolt(tx, info) })
	})
	if err != nil {
		return nil, fmt.Errorf("raftkit: inspect %s: %w", dir, err)
	}
	snaps, err := readSnapshots(ctx, filepath.Join(dir, snapshotDir))
	if err != nil {
		return nil, fmt.Errorf("raftkit: inspect %s: %w", dir, err)
	}
	info.Snapshots = snaps
	if info.Servers == nil {
		// The log holds no configuration: the newest readable snapshot's is
		// the latest.
		for _, s := range snaps {
			if conf, idx, ok := snapshotConfiguration(filepath.Join(dir, snapshotDir, s.ID)); ok {
				info.Servers, info.ConfigurationIndex = conf, idx
				break
			}
		}
	}
	if _, err := os.Stat(filepath.Join(dir, RecoveryFile)); err == nil {
		info.PendingRecovery = true
	}
	return info, nil
}

// openBoltReadOnly opens raft.db for reading, failing with
// ErrDataDirLocked when a node holds it.
func openBoltReadOnly(path string) (*bbolt.DB, error) {
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{ReadOnly: true, Timeout: lockTimeout})
	if err != nil {
		return nil, boltError(path, err)
	}
	return db, nil
}

// checkNotRunning fails with ErrDataDirLocked if a node holds raft.db.
func checkNotRunning(path string) error {
	return safely(func() error {
		db, err := openBoltReadOnly(path)
		if err != nil {
			return err
		}
		return db.Close()
	})
}

// Keys and buckets of raft-boltdb's file and raft's stable store.
var (
	bucketLogs = []byte("logs")
	bucketConf = []byte("conf")
)

func readBolt(tx *bbolt.Tx, info *DirInfo) error {
	conf, logs := tx.Bucket(bucketConf), tx.Bucket(bucketLogs)
	if conf == nil || logs == nil {
		return fmt.Errorf("%w: %s lacks raft-boltdb's buckets", ErrCorruptStore, boltFile)
	}
	u64 := func(key string) uint64 {
		if v := conf.Get([]byte(key)); len(v) == 8 {
			return binary.BigEndian.Uint64(v)
		}
		return 0
	}
	info.CurrentTerm = u64("CurrentTerm")
	info.LastVoteTerm = u64("LastVoteTerm")
	info.LastVoteFor = string(conf.Get([]byte("LastVoteCand")))

	c := logs.Cursor()
	if k, _ := c.First(); k != nil {
		info.FirstIndex = binary.BigEndian.Uint64(k)
	}
	for k, v := c.Last(); k != nil; k, v = c.Prev() {
		var entry raft.Log
		if err := codec.NewDecoder(bytes.NewReader(v), &codec.MsgpackHandle{}).Decode(&entry); err != nil {
			return fmt.Errorf("%w: log entry %d: %v", ErrCorruptStore, binary.BigEndian.Uint64(k), err)
		}
		if info.LastIndex == 0 {
			info.LastIndex = entry.Index
		}
		if entry.Type == raft.LogConfiguration {
			var cfg raft.Configuration
			if err := safely(func() error { cfg = raft.DecodeConfiguration(entry.Data); return nil }); err != nil {
				return fmt.Errorf("%w: configuration at log index %d: %v", ErrCorruptStore, entry.Index, err)
			}
			info.Servers, info.ConfigurationIndex = serverInfos(cfg), entry.Index
			break
		}
	}
	return nil
}

func serverInfos(c raft.Configuration) []ServerInfo {
	out := make([]ServerInfo, 0, len(c.Servers))
	for _, s := range c.Servers {
		out = append(out, ServerInfo{ID: string(s.ID), Addr: string(s.Address), Voter: s.Suffrage == raft.Voter, Suffrage: s.Suffrage.String()})
	}
	return out
}

// snapshotMetaFile is the metadata of one file snapshot as raft's
// FileSnapshotStore writes it: meta.json beside state.bin.
type snapshotMetaFile struct {
	raft.SnapshotMeta
	CRC []byte
}

func readSnapshotMeta(dir string) (*snapshotMetaFile, error) {
	data, err := os.ReadFile(filepath.Join(dir, "meta.json"))
	if err != nil {
		return nil, err
	}
	var m snapshotMetaFile
	if err := json.Unmarshal(data, &m); err != nil {
		return nil, fmt.Errorf("meta.json: %v", err)
	}
	return &m, nil
}

func snapshotConfiguration(dir string) ([]ServerInfo, uint64, bool) {
	m, err := readSnapshotMeta(dir)
	if err != nil {
		return nil, 0, false
	}
	return serverInfos(m.Configuration), m.ConfigurationIndex, true
}

// readSnapshots lists and checks the snapshots under dir, newest first.
// Snapshots still being written (".tmp") are skipped, as raft does.
func readSnapshots(ctx context.Context, dir string) ([]SnapshotInfo, error) {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []SnapshotInfo
	for _, e := range entries {
		if !e.IsDir() || filepath.Ext(e.Name()) == ".tmp" {
			continue
		}
		si := SnapshotInfo{ID: e.Name()}
		m, err := readSnapshotMeta(filepath.Join(dir, e.Name()))
		if err != nil {
			si.Error = err.Error()
			out = append(out, si)
			continue
		}
		si.Index, si.Term, si.Size = m.Index, m.Term, m.Size
		if err := checkSnapshotData(ctx, filepath.Join(dir, e.Name(), "state.bin"), m); err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			si.Error = err.Error()
		} else {
			si.CRCOK = true
		}
		out = append(out, si)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Term != out[j].Term {
			return out[i].Term > out[j].Term
		}
		if out[i].Index != out[j].Index {
			return out[i].Index > out[j].Index
		}
		return out[i].ID > out[j].ID
	})
	return out, nil
}

func checkSnapshotData(ctx context.Context, path string, m *snapshotMetaFile) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	h := crc64.New(crcTable)
	n, err := io.Copy(h, &ctxReader{ctx: ctx, r: f})
	if err != nil {
		return err
	}
	if n != m.Size {
		return fmt.Errorf("state.bin has %d bytes, meta.json says %d", n, m.Size)
	}
	if !bytes.Equal(h.Sum(nil), m.CRC) {
		return fmt.Errorf("CRC mismatch: meta.json says %x, state.bin has %x", m.CRC, h.Sum(nil))
	}
	return nil
}
