package raftkit_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// What importing raftkit costs an application: the packages that
// `go list -deps` links into a program for a given import path.

// goList returns the non-standard-library packages that importing each
// of paths links in.
func goList(t *testing.T, paths ...string) []string {
	t.Helper()
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command on PATH")
	}
	args := append([]string{"list", "-deps", "-f", "{{if not .Standard}}{{.ImportPath}}{{end}}"}, paths...)
	out, err := exec.Command(goTool, args...).Output()
	if err != nil {
		t.Fatalf("go %s: %v", strings.Join(args, " "), err)
	}
	var pkgs []string
	for _, p := range strings.Fields(string(out)) {
		if !slices.Contains(pkgs, p) {
			pkgs = append(pkgs, p)
		}
	}
	return pkgs
}

// optional are packages that only an application's own import may bring in.
var optional = []string{
	"github.com/hashicorp/raft-wal", // package walstore
	"github.com/coreos/",            // raft-wal's etcd fileutil
	"go-systemd",                    // raft-wal's, through capnslog
	"capnslog",
	"prometheus", // package prom
	"google.golang.org/protobuf",
	"internal/testhook",
	"github.com/raftkit/raftkit/walstore",
	"github.com/raftkit/raftkit/prom",
	"github.com/raftkit/raftkit/admin",
}

func linkedOptional(pkgs []string) []string {
	var bad []string
	for _, p := range pkgs {
		for _, o := range optional {
			if strings.Contains(p, o) {
				bad = append(bad, p)
			}
		}
	}
	return bad
}

// The root package links nothing beyond hashicorp/raft's and
// raft-boltdb/v2's own dependencies: raftkit writes raft-boltdb's format
// with bbolt directly (raft-boltdb's dependency), and needs nothing else
// outside the standard library. So an application on raftkit costs what
// one on raft + raft-boltdb costs (fewer: no boltdb/bolt, no raft-boltdb).
func TestRootPackageLinksOnlyRaftAndBoltDBDependencies(t *testing.T) {
	root := goList(t, "github.com/raftkit/raftkit")
	if bad := linkedOptional(root); len(bad) > 0 {
		t.Errorf("importing raftkit links %v", bad)
	}
	allowed := goList(t, "github.com/hashicorp/raft", "github.com/hashicorp/raft-boltdb/v2")
	var own, extra []string
	for _, p := range root {
		switch {
		case strings.HasPrefix(p, "github.com/raftkit/raftkit"):
			own = append(own, p)
		case !slices.Contains(allowed, p):
			extra = append(extra, p)
		}
	}
	if len(extra) > 0 {
		t.Errorf("importing raftkit links %d package(s) that raft and raft-boltdb/v2 do not: %v", len(extra), extra)
	}
	for _, p := range own {
		if p != "github.com/raftkit/raftkit" && !strings.HasPrefix(p, "github.com/raftkit/raftkit/internal/") {
			t.Errorf("importing raftkit links raftkit's optional package %s", p)
		}
	}
	t.Logf("raftkit links %d non-standard packages (%d of its own); raft + raft-boltdb/v2: %d", len(root), len(own), len(allowed))
}

// admin's WriteError and HTTPStatus cost no Prometheus and no raft-wal.
func TestAdminLinksNoPrometheus(t *testing.T) {
	pkgs := slices.DeleteFunc(goList(t, "github.com/raftkit/raftkit/admin"), func(p string) bool { return p == "github.com/raftkit/raftkit/admin" })
	if bad := linkedOptional(pkgs); len(bad) > 0 {
		t.Errorf("importing raftkit/admin links %v", bad)
	}
}

// The check above can fail: the optional packages do bring in what it
// looks for.
func TestOptionalPackagesBringWhatTheDependencyCheckLooksFor(t *testing.T) {
	for path, want := range map[string]string{
		"github.com/raftkit/raftkit/walstore": "github.com/coreos/etcd/pkg/fileutil",
		"github.com/raftkit/raftkit/prom":     "github.com/prometheus/client_golang/prometheus",
	} {
		pkgs := goList(t, path)
		if !slices.Contains(pkgs, want) || len(linkedOptional(pkgs)) == 0 {
			t.Errorf("%s does not link %s: the dependency check would see nothing", path, want)
		}
	}
}

// A program that does not import walstore and asks for LogStoreWAL is told
// which import it lacks, before anything is written to its directory.
func TestLogStoreWALWithoutWalstoreNamesTheImport(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a program")
	}
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command on PATH")
	}
	dir := filepath.Join(t.TempDir(), "data")
	out, err := exec.Command(goTool, "run", "./testdata/nowal", dir).CombinedOutput()
	if err != nil {
		t.Fatalf("go run ./testdata/nowal: %v\n%s", err, out)
	}
	got := string(out)
	if !strings.Contains(got, "invalid=true field=true") || !strings.Contains(got, `import _ "github.com/raftkit/raftkit/walstore"`) {
		t.Fatalf("LogStoreWAL without walstore: %s\nwant a *ConfigError for LogStore (ErrInvalidConfig) naming the import", got)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("the refused node created its data directory (stat: %v)", err)
	}
}
