// Package powerloss is a file system for tests that loses, on Cut, what a
// power failure may lose: it is a FUSE pass-through mount over a backing
// directory that remembers, for every file, its content as of its last
// fsync or fdatasync, and for every directory its entries as of its last
// fsync; Cut unmounts and rolls everything back to that synced state.
//
// What it models, precisely:
//   - Writes go through to the backing file at once (reads, mmap included,
//     see them); before a write or truncate changes a 4 KiB page of a file
//     that page's synced content is saved. fsync and fdatasync of a file
//     make its current content and size its synced state (fdatasync is
//     treated as fsync; neither is passed to the backing file, whose
//     durability is not what is modelled).
//   - fsync of a directory makes its current entries (name to file
//     identity) its synced entries. Creating, renaming and removing change
//     only current entries. A file or directory created since its parent
//     directory's last fsync is therefore gone after a cut, a renamed one
//     is back under its old name, a removed one is back.
//   - A file created and never fsynced comes back empty if its entry was
//     synced; a directory never fsynced comes back empty.
//   - Synced data is never reordered or partly lost; unsynced data is lost
//     entirely, except that with Options.Tear the last unsynced write
//     before the cut survives up to a random 4 KiB boundary inside it
//     (possibly none of it): a torn write. Writes that continue one
//     another in the same file count as one write, since the kernel
//     splits large writes.
//   - Everything present when the mount starts counts as synced.
//   - Not modelled: hard links and symlinks made through the mount (they
//     work, but are rolled back like files), xattrs, timestamps, modes.
//
// It needs /dev/fuse and root (it mounts with mount(2) directly).
package powerloss

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// pageSize is the unit in which synced content is saved and writes tear.
const pageSize = 4096

// Options configure a mount. The zero value is a faithful disk.
type Options struct {
	// Tear makes Cut keep a prefix, up to a 4 KiB boundary, of the last
	// unsynced write (chosen with Rand).
	Tear bool
	// ForgetSyncs makes fsync a no-op that still reports success: a disk
	// that lies. Cut then loses everything written since the mount
	// started. It exists as the negative control of oracles built on
	// this package.
	ForgetSyncs bool
	// Rand chooses where writes tear; nil means a fixed seed.
	Rand *rand.Rand
}

// FS is one power-loss mount. Its methods are safe for concurrent use.
type FS struct {
	base, backing, ids, mnt string
	opts                    Options

	mu     sync.Mutex
	server *fuse.Server
	nextID uint64
	byIno  map[uint64]uint64           // backing inode number -> identity
	files  map[uint64]*fileState       // identity -> synced state of a file
	dirs   map[uint64]map[string]entry // identity -> synced entries of a directory
	rootID uint64
	last   *write // the most recent write not yet synced
	cuts   int
}

type entry struct {
	id  uint64
	dir bool
}

// fileState is what a file held at its last sync: its size, and the
// original content of every page changed since.
type fileState struct {
	size  int64
	pages map[int64][]byte
}

type write struct {
	id   uint64
	off  int64
	data []byte
}

// Mount creates base/data (the backing directory), base/ids (links that
// keep every file alive until the next cut) and base/mnt (the mount point),
// and mounts. Whatever base/data holds already counts as synced. Call
// Close to unmount.
func Mount(base string, opts Options) (*FS, error) {
	if opts.Rand == nil {
		opts.Rand = rand.New(rand.NewPCG(1, 1))
	}
	p := &FS{base: base, backing: filepath.Join(base, "data"), ids: filepath.Join(base, "ids"), mnt: filepath.Join(base, "mnt"), opts: opts}
	for _, d := range []string{p.backing, p.mnt} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}
	if err := p.reset(); err != nil {
		return nil, err
	}
	return p, p.mount()
}

// Dir is the mount point: the directory the code under test uses.
func (p *FS) Dir() string { return p.mnt }

// Cuts reports how many times Cut ran.
func (p *FS) Cuts() int { p.mu.Lock(); defer p.mu.Unlock(); return p.cuts }

// Cut simulates a power failure: it unmounts (every process using the
// mount must be dead, or Cut fails), drops everything not synced, and
// mounts again.
func (p *FS) Cut() error {
	if err := p.unmount(); err != nil {
		return err
	}
	p.mu.Lock()
	err := p.rollBack()
	p.cuts++
	p.mu.Unlock()
	if err != nil {
		return err
	}
	if err := p.reset(); err != nil {
		return err
	}
	return p.mount()
}

// Close unmounts, keeping everything as it is.
func (p *FS) Close() error { return p.unmount() }

func (p *FS) mount() error {
	root := &fs.LoopbackRoot{Path: p.backing}
	var st syscall.Stat_t
	if err := syscall.Stat(p.backing, &st); err != nil {
		return err
	}
	root.Dev = uint64(st.Dev)
	rootNode := p.newNode(root, nil, "", &st)
	root.RootNode = rootNode
	zero := time.Duration(0)
	server, err := fs.Mount(p.mnt, rootNode, &fs.Options{
		MountOptions: fuse.MountOptions{
			FsName:            "powerloss",
			Name:              "powerloss",
			DirectMountStrict: true,
		},
		// Every change goes through this mount, but no caching keeps
		// what processes see equal to the backing directory.
		EntryTimeout:    &zero,
		AttrTimeout:     &zero,
		NegativeTimeout: &zero,
	})
	if err != nil {
		return fmt.Errorf("powerloss: mount %s: %w", p.mnt, err)
	}
	p.mu.Lock()
	p.server = server
	p.mu.Unlock()
	return nil
}

func (p *FS) unmount() error {
	p.mu.Lock()
	server := p.server
	p.server = nil
	p.mu.Unlock()
	if server == nil {
		return nil
	}
	var err error
	for i := 0; i < 50; i++ {
		if err = server.Unmount(); err == nil {
			server.Wait()
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	p.mu.Lock()
	p.server = server
	p.mu.Unlock()
	return fmt.Errorf("powerloss: unmount %s (is a process still using it?): %w", p.mnt, err)
}

// reset forgets all history: what the backing directory holds now is
// synced, and every file gets an identity and a link under ids.
func (p *FS) reset() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := os.RemoveAll(p.ids); err != nil {
		return err
	}
	if err := os.MkdirAll(p.ids, 0o755); err != nil {
		return err
	}
	p.byIno = map[uint64]uint64{}
	p.files = map[uint64]*fileState{}
	p.dirs = map[uint64]map[string]entry{}
	p.last = nil
	id, err := p.adopt(p.backing)
	p.rootID = id
	return err
}

// adopt gives path (and, for a directory, everything under it) an
// identity whose synced state is its present state.
func (p *FS) adopt(path string) (uint64, error) {
	var st syscall.Stat_t
	if err := syscall.Lstat(path, &st); err != nil {
		return 0, err
	}
	if st.Mode&syscall.S_IFMT != syscall.S_IFDIR {
		id, err := p.identify(path, &st)
		if err != nil {
			return 0, err
		}
		p.files[id] = &fileState{size: st.Size}
		return id, nil
	}
	id, _ := p.identify(path, &st)
	des, err := os.ReadDir(path)
	if err != nil {
		return 0, err
	}
	entries := map[string]entry{}
	for _, de := range des {
		cid, err := p.adopt(filepath.Join(path, de.Name()))
		if err != nil {
			return 0, err
		}
		entries[de.Name()] = entry{id: cid, dir: de.IsDir()}
	}
	p.dirs[id] = entries
	return id, nil
}

// identify returns path's identity, giving it a new one (and, for a
// file, a link under ids) if it has none. Called with mu held.
func (p *FS) identify(path string, st *syscall.Stat_t) (uint64, error) {
	if id, ok := p.byIno[st.Ino]; ok {
		// A removed directory's number may now name a file.
		if _, isDir := p.dirs[id]; isDir == (st.Mode&syscall.S_IFMT == syscall.S_IFDIR) {
			return id, nil
		}
	}
	p.nextID++
	id := p.nextID
	if st.Mode&syscall.S_IFMT == syscall.S_IFDIR {
		p.byIno[st.Ino] = id
		p.dirs[id] = map[string]entry{}
		return id, nil
	}
	if err := os.Link(path, p.idPath(id)); err != nil {
		return 0, err
	}
	p.byIno[st.Ino] = id
	p.files[id] = &fileState{}
	return id, nil
}

func (p *FS) idPath(id uint64) string { return filepath.Join(p.ids, fmt.Sprint(id)) }

// created records a file or directory just made through the mount: it is
// new, so its synced content is empty, and it gets a new identity even if
// its inode number is one a removed directory had (nothing keeps removed
// directories alive). Called with mu held.
func (p *FS) created(path string) {
	var st syscall.Stat_t
	if err := syscall.Lstat(path, &st); err != nil {
		return
	}
	delete(p.byIno, st.Ino)
	p.identify(path, &st)
}

// idOf returns the identity of the file open as fd. Called with mu held.
func (p *FS) idOfFd(fd int) (uint64, *fileState) {
	var st syscall.Stat_t
	if err := syscall.Fstat(fd, &st); err != nil {
		return 0, nil
	}
	id, ok := p.byIno[st.Ino]
	if !ok {
		return 0, nil
	}
	return id, p.files[id]
}

// preserve saves the synced content of the pages of f that [off, end)
// touches, before they change. Called with mu held.
func (p *FS) preserve(f *fileState, fd int, off, end int64) {
	if f == nil || off >= f.size {
		return
	}
	if end > f.size {
		end = f.size
	}
	if f.pages == nil {
		f.pages = map[int64][]byte{}
	}
	for pg := off / pageSize; pg*pageSize < end; pg++ {
		if _, ok := f.pages[pg]; ok {
			continue
		}
		buf := make([]byte, pageSize)
		if rest := f.size - pg*pageSize; rest < pageSize {
			buf = buf[:rest]
		}
		n, _ := syscall.Pread(fd, buf, pg*pageSize)
		f.pages[pg] = buf[:n]
	}
}

// synced makes the current content of the file open as fd its synced
// content. Called with mu held.
func (p *FS) synced(fd int) {
	if p.opts.ForgetSyncs {
		return
	}
	var st syscall.Stat_t
	if err := syscall.Fstat(fd, &st); err != nil {
		return
	}
	id, ok := p.byIno[st.Ino]
	if !ok {
		return
	}
	p.files[id] = &fileState{size: st.Size}
	if p.last != nil && p.last.id == id {
		p.last = nil
	}
}

// syncedDir makes the current entries of the directory at path its
// synced entries. Called with mu held.
func (p *FS) syncedDir(path string) {
	if p.opts.ForgetSyncs {
		return
	}
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return
	}
	id, err := p.identify(path, &st)
	if err != nil {
		return
	}
	des, err := os.ReadDir(path)
	if err != nil {
		return
	}
	entries := map[string]entry{}
	for _, de := range des {
		var cst syscall.Stat_t
		cp := filepath.Join(path, de.Name())
		if err := syscall.Lstat(cp, &cst); err != nil {
			continue
		}
		cid, err := p.identify(cp, &cst)
		if err != nil {
			continue
		}
		entries[de.Name()] = entry{id: cid, dir: de.IsDir()}
	}
	p.dirs[id] = entries
}

// rollBack restores every file's synced content, tears the last write if
// asked, and rebuilds the backing directory from the synced entries.
// Called with mu held, unmounted.
func (p *FS) rollBack() error {
	for id, f := range p.files {
		if f.pages == nil && !p.grew(id, f) {
			continue
		}
		if err := p.restore(id, f); err != nil {
			return err
		}
	}
	if w := p.last; p.opts.Tear && w != nil {
		if err := p.tear(w); err != nil {
			return err
		}
	}
	fresh := p.backing + ".cut"
	if err := os.RemoveAll(fresh); err != nil {
		return err
	}
	if err := os.Mkdir(fresh, 0o755); err != nil {
		return err
	}
	if err := p.rebuild(p.rootID, fresh, map[uint64]bool{}); err != nil {
		return err
	}
	if err := os.RemoveAll(p.backing); err != nil {
		return err
	}
	return os.Rename(fresh, p.backing)
}

func (p *FS) grew(id uint64, f *fileState) bool {
	st, err := os.Stat(p.idPath(id))
	return err == nil && st.Size() != f.size
}

func (p *FS) restore(id uint64, f *fileState) error {
	h, err := os.OpenFile(p.idPath(id), os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer h.Close()
	for pg, data := range f.pages {
		if _, err := h.WriteAt(data, pg*pageSize); err != nil {
			return err
		}
	}
	return h.Truncate(f.size)
}

// tear writes the part of w before a random 4 KiB boundary inside it.
func (p *FS) tear(w *write) error {
	first := w.off/pageSize + 1
	lastB := (w.off + int64(len(w.data)) - 1) / pageSize
	if lastB < first {
		return nil // no boundary inside: the whole write is lost
	}
	b := (first + p.opts.Rand.Int64N(lastB-first+1)) * pageSize
	h, err := os.OpenFile(p.idPath(w.id), os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer h.Close()
	_, err = h.WriteAt(w.data[:b-w.off], w.off)
	return err
}

func (p *FS) rebuild(dirID uint64, path string, seen map[uint64]bool) error {
	if seen[dirID] {
		return nil
	}
	seen[dirID] = true
	for name, e := range p.dirs[dirID] {
		child := filepath.Join(path, name)
		if e.dir {
			if err := os.Mkdir(child, 0o755); err != nil {
				return err
			}
			if err := p.rebuild(e.id, child, seen); err != nil {
				return err
			}
			continue
		}
		if err := os.Link(p.idPath(e.id), child); err != nil {
			return err
		}
	}
	return nil
}
