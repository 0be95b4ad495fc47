package powerloss

import (
	"bytes"
	"math/rand/v2"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// requireFuse skips outside CI, and fails in CI, when this machine cannot
// mount a FUSE file system.
func requireFuse(t *testing.T) {
	t.Helper()
	var missing string
	if _, err := os.Stat("/dev/fuse"); err != nil {
		missing = "/dev/fuse"
	} else if os.Geteuid() != 0 {
		missing = "root (mount(2) of a FUSE file system)"
	}
	if missing == "" {
		return
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("power-loss tests need %s, and CI must run them", missing)
	}
	t.Skipf("power-loss tests need %s", missing)
}

func mountForTest(t *testing.T, opts Options) *FS {
	t.Helper()
	requireFuse(t)
	p, err := Mount(t.TempDir(), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

func writeFile(t *testing.T, path string, data []byte, fsync bool) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Write(data); err != nil {
		t.Fatal(err)
	}
	if fsync {
		if err := f.Sync(); err != nil {
			t.Fatal(err)
		}
	}
}

func syncDir(t *testing.T, dir string) {
	t.Helper()
	d, err := os.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		t.Fatal(err)
	}
}

func cut(t *testing.T, p *FS) {
	t.Helper()
	if err := p.Cut(); err != nil {
		t.Fatal(err)
	}
}

func content(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestSyncedWritesSurviveACutAndUnsyncedOnesDoNot(t *testing.T) {
	p := mountForTest(t, Options{})
	path := filepath.Join(p.Dir(), "f")
	synced := bytes.Repeat([]byte("s"), 10000)
	writeFile(t, path, synced, true)
	syncDir(t, p.Dir())

	// Unsynced: an overwrite in the middle and an append.
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt([]byte("UNSYNCED"), 5000)
	f.WriteAt(bytes.Repeat([]byte("u"), 9000), 10000)
	f.Close()
	if got := content(t, path); len(got) != 19000 {
		t.Fatalf("before the cut the file has %d bytes, want 19000 (writes go through)", len(got))
	}
	cut(t, p)
	if got := content(t, path); !bytes.Equal(got, synced) {
		t.Fatalf("after the cut the file has %d bytes (%q...), want the %d synced bytes", len(got), got[:min(len(got), 16)], len(synced))
	}
}

func TestFdatasyncKeepsWritesAcrossCuts(t *testing.T) {
	p := mountForTest(t, Options{})
	path := filepath.Join(p.Dir(), "f")
	writeFile(t, path, []byte("one"), true)
	syncDir(t, p.Dir())
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt([]byte("two"), 3)
	if err := syscall.Fdatasync(int(f.Fd())); err != nil {
		t.Fatal(err)
	}
	f.Close()
	cut(t, p)
	cut(t, p) // a second cut keeps what the first kept
	if got := string(content(t, path)); got != "onetwo" {
		t.Fatalf("after fdatasync and two cuts the file holds %q, want %q", got, "onetwo")
	}
}

func TestAFileWhoseDirectoryWasNotSyncedIsLost(t *testing.T) {
	p := mountForTest(t, Options{})
	path := filepath.Join(p.Dir(), "f")
	writeFile(t, path, []byte("data"), true) // the file, not its directory
	cut(t, p)
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Fatalf("a file created without an fsync of its directory survived the cut (stat: %v)", err)
	}
}

func TestAFileNeverSyncedComesBackEmpty(t *testing.T) {
	p := mountForTest(t, Options{})
	path := filepath.Join(p.Dir(), "f")
	writeFile(t, path, []byte("data"), false)
	syncDir(t, p.Dir())
	cut(t, p)
	if got := content(t, path); len(got) != 0 {
		t.Fatalf("a file whose data was never synced holds %q after the cut, want nothing", got)
	}
}

func TestRenamesAndRemovesNeedADirectorySync(t *testing.T) {
	p := mountForTest(t, Options{})
	dir := p.Dir()
	writeFile(t, filepath.Join(dir, "a.tmp"), []byte("A"), true)
	writeFile(t, filepath.Join(dir, "gone"), []byte("G"), true)
	os.Mkdir(filepath.Join(dir, "sub"), 0o755)
	writeFile(t, filepath.Join(dir, "sub", "x"), []byte("X"), true)
	syncDir(t, filepath.Join(dir, "sub"))
	syncDir(t, dir)

	if err := os.Rename(filepath.Join(dir, "a.tmp"), filepath.Join(dir, "a")); err != nil {
		t.Fatal(err)
	}
	os.Remove(filepath.Join(dir, "gone"))
	os.RemoveAll(filepath.Join(dir, "sub"))
	cut(t, p)
	if got := string(content(t, filepath.Join(dir, "a.tmp"))); got != "A" {
		t.Fatalf("an unsynced rename was not undone: a.tmp holds %q", got)
	}
	if _, err := os.Stat(filepath.Join(dir, "a")); !os.IsNotExist(err) {
		t.Fatalf("an unsynced rename's new name survived (stat: %v)", err)
	}
	if got := string(content(t, filepath.Join(dir, "gone"))); got != "G" {
		t.Fatalf("an unsynced remove was not undone: gone holds %q", got)
	}
	if got := string(content(t, filepath.Join(dir, "sub", "x"))); got != "X" {
		t.Fatalf("an unsynced recursive remove was not undone: sub/x holds %q", got)
	}

	// The same changes, followed by a directory sync, stay.
	os.Rename(filepath.Join(dir, "a.tmp"), filepath.Join(dir, "a"))
	os.Remove(filepath.Join(dir, "gone"))
	syncDir(t, dir)
	cut(t, p)
	if got := string(content(t, filepath.Join(dir, "a"))); got != "A" {
		t.Fatalf("a synced rename was lost: a holds %q", got)
	}
	for _, name := range []string{"a.tmp", "gone"} {
		if _, err := os.Stat(filepath.Join(dir, name)); !os.IsNotExist(err) {
			t.Fatalf("%s came back after a synced rename or remove (stat: %v)", name, err)
		}
	}
}

func TestTruncateIsUndoneUnlessSynced(t *testing.T) {
	p := mountForTest(t, Options{})
	path := filepath.Join(p.Dir(), "f")
	data := bytes.Repeat([]byte("0123456789"), 1000)
	writeFile(t, path, data, true)
	syncDir(t, p.Dir())
	if err := os.Truncate(path, 100); err != nil {
		t.Fatal(err)
	}
	f, _ := os.OpenFile(path, os.O_RDWR|os.O_TRUNC, 0) // O_TRUNC on open
	f.Write([]byte("new"))
	f.Close()
	cut(t, p)
	if got := content(t, path); !bytes.Equal(got, data) {
		t.Fatalf("unsynced truncates were not undone: %d bytes, want %d", len(got), len(data))
	}
}

func TestTearKeepsAPrefixOfTheLastWriteAtAPageBoundary(t *testing.T) {
	p := mountForTest(t, Options{Tear: true, Rand: rand.New(rand.NewPCG(3, 3))})
	path := filepath.Join(p.Dir(), "f")
	writeFile(t, path, []byte("head"), true)
	syncDir(t, p.Dir())
	f, _ := os.OpenFile(path, os.O_RDWR, 0)
	f.WriteAt(bytes.Repeat([]byte("w"), 5*pageSize), 4)
	f.Close()
	cut(t, p)
	got := content(t, path)
	if len(got) <= 4 || len(got)%pageSize != 0 || len(got) >= 5*pageSize+4 {
		t.Fatalf("after a torn write the file has %d bytes, want a page boundary strictly inside the write", len(got))
	}
	if want := append([]byte("head"), bytes.Repeat([]byte("w"), len(got)-4)...); !bytes.Equal(got, want) {
		t.Fatalf("the torn write's prefix is not the data written: %q...%q (%d bytes)", got[:8], got[len(got)-8:], len(got))
	}
}

func TestForgetSyncsLosesEverything(t *testing.T) {
	p := mountForTest(t, Options{ForgetSyncs: true})
	path := filepath.Join(p.Dir(), "f")
	writeFile(t, path, []byte("data"), true)
	syncDir(t, p.Dir())
	cut(t, p)
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Fatalf("with ForgetSyncs a synced file survived the cut (stat: %v)", err)
	}
}

func TestMmapReadsSeeWrites(t *testing.T) {
	p := mountForTest(t, Options{})
	path := filepath.Join(p.Dir(), "f")
	writeFile(t, path, make([]byte, 2*pageSize), true)
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	m, err := syscall.Mmap(int(f.Fd()), 0, 2*pageSize, syscall.PROT_READ, syscall.MAP_SHARED)
	if err != nil {
		t.Fatalf("mmap through the mount: %v", err)
	}
	defer syscall.Munmap(m)
	if _, err := f.WriteAt([]byte("bolt"), pageSize); err != nil {
		t.Fatal(err)
	}
	if got := string(m[pageSize : pageSize+4]); got != "bolt" {
		t.Fatalf("a mapped read after pwrite sees %q, want %q", got, "bolt")
	}
}
