package main

import (
	"bytes"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

func TestReadBodyRefusesValuesOverTheLimit(t *testing.T) {
	r := httptest.NewRequest("PUT", "/kv/k", bytes.NewReader(make([]byte, 2000)))
	if _, release, err := readBody(r, 1000); !errors.Is(err, errBodyTooLarge) {
		release()
		t.Fatalf("2000-byte body, limit 1000: %v", err)
	}
	// Without a Content-Length the limit still holds as bytes arrive.
	r = httptest.NewRequest("PUT", "/kv/k", bytes.NewReader(make([]byte, 2000)))
	r.ContentLength = -1
	if _, release, err := readBody(r, 1000); !errors.Is(err, errBodyTooLarge) {
		release()
		t.Fatalf("2000-byte body without length, limit 1000: %v", err)
	}
	if bodies.free != bodyBudget {
		t.Fatalf("budget not given back: %d free of %d", bodies.free, bodyBudget)
	}
}

func TestReadBodyFailsFastWhenTheBudgetIsSpent(t *testing.T) {
	// Other requests hold all but half a chunk.
	if !bodies.take(bodyBudget - bodyChunk/2) {
		t.Fatal("budget already in use")
	}
	r := httptest.NewRequest("PUT", "/kv/k", bytes.NewReader(make([]byte, 100)))
	_, release, err := readBody(r, 1<<20)
	release()
	bodies.give(bodyBudget - bodyChunk/2)
	if !errors.Is(err, errServerBusy) {
		t.Fatalf("body with the budget spent: %v, want errServerBusy", err)
	}
	got, release, err := readBody(httptest.NewRequest("PUT", "/kv/k", bytes.NewReader([]byte("v"))), 1<<20)
	release()
	if err != nil || string(got) != "v" {
		t.Fatalf("body with the budget free: %q, %v", got, err)
	}
	if bodies.free != bodyBudget {
		t.Fatalf("budget not given back: %d free of %d", bodies.free, bodyBudget)
	}
}

func TestSilentHTTPClientIsDisconnected(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := newHTTPServer(ln.Addr().String(), http.NotFoundHandler())
	go srv.Serve(ln)
	defer srv.Close()
	conn, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.Write([]byte("PUT /kv/k HTTP/1.1\r\n")) // then nothing
	start := time.Now()
	conn.SetReadDeadline(time.Now().Add(readHeaderTimeout + 5*time.Second))
	buf := make([]byte, 512)
	for {
		if _, err := conn.Read(buf); err != nil {
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				t.Fatalf("a client that stopped mid-header was held for %s", time.Since(start))
			}
			break
		}
	}
}
