package chunk

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"
)

func TestChunkHeaderRoundTrip(t *testing.T) {
	for _, h := range []Header{
		{ID: 1, Index: 0, Count: 2, Total: Size + 1},
		{ID: 1<<64 - 1, Index: 3, Count: 4, Total: 4 * Size},
		{ID: 7, Index: 0, Count: 1, Total: 1},
		{ID: 9, Index: 255, Count: 256, Total: MaxTotal},
		{Abort: true},
	} {
		got, err := ParseHeader(h.Encode())
		if err != nil || got != h {
			t.Errorf("parse(encode(%+v)) = %+v, %v", h, got, err)
		}
	}
}

func TestChunkHeaderRejectsMalformed(t *testing.T) {
	valid := Header{ID: 5, Index: 1, Count: 3, Total: 2*Size + 10}.Encode()
	with := func(f func(b []byte) []byte) []byte { return f(bytes.Clone(valid)) }
	const fields = 5 // offset of id; index at +8, count at +12, total at +16
	for _, tc := range []struct {
		name string
		ext  []byte
	}{
		{"nil", nil},
		{"magic only", []byte(magic)},
		{"short", valid[:len(valid)-1]},
		{"long", append(bytes.Clone(valid), 0)},
		{"other magic", with(func(b []byte) []byte { b[3] = '2'; return b })},
		{"unknown flag", with(func(b []byte) []byte { b[4] = 2; return b })},
		{"abort with fields", with(func(b []byte) []byte { b[4] = flagAbort; return b })},
		{"count 0", with(func(b []byte) []byte { binary.BigEndian.PutUint32(b[fields+12:], 0); return b })},
		{"index = count", with(func(b []byte) []byte { binary.BigEndian.PutUint32(b[fields+8:], 3); return b })},
		{"index > count", with(func(b []byte) []byte { binary.BigEndian.PutUint32(b[fields+8:], 1<<31); return b })},
		{"total too small for count", with(func(b []byte) []byte { binary.BigEndian.PutUint64(b[fields+16:], 2*Size); return b })},
		{"total too large for count", with(func(b []byte) []byte { binary.BigEndian.PutUint64(b[fields+16:], 3*Size+1); return b })},
		{"total over limit", Header{ID: 1, Count: 256, Total: MaxTotal + 1}.Encode()},
		{"total 0", Header{ID: 1, Count: 1, Total: 0}.Encode()},
		{"huge total", with(func(b []byte) []byte { binary.BigEndian.PutUint64(b[fields+16:], 1<<63); return b })},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if h, err := ParseHeader(tc.ext); !errors.Is(err, ErrBadHeader) {
				t.Errorf("parse(%x) = %+v, %v; want ErrBadHeader", tc.ext, h, err)
			}
		})
	}
}

func TestMaxTotalIsRaftkitsCommandSizeLimit(t *testing.T) {
	// raftkit.MaxCommandSizeLimit is 64 MiB - 4 KiB: the largest command a
	// forwarded message (64 MiB) carries with its framing.
	if MaxTotal != 64<<20-4096 {
		t.Fatalf("MaxTotal = %d", MaxTotal)
	}
}
