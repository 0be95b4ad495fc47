package raftkit

import (
	"errors"
	"fmt"
)

// lifecycle is a node's parts in the order they were built, each with the
// function that stops it. Close stops them in reverse order, and a
// constructor that fails unwinds the same list, so every part that was
// built is stopped exactly once whichever way the node ends. Each stop
// function waits for its own part's goroutines. A part whose goroutines use
// raft is registered after raft, so that it stops while raft still runs.
//
// A lifecycle is not safe for concurrent use: the constructor builds it,
// and Close (once) stops it.
type lifecycle struct {
	parts []lifePart
	hooks *lifecycleHooks // tests only
}

type lifePart struct {
	name string
	stop func() error
}

// lifecycleHooks let tests watch a node's parts. added runs after each part
// is registered; an error from it fails the constructor there, as if the
// next step had failed. stopped runs after each part's stop function.
type lifecycleHooks struct {
	added   func(part string) error
	stopped func(part string)
}

// add registers a built part. An error (only ever from a test hook) means
// the constructor must fail now.
func (l *lifecycle) add(name string, stop func() error) error {
	l.parts = append(l.parts, lifePart{name: name, stop: stop})
	if l.hooks != nil && l.hooks.added != nil {
		return l.hooks.added(name)
	}
	return nil
}

// stop stops every part, last built first, and forgets them, so that a
// second call stops nothing. It returns the parts' errors, each prefixed
// with its part's name.
func (l *lifecycle) stop() error {
	parts := l.parts
	l.parts = nil
	var errs []error
	for i := len(parts) - 1; i >= 0; i-- {
		if err := parts[i].stop(); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", parts[i].name, err))
		}
		if l.hooks != nil && l.hooks.stopped != nil {
			l.hooks.stopped(parts[i].name)
		}
	}
	return errors.Join(errs...)
}
