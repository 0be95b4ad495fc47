package raftkit

import (
	"bufio"
	"context"
	"io"
	"log"
	"log/slog"
	"strings"
	"sync/atomic"

	"github.com/hashicorp/go-hclog"
)

// LevelTrace is the slog level that SlogLogger gives hclog's Trace lines
// (raft's most verbose ones): four below slog.LevelDebug.
const LevelTrace = slog.LevelDebug - 4

// SlogLogger adapts a *slog.Logger to the hclog.Logger that Config.Logger
// takes, so that raftkit's and raft's lines go to the application's slog
// handler as structured records. Key/value pairs become slog attributes; a
// logger's name (raftkit, raft, snapshots, ...) becomes the "logger"
// attribute; hclog levels map to slog's, with Trace at LevelTrace.
//
// Which records are written is the slog handler's decision. SetLevel adds a
// floor of its own on top (hclog.NoLevel, the default, means none). A nil l
// gives a logger that discards everything, like a nil Config.Logger.
func SlogLogger(l *slog.Logger) hclog.Logger {
	if l == nil {
		return hclog.NewNullLogger()
	}
	return &slogLogger{l: l, level: new(atomic.Int32)}
}

// slogLogger is an hclog.Logger that writes to a slog.Logger.
type slogLogger struct {
	l     *slog.Logger
	name  string
	args  []any
	level *atomic.Int32 // hclog.Level floor, shared with loggers derived from this one
}

func slogLevel(level hclog.Level) slog.Level {
	switch level {
	case hclog.Trace:
		return LevelTrace
	case hclog.Debug:
		return slog.LevelDebug
	case hclog.Warn:
		return slog.LevelWarn
	case hclog.Error:
		return slog.LevelError
	}
	return slog.LevelInfo
}

func (s *slogLogger) enabled(level hclog.Level) bool {
	if level == hclog.Off {
		return false
	}
	if floor := hclog.Level(s.level.Load()); floor != hclog.NoLevel && level < floor {
		return false
	}
	return s.l.Enabled(context.Background(), slogLevel(level))
}

// Log writes msg with args (key/value pairs) at level.
func (s *slogLogger) Log(level hclog.Level, msg string, args ...any) {
	if !s.enabled(level) {
		return
	}
	if s.name != "" {
		args = append([]any{"logger", s.name}, args...)
	}
	s.l.Log(context.Background(), slogLevel(level), msg, args...)
}

func (s *slogLogger) Trace(msg string, args ...any) { s.Log(hclog.Trace, msg, args...) }
func (s *slogLogger) Debug(msg string, args ...any) { s.Log(hclog.Debug, msg, args...) }
func (s *slogLogger) Info(msg string, args ...any)  { s.Log(hclog.Info, msg, args...) }
func (s *slogLogger) Warn(msg string, args ...any)  { s.Log(hclog.Warn, msg, args...) }
func (s *slogLogger) Error(msg string, args ...any) { s.Log(hclog.Error, msg, args...) }

func (s *slogLogger) IsTrace() bool { return s.enabled(hclog.Trace) }
func (s *slogLogger) IsDebug() bool { return s.enabled(hclog.Debug) }
func (s *slogLogger) IsInfo() bool  { return s.enabled(hclog.Info) }
func (s *slogLogger) IsWarn() bool  { return s.enabled(hclog.Warn) }
func (s *slogLogger) IsError() bool { return s.enabled(hclog.Error) }

func (s *slogLogger) ImpliedArgs() []any { return append([]any(nil), s.args...) }

func (s *slogLogger) With(args ...any) hclog.Logger {
	c := *s
	c.l = s.l.With(args...)
	c.args = append(append([]any(nil), s.args...), args...)
	return &c
}

func (s *slogLogger) Name() string { return s.name }

func (s *slogLogger) Named(name string) hclog.Logger {
	c := *s
	if s.name != "" {
		name = s.name + "." + name
	}
	c.name = name
	return &c
}

func (s *slogLogger) ResetNamed(name string) hclog.Logger {
	c := *s
	c.name = name
	return &c
}

func (s *slogLogger) SetLevel(level hclog.Level) { s.level.Store(int32(level)) }

func (s *slogLogger) GetLevel() hclog.Level { return hclog.Level(s.level.Load()) }

func (s *slogLogger) StandardLogger(opts *hclog.StandardLoggerOptions) *log.Logger {
	return log.New(s.StandardWriter(opts), "", 0)
}

// StandardWriter returns a writer whose lines become records; with
// opts.InferLevels a leading "[DEBUG]", "[WARN]", ... picks the level.
func (s *slogLogger) StandardWriter(opts *hclog.StandardLoggerOptions) io.Writer {
	infer := opts != nil && opts.InferLevels
	return &slogLineWriter{s: s, infer: infer}
}

type slogLineWriter struct {
	s     *slogLogger
	infer bool
}

func (w *slogLineWriter) Write(p []byte) (int, error) {
	sc := bufio.NewScanner(strings.NewReader(string(p)))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" {
			continue
		}
		level := hclog.Info
		if w.infer {
			for prefix, l := range map[string]hclog.Level{"[TRACE]": hclog.Trace, "[DEBUG]": hclog.Debug, "[INFO]": hclog.Info, "[WARN]": hclog.Warn, "[ERR]": hclog.Error, "[ERROR]": hclog.Error} {
				if strings.HasPrefix(line, prefix) {
					level, line = l, strings.TrimSpace(strings.TrimPrefix(line, prefix))
					break
				}
			}
		}
		w.s.Log(level, line)
	}
	return len(p), nil
}
