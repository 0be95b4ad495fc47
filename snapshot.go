package raftkit

// Snapshots: manual snapshots, the restored snapshot's index, and
// backups (one FSM snapshot in a self-describing stream) and restores.

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"strings"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"

	"github.com/raftkit/raftkit/internal/chunk"
	"github.com/raftkit/raftkit/internal/store"
)

// A backup is one FSM snapshot in a self-describing stream:
//
//	raftkit-backup 1\n
//	{"index":..,"term":..,"size":..,...}\n   (BackupInfo as JSON)
//	size bytes of the FSM's snapshot
//	8 bytes: CRC-64 (ECMA) of those bytes, big-endian
//
// The data is exactly what the FSM's Snapshot wrote, so Restore feeds it to
// the FSM's Restore unchanged.
const backupMagic = "raftkit-backup 1\n"

// maxBackupHeader bounds the JSON header line.
const maxBackupHeader = 64 << 10

// BackupInfo describes a backup: the snapshot it holds and where it was
// taken.
type BackupInfo struct {
	// Index and Term are those of the last log entry the snapshot covers.
	Index uint64 `json:"index"`
	Term  uint64 `json:"term"`
	// Size is the length of the FSM's snapshot data in bytes.
	Size int64 `json:"size"`
	// Version is raft's snapshot format version.
	Version raft.SnapshotVersion `json:"version"`
	// NodeID is the node that produced the backup.
	NodeID string `json:"node_id"`
	// Created is when the backup was taken.
	Created time.Time `json:"created"`
}

// Backup writes a consistent backup of the replicated state to w: a
// snapshot of this node's FSM taken after a linearizable read barrier, so it
// holds every write acknowledged (on any node) before Backup was called, and
// is a prefix of the log: never a partial write. Any node may take it; it
// needs a reachable leader for the barrier. Backup blocks until the whole
// snapshot is written, w fails, or ctx ends; a backup cut short is
// detected as ErrBadBackup by Restore and ReadBackupInfo.
//
// It takes a new snapshot (which also compacts this node's log, as the
// periodic ones do) and streams it from the snapshot store, so memory use
// does not grow with the state's size.
func (n *RaftNode) Backup(ctx context.Context, w io.Writer) error {
	if err := n.checkOpen(); err != nil {
		return err
	}
	if err := n.LinearizableRead(ctx); err != nil {
		return annotate("backup", err)
	}
	meta, rc, err := n.openCompleteSnapshot(ctx, n.raft.AppliedIndex())
	if err != nil {
		return annotate("backup", err)
	}
	defer rc.Close()
	info := BackupInfo{Index: meta.Index, Term: meta.Term, Size: meta.Size, Version: meta.Version, NodeID: n.id, Created: time.Now().UTC()}
	header, err := json.Marshal(info)
	if err != nil {
		return annotate("backup", err)
	}
	bw := bufio.NewWriter(w)
	if _, err := bw.WriteString(backupMagic); err != nil {
		return fmt.Errorf("raftkit: backup: write: %w", err)
	}
	if _, err := bw.Write(append(header, '\n')); err != nil {
		return fmt.Errorf("raftkit: backup: write: %w", err)
	}
	crc := store.NewCRC()
	copied, err := io.Copy(io.MultiWriter(bw, crc), store.ContextReader(ctx, rc))
	if err != nil {
		return fmt.Errorf("raftkit: backup: copying snapshot at index %d (%d of %d bytes): %w", meta.Index, copied, meta.Size, err)
	}
	if copied != meta.Size {
		return fmt.Errorf("raftkit: backup: snapshot at index %d has %d bytes, its metadata says %d", meta.Index, copied, meta.Size)
	}
	if err := binary.Write(bw, binary.BigEndian, crc.Sum64()); err != nil {
		return fmt.Errorf("raftkit: backup: write: %w", err)
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("raftkit: backup: write: %w", err)
	}
	n.logger.Info("backup written", "index", meta.Index, "term", meta.Term, "bytes", meta.Size)
	return nil
}

// openCompleteSnapshot opens a snapshot that covers every entry up to
// target that raft hands to the FSM. raft's AppliedIndex counts entries
// once they are queued for the FSM, not once the FSM has applied them, and
// its FSM goroutine may take a snapshot request before a queued batch; so a
// snapshot may stop short of target, and is then taken again.
func (n *RaftNode) openCompleteSnapshot(ctx context.Context, target uint64) (*raft.SnapshotMeta, io.ReadCloser, error) {
	for {
		meta, rc, err := n.openSnapshot(ctx)
		if err != nil {
			return nil, nil, err
		}
		if n.onlyNoopsBetween(meta.Index, target) {
			return meta, rc, nil
		}
		rc.Close()
		select {
		case <-ctx.Done():
			return nil, nil, fmt.Errorf("snapshot stops at index %d, before %d: %w", meta.Index, target, ctx.Err())
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// onlyNoopsBetween reports whether the log entries in (from, to] are all
// ones raft never gives the FSM (no-ops).
func (n *RaftNode) onlyNoopsBetween(from, to uint64) bool {
	for i := from + 1; i <= to; i++ {
		var l raft.Log
		if err := n.stores.Log.GetLog(i, &l); err != nil {
			return false
		}
		if l.Type != raft.LogNoop {
			return false
		}
	}
	return true
}

// openSnapshot takes a user snapshot and opens it; when raft has nothing
// new to snapshot it opens the latest stored one.
func (n *RaftNode) openSnapshot(ctx context.Context) (*raft.SnapshotMeta, io.ReadCloser, error) {
	f, err := n.userSnapshot(ctx)
	if err == nil {
		return f.Open()
	}
	if !errors.Is(err, raft.ErrNothingNewToSnapshot) {
		return nil, nil, fmt.Errorf("snapshot: %w", n.closedOr(err))
	}
	list, lerr := n.stores.Snaps.List()
	if lerr != nil {
		return nil, nil, fmt.Errorf("list snapshots: %w", lerr)
	}
	if len(list) == 0 {
		return nil, nil, fmt.Errorf("snapshot: %w", err)
	}
	return n.stores.Snaps.Open(list[0].ID)
}

// Restore replaces the whole replicated state with a backup written by
// Backup (raft's user restore). It must run on the leader (otherwise it
// returns a *NotLeaderError naming it); the leader installs the snapshot in
// its FSM and followers receive it as a snapshot install. Restore returns
// once a majority has the restored state.
//
// The stream is checked as it is read: a stream that is not a complete,
// intact backup fails with ErrBadBackup and nothing is restored. A failure
// after that (ctx ending, leadership lost) matches ErrUnknownOutcome: the
// restore may still complete.
//
// Restore is disaster recovery: every write since the backup is discarded,
// and for a moment the leader is ahead of its followers. Use it on a fresh
// cluster (or one whose state is to be thrown away), not in normal
// operation. It is bounded by ctx's deadline; without one it waits as long
// as the restore takes.
func (n *RaftNode) Restore(ctx context.Context, r io.Reader) error {
	if err := n.checkOpen(); err != nil {
		return err
	}
	if !n.IsLeader() {
		return annotate("restore", n.notLeader())
	}
	br := bufio.NewReader(r)
	info, err := readBackupHeader(br)
	if err != nil {
		return annotate("restore", err)
	}
	// raft refuses a restore while a configuration entry is uncommitted, as
	// on a freshly bootstrapped cluster whose leader has not yet committed
	// an entry of its own term. The read-index path commits a barrier once
	// per term (and only then), which settles that.
	if _, err := n.leaderReadIndex(ctx); err != nil {
		return annotate("restore (nothing restored)", err)
	}
	meta := &raft.SnapshotMeta{Version: info.Version, Index: info.Index, Term: info.Term, Size: info.Size}
	body := &backupBody{r: store.ContextReader(ctx, br), left: info.Size, crc: store.NewCRC()}
	var timeout time.Duration
	if dl, ok := ctx.Deadline(); ok {
		timeout = time.Until(dl)
	}
	done := make(chan error, 1)
	go func() { done <- n.raft.Restore(meta, body, timeout) }()
	select {
	case err = <-done:
	case <-ctx.Done():
		return unknownOutcome("restore", ctx.Err())
	}
	switch {
	case err == nil:
		n.logger.Warn("state restored from backup", "backup_index", info.Index, "backup_node", info.NodeID, "bytes", info.Size)
		return nil
	case body.err != nil && body.err != io.EOF:
		return fmt.Errorf("raftkit: restore (nothing restored): %w", body.err)
	case errors.Is(err, raft.ErrNotLeader):
		return annotate("restore", n.notLeader())
	case errors.Is(err, raft.ErrEnqueueTimeout), errors.Is(err, raft.ErrLeadershipLost),
		errors.Is(err, raft.ErrRaftShutdown), errors.Is(err, context.DeadlineExceeded):
		return unknownOutcome("restore", n.closedOr(err))
	}
	return annotate("restore", err)
}

// ReadBackupInfo reads a whole backup stream, checks that it is complete
// and intact, and returns its description. Errors match ErrBadBackup.
func ReadBackupInfo(r io.Reader) (BackupInfo, error) {
	br := bufio.NewReader(r)
	info, err := readBackupHeader(br)
	if err != nil {
		return BackupInfo{}, err
	}
	body := &backupBody{r: br, left: info.Size, crc: store.NewCRC()}
	if _, err := io.Copy(io.Discard, body); err != nil {
		return BackupInfo{}, err
	}
	if _, err := br.ReadByte(); err != io.EOF {
		return BackupInfo{}, fmt.Errorf("%w: data after the checksum", ErrBadBackup)
	}
	return info, nil
}

func readBackupHeader(br *bufio.Reader) (BackupInfo, error) {
	magic := make([]byte, len(backupMagic))
	if _, err := io.ReadFull(br, magic); err != nil || string(magic) != backupMagic {
		return BackupInfo{}, fmt.Errorf("%w: missing %q header", ErrBadBackup, strings.TrimSpace(backupMagic))
	}
	line, err := br.ReadSlice('\n')
	if err != nil || len(line) > maxBackupHeader {
		return BackupInfo{}, fmt.Errorf("%w: unreadable header line", ErrBadBackup)
	}
	var info BackupInfo
	if err := json.Unmarshal(line, &info); err != nil {
		return BackupInfo{}, fmt.Errorf("%w: header: %v", ErrBadBackup, err)
	}
	if info.Size < 0 || info.Version < raft.SnapshotVersionMin || info.Version > raft.SnapshotVersionMax {
		return BackupInfo{}, fmt.Errorf("%w: header has size %d, snapshot version %d", ErrBadBackup, info.Size, info.Version)
	}
	return info, nil
}

// backupBody yields exactly left bytes of snapshot data, then checks the
// CRC trailer: on a mismatch or a short stream its final Read fails instead
// of returning io.EOF, so raft cancels the restore before touching the FSM.
type backupBody struct {
	r    io.Reader
	left int64
	crc  hash.Hash64
	err  error
}

func (b *backupBody) Read(p []byte) (int, error) {
	if b.err != nil {
		return 0, b.err
	}
	if b.left == 0 {
		var sum uint64
		if err := binary.Read(b.r, binary.BigEndian, &sum); err != nil {
			b.err = fmt.Errorf("%w: truncated before its checksum", ErrBadBackup)
		} else if sum != b.crc.Sum64() {
			b.err = fmt.Errorf("%w: checksum mismatch (stored %016x, computed %016x)", ErrBadBackup, sum, b.crc.Sum64())
		} else {
			b.err = io.EOF
		}
		return 0, b.err
	}
	if int64(len(p)) > b.left {
		p = p[:b.left]
	}
	n, err := b.r.Read(p)
	b.left -= int64(n)
	b.crc.Write(p[:n])
	if err == io.EOF && b.left > 0 {
		b.err = fmt.Errorf("%w: truncated (%d bytes missing)", ErrBadBackup, b.left)
		return n, b.err
	}
	if err != nil && err != io.EOF {
		b.err = err
		return n, err
	}
	return n, nil
}

// Snapshot asks raft to snapshot the FSM now and compact the log, and waits
// for it or for ctx. A node with nothing new since its last snapshot returns
// nil. If ctx ends first, the snapshot still completes in the background.
// While the node's FSM holds part of a command larger than 256 KiB (its
// chunks are applied one by one, the command once the last arrives), a
// snapshot would cut through it: Snapshot then tries again until the
// command is complete or ctx ends.
func (n *RaftNode) Snapshot(ctx context.Context) error {
	if err := n.checkOpen(); err != nil {
		return err
	}
	_, err := n.userSnapshot(ctx)
	if errors.Is(err, raft.ErrNothingNewToSnapshot) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("raftkit: snapshot: %w", n.closedOr(err))
	}
	return nil
}

// userSnapshot takes a user snapshot and waits for it within ctx, trying
// again while the FSM defers it because a chunked command is half applied
// (chunk.ErrInProgress). If ctx ends after such a refusal, the error says so
// and wraps ctx's.
func (n *RaftNode) userSnapshot(ctx context.Context) (raft.SnapshotFuture, error) {
	var deferred error
	for {
		f := n.raft.Snapshot()
		err := n.waitFuture(ctx, f)
		if !chunk.IsInProgress(err) {
			if deferred != nil && ctx.Err() != nil && errors.Is(err, ctx.Err()) {
				return f, fmt.Errorf("%v: %w", deferred, err)
			}
			return f, err
		}
		deferred = err
		// Ask again once the command is complete (or dropped), not
		// before: raft logs every refused snapshot at ERROR.
		for attempt := 0; attempt == 0 || n.fsm.chunks.PendingTerm() != 0; attempt++ {
			if !n.backoff(ctx, attempt) {
				if err := n.checkOpen(); err != nil {
					return f, err
				}
				return f, fmt.Errorf("%v: %w", deferred, ctx.Err())
			}
		}
	}
}

// openedSnapshots is the snapshot store as raft sees it: it notes the
// index of the last snapshot raft opened, which is the one an FSM restore
// reads. raft opens snapshots to restore them (at start, newest first,
// falling back past one that fails to open or restore; on a follower, the
// one its leader installed) and, on a leader, to send them; a leader
// never restores, so the last open before a restore is the restore's.
// The newest snapshot listed is not: after a fallback past a damaged one,
// it overstated what the FSM held.
type openedSnapshots struct {
	raft.SnapshotStore
	last atomic.Pointer[raft.SnapshotMeta]
}

func (o *openedSnapshots) Open(id string) (*raft.SnapshotMeta, io.ReadCloser, error) {
	meta, rc, err := o.SnapshotStore.Open(id)
	if err == nil {
		o.last.Store(meta)
	}
	return meta, rc, err
}

// opened is the metadata of the snapshot raft opened last, or nil.
func (o *openedSnapshots) opened() *raft.SnapshotMeta { return o.last.Load() }

// minTrailingLogs is the fewest entries a node keeps behind a snapshot,
// however large they are.
const minTrailingLogs = 64

// compactor keeps a node's log bounded in bytes. raft bounds the log in
// entries only: it keeps TrailingLogs entries after a snapshot and takes
// one at most every SnapshotInterval once SnapshotThreshold entries
// arrived, so that large commands (a 1 MiB command is four 256 KiB
// chunks) grew a log past gigabytes. As batches are stored, the compactor
// lowers raft's TrailingLogs to the entries that fit in TrailingLogBytes,
// and snapshots once the log holds more than the trailing bytes plus
// SnapshotThresholdBytes. It empties the log cache once the node has been
// idle for cacheIdle. It also takes the snapshot that the FSM
// deferred while a chunked command was half applied as soon as that
// command is complete, where raft would wait for its next interval.
type compactor struct {
	n         *RaftNode
	meter     *store.Meter
	cache     *store.LogCache // nil in memory
	trailing  uint64          // TrailingLogBytes
	threshold uint64          // SnapshotThresholdBytes
	maxTrail  uint64          // raft's TrailingLogs as configured: the most kept

	wake chan struct{}
	stop context.CancelFunc
	done chan struct{}
}

// startCompactor starts the node's compactor; its stop function waits for
// the snapshot it may be taking.
func startCompactor(n *RaftNode, meter *store.Meter, cache *store.LogCache, maxTrail uint64) func() error {
	ctx, cancel := context.WithCancel(context.Background())
	c := &compactor{
		n: n, meter: meter, cache: cache, maxTrail: maxTrail,
		trailing:  uint64(n.cfg.TrailingLogBytes),
		threshold: uint64(n.cfg.SnapshotThresholdBytes),
		wake:      make(chan struct{}, 1),
		stop:      cancel,
		done:      make(chan struct{}),
	}
	meter.Stored = c.poke
	n.fsm.completed = c.poke
	go c.run(ctx)
	return func() error {
		c.stop()
		<-c.done
		return nil
	}
}

func (c *compactor) poke() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// cacheIdle is how long a node's log cache stays filled once nothing is
// stored: replication and a lagging follower read the newest entries from
// it while writes go on; an idle node gives the memory back.
const cacheIdle = 2 * time.Second

// walBatchBytes bounds the batches raft-wal is given (see
// store.Meter.MaxBatchBytes).
const walBatchBytes = 2 << 20

// compactPause spaces the compactor's checks: stored batches come by the
// thousand per second under load, and a check every few milliseconds is
// as good as one per batch.
const compactPause = 20 * time.Millisecond

func (c *compactor) run(ctx context.Context) {
	defer close(c.done)
	lastTrail := c.maxTrail
	var snappedAt uint64 // meter's total at the last snapshot taken here
	idle := time.NewTimer(cacheIdle)
	defer idle.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-idle.C:
			if c.cache != nil {
				c.cache.Clear()
			}
			continue
		case <-c.wake:
		}
		idle.Reset(cacheIdle)
		lastTrail = c.boundTrailing(lastTrail)
		deferred := c.n.fsm.deferredDone()
		total := c.meter.Total()
		over := c.meter.Bytes() > c.trailing+c.threshold && total-snappedAt >= c.threshold/2
		if over || deferred {
			why := "the log passed its byte bound"
			if !over {
				why = "a chunked command that deferred a snapshot is complete"
			}
			c.n.logger.Debug("taking a snapshot", "why", why, "log_bytes", c.meter.Bytes())
			if _, err := c.n.userSnapshot(ctx); err != nil && !errors.Is(err, raft.ErrNothingNewToSnapshot) && ctx.Err() == nil {
				c.n.logger.Warn("snapshot to bound the log failed", "why", why, "error", err)
			} else if err == nil {
				snappedAt = total
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(compactPause):
		}
	}
}

// boundTrailing sets raft's TrailingLogs to the newest entries that fit
// in TrailingLogBytes (raft's own count when the meter cannot tell yet),
// when that differs enough from last, the count set before; it returns the
// count now set.
func (c *compactor) boundTrailing(last uint64) uint64 {
	want := c.maxTrail
	if n, ok := c.meter.Trailing(c.trailing); ok {
		want = min(max(n, minTrailingLogs), c.maxTrail)
	}
	// Reloading raft's configuration is cheap, but not worth doing for
	// every small change in the entries' sizes.
	if want == last || (want != c.maxTrail && want >= last-last/8 && want <= last+last/8) {
		return last
	}
	rc := c.n.raft.ReloadableConfig()
	rc.TrailingLogs = want
	if err := c.n.raft.ReloadConfig(rc); err != nil {
		c.n.logger.Warn("cannot bound the trailing log in bytes", "trailing_logs", want, "error", err)
		return last
	}
	return want
}
