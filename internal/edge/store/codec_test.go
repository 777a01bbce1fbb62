package store

import (
	"bytes"
	"encoding/json"
	"reflect"
	"strconv"
	"testing"
	"time"

	"outpost/internal/message"
)

// fullMessage sets every field of message.Message, by reflection, so that
// a field added to the shared vocabulary without codec support fails
// TestCodecRoundTrip.
func fullMessage(t testing.TB) *message.Message {
	m := &message.Message{
		DeviceID:   "dev",
		ModuleID:   "mod",
		Body:       []byte{0, 1, 2, 0xff},
		Properties: map[string]string{"a": "1", "": "empty key", "ü": "ß"},
	}
	sys := reflect.ValueOf(&m.System).Elem()
	for i := range sys.NumField() {
		f := sys.Field(i)
		switch f.Kind() {
		case reflect.String:
			f.SetString("v" + strconv.Itoa(i))
		case reflect.Uint64:
			f.SetUint(1<<63 + uint64(i))
		case reflect.Struct:
			if f.Type() != reflect.TypeFor[time.Time]() {
				t.Fatalf("System.%s: unknown struct type", sys.Type().Field(i).Name)
			}
			f.Set(reflect.ValueOf(time.Date(2025, 3, 4, 5, 6, 7, 8, time.UTC)))
		default:
			t.Fatalf("System.%s: kind %v not covered by the codec test", sys.Type().Field(i).Name, f.Kind())
		}
	}
	return m
}

func TestCodecRoundTrip(t *testing.T) {
	at := time.Date(2025, 1, 2, 3, 4, 5, 6, time.UTC)
	tests := []struct {
		name string
		h    header
		m    *message.Message
	}{
		{"every field", header{storedAt: at, ttl: time.Hour}, fullMessage(t)},
		{"empty", header{storedAt: at}, &message.Message{}},
		{"max ttl", header{storedAt: at, ttl: MaxTTL}, &message.Message{DeviceID: "d", Body: []byte("x")}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v := encodeValue(tt.h, tt.m)
			h, m, err := decodeValue(v)
			if err != nil {
				t.Fatal(err)
			}
			if !h.storedAt.Equal(tt.h.storedAt) || h.ttl != tt.h.ttl {
				t.Fatalf("header %+v, want %+v", h, tt.h)
			}
			if !reflect.DeepEqual(m, tt.m) {
				t.Fatalf("got %+v\nwant %+v", m, tt.m)
			}
			if hh, err := decodeHeader(v); err != nil || !hh.storedAt.Equal(h.storedAt) {
				t.Fatalf("decodeHeader = %+v, %v", hh, err)
			}
			for i := range v {
				if _, _, err := decodeValue(v[:i]); err == nil {
					t.Fatalf("truncated at %d of %d decoded", i, len(v))
				}
			}
		})
	}
}

func TestKeys(t *testing.T) {
	tests := []struct {
		a, b [2]uint64 // (id, seq) with a < b
	}{
		{[2]uint64{1, 1}, [2]uint64{1, 2}},
		{[2]uint64{1, 255}, [2]uint64{1, 256}},
		{[2]uint64{1, 1<<64 - 1}, [2]uint64{2, 0}},
		{[2]uint64{255, 0}, [2]uint64{256, 0}},
	}
	for _, tt := range tests {
		ka, kb := queueKey(uint32(tt.a[0]), tt.a[1]), queueKey(uint32(tt.b[0]), tt.b[1])
		if bytes.Compare(ka, kb) >= 0 {
			t.Errorf("key%v >= key%v", tt.a, tt.b)
		}
		id, seq, ok := parseQueueKey(ka)
		if !ok || uint64(id) != tt.a[0] || seq != tt.a[1] {
			t.Errorf("parse(key%v) = %d, %d, %v", tt.a, id, seq, ok)
		}
	}
	if m, err := decodeEndpointMeta(encodeEndpointMeta(endpointMeta{id: 7, priority: 3, ttl: time.Minute})); err != nil || m.id != 7 || m.priority != 3 || m.ttl != time.Minute {
		t.Fatalf("endpoint meta = %+v, %v", m, err)
	}
}

func FuzzDecodeValue(f *testing.F) {
	f.Add(encodeValue(header{storedAt: time.Unix(1, 2), ttl: time.Second}, fullMessage(f)))
	f.Add(encodeValue(header{}, &message.Message{}))
	f.Add([]byte{valueVersion, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x0f})
	f.Fuzz(func(t *testing.T, v []byte) {
		h, m, err := decodeValue(v)
		if err != nil {
			return
		}
		// Whatever decodes must re-encode to something that decodes the same.
		h2, m2, err := decodeValue(encodeValue(h, m))
		if err != nil {
			t.Fatalf("re-decode: %v", err)
		}
		if !h2.storedAt.Equal(h.storedAt) || h2.ttl != h.ttl || !reflect.DeepEqual(m, m2) {
			t.Fatalf("round trip changed %+v %+v into %+v %+v", h, m, h2, m2)
		}
	})
}

// BenchmarkCodec compares the binary value codec with JSON for a typical
// 256-byte telemetry message.
func BenchmarkCodec(b *testing.B) {
	m := &message.Message{
		DeviceID:   "sensor-0042",
		Body:       bytes.Repeat([]byte("x"), 256),
		Properties: map[string]string{"temperatureAlert": "false"},
		System: message.System{
			MessageID: message.NewID(), ContentType: "application/json", ContentEncoding: "utf-8",
			ConnDeviceID: "sensor-0042", EnqueuedTime: time.Now(),
		},
	}
	h := header{storedAt: time.Now()}
	b.Run("binary", func(b *testing.B) {
		for b.Loop() {
			if _, _, err := decodeValue(encodeValue(h, m)); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(len(encodeValue(h, m))), "bytes/value")
	})
	b.Run("json", func(b *testing.B) {
		v, _ := json.Marshal(m)
		defer b.ReportMetric(float64(len(v)), "bytes/value")
		for b.Loop() {
			v, err := json.Marshal(m)
			if err != nil {
				b.Fatal(err)
			}
			var out message.Message
			if err := json.Unmarshal(v, &out); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// A value written by a binary of format version 1 (no EdgeStore) still
// decodes: an upgraded edge reads the queue its predecessor left.
func TestCodecReadsVersion1(t *testing.T) {
	m := fullMessage(t)
	m.System.EdgeStore = ""
	v2 := encodeValue(header{storedAt: time.Unix(0, 42)}, m)
	// Version 1 is version 2 without the trailing empty EdgeStore.
	v1 := append([]byte{1}, v2[1:len(v2)-1]...)
	_, got, err := decodeValue(v1)
	if err != nil {
		t.Fatalf("decode a version 1 value: %v", err)
	}
	if !reflect.DeepEqual(got, m) {
		t.Fatalf("got %+v\nwant %+v", got, m)
	}
	if _, _, err := decodeValue(append([]byte{valueVersion + 1}, v2[1:]...)); err == nil {
		t.Fatal("a value of a future version decoded")
	}
}
