package raftkit

import (
	"context"
	"encoding/binary"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"

	"github.com/raftkit/raftkit/internal/wire"
)

// Large commands enter the raft log in chunks. A follower's raft transport
// decodes AppendEntries with a zero go-msgpack handle, which reads a []byte
// of at most 256 KiB with one allocation but grows a longer one 256 KiB at a
// time, copying what it has read at each step (quadratic in the entry's
// size); raftkit's BoltDB store, like raft-boltdb, decodes entries it reads
// back the same way. So the leader submits a command longer than chunkSize
// as consecutive log entries of at most chunkSize bytes each, every one
// carrying a chunk header in its raft.Log.Extensions, and the FSM wrapper
// (trackedFSM) hands the user's FSM the whole command once, at the final
// chunk's index. Commands of at most chunkSize bytes, and every command
// while a peer does not confirm that it reads chunks (chunkReaders), are
// submitted as they are, with no Extensions.
//
// The rule that reassembles chunks depends only on the log, so every node
// agrees on it: a chunk with index 0 starts a sequence; a chunk continues
// it only if it is the next one of the same sequence and term; anything
// else in between (another command, a configuration entry, an abort
// entry) drops the sequence, and its final chunk then answers
// errChunkIncomplete: the command was not applied.

// chunkSize is the largest command raftkit submits as one log entry, and
// the size of every chunk of a larger command but its last: the largest
// []byte that go-msgpack decodes with a single allocation. It is part of
// the log's format (chunkMagic names the version).
const chunkSize = 256 << 10

// chunkMagic opens every chunk header: raftkit's chunk format, version 1.
const chunkMagic = "rkc1"

// chunkHeaderLen is a chunk header's length: magic, flags, sequence id,
// index, count, total length.
const chunkHeaderLen = len(chunkMagic) + 1 + 8 + 4 + 4 + 8

// chunkFlagAbort marks an abort entry: it carries no data and drops the
// pending sequence, if any. A new leader submits one when its FSM holds a
// sequence that an earlier leader left unfinished.
const chunkFlagAbort = 1

var (
	// errChunkIncomplete is the FSM's response to a chunk that does not
	// continue the pending sequence: the command it belongs to was not
	// applied (an entry came between its chunks).
	errChunkIncomplete = errors.New("raftkit: a chunked command was interrupted by another log entry and not applied")
	// errChunkInProgress refuses a snapshot while the FSM holds part of a
	// chunked command: the snapshot would cover chunks that the user's FSM
	// has not seen. raft reports it formatted with %v, so callers match
	// its text (see isChunkInProgress).
	errChunkInProgress = errors.New("raftkit: snapshot deferred: a chunked command is being applied")
	// errBadChunkHeader is returned by parseChunkHeader for Extensions
	// that open with chunkMagic but are not a valid header.
	errBadChunkHeader = errors.New("raftkit: malformed chunk header")
)

// chunkHeader describes one chunk of a command: chunk index of count, the
// whole command being total bytes long, or an abort entry.
type chunkHeader struct {
	abort bool
	id    uint64 // the sequence, unique per node
	index uint32
	count uint32
	total uint64
}

// chunkCount is how many chunks a command of size bytes takes.
func chunkCount(size int) int { return (size + chunkSize - 1) / chunkSize }

// encode returns h as Extensions.
func (h chunkHeader) encode() []byte {
	b := make([]byte, chunkHeaderLen)
	copy(b, chunkMagic)
	p := len(chunkMagic)
	if h.abort {
		b[p] = chunkFlagAbort
	}
	p++
	binary.BigEndian.PutUint64(b[p:], h.id)
	binary.BigEndian.PutUint32(b[p+8:], h.index)
	binary.BigEndian.PutUint32(b[p+12:], h.count)
	binary.BigEndian.PutUint64(b[p+16:], h.total)
	return b
}

// isChunk reports whether ext is (meant to be) a chunk header: whether it
// opens with chunkMagic. Other Extensions belong to whoever wrote the
// entry through Raft() and are passed through.
func isChunk(ext []byte) bool {
	return len(ext) >= len(chunkMagic) && string(ext[:len(chunkMagic)]) == chunkMagic
}

// parseChunkHeader reads a header that encode wrote, and rejects anything
// else: a wrong length or flag, an abort header with other fields set, a
// count of 0, an index outside the count, a total over
// MaxCommandSizeLimit or one that count chunks of chunkSize cannot hold
// exactly (every chunk but the last full, the last not empty).
func parseChunkHeader(ext []byte) (chunkHeader, error) {
	var h chunkHeader
	if len(ext) != chunkHeaderLen || !isChunk(ext) {
		return h, errBadChunkHeader
	}
	p := len(chunkMagic)
	flags := ext[p]
	p++
	h.id = binary.BigEndian.Uint64(ext[p:])
	h.index = binary.BigEndian.Uint32(ext[p+8:])
	h.count = binary.BigEndian.Uint32(ext[p+12:])
	h.total = binary.BigEndian.Uint64(ext[p+16:])
	switch {
	case flags == chunkFlagAbort:
		if h.id != 0 || h.index != 0 || h.count != 0 || h.total != 0 {
			return chunkHeader{}, errBadChunkHeader
		}
		h.abort = true
		return h, nil
	case flags != 0,
		h.count == 0,
		h.index >= h.count,
		h.total > MaxCommandSizeLimit,
		h.total <= uint64(h.count-1)*chunkSize,
		h.total > uint64(h.count)*chunkSize:
		return chunkHeader{}, errBadChunkHeader
	}
	return h, nil
}

// chunkLen is the length chunk h.index must have.
func (h chunkHeader) chunkLen() int {
	return int(min(uint64(chunkSize), h.total-uint64(h.index)*chunkSize))
}

// chunkSeq is the sequence the FSM is assembling.
type chunkSeq struct {
	id    uint64
	term  uint64
	next  uint32 // the index of the chunk that continues it
	count uint32
	buf   []byte // the chunks so far; cap is the command's length
}

// submit hands one command to raft on the leader: as it is, or in chunks
// when it is longer than chunkSize. The chunks of one command must follow
// each other in the log with nothing of this node's in between, so a
// chunked command holds n.submitMu exclusively while it submits, and every
// other command holds it shared while raft takes it (not while it waits
// for the outcome).
func (n *RaftNode) submit(cmd ownedCmd, timeout time.Duration) raft.ApplyFuture {
	if len(cmd) > chunkSize && n.chunkReaders.all(n, timeout) {
		return n.submitChunked(cmd, timeout)
	}
	n.submitMu.RLock()
	f := n.raft.Apply(cmd, timeout)
	n.submitMu.RUnlock()
	return f
}

// submitChunked submits cmd as chunks, one after another, each within
// what is left of timeout, and returns the final chunk's future: the
// command's outcome. raft resolves the other chunks' futures with no one
// waiting. A chunk that raft did not take leaves the sequence unfinished
// in the log, where the next entry drops it.
func (n *RaftNode) submitChunked(cmd ownedCmd, timeout time.Duration) raft.ApplyFuture {
	h := chunkHeader{id: n.chunkIDs.Add(1), count: uint32(chunkCount(len(cmd))), total: uint64(len(cmd))}
	deadline := time.Now().Add(timeout)
	n.submitMu.Lock()
	defer n.submitMu.Unlock()
	var f raft.ApplyFuture
	// With BatchApplyCh, raft's leader loop would take every chunk at
	// once, write them all, and only then send them: the leader's and a
	// follower's disk writes of the whole command would add up. Fed a
	// group at a time, each once the one before is stored, the leader
	// writes a group while its followers write the one before. Only with
	// raft-wal (see storedChunks in NewRaftNode).
	gated := n.batchApplyCh && n.storedChunks != nil
	for i := 0; i < int(h.count); i++ {
		left := time.Until(deadline)
		if left <= 0 {
			if i > 0 {
				n.noteChunkCut()
			}
			return failedFuture{raft.ErrEnqueueTimeout}
		}
		if gated && i > 0 && i%chunkGroup == 0 {
			gated = n.storedChunks.wait(h.id, uint32(i-1), min(left, chunkGroupWait), n.closed) && n.IsLeader()
		}
		h.index = uint32(i)
		part := cmd[i*chunkSize : min(len(cmd), (i+1)*chunkSize)]
		f = n.raft.ApplyLog(raft.Log{Data: part, Extensions: h.encode()}, left)
	}
	if !time.Now().Before(deadline) {
		// raft may have refused the last chunks (ErrEnqueueTimeout).
		n.noteChunkCut()
	}
	return chunkedFuture{ApplyFuture: f, n: n}
}

const (
	// chunkGroup is how many chunks (1 MiB) a leader submits before it
	// waits for its log store to take them.
	chunkGroup = 4
	// chunkGroupWait bounds that wait: past it (raft lost leadership,
	// say), the rest of the command is submitted at once.
	chunkGroupWait = time.Second
)

// storedChunks is the chunk a node's log store took last: the log cache
// tells it the last entry of every batch stored.
type storedChunks struct {
	batches atomic.Uint64 // batches stored that ended in a chunk

	mu    sync.Mutex
	id    uint64
	index uint32
	wake  chan struct{} // closed at the next chunk stored
}

func newStoredChunks() *storedChunks { return &storedChunks{wake: make(chan struct{})} }

// note records last if it is a chunk.
func (s *storedChunks) note(last *raft.Log) {
	if !isChunk(last.Extensions) {
		return
	}
	h, err := parseChunkHeader(last.Extensions)
	if err != nil || h.abort {
		return
	}
	s.batches.Add(1)
	s.mu.Lock()
	s.id, s.index = h.id, h.index
	close(s.wake)
	s.wake = make(chan struct{})
	s.mu.Unlock()
}

// wait waits until chunk index of sequence id, or a later one of it, is
// stored, for at most limit or until stop closes; it reports whether the
// chunk was stored.
func (s *storedChunks) wait(id uint64, index uint32, limit time.Duration, stop <-chan struct{}) bool {
	var timer *time.Timer
	for {
		s.mu.Lock()
		done, wake := s.id == id && s.index >= index, s.wake
		s.mu.Unlock()
		if done {
			return true
		}
		if timer == nil {
			timer = time.NewTimer(limit)
			defer timer.Stop()
		}
		select {
		case <-wake:
		case <-timer.C:
			return false
		case <-stop:
			return false
		}
	}
}

// noteChunkCut records that this node may have left a sequence unfinished
// in its own term, where no later leader will abort it: the abort loop
// then aborts the sequence the FSM holds.
func (n *RaftNode) noteChunkCut() {
	n.chunkCut.Store(true)
	poke(n.fsm.checkChunks)
}

// chunkedFuture is a chunked command's outcome: its final chunk's future,
// with errChunkIncomplete as an error rather than the FSM's response.
type chunkedFuture struct {
	raft.ApplyFuture
	n *RaftNode // told when the final chunk failed (nil in unit tests)
}

func (f chunkedFuture) Error() error {
	if err := f.ApplyFuture.Error(); err != nil {
		// Whatever stopped the final chunk (a leadership transfer, the
		// deadline, a lost leadership) may have left the first ones in
		// the log: have the abort loop drop them if this node leads.
		if f.n != nil {
			f.n.noteChunkCut()
		}
		return err
	}
	if f.ApplyFuture.Response() == errChunkIncomplete {
		return errChunkIncomplete
	}
	return nil
}

func (f chunkedFuture) Response() any {
	if r := f.ApplyFuture.Response(); r != errChunkIncomplete {
		return r
	}
	return nil
}

// failedFuture is a raft.ApplyFuture that failed before raft took it.
type failedFuture struct{ err error }

func (f failedFuture) Error() error  { return f.err }
func (f failedFuture) Response() any { return nil }
func (f failedFuture) Index() uint64 { return 0 }

// abortAbandonedChunks runs while the node is open. Whenever this node
// leads and its FSM holds a sequence of an earlier term (a leader that
// died between chunks), or one of its own submissions stopped between
// chunks (noteChunkCut), it submits an abort entry: no one can finish that
// sequence, and until an entry drops it the FSM refuses snapshots. The
// abort is submitted like a chunked command, never between another
// command's chunks, so an abort that turns out not to be needed (the
// sequence was dropped or completed by entries the FSM had yet to apply)
// is harmless.
func (n *RaftNode) abortAbandonedChunks(ctx context.Context) {
	watch := n.leadership.subscribe(ctx)
	leading := false
	var retry <-chan time.Time
	for {
		select {
		case l, ok := <-watch:
			if !ok {
				return
			}
			leading = l.IsLeader
		case <-n.fsm.checkChunks:
		case <-retry:
		case <-ctx.Done():
			return
		}
		retry = nil
		term := n.fsm.pendingTerm.Load()
		if !leading || term == 0 || (term >= n.raft.CurrentTerm() && !n.chunkCut.Load()) {
			continue
		}
		n.logger.Info("dropping a chunked command left unfinished in the log", "term", term)
		n.submitMu.Lock()
		cut := n.chunkCut.Swap(false)
		f := n.raft.ApplyLog(raft.Log{Extensions: chunkHeader{abort: true}.encode()}, n.cfg.ApplyTimeout)
		n.submitMu.Unlock()
		if err := n.waitFuture(ctx, f); err != nil {
			n.logger.Debug("abort of an unfinished chunked command failed; retrying", "error", err)
			if cut {
				n.chunkCut.Store(true)
			}
			retry = time.After(100 * time.Millisecond)
		}
	}
}

// isChunkInProgress reports whether err is a snapshot refused by
// errChunkInProgress. raft passes the FSM's error on formatted with %v,
// so only its text is left to match.
func isChunkInProgress(err error) bool {
	return err != nil && strings.Contains(err.Error(), errChunkInProgress.Error())
}

// Only nodes of this version or later reassemble chunks; an older node
// would hand each chunk to its FSM as a command of its own and silently
// diverge. So a leader chunks a command only while every other server in
// its configuration has said, lately, that it reads chunks (the Features
// request, which older nodes do not know). Otherwise the command enters
// the log whole, as before chunking: slower to decode, but read alike by
// every version.
const (
	chunkReaderTTL   = time.Minute     // how long a yes is trusted
	chunkReaderRetry = 5 * time.Second // how long a no (or no answer) is
	chunkReaderWait  = time.Second     // the longest wait for an answer
)

// chunkReaders remembers which peers read chunked commands, by address.
type chunkReaders struct {
	mu   sync.Mutex
	seen map[string]chunkReader
}

type chunkReader struct {
	ok bool
	at time.Time
}

// all reports whether every other server in n's configuration reads
// chunked commands, asking those not asked lately, each within timeout
// (at most chunkReaderWait).
func (c *chunkReaders) all(n *RaftNode, timeout time.Duration) bool {
	for _, s := range n.raft.GetConfiguration().Configuration().Servers {
		if string(s.ID) != n.id && !c.reads(n, string(s.Address), timeout) {
			return false
		}
	}
	return true
}

func (c *chunkReaders) reads(n *RaftNode, addr string, timeout time.Duration) bool {
	c.mu.Lock()
	r, ok := c.seen[addr]
	c.mu.Unlock()
	if ok && (r.ok && time.Since(r.at) < chunkReaderTTL || !r.ok && time.Since(r.at) < chunkReaderRetry) {
		return r.ok
	}
	ctx, cancel := context.WithTimeout(context.Background(), min(timeout, chunkReaderWait))
	defer cancel()
	var resp wire.FeaturesResponse
	_, err := n.rpc.call(ctx, addr, wire.MethodFeatures, &wire.FeaturesRequest{}, &resp)
	r = chunkReader{ok: err == nil && resp.Chunks, at: time.Now()}
	if !r.ok {
		n.logger.Debug("a peer does not confirm that it reads chunked commands; large commands enter the log whole", "peer", addr, "error", err)
	}
	c.mu.Lock()
	if c.seen == nil {
		c.seen = map[string]chunkReader{}
	}
	c.seen[addr] = r
	c.mu.Unlock()
	return r.ok
}

// Features tells a leader which of raftkit's log formats this node reads.
func (s *rpcService) Features(req *wire.FeaturesRequest, resp *wire.FeaturesResponse) error {
	resp.Chunks = !s.n.cfg.noChunks
	return nil
}
