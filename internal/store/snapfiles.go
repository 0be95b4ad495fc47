package store

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"hash/crc64"
	"io"
	"os"
	"path/filepath"
	"sort"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
)

// The files of raft's FileSnapshotStore under Dir/snapshots, read directly
// by offline tools (raft's own store lists only the retained, readable
// snapshots, and cannot be stopped while it checks a large one).

// removeTempSnapshots deletes snapshot directories that a crash left half
// written (raft names them *.tmp until they are complete, and ignores them
// otherwise; they only take space).
func removeTempSnapshots(dir string, logger hclog.Logger) {
	tmps, _ := filepath.Glob(filepath.Join(dir, SnapshotDir, "*.tmp"))
	for _, tmp := range tmps {
		if err := os.RemoveAll(tmp); err != nil {
			logger.Warn("cannot remove an unfinished snapshot", "path", tmp, "error", err)
			continue
		}
		logger.Warn("removed an unfinished snapshot left by a crash", "path", tmp)
	}
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

// SnapshotFile describes one snapshot on disk, as an offline tool reads
// it.
type SnapshotFile struct {
	ID          string
	Index, Term uint64
	// Size is the snapshot's size in bytes, from its metadata.
	Size int64
	// CRCOK is true when the data's CRC-64 and length match the metadata.
	CRCOK bool
	// Error says what is wrong when CRCOK is false.
	Error string
}

// readSnapshots lists and checks the snapshots under dir, newest first.
// Snapshots still being written (".tmp") are skipped, as raft does.
func readSnapshots(ctx context.Context, dir string) ([]SnapshotFile, error) {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []SnapshotFile
	for _, e := range entries {
		if !e.IsDir() || filepath.Ext(e.Name()) == ".tmp" {
			continue
		}
		si := SnapshotFile{ID: e.Name()}
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
	h := NewCRC()
	n, err := io.Copy(h, ContextReader(ctx, f))
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

// maxSnapshotTerm returns the highest term among the snapshots under dir
// whose metadata can be read (0 if none).
func maxSnapshotTerm(dir string) uint64 {
	entries, _ := os.ReadDir(dir)
	var term uint64
	for _, e := range entries {
		if !e.IsDir() || filepath.Ext(e.Name()) == ".tmp" {
			continue
		}
		if m, err := readSnapshotMeta(filepath.Join(dir, e.Name())); err == nil {
			term = max(term, m.Term)
		}
	}
	return term
}

var crcTable = crc64.MakeTable(crc64.ECMA)

// NewCRC returns the checksum raft's file snapshots record in meta.json
// (CRC-64, ECMA); backups carry the same.
func NewCRC() hash.Hash64 { return crc64.New(crcTable) }

// ContextReader reads from r until ctx ends, then returns ctx's error.
func ContextReader(ctx context.Context, r io.Reader) io.Reader { return &ctxReader{ctx: ctx, r: r} }

type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c *ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}
