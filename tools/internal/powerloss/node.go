package powerloss

import (
	"context"
	"os"
	"path/filepath"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// node is go-fuse's loopback node with the calls that create files,
// truncate them, open them and sync directories intercepted.
type node struct {
	fs.LoopbackNode
	p *FS
}

func (p *FS) newNode(root *fs.LoopbackRoot, _ *fs.Inode, _ string, _ *syscall.Stat_t) fs.InodeEmbedder {
	return &node{LoopbackNode: fs.LoopbackNode{RootData: root}, p: p}
}

// WrapChild makes the children that go-fuse's loopback code creates
// (on lookup, mkdir, mknod) nodes of this file system too.
func (n *node) WrapChild(ctx context.Context, ops fs.InodeEmbedder) fs.InodeEmbedder {
	if lb, ok := ops.(*fs.LoopbackNode); ok {
		return &node{LoopbackNode: fs.LoopbackNode{RootData: lb.RootData}, p: n.p}
	}
	return ops
}

// backingPath is the node's path in the backing directory.
func (n *node) backingPath() string {
	return filepath.Join(n.RootData.Path, n.Path(n.RootData.RootNode.EmbeddedInode()))
}

var (
	_ fs.NodeCreater        = (*node)(nil)
	_ fs.NodeMkdirer        = (*node)(nil)
	_ fs.NodeMknoder        = (*node)(nil)
	_ fs.NodeOpener         = (*node)(nil)
	_ fs.NodeOpendirHandler = (*node)(nil)
	_ fs.NodeSetattrer      = (*node)(nil)
	_ fs.NodeFsyncer        = (*node)(nil)
	_ fs.NodeWrapChilder    = (*node)(nil)
)

func (n *node) Create(ctx context.Context, name string, flags uint32, mode uint32, out *fuse.EntryOut) (*fs.Inode, fs.FileHandle, uint32, syscall.Errno) {
	path := filepath.Join(n.backingPath(), name)
	n.p.mu.Lock()
	defer n.p.mu.Unlock()
	if flags&syscall.O_TRUNC != 0 {
		n.p.truncating(path, 0)
	}
	_, statErr := os.Lstat(path)
	f, err := os.OpenFile(path, int(flags&^syscall.O_APPEND)|os.O_CREATE, os.FileMode(mode))
	if err != nil {
		return nil, nil, 0, fs.ToErrno(err)
	}
	if os.IsNotExist(statErr) {
		n.p.created(path)
	}
	var st syscall.Stat_t
	if err := syscall.Fstat(int(f.Fd()), &st); err != nil {
		f.Close()
		return nil, nil, 0, fs.ToErrno(err)
	}
	ch := n.NewInode(ctx, n.p.newNode(n.RootData, n.EmbeddedInode(), name, &st), fs.StableAttr{Mode: st.Mode, Ino: st.Ino})
	out.FromStat(&st)
	return ch, n.p.handle(f), 0, 0
}

func (n *node) Mkdir(ctx context.Context, name string, mode uint32, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	n.p.mu.Lock()
	defer n.p.mu.Unlock()
	ch, errno := n.LoopbackNode.Mkdir(ctx, name, mode, out)
	if errno == 0 {
		n.p.created(filepath.Join(n.backingPath(), name))
	}
	return ch, errno
}

func (n *node) Mknod(ctx context.Context, name string, mode, rdev uint32, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	n.p.mu.Lock()
	defer n.p.mu.Unlock()
	ch, errno := n.LoopbackNode.Mknod(ctx, name, mode, rdev, out)
	if errno == 0 {
		n.p.created(filepath.Join(n.backingPath(), name))
	}
	return ch, errno
}

func (n *node) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	path := n.backingPath()
	n.p.mu.Lock()
	defer n.p.mu.Unlock()
	if flags&syscall.O_TRUNC != 0 {
		n.p.truncating(path, 0)
	}
	f, err := os.OpenFile(path, int(flags&^(syscall.O_APPEND|fuse.FMODE_EXEC)), 0)
	if err != nil {
		return nil, 0, fs.ToErrno(err)
	}
	return n.p.handle(f), 0, 0
}

func (n *node) Setattr(ctx context.Context, f fs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	if h, ok := f.(*file); ok {
		return h.Setattr(ctx, in, out)
	}
	n.p.mu.Lock()
	defer n.p.mu.Unlock()
	if size, ok := in.GetSize(); ok {
		n.p.truncating(n.backingPath(), int64(size))
	}
	return n.LoopbackNode.Setattr(ctx, f, in, out)
}

// Fsync of a file through its node (fsync on a handle goes to the handle).
func (n *node) Fsync(ctx context.Context, f fs.FileHandle, flags uint32) syscall.Errno {
	if h, ok := f.(*file); ok {
		return h.Fsync(ctx, flags)
	}
	n.p.mu.Lock()
	defer n.p.mu.Unlock()
	path := n.backingPath()
	if st, err := os.Stat(path); err == nil && st.IsDir() {
		n.p.syncedDir(path)
		return 0
	}
	h, err := os.Open(path)
	if err != nil {
		return fs.ToErrno(err)
	}
	defer h.Close()
	n.p.synced(int(h.Fd()))
	return 0
}

func (n *node) OpendirHandle(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	ds, _, errno := n.LoopbackNode.OpendirHandle(ctx, flags)
	if errno != 0 {
		return nil, 0, errno
	}
	return &dirHandle{FileHandle: ds, n: n}, 0, 0
}

// truncating saves what a truncate of path to size is about to change.
// Called with mu held.
func (p *FS) truncating(path string, size int64) {
	h, err := os.Open(path)
	if err != nil {
		return
	}
	defer h.Close()
	_, f := p.idOfFd(int(h.Fd()))
	p.preserve(f, int(h.Fd()), size, 1<<62)
}

// file is an open file: go-fuse's loopback file with writes, truncates
// and syncs recorded.
type file struct {
	*fs.LoopbackFile
	f *os.File
	p *FS
}

func (p *FS) handle(f *os.File) *file {
	return &file{LoopbackFile: fs.NewLoopbackFileFromOS(f), f: f, p: p}
}

func (h *file) fd() int { return int(h.f.Fd()) }

func (h *file) Write(ctx context.Context, data []byte, off int64) (uint32, syscall.Errno) {
	h.p.mu.Lock()
	defer h.p.mu.Unlock()
	id, f := h.p.idOfFd(h.fd())
	h.p.preserve(f, h.fd(), off, off+int64(len(data)))
	n, errno := h.LoopbackFile.Write(ctx, data, off)
	if errno == 0 && f != nil {
		// The kernel splits a large write into several; a write that
		// continues the last one is the same write.
		if l := h.p.last; l != nil && l.id == id && l.off+int64(len(l.data)) == off {
			l.data = append(l.data, data[:n]...)
		} else {
			h.p.last = &write{id: id, off: off, data: append([]byte(nil), data[:n]...)}
		}
	}
	return n, errno
}

// Writev is Write of the buffers joined: go-fuse prefers it when present.
func (h *file) Writev(ctx context.Context, data [][]byte, off int64) (uint32, syscall.Errno) {
	var all []byte
	for _, d := range data {
		all = append(all, d...)
	}
	return h.Write(ctx, all, off)
}

func (h *file) Fsync(ctx context.Context, flags uint32) syscall.Errno {
	h.p.mu.Lock()
	defer h.p.mu.Unlock()
	h.p.synced(h.fd())
	return 0
}

func (h *file) Setattr(ctx context.Context, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	h.p.mu.Lock()
	defer h.p.mu.Unlock()
	if size, ok := in.GetSize(); ok {
		_, f := h.p.idOfFd(h.fd())
		h.p.preserve(f, h.fd(), int64(size), 1<<62)
	}
	return h.LoopbackFile.Setattr(ctx, in, out)
}

func (h *file) Allocate(ctx context.Context, off uint64, size uint64, mode uint32) syscall.Errno {
	h.p.mu.Lock()
	defer h.p.mu.Unlock()
	// Allocation only zero-fills holes or extends; punching holes
	// (FALLOC_FL_PUNCH_HOLE) would change content, so save it.
	_, f := h.p.idOfFd(h.fd())
	h.p.preserve(f, h.fd(), int64(off), int64(off+size))
	return h.LoopbackFile.Allocate(ctx, off, size, mode)
}

// CopyFileRange is refused, so that the kernel falls back to Write.
func (n *node) CopyFileRange(ctx context.Context, fhIn fs.FileHandle, offIn uint64, out *fs.Inode, fhOut fs.FileHandle, offOut uint64, length uint64, flags uint64) (uint32, syscall.Errno) {
	return 0, syscall.EOPNOTSUPP
}

// PassthroughFd refuses kernel pass-through, which would bypass Write.
func (h *file) PassthroughFd() (int, bool) { return -1, false }

// dirHandle is an open directory whose fsync records its entries.
type dirHandle struct {
	fs.FileHandle
	n *node
}

func (d *dirHandle) Fsyncdir(ctx context.Context, flags uint32) syscall.Errno {
	d.n.p.mu.Lock()
	defer d.n.p.mu.Unlock()
	d.n.p.syncedDir(d.n.backingPath())
	return 0
}

func (d *dirHandle) Readdirent(ctx context.Context) (*fuse.DirEntry, syscall.Errno) {
	return d.FileHandle.(fs.FileReaddirenter).Readdirent(ctx)
}

func (d *dirHandle) Seekdir(ctx context.Context, off uint64) syscall.Errno {
	return d.FileHandle.(fs.FileSeekdirer).Seekdir(ctx, off)
}

func (d *dirHandle) Releasedir(ctx context.Context, flags uint32) {
	d.FileHandle.(fs.FileReleasedirer).Releasedir(ctx, flags)
}
