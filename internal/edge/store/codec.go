package store

import (
	"encoding/binary"
	"fmt"
	"sort"
	"time"

	"outpost/internal/message"
)

// Key prefixes. Every key starts with one byte naming its space, so the
// spaces never interleave and each can be scanned or bounded on its own.
const (
	prefixKV    = 'k'
	prefixMeta  = 'm'
	prefixQueue = 'q'
)

// queueKeyLen is 'q', a 4-byte endpoint id and an 8-byte sequence, all
// big-endian so that byte order is (endpoint, seq) order.
const queueKeyLen = 1 + 4 + 8

// maxEndpointID keeps id+1 representable, so every endpoint's key range has
// an exclusive upper bound of the same shape.
const maxEndpointID = 1<<32 - 2

var (
	metaSeqKey      = []byte{prefixMeta, 0, 's', 'e', 'q'}
	metaTTLKey      = []byte{prefixMeta, 0, 't', 't', 'l'}
	metaStoreIDKey  = []byte{prefixMeta, 0, 's', 'i', 'd'}
	metaNowKey      = []byte{prefixMeta, 0, 'n', 'o', 'w'}
	metaEndpointPfx = []byte{prefixMeta, 1}
)

func queueKey(id uint32, seq uint64) []byte {
	k := make([]byte, queueKeyLen)
	k[0] = prefixQueue
	binary.BigEndian.PutUint32(k[1:5], id)
	binary.BigEndian.PutUint64(k[5:], seq)
	return k
}

// queueBounds returns the key range [lo, hi) holding every entry of id.
func queueBounds(id uint32) (lo, hi []byte) {
	return queueKey(id, 0), queueKey(id+1, 0)
}

func parseQueueKey(k []byte) (id uint32, seq uint64, ok bool) {
	if len(k) != queueKeyLen || k[0] != prefixQueue {
		return 0, 0, false
	}
	return binary.BigEndian.Uint32(k[1:5]), binary.BigEndian.Uint64(k[5:]), true
}

func endpointMetaKey(name string) []byte {
	return append(append([]byte(nil), metaEndpointPfx...), name...)
}

// endpointMeta is what the store persists about an endpoint.
type endpointMeta struct {
	id       uint32
	priority int
	ttl      time.Duration
}

func encodeEndpointMeta(m endpointMeta) []byte {
	b := binary.AppendUvarint(nil, uint64(m.id))
	b = binary.AppendUvarint(b, uint64(m.priority))
	return binary.AppendVarint(b, int64(m.ttl))
}

func decodeEndpointMeta(b []byte) (endpointMeta, error) {
	d := decoder{b: b}
	id := d.uvarint()
	prio := d.uvarint()
	ttl := d.varint()
	if d.err != nil || id > maxEndpointID || prio > MaxPriority || ttl < 0 {
		return endpointMeta{}, errCorrupt
	}
	return endpointMeta{id: uint32(id), priority: int(prio), ttl: time.Duration(ttl)}, nil
}

var errCorrupt = fmt.Errorf("%w: a stored value does not decode", ErrCorrupt)

// valueVersion is the first byte of every queued value, so the encoding
// can change without a migration: old values keep decoding by version.
// Version 2 added System.EdgeStore after EdgeSeq.
const valueVersion = 2

// header is the part of a queued value needed to decide expiry, decodable
// without decoding the message.
type header struct {
	storedAt time.Time
	// ttl is the per-message TTL a route gave explicitly; 0 means the
	// endpoint's (or store's) TTL in force when the entry is read.
	ttl time.Duration
}

// encodeValue writes a queued value: version, header, then the message
// in a small binary form (length-prefixed strings, in field order).
// For a 256-byte telemetry message it is 393 bytes against JSON's 632
// (which base64-encodes the body) and round-trips about 6x faster; see
// BenchmarkCodec.
func encodeValue(h header, m *message.Message) []byte {
	n := 32 + len(m.DeviceID) + len(m.ModuleID) + len(m.Body)
	for k, v := range m.Properties {
		n += len(k) + len(v) + 4
	}
	n += systemLen(&m.System) + 40
	b := make([]byte, 0, n)
	b = append(b, valueVersion)
	b = binary.AppendVarint(b, h.storedAt.UnixNano())
	b = binary.AppendVarint(b, int64(h.ttl))
	b = appendString(b, m.DeviceID)
	b = appendString(b, m.ModuleID)
	b = binary.AppendUvarint(b, uint64(len(m.Body)))
	b = append(b, m.Body...)
	// Sorted so equal messages encode to equal bytes.
	keys := make([]string, 0, len(m.Properties))
	for k := range m.Properties {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	b = binary.AppendUvarint(b, uint64(len(keys)))
	for _, k := range keys {
		b = appendString(b, k)
		b = appendString(b, m.Properties[k])
	}
	s := &m.System
	for _, f := range systemStrings(s) {
		b = appendString(b, *f)
	}
	if s.EnqueuedTime.IsZero() {
		b = append(b, 0)
	} else {
		b = append(b, 1)
		b = binary.AppendVarint(b, s.EnqueuedTime.UnixNano())
	}
	b = binary.AppendUvarint(b, s.EdgeSeq)
	b = appendString(b, s.EdgeStore)
	return b
}

// systemStrings lists the string system properties in encoding order.
// Appending a field here is a format change: bump valueVersion.
func systemStrings(s *message.System) []*string {
	return []*string{
		&s.MessageID, &s.CorrelationID, &s.UserID, &s.To, &s.ContentType,
		&s.ContentEncoding, &s.Expiry, &s.OutputName, &s.InputName,
		&s.ConnDeviceID, &s.ConnModuleID, &s.EdgeID,
	}
}

func systemLen(s *message.System) int {
	n := 0
	for _, f := range systemStrings(s) {
		n += len(*f) + 1
	}
	return n
}

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

func decodeHeader(v []byte) (header, error) {
	d := decoder{b: v}
	h := d.header()
	return h, d.err
}

// decodeValue decodes a queued value. The result shares no memory with v,
// which may be an iterator's buffer.
func decodeValue(v []byte) (header, *message.Message, error) {
	d := decoder{b: v}
	h := d.header()
	m := &message.Message{}
	m.DeviceID = d.string()
	m.ModuleID = d.string()
	if body := d.bytes(); len(body) > 0 {
		m.Body = append([]byte(nil), body...)
	}
	if n := d.uvarint(); n > 0 && d.err == nil {
		// Each property takes at least two bytes, which bounds n by the
		// input and so bounds the allocation.
		if n > uint64(len(d.b)/2) {
			return header{}, nil, errCorrupt
		}
		m.Properties = make(map[string]string, n)
		for range n {
			k := d.string()
			m.Properties[k] = d.string()
		}
	}
	s := &m.System
	for _, f := range systemStrings(s) {
		*f = d.string()
	}
	switch d.byte() {
	case 0:
	case 1:
		s.EnqueuedTime = time.Unix(0, d.varint()).UTC()
	default:
		d.fail()
	}
	s.EdgeSeq = d.uvarint()
	if d.version >= 2 {
		s.EdgeStore = d.string()
	}
	if d.err == nil && len(d.b) != 0 {
		d.fail()
	}
	if d.err != nil {
		return header{}, nil, d.err
	}
	return h, m, nil
}

// decoder reads the binary form; after the first error every read returns
// a zero value, so callers check err once at the end.
type decoder struct {
	b       []byte
	err     error
	version byte // of the value, once header has read it
}

func (d *decoder) fail() { d.err, d.b = errCorrupt, nil }

func (d *decoder) header() header {
	d.version = d.byte()
	if d.version < 1 || d.version > valueVersion {
		d.fail()
		return header{}
	}
	at := d.varint()
	ttl := d.varint()
	if ttl < 0 {
		d.fail()
	}
	return header{storedAt: time.Unix(0, at), ttl: time.Duration(ttl)}
}

func (d *decoder) byte() byte {
	if d.err != nil || len(d.b) == 0 {
		d.fail()
		return 0
	}
	c := d.b[0]
	d.b = d.b[1:]
	return c
}

func (d *decoder) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	x, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.fail()
		return 0
	}
	d.b = d.b[n:]
	return x
}

func (d *decoder) varint() int64 {
	if d.err != nil {
		return 0
	}
	x, n := binary.Varint(d.b)
	if n <= 0 {
		d.fail()
		return 0
	}
	d.b = d.b[n:]
	return x
}

func (d *decoder) bytes() []byte {
	n := d.uvarint()
	if d.err != nil {
		return nil
	}
	if n > uint64(len(d.b)) {
		d.fail()
		return nil
	}
	p := d.b[:n]
	d.b = d.b[n:]
	return p
}

func (d *decoder) string() string { return string(d.bytes()) }

// messageSize is the size IoT Hub counts against its 256 KiB limit: the
// body plus application and system properties.
func messageSize(m *message.Message) int {
	n := len(m.Body)
	for k, v := range m.Properties {
		n += len(k) + len(v)
	}
	for _, f := range systemStrings(&m.System) {
		n += len(*f)
	}
	return n
}
