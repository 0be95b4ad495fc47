// Command raftkit operates raftkit nodes: it talks to a running node's
// admin handler (admin.Handler, mounted by the application) and
// reads or prepares a stopped node's data directory.
//
// Install it with
//
//	go install github.com/raftkit/raftkit/cmd/raftkit@latest
//
// Usage:
//
//	raftkit [flags] status
//	raftkit [flags] peers
//	raftkit [flags] join [-nonvoter | -force] ID ADDR
//	raftkit [flags] remove ID
//	raftkit [flags] transfer [ID]
//	raftkit [flags] snapshot
//	raftkit [flags] backup FILE
//	raftkit [flags] restore [-yes] FILE
//	raftkit [flags] inspect DIR
//	raftkit [flags] recover [-yes] DIR ID=ADDR[,nonvoter] ...
//	raftkit -version
//
// Flags go before or after the command, in any order among its arguments
// (everything after "--" is an argument): -admin URL, -json, -timeout D,
// -version, -header 'Name: value', -cacert FILE, -cert FILE, -key FILE.
// -admin is the URL the node's admin handler is mounted at (default
// $RAFTKIT_ADMIN, else http://127.0.0.1:8080); -json prints JSON instead
// of tables, for every command. -version prints the module version the
// binary was built from and the node protocol it speaks.
//
// The admin handler does no authentication of its own; deployments put it
// behind their own middleware, and these flags let the CLI through it:
//
//   - -header 'Name: value' sends that header with every request to the
//     admin handler (repeatable), for example
//     -header 'Authorization: Bearer TOKEN'.
//   - $RAFTKIT_HEADER holds headers sent the same way, one 'Name: value'
//     per line, so that tokens stay out of shell history, for example
//     RAFTKIT_HEADER="Authorization: Bearer $(cat token)"; a -header
//     replaces the environment's header of the same name.
//   - -cacert FILE is the PEM CA bundle that verifies the admin server's
//     certificate (default: the system roots); -cert FILE and -key FILE
//     are a PEM client certificate and its key for mutual TLS (both or
//     neither). They need an https:// -admin URL.
//
// A malformed header, or -cert without -key or the reverse, is bad usage.
// inspect and recover, which never reach the admin handler, ignore these.
//
// Exit status: 0 on success, 1 when the operation failed (the reason is
// printed on stderr), 2 for bad usage (nothing was done).
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/raftkit/raftkit"
	"github.com/raftkit/raftkit/admin"
	_ "github.com/raftkit/raftkit/walstore" // inspect and recover raft-wal directories
)

const usage = `usage: raftkit COMMAND [ARGS] [flags]   (flags may also come first)

Against a running node's admin handler (-admin URL):
  status                     the node's state, term, indexes and leader
  peers                      the cluster's servers and their suffrage
  join [-nonvoter] ID ADDR   add a server (voter unless -nonvoter): a voter
                             only once it answers and has caught up
  join -force ID ADDR        add a voter at once, unchecked: if nothing
                             answers at ADDR it still counts toward the
                             quorum (replacing a dead member, say)
  remove ID                  remove a server
  transfer [ID]              hand leadership to ID (or let raft pick)
  snapshot                   take a snapshot now
  backup FILE                copy a consistent backup of the state to FILE
  restore [-yes] FILE        replace the whole cluster state with a backup
                             (send it to the leader's admin handler)

Offline, on a stopped node's data directory:
  inspect DIR                term, vote, log bounds, configuration, snapshots (CRC-checked)
  recover [-yes] DIR ID=ADDR[,nonvoter] ...
                             force the cluster configuration after permanent
                             quorum loss; applied at the node's next start

Protected admin handlers (behind the application's auth middleware):
  -header 'Name: value'      send this header with every admin request (repeatable)
  RAFTKIT_HEADER             environment: more such headers, one per line, so that
                             tokens stay out of shell history; a -header replaces
                             the environment's header of the same name
  -cacert FILE               PEM CA bundle for an https:// admin URL (default: system roots)
  -cert FILE -key FILE       PEM client certificate and key for mutual TLS

Environment: RAFTKIT_ADMIN (default -admin), RAFTKIT_HEADER (see above).

Exit status: 0 done, 1 failed, 2 bad usage.

Flags (every command):
`

// errUsage marks bad command-line input (exit status 2).
var errUsage = errors.New("usage")

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// cli holds the flags of one invocation.
type cli struct {
	admin   string
	json    bool
	timeout time.Duration
	version bool
	// Reaching a protected admin handler; connect turns them into header
	// and client.
	headers   headerFlag
	envHeader string // $RAFTKIT_HEADER
	cacert    string
	cert, key string
	header    http.Header  // sent with every admin request
	client    *http.Client // with the TLS settings of the flags
	// Flags of single commands.
	nonvoter bool // join
	force    bool // join
	yes      bool // restore, recover
	out      io.Writer
	errOut   io.Writer
}

// command is one subcommand: its own flags (besides the global ones, which
// every command accepts too) and what it does with its arguments.
type command struct {
	flags func(c *cli, fs *flag.FlagSet)
	run   func(c *cli, ctx context.Context, args []string) error
	// offline commands read a data directory and never reach the admin
	// handler, so its headers and TLS files are not checked for them.
	offline bool
}

var commands = map[string]command{
	"status": {run: (*cli).status},
	"peers":  {run: (*cli).peers},
	"join": {run: (*cli).join, flags: func(c *cli, fs *flag.FlagSet) {
		fs.BoolVar(&c.nonvoter, "nonvoter", false, "add a non-voting member (read replica)")
		fs.BoolVar(&c.force, "force", false, "add a voter at once, without checking that it answers and has caught up (it counts toward the quorum even if nothing answers)")
	}},
	"remove":   {run: (*cli).remove},
	"transfer": {run: (*cli).transfer},
	"snapshot": {run: (*cli).snapshot},
	"backup":   {run: (*cli).backup},
	"restore": {run: (*cli).restore, flags: func(c *cli, fs *flag.FlagSet) {
		fs.BoolVar(&c.yes, "yes", false, "confirm: replace the cluster's whole state with the backup")
	}},
	"inspect": {run: (*cli).inspect, offline: true},
	"recover": {run: (*cli).recover, offline: true, flags: func(c *cli, fs *flag.FlagSet) {
		fs.BoolVar(&c.yes, "yes", false, "confirm: I understand the warning and the lost servers are gone for good")
	}},
}

// flagSet returns a flag set with the global flags, whose defaults are
// their current values (so a second set keeps what the first one parsed).
func (c *cli) flagSet(name string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(c.errOut)
	fs.Usage = func() { fmt.Fprint(c.errOut, usage); fs.PrintDefaults() }
	fs.StringVar(&c.admin, "admin", c.admin, "URL of the node's admin handler (default: $RAFTKIT_ADMIN if set)")
	fs.BoolVar(&c.json, "json", c.json, "print JSON instead of tables")
	fs.DurationVar(&c.timeout, "timeout", c.timeout, "bound for the whole operation (0: none)")
	fs.BoolVar(&c.version, "version", c.version, "print raftkit's version and exit")
	// Shared by pointer, so every set appends to the same list.
	fs.Var(&c.headers, "header", "send the HTTP `header` 'Name: value' with every admin request (repeatable; replaces a $RAFTKIT_HEADER header of the same name)")
	fs.StringVar(&c.cacert, "cacert", c.cacert, "PEM CA bundle `file` that verifies the admin server's certificate (default: the system roots)")
	fs.StringVar(&c.cert, "cert", c.cert, "PEM client certificate `file` for mutual TLS with the admin server (needs -key)")
	fs.StringVar(&c.key, "key", c.key, "PEM private key `file` of -cert")
	return fs
}

// parseInterleaved parses flags anywhere among args and returns the
// positional arguments in order. Everything after "--" is positional.
func parseInterleaved(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		if consumed := len(args) - len(rest); consumed > 0 && args[consumed-1] == "--" {
			return append(pos, rest...), nil
		}
		if len(rest) == 0 {
			return pos, nil
		}
		pos, args = append(pos, rest[0]), rest[1:]
	}
}

// version is the module version this binary was built from (a release
// tag for `go install ...@vX.Y.Z`, a pseudo-version or "(devel)"), the
// node protocol that version speaks, and the commit and Go it was built
// with.
func version() string {
	v := fmt.Sprintf("raftkit %s, node protocol %d", raftkit.ModuleVersion(), raftkit.ProtocolVersion)
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return v
	}
	for _, s := range bi.Settings {
		if s.Key == "vcs.revision" {
			v += ", commit " + s.Value
		}
	}
	return v + ", " + bi.GoVersion
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	c := &cli{out: stdout, errOut: stderr, admin: os.Getenv("RAFTKIT_ADMIN"), envHeader: os.Getenv("RAFTKIT_HEADER"), timeout: time.Minute}
	if c.admin == "" {
		c.admin = "http://127.0.0.1:8080"
	}
	fs := c.flagSet("raftkit")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if c.version {
		fmt.Fprintln(stdout, version())
		return 0
	}
	if fs.NArg() == 0 {
		fs.Usage()
		return 2
	}
	name := fs.Arg(0)
	cmd, ok := commands[name]
	if !ok {
		fmt.Fprintf(stderr, "raftkit: unknown command %q\n", name)
		fs.Usage()
		return 2
	}
	sub := c.flagSet(name)
	if cmd.flags != nil {
		cmd.flags(c, sub)
	}
	rest, err := parseInterleaved(sub, fs.Args()[1:])
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if c.version {
		fmt.Fprintln(stdout, version())
		return 0
	}
	if c.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.timeout)
		defer cancel()
	}
	if err := c.runCommand(ctx, cmd, rest); err != nil {
		fmt.Fprintf(stderr, "raftkit %s: %v\n", name, err)
		if errors.Is(err, errUsage) {
			return 2
		}
		return 1
	}
	return 0
}

// runCommand runs cmd, after preparing what its admin requests carry
// unless it is offline.
func (c *cli) runCommand(ctx context.Context, cmd command, args []string) error {
	if !cmd.offline {
		if err := c.connect(); err != nil {
			return err
		}
	}
	return cmd.run(c, ctx, args)
}

// call sends a request to the admin handler and decodes a JSON answer
// into out. A non-2xx answer becomes an error carrying the node's message.
func (c *cli) call(ctx context.Context, method, route string, body any, out any) error {
	resp, err := c.do(ctx, method, route, body)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if out == nil {
		out = &json.RawMessage{}
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("%s %s: answer is not JSON: %w", method, route, err)
	}
	return nil
}

func (c *cli) do(ctx context.Context, method, route string, body any) (*http.Response, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := c.newRequest(ctx, method, route, rd)
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.client.Do(req)
	if err != nil {
		return nil, c.tlsHint(err)
	}
	if resp.StatusCode/100 == 2 {
		return resp, nil
	}
	defer resp.Body.Close()
	return nil, answerError(resp, method, req.URL.String())
}

// decodeAnswer decodes a 2xx JSON answer into out, or returns the node's
// error.
func decodeAnswer(resp *http.Response, method, url string, out any) error {
	if resp.StatusCode/100 != 2 {
		return answerError(resp, method, url)
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("%s %s: answer is not JSON: %w", method, url, err)
	}
	return nil
}

// answerError turns a failed answer into an error with the node's message.
func answerError(resp *http.Response, method, url string) error {
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	var ae admin.Error
	if json.Unmarshal(data, &ae) != nil || ae.Error == "" {
		ae.Error = strings.TrimSpace(string(data))
	}
	msg := fmt.Sprintf("%s %s: HTTP %d: %s", method, url, resp.StatusCode, ae.Error)
	if ae.LeaderAddr != "" {
		msg += fmt.Sprintf(" (the leader is %s at %s: send this to its admin handler)", ae.LeaderID, ae.LeaderAddr)
	}
	// The admin handler's own refusals (a disabled route) carry a code;
	// one without came from what guards the handler.
	if (resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden) && ae.Code == "" {
		msg += " (refused in front of the admin handler: credentials missing or not accepted; see -header, $RAFTKIT_HEADER, -cert and -key)"
	}
	return errors.New(msg)
}

func (c *cli) printJSON(v any) error {
	enc := json.NewEncoder(c.out)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func noArgs(args []string) error {
	if len(args) > 0 {
		return fmt.Errorf("%w: unexpected arguments %q", errUsage, args)
	}
	return nil
}

func (c *cli) status(ctx context.Context, args []string) error {
	if err := noArgs(args); err != nil {
		return err
	}
	var st raftkit.Status
	if err := c.call(ctx, "GET", "status", nil, &st); err != nil {
		return err
	}
	if c.json {
		return c.printJSON(st)
	}
	c.printStatus(st)
	return nil
}

func (c *cli) printStatus(st raftkit.Status) {
	tw := tabwriter.NewWriter(c.out, 0, 4, 2, ' ', 0)
	leader := "none known"
	if st.LeaderID != "" {
		leader = st.LeaderID + " at " + st.LeaderAddr
	}
	contact := "-"
	if !st.LastContact.IsZero() {
		contact = time.Since(st.LastContact).Round(time.Millisecond).String() + " ago"
	}
	fmt.Fprintf(tw, "ID\t%s\nAddress\t%s\nState\t%s\nTerm\t%d\nLast log index\t%d\nCommit index\t%d\nApplied index\t%d\nLeader\t%s\nLast contact\t%s\nServers\t%d\n",
		st.ID, st.Addr, st.State, st.Term, st.LastLogIndex, st.CommitIndex, st.AppliedIndex, leader, contact, len(st.Servers))
	tw.Flush()
}

func (c *cli) peers(ctx context.Context, args []string) error {
	if err := noArgs(args); err != nil {
		return err
	}
	var st raftkit.Status
	if err := c.call(ctx, "GET", "status", nil, &st); err != nil {
		return err
	}
	if c.json {
		return c.printJSON(st.Servers)
	}
	c.printServers(st.Servers, st.LeaderID)
	return nil
}

func (c *cli) printServers(servers []raftkit.ServerInfo, leaderID string) {
	tw := tabwriter.NewWriter(c.out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tADDRESS\tSUFFRAGE\tLEADER")
	for _, s := range servers {
		mark := ""
		if s.ID == leaderID && leaderID != "" {
			mark = "*"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", s.ID, s.Addr, s.Suffrage, mark)
	}
	tw.Flush()
}

// membership runs a mutating admin route and prints the resulting servers
// as the answering node sees them once the change has taken effect there
// (the admin handler waits for that), and which node answered.
func (c *cli) membership(ctx context.Context, route string, req any, done func(raftkit.Status) string) error {
	var st raftkit.Status
	if err := c.call(ctx, "POST", route, req, &st); err != nil {
		return err
	}
	if c.json {
		return c.printJSON(st)
	}
	fmt.Fprintf(c.out, "%s (answered by %s at %s)\n", done(st), st.ID, st.Addr)
	c.printServers(st.Servers, st.LeaderID)
	return nil
}

func (c *cli) join(ctx context.Context, args []string) error {
	if len(args) != 2 || (c.nonvoter && c.force) {
		return fmt.Errorf("%w: join [-nonvoter | -force] ID ADDR", errUsage)
	}
	id, addr := args[0], args[1]
	msg := fmt.Sprintf("added %s at %s", id, addr)
	return c.membership(ctx, "join", admin.Request{ID: id, Addr: addr, Nonvoter: c.nonvoter, Force: c.force}, func(raftkit.Status) string { return msg })
}

func (c *cli) remove(ctx context.Context, args []string) error {
	if len(args) != 1 {
		return fmt.Errorf("%w: remove ID", errUsage)
	}
	return c.membership(ctx, "remove-server", admin.Request{ID: args[0]}, func(raftkit.Status) string { return "removed " + args[0] })
}

func (c *cli) transfer(ctx context.Context, args []string) error {
	if len(args) > 1 {
		return fmt.Errorf("%w: transfer [ID]", errUsage)
	}
	req := admin.Request{}
	if len(args) == 1 {
		req.ID = args[0]
	}
	return c.membership(ctx, "transfer-leadership", req, func(st raftkit.Status) string {
		return "leadership transferred to " + st.LeaderID
	})
}

func (c *cli) snapshot(ctx context.Context, args []string) error {
	if err := noArgs(args); err != nil {
		return err
	}
	var st raftkit.Status
	if err := c.call(ctx, "POST", "snapshot", nil, &st); err != nil {
		return err
	}
	if c.json {
		return c.printJSON(st)
	}
	fmt.Fprintf(c.out, "snapshot taken on %s (applied index %d)\n", st.ID, st.AppliedIndex)
	return nil
}

// backup downloads into FILE.partial, checks the whole stream, then
// renames it: FILE exists only if it is a complete, intact backup.
func (c *cli) backup(ctx context.Context, args []string) error {
	if len(args) != 1 {
		return fmt.Errorf("%w: backup FILE", errUsage)
	}
	path := args[0]
	resp, err := c.do(ctx, "GET", "backup", nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	tmp := path + ".partial"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	prog := &progress{w: c.errOut, label: "backup: received"}
	_, err = io.Copy(io.MultiWriter(f, prog), resp.Body)
	prog.done()
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = verifyBackup(tmp)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("download from %s: %w", c.admin, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	info, _ := readInfo(path)
	if c.json {
		return c.printJSON(info)
	}
	fmt.Fprintf(c.out, "backup of %s at index %d (term %d, %d bytes of state) written to %s\n", info.NodeID, info.Index, info.Term, info.Size, path)
	return nil
}

// restore checks FILE, then streams it to the node's restore route.
func (c *cli) restore(ctx context.Context, args []string) error {
	if len(args) != 1 {
		return fmt.Errorf("%w: restore [-yes] FILE", errUsage)
	}
	path := args[0]
	info, err := readInfo(path)
	if err != nil {
		return err
	}
	fmt.Fprintf(c.errOut, "WARNING: restore replaces the whole replicated state with %s (index %d from %s, taken %s);\nevery write since then is discarded.\n",
		path, info.Index, info.NodeID, info.Created.Format(time.RFC3339))
	if !c.yes {
		return fmt.Errorf("%w: nothing sent; run again with -yes to confirm", errUsage)
	}
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	prog := &progress{w: c.errOut, label: "restore: sent"}
	req, err := c.newRequest(ctx, "POST", "restore", io.TeeReader(f, prog))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/octet-stream")
	resp, err := c.client.Do(req)
	prog.done()
	if err != nil {
		return c.tlsHint(err)
	}
	defer resp.Body.Close()
	var st raftkit.Status
	if err := decodeAnswer(resp, "POST", req.URL.String(), &st); err != nil {
		return err
	}
	if c.json {
		return c.printJSON(st)
	}
	fmt.Fprintf(c.out, "restored %s into the cluster led by %s\n", path, st.LeaderID)
	return nil
}

func verifyBackup(path string) error {
	_, err := readInfo(path)
	return err
}

func readInfo(path string) (raftkit.BackupInfo, error) {
	f, err := os.Open(path)
	if err != nil {
		return raftkit.BackupInfo{}, err
	}
	defer f.Close()
	return raftkit.ReadBackupInfo(f)
}

// progress prints a running byte count to w at most twice a second.
type progress struct {
	w     io.Writer
	label string
	n     int64
	last  time.Time
}

func (p *progress) Write(b []byte) (int, error) {
	p.n += int64(len(b))
	if time.Since(p.last) > 500*time.Millisecond {
		p.last = time.Now()
		fmt.Fprintf(p.w, "\r%s %s", p.label, byteCount(p.n))
	}
	return len(b), nil
}

func (p *progress) done() { fmt.Fprintf(p.w, "\r%s %s\n", p.label, byteCount(p.n)) }

func byteCount(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}

func (c *cli) inspect(ctx context.Context, args []string) error {
	if len(args) != 1 {
		return fmt.Errorf("%w: inspect DIR", errUsage)
	}
	fmt.Fprintf(c.errOut, "inspect: reading %s and checking snapshot CRCs...\n", args[0])
	info, err := raftkit.InspectDir(ctx, args[0])
	if err != nil {
		if errors.Is(err, raftkit.ErrDataDirLocked) {
			return fmt.Errorf("%w (stop the node first; inspect reads a stopped node's directory)", err)
		}
		return err
	}
	if c.json {
		return c.printJSON(info)
	}
	tw := tabwriter.NewWriter(c.out, 0, 4, 2, ' ', 0)
	vote := "none"
	if info.LastVoteFor != "" {
		vote = fmt.Sprintf("%s in term %d", info.LastVoteFor, info.LastVoteTerm)
	}
	fmt.Fprintf(tw, "Directory\t%s\nLog store\t%s\nCurrent term\t%d\nLast vote\t%s\nFirst index\t%d\nLast index\t%d (term %d)\nConfiguration index\t%d\n",
		info.Dir, info.LogStore, info.CurrentTerm, vote, info.FirstIndex, info.LastIndex, info.LastLogTerm, info.ConfigurationIndex)
	if info.PendingRecovery {
		fmt.Fprintf(tw, "Pending recovery\t%s will be applied at the next start\n", filepath.Join(info.Dir, raftkit.RecoveryFile))
	}
	tw.Flush()
	fmt.Fprintln(c.out, "\nServers:")
	c.printServers(info.Servers, "")
	fmt.Fprintln(c.out, "\nSnapshots:")
	tw = tabwriter.NewWriter(c.out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tINDEX\tTERM\tSIZE\tCRC")
	bad := 0
	for _, s := range info.Snapshots {
		crc := "ok"
		if !s.CRCOK {
			crc, bad = "BAD: "+s.Error, bad+1
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%s\t%s\n", s.ID, s.Index, s.Term, byteCount(s.Size), crc)
	}
	tw.Flush()
	if bad > 0 {
		return fmt.Errorf("%d damaged snapshot(s)", bad)
	}
	return nil
}

const recoverWarning = `WARNING: recover forces this node's cluster configuration. Use it only when
quorum is permanently lost (the missing servers will never come back):
  - every entry in this node's log is treated as committed, even one that
    never reached a majority;
  - servers left out of the list must never be restarted with their old
    data, or they form a second cluster; wipe them and join them anew;
  - write the same list on every surviving server that is to be a member.
The configuration is applied by the application itself, with its own state
machine, the next time the node starts (then ` + raftkit.RecoveryFile + ` becomes ` + raftkit.RecoveryFile + `.applied).
`

func (c *cli) recover(ctx context.Context, args []string) error {
	if len(args) < 2 {
		return fmt.Errorf("%w: recover [-yes] DIR ID=ADDR[,nonvoter] [ID=ADDR ...]", errUsage)
	}
	dir := args[0]
	var servers []raftkit.ServerInfo
	for _, a := range args[1:] {
		spec, opt, _ := strings.Cut(a, ",")
		id, addr, ok := strings.Cut(spec, "=")
		if !ok || id == "" || addr == "" || (opt != "" && opt != "nonvoter") {
			return fmt.Errorf("%w: server %q is not ID=ADDR or ID=ADDR,nonvoter", errUsage, a)
		}
		servers = append(servers, raftkit.ServerInfo{ID: id, Addr: addr, Voter: opt == ""})
	}
	fmt.Fprint(c.errOut, recoverWarning)
	if !c.yes {
		return fmt.Errorf("%w: nothing written; run again with -yes to confirm", errUsage)
	}
	if err := raftkit.WriteRecovery(dir, servers); err != nil {
		return err
	}
	if c.json {
		return c.printJSON(struct {
			File    string               `json:"file"`
			Servers []raftkit.ServerInfo `json:"servers"`
		}{filepath.Join(dir, raftkit.RecoveryFile), servers})
	}
	fmt.Fprintf(c.out, "wrote %s with %d server(s); start the node to apply it\n", filepath.Join(dir, raftkit.RecoveryFile), len(servers))
	return nil
}
