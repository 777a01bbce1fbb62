package main

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
)

func TestAppendVarint(t *testing.T) {
	tests := []struct {
		n    int
		want []byte
	}{
		{0, []byte{0}},
		{127, []byte{0x7f}},
		{128, []byte{0x80, 0x01}},
		{16383, []byte{0xff, 0x7f}},
		{16384, []byte{0x80, 0x80, 0x01}},
		{2097151, []byte{0xff, 0xff, 0x7f}},
		{268435455, []byte{0xff, 0xff, 0xff, 0x7f}}, // the largest [MQTT-2.2.3]
	}
	for _, tt := range tests {
		t.Run(string(rune('0'+len(tt.want))), func(t *testing.T) {
			if got := appendVarint(nil, tt.n); !bytes.Equal(got, tt.want) {
				t.Errorf("appendVarint(%d) = % x, want % x", tt.n, got, tt.want)
			}
		})
	}
}

func TestAppendConnect(t *testing.T) {
	tests := []struct {
		name           string
		id, user, pass string
		clean          bool
		want           []byte
	}{
		{"anonymous clean", "c", "", "", true, []byte{
			0x10, 13, 0, 4, 'M', 'Q', 'T', 'T', 4, 0x02, 0, 60, 0, 1, 'c'}},
		{"user and password", "c", "u", "p", false, []byte{
			0x10, 19, 0, 4, 'M', 'Q', 'T', 'T', 4, 0xc0, 0, 60, 0, 1, 'c', 0, 1, 'u', 0, 1, 'p'}},
		{"password without user is dropped", "c", "", "p", true, []byte{
			0x10, 13, 0, 4, 'M', 'Q', 'T', 'T', 4, 0x02, 0, 60, 0, 1, 'c'}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := appendConnect(nil, tt.id, tt.user, tt.pass, tt.clean, 60)
			if !bytes.Equal(got, tt.want) {
				t.Errorf("got  % x\nwant % x", got, tt.want)
			}
		})
	}
}

func TestPublishTemplate(t *testing.T) {
	tests := []struct {
		name string
		qos  byte
		id   uint16
		want []byte
	}{
		{"qos1", 1, 0x0102, []byte{0x32, 8, 0, 2, 't', '/', 1, 2, 'x', 'y'}},
		{"qos0", 0, 9, []byte{0x30, 6, 0, 2, 't', '/', 'x', 'y'}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := newPublishTemplate("t/", []byte("xy"), tt.qos)
			if got := p.packet(tt.id); !bytes.Equal(got, tt.want) {
				t.Errorf("got % x, want % x", got, tt.want)
			}
		})
	}
}

func TestReadPacket(t *testing.T) {
	tests := []struct {
		name     string
		in       []byte
		typ      byte
		body     []byte
		wantErr  error // matched with errors.Is; nil means success
		errSubst string
	}{
		{name: "puback", in: []byte{0x40, 2, 0, 7}, typ: typePuback, body: []byte{0, 7}},
		{name: "connack", in: []byte{0x20, 2, 0, 0}, typ: typeConnack, body: []byte{0, 0}},
		{name: "pingresp", in: []byte{0xd0, 0}, typ: typePingresp, body: []byte{}},
		{name: "empty stream", in: nil, wantErr: io.EOF},
		{name: "truncated body", in: []byte{0x40, 2, 0}, wantErr: io.ErrUnexpectedEOF},
		{name: "truncated length", in: []byte{0x40, 0x80}, wantErr: io.ErrUnexpectedEOF},
		{name: "five-byte length", in: []byte{0x40, 0x80, 0x80, 0x80, 0x80, 0x01}, wantErr: errMalformed},
		{name: "oversize", in: []byte{0x30, 0xff, 0xff, 0x7f}, wantErr: errMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			typ, _, body, err := readPacket(bufio.NewReader(bytes.NewReader(tt.in)), make([]byte, 4))
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("err = %v, want %v", err, tt.wantErr)
			}
			if err == nil && (typ != tt.typ || !bytes.Equal(body, tt.body)) {
				t.Errorf("got type %d body % x, want type %d body % x", typ, body, tt.typ, tt.body)
			}
		})
	}
}

func TestParseConnackPuback(t *testing.T) {
	tests := []struct {
		name    string
		parse   func() error
		wantErr string // substring; "" means success
	}{
		{"connack accepted", func() error { return parseConnack(0, []byte{0, 0}) }, ""},
		{"connack session present", func() error { return parseConnack(0, []byte{1, 0}) }, ""},
		{"connack refused", func() error { return parseConnack(0, []byte{0, 5}) }, "not authorized"},
		{"connack unknown code", func() error { return parseConnack(0, []byte{0, 99}) }, "code 99"},
		{"connack short", func() error { return parseConnack(0, []byte{0}) }, "malformed"},
		{"connack flags", func() error { return parseConnack(1, []byte{0, 0}) }, "malformed"},
		{"puback", func() error { _, err := parsePuback(0, []byte{0, 1}); return err }, ""},
		{"puback id 0", func() error { _, err := parsePuback(0, []byte{0, 0}); return err }, "packet id 0"},
		{"puback long", func() error { _, err := parsePuback(0, []byte{0, 1, 2}); return err }, "malformed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.parse()
			if tt.wantErr == "" && err != nil || tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Errorf("err = %v, want %q", err, tt.wantErr)
			}
		})
	}
}

// FuzzReadPacket feeds arbitrary broker output to the reader and parsers:
// they must not panic, and what they accept must re-encode to the same bytes.
func FuzzReadPacket(f *testing.F) {
	f.Add([]byte{0x40, 2, 0, 7})
	f.Add([]byte{0x20, 2, 0, 0, 0x40, 2, 0xff, 0xff})
	f.Add([]byte{0xd0, 0, 0x40, 0x80, 0x80, 0x80, 0x80})
	f.Add([]byte{0x30, 0x80, 0x01})
	f.Fuzz(func(t *testing.T, in []byte) {
		r := bufio.NewReader(bytes.NewReader(in))
		for {
			typ, flags, body, err := readPacket(r, make([]byte, 8))
			if err != nil {
				return
			}
			if len(body) > maxInbound {
				t.Fatalf("body of %d bytes accepted", len(body))
			}
			switch typ {
			case typeConnack:
				parseConnack(flags, body)
			case typePuback:
				if id, err := parsePuback(flags, body); err == nil {
					want := []byte{typePuback << 4, 2, byte(id >> 8), byte(id)}
					if !bytes.Contains(in, want) {
						t.Fatalf("PUBACK %d parsed from % x", id, in)
					}
				}
			}
		}
	})
}
