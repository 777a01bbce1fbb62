package gateway

import (
	"bufio"
	"errors"
	"net"
	"os"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"outpost/internal/mqttwire"
)

// writePubacks writes to mochi's connection itself, under mochi's client
// lock, relying on two internals of mochi: WritePacket writes under that
// same lock, and it writes straight to the connection when nothing of its
// own is queued for the client (nothing is, as mochi routes nothing to
// device clients). A mochi upgrade that changes either must fail here,
// loudly, not interleave PUBACKs with other packets in production.
func TestMochiWriteContract(t *testing.T) {
	srv := mqtt.New(nil)
	server, peer := net.Pipe()
	t.Cleanup(func() { server.Close(); peer.Close() })
	cl := srv.NewClient(server, "contract", "c1", false)
	cl.Properties.ProtocolVersion = 4

	// 1. WritePacket waits for the client lock: holding it, nothing
	// reaches the wire; releasing it lets the packet through.
	cl.Lock()
	done := make(chan error, 1)
	go func() {
		done <- cl.WritePacket(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pingresp}})
	}()
	_ = peer.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	var one [1]byte
	if n, err := peer.Read(one[:]); n != 0 || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("mochi's WritePacket wrote %d bytes (%v) while the client lock was held: writePubacks' lock no longer orders its writes", n, err)
	}
	cl.Unlock()
	_ = peer.SetReadDeadline(time.Now().Add(10 * time.Second))
	r := bufio.NewReader(peer)
	var p mqttwire.Packet
	if err := p.Read(r, nil, 1<<10); err != nil || p.Type != mqttwire.TypePingresp {
		t.Fatalf("after the lock was released: %+v, %v; want a PINGRESP", p, err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}

	// 2. Interleaved with WritePacket from another goroutine, every
	// writePubacks batch arrives whole and in order.
	const batches, per = 50, 8
	go func() {
		var buf []byte
		for i := range batches {
			items := make([]pubItem, per)
			for j := range items {
				items[j] = pubItem{ack: true, pid: uint16(i*per + j + 1)}
			}
			if err := writePubacks(cl, items, &buf); err != nil {
				done <- err
				return
			}
			if err := cl.WritePacket(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pingresp}}); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	next := uint16(1)
	for i := range batches {
		for range per {
			if err := p.Read(r, nil, 1<<10); err != nil || p.Type != mqttwire.TypePuback || p.ID != next {
				t.Fatalf("batch %d: %+v, %v; want PUBACK %d", i, p, err, next)
			}
			next++
		}
		if err := p.Read(r, nil, 1<<10); err != nil || p.Type != mqttwire.TypePingresp {
			t.Fatalf("after batch %d: %+v, %v; want the PINGRESP", i, p, err)
		}
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
