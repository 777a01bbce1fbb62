package dataplane

import (
	"bytes"
	"encoding/base64"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"outpost/internal/gateway"
	"outpost/internal/identity"
	"outpost/internal/service"
)

// lockParts is a lock token taken apart as an attacker can: the ack
// subject's tokens, the lock time and the MAC.
type lockParts struct {
	ack    []string // the ack subject split at dots
	off    int      // index of the stream name in ack
	locked string
	mac    []byte
}

func splitToken(t *testing.T, token string) lockParts {
	t.Helper()
	raw, err := base64.RawURLEncoding.DecodeString(token)
	if err != nil || len(raw) <= lockMACSize {
		t.Fatalf("lock token %q: %v", token, err)
	}
	payload := string(raw[:len(raw)-lockMACSize])
	reply, locked, ok := strings.Cut(payload, " ")
	if !ok {
		t.Fatalf("lock payload %q has no lock time", payload)
	}
	lp := lockParts{ack: strings.Split(reply, "."), off: 2, locked: locked, mac: raw[len(raw)-lockMACSize:]}
	if len(lp.ack) >= 11 {
		lp.off = 4
	}
	return lp
}

// Indexes of ack subject tokens, from the stream name.
const (
	ackConsumer = 1
	ackSeq      = 3
	ackStored   = 5
)

// with returns a copy with the ack subject token at i (from the stream
// name) set to v.
func (lp lockParts) with(i int, v string) lockParts {
	lp.ack = append([]string(nil), lp.ack...)
	lp.ack[lp.off+i] = v
	return lp
}

func (lp lockParts) payload() []byte {
	return []byte(strings.Join(lp.ack, ".") + " " + lp.locked)
}

// token reassembles the parts, MAC unchanged: what an attacker can send.
func (lp lockParts) token() string {
	return base64.RawURLEncoding.EncodeToString(append(lp.payload(), lp.mac...))
}

func (lp lockParts) reply() string { return strings.Join(lp.ack, ".") }

// settleHTTP sends a settle of lock as d on d's own URL: the status and
// IoT Hub error code.
func (e *env) settleHTTP(d identity.Device, lock string, action gateway.Settle) (int, string) {
	e.t.Helper()
	path := "/devices/" + d.DeviceID + "/messages/devicebound/" + lock
	method := http.MethodDelete
	switch action {
	case gateway.Reject:
		path += "?reject"
	case gateway.Abandon:
		method, path = http.MethodPost, path+"/abandon"
	}
	resp := e.deviceHTTP(method, path, d)
	return resp.StatusCode, resp.Header.Get("iothub-errorcode")
}

// storedC2D returns the sequence and stored time of the device's last
// queued C2D message.
func (e *env) storedC2D(deviceID string) (uint64, time.Time) {
	e.t.Helper()
	m, err := e.p.c2d.GetLastMsgForSubject(ctxT(e.t), c2dSubject(deviceID))
	if err != nil {
		e.t.Fatalf("last c2d message of %s: %v", deviceID, err)
	}
	return m.Sequence, m.Time
}

// victimAndAttacker makes two HTTPS devices, prefix-victim and
// prefix-attacker, each with one message "for {device id}" queued.
func (e *env) victimAndAttacker(prefix string) (victim, attacker identity.Device) {
	e.t.Helper()
	victim, attacker = e.device(prefix+"-victim", false), e.device(prefix+"-attacker", false)
	for _, to := range []string{victim.DeviceID, attacker.DeviceID} {
		if _, err := e.svc.SendC2D(ctxT(e.t), to, service.C2DMessage{Body: []byte("for " + to)}); err != nil {
			e.t.Fatal(err)
		}
	}
	return victim, attacker
}

var settleActions = []gateway.Settle{gateway.Complete, gateway.Reject, gateway.Abandon}

// TestC2DLockTokenForged: a device that edits any part of its lock token,
// or presents another device's, settles nothing, neither its own message
// nor the other device's, which is still delivered afterwards.
func TestC2DLockTokenForged(t *testing.T) {
	e := newEnv(t)
	victim, attacker := e.victimAndAttacker("c2d")
	vSeq, vStored := e.storedC2D(victim.DeviceID)
	body, lockA, _ := e.receiveC2D(attacker)
	if body != "for c2d-attacker" {
		t.Fatalf("attacker got %q", body)
	}
	a := splitToken(t, lockA)
	raw, _ := base64.RawURLEncoding.DecodeString(lockA)
	flipped := bytes.Clone(a.mac)
	flipped[0] ^= 1
	signed := a
	signed.mac = flipped

	forged := []struct{ name, token string }{
		{"sequence", a.with(ackSeq, strconv.FormatUint(vSeq, 10)).token()},
		{"device", a.with(ackConsumer, httpsConsumer(victim.DeviceID)).with(ackSeq, strconv.FormatUint(vSeq, 10)).token()},
		{"stored time", a.with(ackStored, strconv.FormatInt(vStored.UnixNano(), 10)).token()},
		{"lock time", func() string {
			b := a
			b.locked = strconv.FormatInt(time.Now().Add(time.Hour).UnixNano(), 10)
			return b.token()
		}()},
		{"signature", signed.token()},
		{"no signature", base64.RawURLEncoding.EncodeToString(a.payload())},
		{"truncated by a byte", base64.RawURLEncoding.EncodeToString(raw[:len(raw)-1])},
		{"truncated token", lockA[:len(lockA)/2]},
		{"extra bytes", base64.RawURLEncoding.EncodeToString(append(bytes.Clone(raw), 0))},
		{"bad base64", lockA[:8] + "*" + lockA[9:]},
		{"padded", lockA + "%3D"},
		{"line break", lockA[:8] + "%0A" + lockA[8:]},
		{"empty", "%22%22"}, // the ETag's quotes, which the gateway strips
	}
	for _, f := range forged {
		t.Run(f.name, func(t *testing.T) {
			for _, act := range settleActions {
				st, code := e.settleHTTP(attacker, f.token, act)
				if st != http.StatusPreconditionFailed || code != "DeviceMessageLockLost" {
					t.Errorf("%s with a token whose %s was edited: %d %s; want 412 DeviceMessageLockLost", act, f.name, st, code)
				}
			}
			if n := e.pendingC2D(victim.DeviceID); n != 1 {
				t.Fatalf("victim has %d messages pending; want 1", n)
			}
			if n := e.pendingC2D(attacker.DeviceID); n != 1 {
				t.Fatalf("attacker has %d messages pending; want 1", n)
			}
		})
	}

	body, lockB, _ := e.receiveC2D(victim)
	if body != "for c2d-victim" {
		t.Fatalf("victim got %q after the forgeries; want its message", body)
	}
	t.Run("transplant", func(t *testing.T) {
		for _, act := range settleActions {
			if st, code := e.settleHTTP(attacker, lockB, act); st != http.StatusPreconditionFailed || code != "DeviceMessageLockLost" {
				t.Errorf("%s of the victim's token on the attacker's URL: %d %s; want 412", act, st, code)
			}
			if st, code := e.settleHTTP(victim, lockA, act); st != http.StatusPreconditionFailed || code != "DeviceMessageLockLost" {
				t.Errorf("%s of the attacker's token on the victim's URL: %d %s; want 412", act, st, code)
			}
		}
		if nv, na := e.pendingC2D(victim.DeviceID), e.pendingC2D(attacker.DeviceID); nv != 1 || na != 1 {
			t.Fatalf("pending after transplants: victim %d, attacker %d; want 1, 1", nv, na)
		}
	})
	// The refused attempts left both locks intact.
	for _, o := range []struct {
		d    identity.Device
		lock string
	}{{victim, lockB}, {attacker, lockA}} {
		if st, code := e.settleHTTP(o.d, o.lock, gateway.Complete); st != http.StatusNoContent {
			t.Errorf("%s completes its own message: %d %s", o.d.DeviceID, st, code)
		}
		if n := e.pendingC2D(o.d.DeviceID); n != 0 {
			t.Errorf("%s has %d pending after its complete", o.d.DeviceID, n)
		}
		if st, code := e.settleHTTP(o.d, o.lock, gateway.Complete); st != http.StatusPreconditionFailed || code != "DeviceMessageLockLost" {
			t.Errorf("%s completes its message again: %d %s; want 412 DeviceMessageLockLost", o.d.DeviceID, st, code)
		}
	}
}

// TestC2DSettleChecksOwner: even a token signed with the hub's key
// settles only a message queued for the caller, as it was stored.
func TestC2DSettleChecksOwner(t *testing.T) {
	e := newEnv(t)
	victim, attacker := e.victimAndAttacker("owner")
	vSeq, vStored := e.storedC2D(victim.DeviceID)
	_, lockA, _ := e.receiveC2D(attacker)
	a := splitToken(t, lockA)
	seal := func(lp lockParts) string {
		return sealLock(e.p.lockKey, attacker.DeviceID, lp.reply(), time.Now())
	}
	for _, tc := range []struct{ name, token string }{
		{"victim's message", seal(a.with(ackSeq, strconv.FormatUint(vSeq, 10)).with(ackStored, strconv.FormatInt(vStored.UnixNano(), 10)))},
		{"own sequence, another stored time", seal(a.with(ackStored, strconv.FormatInt(vStored.Add(-time.Hour).UnixNano(), 10)))},
		{"no such message", seal(a.with(ackSeq, "999999"))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, act := range settleActions {
				if st, code := e.settleHTTP(attacker, tc.token, act); st != http.StatusPreconditionFailed || code != "DeviceMessageLockLost" {
					t.Errorf("%s: %d %s; want 412 DeviceMessageLockLost", act, st, code)
				}
			}
			if nv, na := e.pendingC2D(victim.DeviceID), e.pendingC2D(attacker.DeviceID); nv != 1 || na != 1 {
				t.Fatalf("pending: victim %d, attacker %d; want 1, 1", nv, na)
			}
		})
	}
	if body, _, _ := e.receiveC2D(victim); body != "for owner-victim" {
		t.Errorf("victim got %q; want its message", body)
	}
	// The test's own sealing is right: the attacker's genuine reply, re-sealed, settles.
	if st, code := e.settleHTTP(attacker, seal(a), gateway.Complete); st != http.StatusNoContent {
		t.Errorf("re-sealed genuine token: %d %s; want 204", st, code)
	}
}

// TestC2DLockKeyShared: the lock key is in JetStream, so a token outlives
// the plane that made it and another replica on the NATS server settles
// it; a damaged key stops the plane with a clear error.
func TestC2DLockKeyShared(t *testing.T) {
	e := newEnv(t)
	d := e.device("replica-dev", false)
	if _, err := e.svc.SendC2D(ctxT(t), d.DeviceID, service.C2DMessage{Body: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	_, lock, _ := e.receiveC2D(d)
	p2, err := New(Config{Hub: e.h, Logger: testLogger()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p2.Close() })
	if err := p2.C2DSettle(ctxT(t), gateway.Identity{DeviceID: d.DeviceID}, lock, gateway.Complete); err != nil {
		t.Fatalf("another plane settles the token: %v", err)
	}
	if n := e.pendingC2D(d.DeviceID); n != 0 {
		t.Errorf("%d pending after the other plane's complete", n)
	}

	kv, err := e.h.JetStream().KeyValue(ctxT(t), BucketKeys)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Put(ctxT(t), keyC2DLock, []byte("short")); err != nil {
		t.Fatal(err)
	}
	if p3, err := New(Config{Hub: e.h, Logger: testLogger()}); err == nil || !strings.Contains(err.Error(), "c2d lock key") {
		if p3 != nil {
			p3.Close()
		}
		t.Errorf("New with a 5-byte lock key: %v; want an error naming the key", err)
	}
}

// TestLoadLockKeyRace: replicas starting together agree on one key.
func TestLoadLockKeyRace(t *testing.T) {
	e := newEnv(t)
	ctx := ctxT(t)
	kv, err := e.p.js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "TEST_KEYS"})
	if err != nil {
		t.Fatal(err)
	}
	keys := make(chan []byte, 4)
	errs := make(chan error, 4)
	for range 4 {
		go func() {
			k, err := loadLockKey(ctx, kv)
			keys <- k
			errs <- err
		}()
	}
	var first []byte
	for range 4 {
		k := <-keys
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
		if first == nil {
			first = k
		} else if !bytes.Equal(k, first) {
			t.Errorf("replicas made different keys")
		}
	}
	if len(first) != lockKeySize {
		t.Errorf("key of %d bytes", len(first))
	}
}

var testLockKey = bytes.Repeat([]byte{7}, lockKeySize)

const testReply = "$JS.ACK.C2D.https-ZGV2.1.5.1.1700000000000000000.0"

func TestOpenLock(t *testing.T) {
	locked := time.Unix(0, 1700000000500000000)
	genuine := sealLock(testLockKey, "dev", testReply, locked)
	a, ok := openLock(testLockKey, "dev", genuine)
	if !ok || a.reply != testReply || a.seq != 5 || a.consumer != "https-ZGV2" || !a.locked.Equal(locked) {
		t.Fatalf("openLock(genuine) = %+v, %v", a, ok)
	}
	raw, _ := base64.RawURLEncoding.DecodeString(genuine)
	for _, tc := range []struct{ name, device, token string }{
		{"other device", "dev2", genuine},
		{"other key", "dev", sealLock(bytes.Repeat([]byte{8}, lockKeySize), "dev", testReply, locked)},
		{"sequence", "dev", base64.RawURLEncoding.EncodeToString(bytes.Replace(raw, []byte(".1.5.1."), []byte(".1.6.1."), 1))},
		{"lock time", "dev", base64.RawURLEncoding.EncodeToString(bytes.Replace(raw, []byte(" 17"), []byte(" 18"), 1))},
		{"signature", "dev", base64.RawURLEncoding.EncodeToString(append(bytes.Clone(raw[:len(raw)-1]), raw[len(raw)-1]^0x80))},
		{"truncated", "dev", genuine[:len(genuine)-1]},
		{"extra bytes", "dev", base64.RawURLEncoding.EncodeToString(append(bytes.Clone(raw), ' '))},
		{"bad base64", "dev", "!" + genuine[1:]},
		{"line break", "dev", genuine[:4] + "\n" + genuine[4:]},
		{"empty", "dev", ""},
		{"huge", "dev", strings.Repeat("A", maxLockToken+4)},
		{"unsigned", "dev", base64.RawURLEncoding.EncodeToString([]byte(testReply + " 1700000000500000000"))},
	} {
		if _, ok := openLock(testLockKey, tc.device, tc.token); ok {
			t.Errorf("%s: accepted", tc.name)
		}
	}
}

// FuzzC2DLockToken: no token but the one sealLock made for the device is
// accepted, and any change to a sealed token's bytes is refused.
func FuzzC2DLockToken(f *testing.F) {
	locked := int64(1700000000500000000)
	genuine := sealLock(testLockKey, "dev", testReply, time.Unix(0, locked))
	f.Add("dev", testReply, locked, uint(10), byte(1), genuine)
	f.Add("dev", "$JS.ACK.hub.ACCHASH.C2D.https-ZGV2.1.9.1.1700000000000000000.4.rnd", int64(7), uint(0), byte(0x80), genuine[:len(genuine)-2])
	f.Add("other", testReply, int64(-1), uint(200), byte(0xff), "")
	f.Add("d\x00ev", "not an ack subject", int64(0), uint(3), byte(2), "!!!!")
	f.Add("", testReply+" 5", locked, uint(60), byte(4), genuine+"AA")
	f.Fuzz(func(t *testing.T, device, reply string, lockNs int64, pos uint, flip byte, token string) {
		if a, ok := openLock(testLockKey, device, token); ok {
			if again := sealLock(testLockKey, device, a.reply, a.locked); again != token {
				t.Errorf("accepted %q, which is not what sealLock makes: %q", token, again)
			}
		}
		sealed := sealLock(testLockKey, device, reply, time.Unix(0, lockNs))
		a, ok := openLock(testLockKey, device, sealed)
		if _, parses := parseLock(reply + " " + strconv.FormatInt(lockNs, 10)); ok != parses && len(sealed) <= maxLockToken {
			t.Fatalf("openLock(sealLock(%q)) ok %v; parseLock says %v", reply, ok, parses)
		}
		if ok && (a.reply != reply || a.locked.UnixNano() != lockNs) {
			t.Errorf("sealed %q %d, opened %q %d", reply, lockNs, a.reply, a.locked.UnixNano())
		}
		if _, ok := openLock(testLockKey, device+"x", sealed); ok {
			t.Errorf("a token of %q opened for %q", device, device+"x")
		}
		if flip == 0 {
			flip = 1
		}
		raw, _ := base64.RawURLEncoding.DecodeString(sealed)
		raw[pos%uint(len(raw))] ^= flip
		if _, ok := openLock(testLockKey, device, base64.RawURLEncoding.EncodeToString(raw)); ok {
			t.Errorf("token with byte %d changed was accepted", pos%uint(len(raw)))
		}
	})
}

func TestParseLock(t *testing.T) {
	tests := []struct {
		token    string
		ok       bool
		consumer string
		seq      uint64
		locked   int64
	}{
		{"$JS.ACK.C2D.https-ZA.2.17.3.1700000000000000000.0 1700000000500000000", true, "https-ZA", 17, 1700000000500000000},
		{"$JS.ACK.hub.ACCHASH.C2D.https-ZA.1.9.1.1700000000000000000.4.rnd 7", true, "https-ZA", 9, 7},
		{"$JS.ACK.C2D.https-ZA.2.17.3.1700000000000000000.0", false, "", 0, 0},
		{"$JS.ACK.C2D.https-ZA.2.17.3.1700000000000000000.0 soon", false, "", 0, 0},
		{"$JS.ACK.C2D.x 1", false, "", 0, 0},
		{"_INBOX.abc 1", false, "", 0, 0},
		{"$JS.ACK.C2D.https-ZA.two.17.3.1700000000000000000.0 1", false, "", 0, 0},
	}
	for _, tc := range tests {
		t.Run(tc.token, func(t *testing.T) {
			a, ok := parseLock(tc.token)
			if ok != tc.ok || a.consumer != tc.consumer || a.seq != tc.seq {
				t.Errorf("parseLock = %+v, %v; want consumer %q seq %d ok %v", a, ok, tc.consumer, tc.seq, tc.ok)
			}
			if ok && (a.stream != StreamC2D || a.locked.UnixNano() != tc.locked) {
				t.Errorf("stream %q, locked %d; want %d", a.stream, a.locked.UnixNano(), tc.locked)
			}
		})
	}
}

func FuzzParseLock(f *testing.F) {
	f.Add("$JS.ACK.C2D.https-ZA.2.17.3.1700000000000000000.0 1700000000500000000")
	f.Add("$JS.ACK.hub.ACC.C2D.c.1.9.1.1.4.r 1")
	f.Add(".... 1")
	f.Fuzz(func(t *testing.T, s string) {
		a, ok := parseLock(s)
		if !ok {
			return
		}
		if reply, _, _ := strings.Cut(s, " "); a.reply != reply {
			t.Errorf("reply %q; want %q", a.reply, reply)
		}
		// What a token held is what it makes again.
		b, ok := parseLock(a.reply + " " + strconv.FormatInt(a.locked.UnixNano(), 10))
		if !ok || b != a {
			t.Errorf("%q read as %+v, which reads back as %+v, %v", s, a, b, ok)
		}
		// The subject names the stream and consumer it acknowledges on.
		if !strings.Contains(a.reply, "."+a.stream+"."+a.consumer+".") {
			t.Errorf("reply %q does not hold stream %q and consumer %q", a.reply, a.stream, a.consumer)
		}
	})
}
