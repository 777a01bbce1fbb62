package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"outpost/internal/mqttwire"
	"outpost/internal/poll"
)

// fakeBroker is a scripted MQTT server on 127.0.0.1:0. It holds back
// PUBACKs until a client has `hold` PUBLISHes outstanding, so a test can
// see whether the window is filled exactly.
type fakeBroker struct {
	t       *testing.T
	ln      net.Listener
	rc      byte // CONNACK return code
	hold    int  // ack only when this many are outstanding; 0 acks at once
	noAcks  bool // never ack
	closeAt int  // close the connection after this many PUBLISHes; 0 never

	mu       sync.Mutex // guards the fields below
	conns    []*fakeConn
	failures []string

	wg sync.WaitGroup
}

type fakeConn struct {
	clientID, username, password string
	clean                        bool
	topics                       map[string]int
	publishes                    int
	qos0                         int
	maxOutstanding               int
}

func newFakeBroker(t *testing.T, fb *fakeBroker) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	fb.t, fb.ln = t, ln
	fb.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			fb.wg.Go(func() { fb.serve(c) })
		}
	})
	t.Cleanup(func() {
		ln.Close()
		fb.wg.Wait()
		fb.mu.Lock()
		defer fb.mu.Unlock()
		for _, f := range fb.failures {
			t.Error(f)
		}
	})
	return ln.Addr().String()
}

func (fb *fakeBroker) fail(format string, args ...any) {
	fb.mu.Lock()
	defer fb.mu.Unlock()
	fb.failures = append(fb.failures, "fake broker: "+strings.TrimSpace(fmt.Sprintf(format, args...)))
}

func (fb *fakeBroker) serve(c net.Conn) {
	defer c.Close()
	r := bufio.NewReader(c)
	typ, _, body, err := mqttwire.ReadFrame(r, nil, maxInbound)
	if err != nil || typ != mqttwire.TypeConnect {
		fb.fail("first packet: type %d, %v", typ, err)
		return
	}
	fc := parseConnectBody(body)
	fc.topics = map[string]int{}
	fb.mu.Lock()
	fb.conns = append(fb.conns, fc)
	fb.mu.Unlock()
	if _, err := c.Write([]byte{mqttwire.TypeConnack << 4, 2, 0, fb.rc}); err != nil || fb.rc != 0 {
		return
	}
	var pending []uint16
	probed := false
	ack := func() bool {
		var b []byte
		for _, id := range pending {
			b = mqttwire.AppendPuback(b, id)
		}
		pending = pending[:0]
		_, err := c.Write(b)
		return err == nil
	}
	for {
		var p mqttwire.Packet
		if err := p.Read(r, nil, maxInbound); err != nil {
			if errors.Is(err, mqttwire.ErrMalformed) { // such as packet id 0
				fb.fail("read: %v", err)
			}
			return
		}
		switch p.Type {
		case mqttwire.TypeDisconnect:
			return
		case mqttwire.TypePingreq:
			c.Write([]byte{mqttwire.TypePingresp << 4, 0})
			continue
		case mqttwire.TypePublish:
		default:
			fb.fail("unexpected packet type %d", p.Type)
			return
		}
		fb.mu.Lock()
		fc.publishes++
		fc.topics[p.Topic]++
		fb.mu.Unlock()
		if fb.closeAt > 0 && fc.publishes == fb.closeAt {
			return
		}
		if p.QoS == 0 {
			fb.mu.Lock()
			fc.qos0++
			fb.mu.Unlock()
			continue
		}
		pending = append(pending, p.ID)
		fb.mu.Lock()
		fc.maxOutstanding = max(fc.maxOutstanding, len(pending))
		fb.mu.Unlock()
		if fb.noAcks || len(pending) < fb.hold {
			continue
		}
		if !probed && fb.hold > 0 {
			// Once, with a full window, make sure nothing more is coming:
			// a client that overshoots would have sent it already.
			probed = true
			c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
			typ, _, _, err := mqttwire.ReadFrame(r, nil, maxInbound)
			c.SetReadDeadline(time.Time{})
			if ne, ok := err.(net.Error); !ok || !ne.Timeout() {
				fb.mu.Lock()
				fc.maxOutstanding++
				fb.mu.Unlock()
				fb.fail("%s: packet type %d (%v) beyond a full window of %d", fc.clientID, typ, err, fb.hold)
				return
			}
		}
		if !ack() {
			return
		}
	}
}

func parseConnectBody(b []byte) *fakeConn {
	str := func() string {
		n := int(binary.BigEndian.Uint16(b))
		s := string(b[2 : 2+n])
		b = b[2+n:]
		return s
	}
	str() // "MQTT"
	flags := b[1]
	b = b[4:]
	fc := &fakeConn{clientID: str(), clean: flags&0x02 != 0}
	if flags&0x80 != 0 {
		fc.username = str()
	}
	if flags&0x40 != 0 {
		fc.password = str()
	}
	return fc
}

func baseConfig(addr string, clients int) Config {
	cfg := Config{
		Addr: addr, Topic: "devices/{id}/messages/events/", Size: 32, QoS: 1, Inflight: 8,
		Count: 40, Clean: true, Keepalive: 60 * time.Second, Timeout: 10 * time.Second,
	}
	for i := range clients {
		cfg.Creds = append(cfg.Creds, Cred{ClientID: fmt.Sprintf("d%d", i), Username: fmt.Sprintf("u%d", i), Password: "sas"})
	}
	return cfg
}

func TestRunWindow(t *testing.T) {
	tests := []struct {
		name            string
		clients         int
		inflight, count int
	}{
		{"three clients", 3, 8, 40},
		{"window of one", 1, 1, 5},
		{"window of 64", 2, 64, 640},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fb := &fakeBroker{hold: tt.inflight}
			addr := newFakeBroker(t, fb)
			cfg := baseConfig(addr, tt.clients)
			cfg.Inflight, cfg.Count = tt.inflight, tt.count
			res, err := run(context.Background(), cfg)
			if err != nil {
				t.Fatal(err)
			}
			if want := uint64(tt.clients * tt.count); res.Acked != want {
				t.Errorf("acked %d, want %d", res.Acked, want)
			}
			if res.MsgsPerSec <= 0 || res.P50us <= 0 || res.P99us < res.P50us || res.MaxUs < res.P99us {
				t.Errorf("implausible result %+v", res)
			}
			fb.mu.Lock()
			defer fb.mu.Unlock()
			if len(fb.conns) != tt.clients {
				t.Fatalf("%d connections, want %d", len(fb.conns), tt.clients)
			}
			for _, fc := range fb.conns {
				// The broker acks only a full window: had the client kept
				// fewer in flight, it would have hung; more shows here.
				if fc.maxOutstanding != tt.inflight {
					t.Errorf("%s: %d outstanding at most, want exactly %d", fc.clientID, fc.maxOutstanding, tt.inflight)
				}
				topic := "devices/" + fc.clientID + "/messages/events/"
				if fc.topics[topic] != tt.count || fc.publishes != tt.count {
					t.Errorf("%s: topics %v, want %d on %s", fc.clientID, fc.topics, tt.count, topic)
				}
				if fc.username != "u"+fc.clientID[1:] || fc.password != "sas" || !fc.clean {
					t.Errorf("%s: connected as %q/%q clean=%v", fc.clientID, fc.username, fc.password, fc.clean)
				}
			}
		})
	}
}

func TestRunPacketIDWrap(t *testing.T) {
	fb := &fakeBroker{}
	cfg := baseConfig(newFakeBroker(t, fb), 1)
	cfg.Count, cfg.Inflight, cfg.Size = 70000, 64, 1 // past 65535 ids
	res, err := run(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if res.Acked != 70000 {
		t.Errorf("acked %d, want 70000", res.Acked)
	}
}

func TestRunDuration(t *testing.T) {
	fb := &fakeBroker{}
	cfg := baseConfig(newFakeBroker(t, fb), 2)
	cfg.Count, cfg.Duration = 0, 50*time.Millisecond
	res, err := run(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	fb.mu.Lock()
	defer fb.mu.Unlock()
	sent := 0
	for _, fc := range fb.conns {
		sent += fc.publishes
	}
	if res.Acked == 0 || res.Acked != uint64(sent) {
		t.Errorf("acked %d, broker received %d", res.Acked, sent)
	}
}

func TestRunQoS0(t *testing.T) {
	fb := &fakeBroker{}
	cfg := baseConfig(newFakeBroker(t, fb), 2)
	cfg.QoS = 0
	res, err := run(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if res.Acked != 80 {
		t.Errorf("counted %d, want 80", res.Acked)
	}
	// The broker reads after we disconnect: wait for it to have read all.
	poll.Check(t, 5*time.Second, 0, func() error {
		fb.mu.Lock()
		n := 0
		for _, fc := range fb.conns {
			n += fc.qos0
		}
		fb.mu.Unlock()
		if n != 80 {
			return fmt.Errorf("broker received %d QoS 0 PUBLISHes, want 80", n)
		}
		return nil
	})
}

func TestRunErrors(t *testing.T) {
	tests := []struct {
		name    string
		broker  *fakeBroker
		timeout time.Duration
		wantErr string
	}{
		{"refused", &fakeBroker{rc: 5}, 10 * time.Second, "not authorized"},
		{"no acks", &fakeBroker{noAcks: true}, 200 * time.Millisecond, "no PUBACK within"},
		{"broker hangs up", &fakeBroker{closeAt: 3}, 10 * time.Second, "read"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := baseConfig(newFakeBroker(t, tt.broker), 2)
			cfg.Timeout = tt.timeout
			_, err := run(context.Background(), cfg)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("err = %v, want %q", err, tt.wantErr)
			}
		})
	}
	t.Run("nothing listening", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		ln.Close()
		if _, err := run(context.Background(), baseConfig(addr, 3)); err == nil || !strings.Contains(err.Error(), "and 2 more") {
			t.Errorf("err = %v, want one dial error and a count", err)
		}
	})
}

func TestMainErr(t *testing.T) {
	fb := &fakeBroker{}
	addr := newFakeBroker(t, fb)
	dir := t.TempDir()
	creds := filepath.Join(dir, "creds.jsonl")
	var lines bytes.Buffer
	for _, id := range []string{"a", "b", "c"} {
		json.NewEncoder(&lines).Encode(Cred{ClientID: id, Username: "hub/" + id, Password: "SharedAccessSignature x"})
	}
	if err := os.WriteFile(creds, lines.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	bad := filepath.Join(dir, "bad.jsonl")
	if err := os.WriteFile(bad, []byte("{\"username\":\"u\"}\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name    string
		args    []string
		wantErr string
		clients int
	}{
		{"all creds", []string{"--addr", addr, "--creds", creds, "--count", "8", "--inflight", "4", "--json", "--label", "x"}, "", 3},
		{"fewer clients than creds", []string{"--addr", addr, "--creds", creds, "--clients", "2", "--count", "4", "--json"}, "", 2},
		{"more clients than creds", []string{"--addr", addr, "--creds", creds, "--clients", "4", "--count", "4"}, "has 3 entries", 0},
		{"creds without clientId", []string{"--addr", addr, "--creds", bad, "--count", "4"}, "no clientId", 0},
		{"no count or duration", []string{"--addr", addr}, "--count or --duration", 0},
		{"both count and duration", []string{"--addr", addr, "--count", "1", "--duration", "1s"}, "exactly one", 0},
		{"qos 2", []string{"--addr", addr, "--count", "1", "--qos", "2"}, "qos 2", 0},
		{"stray argument", []string{"--addr", addr, "--count", "1", "extra"}, "unexpected argument", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out bytes.Buffer
			err := mainErr(context.Background(), tt.args, &out)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var res Result
			if err := json.Unmarshal(out.Bytes(), &res); err != nil {
				t.Fatalf("output %q: %v", out.String(), err)
			}
			if res.Clients != tt.clients || res.Acked == 0 {
				t.Errorf("result %+v, want %d clients", res, tt.clients)
			}
		})
	}
}

func TestTLSConfig(t *testing.T) {
	tests := []struct {
		name, addr, ca, sn, wantSN, wantErr string
	}{
		{name: "from addr", addr: "localhost:8883", wantSN: "localhost"},
		{name: "ipv6", addr: "[::1]:8883", wantSN: "::1"},
		{name: "explicit", addr: "127.0.0.1:8883", sn: "hub.example", wantSN: "hub.example"},
		{name: "missing ca", addr: "a:1", ca: "/nonexistent/ca.pem", wantErr: "read ca"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tc, err := tlsConfig(tt.addr, tt.ca, tt.sn)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tc.ServerName != tt.wantSN {
				t.Errorf("ServerName %q, want %q", tc.ServerName, tt.wantSN)
			}
		})
	}
}
