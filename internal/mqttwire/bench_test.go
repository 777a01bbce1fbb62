package mqttwire_test

import (
	"bufio"
	"bytes"
	"testing"

	"outpost/internal/mqttwire"
)

// loopReader repeats b forever, so a benchmark reads without a syscall.
type loopReader struct {
	b   []byte
	off int
}

func (r *loopReader) Read(p []byte) (int, error) {
	n := 0
	for n < len(p) {
		c := copy(p[n:], r.b[r.off:])
		n += c
		r.off = (r.off + c) % len(r.b)
	}
	return n, nil
}

// The edge's drain: a telemetry PUBLISH appended to the write buffer.
func BenchmarkAppendPublish(b *testing.B) {
	payload := bytes.Repeat([]byte("x"), 256)
	buf := make([]byte, 0, 4096)
	b.ReportAllocs()
	for b.Loop() {
		buf = mqttwire.AppendPublish(buf[:0], "devices/child1/messages/events/%24.cdid=child1&%24.ce=1", 1, 7, payload)
	}
}

// The load generator's send loop.
func BenchmarkPublishTemplate(b *testing.B) {
	p := mqttwire.NewPublishTemplate("devices/d1/messages/events/", bytes.Repeat([]byte("x"), 256), 1)
	var id uint16
	b.ReportAllocs()
	for b.Loop() {
		id++
		_ = p.Packet(id)
	}
}

// The edge's reader: a C2D PUBLISH whose payload the caller keeps.
func BenchmarkReadPublish(b *testing.B) {
	pk := mqttwire.AppendPublish(nil, "devices/child1/messages/devicebound/a=b", 1, 7, bytes.Repeat([]byte("x"), 256))
	r := bufioReader(pk)
	var p mqttwire.Packet
	b.ReportAllocs()
	for b.Loop() {
		if err := p.Read(r, nil, 1<<16); err != nil || p.Type != mqttwire.TypePublish {
			b.Fatal(p, err)
		}
	}
}

// PUBACKs: the edge reads them into fresh bodies, the load generator
// into a buffer it reuses.
func BenchmarkReadPuback(b *testing.B) {
	for _, bc := range []struct {
		name string
		buf  []byte
	}{{"fresh", nil}, {"reused", make([]byte, 16)}} {
		b.Run(bc.name, func(b *testing.B) {
			r := bufioReader(mqttwire.AppendPuback(nil, 9))
			var p mqttwire.Packet
			b.ReportAllocs()
			for b.Loop() {
				if err := p.Read(r, bc.buf, 1<<16); err != nil || p.ID != 9 {
					b.Fatal(p, err)
				}
			}
		})
	}
}

func bufioReader(b []byte) *bufio.Reader { return bufio.NewReaderSize(&loopReader{b: b}, 64<<10) }
