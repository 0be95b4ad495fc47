package main

import (
	"errors"
	"io"
	"net/http"
	"sync"
	"time"
)

// HTTP limits: a slow or idle client holds a connection for a bounded time,
// and request bodies being read hold at most bodyBudget bytes in all.
const (
	readHeaderTimeout = 5 * time.Second
	// readTimeout bounds reading a whole request, body included: a 1 MiB
	// value needs only 35 KB/s to arrive in time.
	readTimeout    = 30 * time.Second
	writeTimeout   = 30 * time.Second
	idleTimeout    = 60 * time.Second
	maxHeaderBytes = 64 << 10
	// bodyBudget is how many bytes of request bodies the server holds while
	// reading them, over all requests; a body's buffer starts at bodyChunk
	// and doubles as bytes arrive.
	bodyBudget = 64 << 20
	bodyChunk  = 4 << 10
)

// newHTTPServer returns kvserver's HTTP server with its timeouts.
func newHTTPServer(addr string, h http.Handler) *http.Server {
	return &http.Server{
		Addr:              addr,
		Handler:           h,
		ReadHeaderTimeout: readHeaderTimeout,
		ReadTimeout:       readTimeout,
		WriteTimeout:      writeTimeout,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
	}
}

var (
	errBodyTooLarge = errors.New("value larger than the limit")
	errServerBusy   = errors.New("server busy: too many request bytes in flight, retry")
)

// bodies is the budget request bodies are read from.
var bodies = &byteBudget{free: bodyBudget}

type byteBudget struct {
	mu   sync.Mutex
	free int
}

func (b *byteBudget) take(n int) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.free < n {
		return false
	}
	b.free -= n
	return true
}

func (b *byteBudget) give(n int) {
	b.mu.Lock()
	b.free += n
	b.mu.Unlock()
}

// readBody reads r's body of at most limit bytes. Memory is taken from the
// budget as bytes arrive, never ahead of them; when the budget is spent the
// request fails with errServerBusy at once rather than waiting. release
// gives the bytes back once the caller is done with the value.
func readBody(r *http.Request, limit int) (value []byte, release func(), err error) {
	if r.ContentLength > int64(limit) {
		return nil, func() {}, errBodyTooLarge
	}
	held := 0
	release = func() { bodies.give(held); held = 0 }
	var buf []byte
	for {
		if len(buf) == cap(buf) {
			size := min(max(2*cap(buf), bodyChunk), limit+1)
			if !bodies.take(size - cap(buf)) {
				release()
				return nil, func() {}, errServerBusy
			}
			held += size - cap(buf)
			grown := make([]byte, len(buf), size)
			copy(grown, buf)
			buf = grown
		}
		n, err := r.Body.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if len(buf) > limit {
			release()
			return nil, func() {}, errBodyTooLarge
		}
		if err == io.EOF {
			return buf, release, nil
		}
		if err != nil {
			release()
			return nil, func() {}, err
		}
	}
}
