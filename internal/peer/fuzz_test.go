package peer

import (
	"net"
	"net/rpc"
	"testing"
	"time"
)

// FuzzServerDecoding feeds arbitrary bytes to a request server: it must
// neither panic nor hang, and the frame limit bounds what it allocates.
func FuzzServerDecoding(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte{0, 0, 0, 1, 0x80, 0, 0, 0, 1, 0x80})
	f.Add([]byte{0xff, 0xff, 0xff, 0xff})
	f.Add([]byte{0, 0, 0, 3, 0x81, 0xa1, 0x41})
	f.Add([]byte{0, 0, 0, 20, 0x82, 0xad, 'S', 'e', 'r', 'v', 'i', 'c', 'e', 'M', 'e', 't', 'h', 'o', 'd', 0xa1, 'x', 0xa3, 'S', 'e', 'q'})
	srv := rpc.NewServer()
	if err := srv.RegisterName(Service, echo{}); err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, s := net.Pipe()
		done := make(chan struct{})
		go func() {
			srv.ServeCodec(NewServerCodec(s, Limits{Deadlines: Deadlines{Idle: time.Second, Message: time.Second}}))
			close(done)
		}()
		go func() {
			// Drain responses so the server never blocks writing.
			buf := make([]byte, 4096)
			for {
				if _, err := c.Read(buf); err != nil {
					return
				}
			}
		}()
		c.SetWriteDeadline(time.Now().Add(2 * time.Second))
		c.Write(data)
		c.Close()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatalf("server still running 10s after the peer closed, input %x", data)
		}
	})
}
