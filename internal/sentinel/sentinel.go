// Package sentinel holds the errors that raftkit's internal packages
// return and that package raftkit exports under its own names, in its one
// block of sentinels (ErrClosed is sentinel.ErrClosed, and so on), so that
// callers match them with errors.Is without importing anything internal.
// It imports nothing of raftkit's.
package sentinel

import (
	"errors"
	"fmt"
)

// The errors package raftkit exports (see its documentation there).
var (
	ErrClosed        = errors.New("raftkit: node is closed")
	ErrNotAuthorized = errors.New("raftkit: not authorized")
	ErrInvalidConfig = errors.New("raftkit: invalid config")
	ErrDataDirLocked = errors.New("raftkit: data directory is locked by another node")
	ErrCorruptStore  = errors.New("raftkit: data directory is damaged")
)

// FieldError is an invalid Config field found by an internal package (a
// Dir that cannot be created, a TLS file that does not load). Package
// raftkit returns it as a *raftkit.ConfigError with the same fields.
type FieldError struct {
	Field, Value, Reason string
}

// Field returns a FieldError for field with value, its reason formatted.
func Field(field, value, format string, args ...any) *FieldError {
	return &FieldError{Field: field, Value: value, Reason: fmt.Sprintf(format, args...)}
}

func (e *FieldError) Error() string {
	if e.Value == "" {
		return fmt.Sprintf("raftkit: invalid config: %s: %s", e.Field, e.Reason)
	}
	return fmt.Sprintf("raftkit: invalid config: %s %q: %s", e.Field, e.Value, e.Reason)
}

// Unwrap lets errors.Is(err, ErrInvalidConfig) match.
func (e *FieldError) Unwrap() error { return ErrInvalidConfig }
