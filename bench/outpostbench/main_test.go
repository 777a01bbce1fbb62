package main

import (
	"bytes"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"outpost/bench/summary/summarytest"
	"outpost/internal/identity"
	"outpost/internal/outposttest"
	"outpost/internal/sas"
)

func TestDeviceCred(t *testing.T) {
	key := sas.GenerateKey()
	dev := func(id, key string) identity.Device {
		d := identity.Device{DeviceID: id}
		d.Authentication.SymmetricKey.PrimaryKey = key
		return d
	}
	now := time.Now()
	tests := []struct {
		name    string
		host    string
		dev     identity.Device
		wantErr bool
	}{
		{"host with port", "localhost:18443", dev("dev00", key), false},
		{"host without port", "hub.example", dev("child03", key), false},
		{"no key", "localhost", dev("x509dev", ""), true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := deviceCred(tt.host, tt.dev, now)
			if tt.wantErr {
				if err == nil {
					t.Fatalf("got %+v, want an error", c)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if c.ClientID != tt.dev.DeviceID {
				t.Errorf("clientId %q, want %q (mqttload puts it in the topic)", c.ClientID, tt.dev.DeviceID)
			}
			if want := tt.host + "/" + tt.dev.DeviceID + "/?api-version=2021-04-12"; c.Username != want {
				t.Errorf("username %q, want %q", c.Username, want)
			}
			tok, err := sas.ParseToken(c.Password)
			if err != nil {
				t.Fatal(err)
			}
			if !tok.Verify(key) || !sas.MatchesDevice(tok, tt.host, tt.dev.DeviceID, "") {
				t.Errorf("token %q does not verify for %s at %s", c.Password, tt.dev.DeviceID, tt.host)
			}
			if err := sas.Validate(tok, now.Add(tokenTTL-time.Minute), 0); err != nil {
				t.Errorf("token expires too early: %v", err)
			}
			if err := sas.Validate(tok, now.Add(tokenTTL+time.Minute), 0); err == nil {
				t.Error("token outlives its TTL")
			}
		})
	}
}

func TestWriteCreds(t *testing.T) {
	path := filepath.Join(t.TempDir(), "creds.jsonl")
	in := []cred{{"a", "h/a/?api-version=1", "SharedAccessSignature sr=h%2Fdevices%2Fa&sig=x&se=1"}, {"b", "u", "p"}}
	if err := writeCreds(path, in); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) != len(in) {
		t.Fatalf("%d lines, want %d:\n%s", len(lines), len(in), b)
	}
	for i, l := range lines {
		var got map[string]string
		if err := json.Unmarshal([]byte(l), &got); err != nil {
			t.Fatal(err)
		}
		// The field names are mqttload's.
		want := map[string]string{"clientId": in[i].ClientID, "username": in[i].Username, "password": in[i].Password}
		for k, v := range want {
			if got[k] != v {
				t.Errorf("line %d: %s = %q, want %q", i, k, got[k], v)
			}
		}
	}
}

// TestProvisionEdge provisions against a real hub: the children exist,
// belong to the edge, and their creds verify with their keys.
func TestProvisionEdge(t *testing.T) {
	env := outposttest.NewEnv(t)
	svc := env.Service()
	cs, creds, err := provisionEdge(t.Context(), svc, "edge1", 3)
	if err != nil {
		t.Fatal(err)
	}
	parsed, err := sas.ParseConnectionString(cs)
	if err != nil || parsed.DeviceID != "edge1" || parsed.SharedAccessKey == "" || parsed.HostName != svc.HostName() {
		t.Fatalf("edge connection string %q: %+v, %v", cs, parsed, err)
	}
	kids, err := svc.ListChildren(t.Context(), "edge1")
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(kids)
	if want := []string{"child00", "child01", "child02"}; !slices.Equal(kids, want) {
		t.Fatalf("children %v, want %v", kids, want)
	}
	if len(creds) != 3 {
		t.Fatalf("%d creds, want 3", len(creds))
	}
	for _, c := range creds {
		d, err := svc.GetDevice(t.Context(), c.ClientID)
		if err != nil {
			t.Fatal(err)
		}
		tok, err := sas.ParseToken(c.Password)
		if err != nil {
			t.Fatal(err)
		}
		if !tok.Verify(d.Authentication.SymmetricKey.PrimaryKey) || !sas.MatchesDevice(tok, svc.HostName(), c.ClientID, "") {
			t.Errorf("%s: token does not verify", c.ClientID)
		}
	}
}

func TestNewRTTResult(t *testing.T) {
	var d []time.Duration
	for i := 100; i >= 1; i-- { // unsorted on purpose
		d = append(d, time.Duration(i)*time.Millisecond)
	}
	tests := []struct {
		name string
		in   []time.Duration
		want rttResult
	}{
		{"1..100 ms", d, rttResult{Label: "x", Calls: 100, Size: 256, P50us: 50000, P90us: 90000, P99us: 99000, MaxUs: 100000, Mean: 50500}},
		{"one", []time.Duration{time.Millisecond}, rttResult{Label: "x", Calls: 1, Size: 256, P50us: 1000, P90us: 1000, P99us: 1000, MaxUs: 1000, Mean: 1000}},
		{"none", nil, rttResult{Label: "x", Size: 256}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := newRTTResult("x", 256, tt.in); got != tt.want {
				t.Errorf("got %+v\nwant %+v", got, tt.want)
			}
		})
	}
	if d[0] != 100*time.Millisecond {
		t.Error("newRTTResult sorted its input in place")
	}
}

func TestJSONPayload(t *testing.T) {
	for _, n := range []int{2, 3, 256, 1000} {
		p := jsonPayload(n)
		var s string
		if len(p) != n || json.Unmarshal(p, &s) != nil {
			t.Errorf("jsonPayload(%d) = %q: want a JSON string of %d bytes", n, p, n)
		}
	}
}

func TestSummarizeRTT(t *testing.T) {
	var in bytes.Buffer
	enc := json.NewEncoder(&in)
	// The machine is busier in round 2; pairing keeps the ratios.
	for _, k := range []float64{1, 3, 1} {
		enc.Encode(rttResult{Label: "outpost-method", P50us: 1000 * k, P99us: 4000 * k})
		enc.Encode(rttResult{Label: "mosquitto-rtt", P50us: 250 * k, P99us: 500 * k})
	}
	tests := []struct {
		name, in, peer string
		want           []string
		wantErr        string
	}{
		{"ratios", in.String(), "mosquitto-rtt", []string{
			"| outpost-method | 3 | 1.00 ms | 4.00 ms | 4.00 | 8.00 |",
			"| mosquitto-rtt | 3 | 0.25 ms | 0.50 ms | 1.00 | 1.00 |",
		}, ""},
		{"no peer runs", in.String(), "absent", []string{"| outpost-method | 3 | 1.00 ms | 4.00 ms | – | – |"}, ""},
		{"empty", "", "x", nil, "no results"},
		{"bad json", "{", "x", nil, "line 1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			summarytest.Check(t, func(r io.Reader, w io.Writer) error {
				return summarizeRTT(r, w, tt.peer)
			}, tt.in, tt.want, tt.wantErr)
		})
	}
}

func TestSummarizeDrain(t *testing.T) {
	type round struct {
		reconnect               float64
		queued, atHub, distinct int64
		peer                    string // mqttload's line of the peer ingest, "" for none
		ratio, reader           float64
	}
	line := func(r round) string {
		res := drainResult{
			Label: "outpost-drain-100", Backlog: 100, Ingest: json.RawMessage(`{"msgsPerSec":5000}`),
			QueuedAfterIngest: 100, QueuedAfterKill9: r.queued, RSSAfterIngestKB: 2048, HWMAfterIngestKB: 3072, RSSAfterRestartKB: 1024,
			ReconnectMs: r.reconnect, TransferS: 2, DrainMsgsPS: 50, AtHub: r.atHub, DistinctIDs: r.distinct,
			PeerRatio: r.ratio, ReaderDrainMsgsPS: r.reader,
		}
		if r.peer != "" {
			res.PeerIngest = json.RawMessage(r.peer)
		}
		b, _ := json.Marshal(res)
		return string(b) + "\n"
	}
	clean := round{reconnect: 100, queued: 100, atHub: 100, distinct: 100}
	withPeer := func(reconnect float64, peer string, ratio float64) round {
		r := clean
		r.reconnect, r.peer, r.ratio = reconnect, peer, ratio
		return r
	}
	tests := []struct {
		name, in string
		want     string
	}{
		{"no peer, no reader", line(clean) + line(round{300, 100, 100, 100, "", 0, 0}) + line(round{200, 100, 100, 100, "", 0, 0}),
			"| outpost-drain-100 | 3 | 5000 | 0 | 2 MB (peak 3 MB; 1 MB after restart) | 200 ms | 2.0 s | 50 | – | – | – | 0 / 0 |"},
		{"worst round counts", line(clean) + line(round{100, 97, 105, 99, "", 0, 0}),
			"| outpost-drain-100 | 2 | 5000 | 3 | 2 MB (peak 3 MB; 1 MB after restart) | 100 ms | 2.0 s | 50 | – | – | – | 1 / 6 |"},
		{"peer: medians of rates and of per-round ratios",
			line(withPeer(100, `{"msgsPerSec":100}`, 0.5)) + line(withPeer(100, `{"msgsPerSec":200}`, 0.25)) + line(withPeer(100, `{"msgsPerSec":400}`, 0.125)),
			"| outpost-drain-100 | 3 | 5000 | 0 | 2 MB (peak 3 MB; 1 MB after restart) | 100 ms | 2.0 s | 50 | 200 | 0.25 | – | 0 / 0 |"},
		{"reader-timed only where measured", line(round{100, 100, 100, 100, "", 0, 40}) + line(clean) + line(round{100, 100, 100, 100, "", 0, 30}),
			"| outpost-drain-100 | 3 | 5000 | 0 | 2 MB (peak 3 MB; 1 MB after restart) | 100 ms | 2.0 s | 50 | – | – | 35 | 0 / 0 |"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			summarytest.Check(t, summarizeDrain, tt.in, []string{tt.want}, "")
		})
	}
}

func TestTelemetryStored(t *testing.T) {
	tests := []struct {
		name, in string
		want     int64
		wantErr  string
	}{
		{"found", "# HELP outpost_queue_length x\n# TYPE outpost_queue_length gauge\noutpost_queue_length{endpoint=\"c2d\"} 3\noutpost_queue_length{endpoint=\"telemetry\"} 100000\n", 100000, ""},
		{"exponent", "outpost_queue_length{endpoint=\"telemetry\"} 1e+06\n", 1000000, ""},
		{"missing", "outpost_queue_length{endpoint=\"c2d\"} 3\n", 0, "no outpost_queue_length"},
		{"garbled", "outpost_queue_length{endpoint=\"telemetry\"} many\n", 0, "invalid syntax"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := telemetryStored(strings.NewReader(tt.in))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("got %d, %v; want %d", got, err, tt.want)
			}
		})
	}
}

func TestEdgeStatusQueued(t *testing.T) {
	raw := `{"deviceId":"edge1","synced":true,"link":{"connected":true,"since":"2026-01-02T03:04:05Z"},
		"queues":{"$upstream":{"length":7,"bytes":10},"other":{"length":5}}}`
	var st edgeStatus
	if err := json.Unmarshal([]byte(raw), &st); err != nil {
		t.Fatal(err)
	}
	if !st.Synced || !st.Link.Connected || st.Link.Since == nil || st.queued() != 12 {
		t.Errorf("decoded %+v, queued %d; want synced, connected since 03:04:05, 12 queued", st, st.queued())
	}
}

func TestProcMem(t *testing.T) {
	rss, hwm := procMem(os.Getpid())
	if rss <= 0 || hwm < rss {
		t.Errorf("procMem(self) = %d kB, peak %d kB", rss, hwm)
	}
	if rss, hwm := procMem(-1); rss != 0 || hwm != 0 {
		t.Errorf("procMem(-1) = %d, %d; want 0, 0", rss, hwm)
	}
}

func TestGrepFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "out")
	os.WriteFile(path, []byte("HostName=localhost:1;…\nhub ready: https=127.0.0.1:1 mqtt=127.0.0.1:2\n"), 0o600)
	tests := []struct {
		name string
		path string
		re   *regexp.Regexp
		want []string
	}{
		{"hub", path, hubReadyRE, []string{"hub ready: https=127.0.0.1:1 mqtt=127.0.0.1:2", "127.0.0.1:1", "127.0.0.1:2"}},
		{"not yet", path, edgeReadyRE, nil},
		{"no file", path + ".x", hubReadyRE, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := grepFile(tt.path, tt.re); !slices.Equal(got, tt.want) {
				t.Errorf("got %q, want %q", got, tt.want)
			}
		})
	}
}

func TestSplitPort(t *testing.T) {
	tests := []struct {
		in, host, port string
		wantErr        bool
	}{
		{"127.0.0.1:1883", "127.0.0.1", "1883", false},
		{"[::1]:8883", "[::1]", "8883", false},
		{"localhost", "", "", true},
		{"h:99999", "", "", true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			h, p, err := splitPort(tt.in)
			if (err != nil) != tt.wantErr || h != tt.host || p != tt.port {
				t.Errorf("splitPort(%q) = %q, %q, %v", tt.in, h, p, err)
			}
		})
	}
}

func TestRunUsage(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"none", nil, "usage"},
		{"unknown", []string{"frobnicate"}, "unknown command"},
		{"provision-hub without flags", []string{"provision-hub"}, "need --hub-dir"},
		{"drain bad backlog", []string{"drain", "--outpost", "o", "--mqttload", "m", "--dir", "d", "--backlog", "15"}, "multiple"},
		{"stray argument", []string{"certs", "--dir", "d", "extra"}, "unexpected argument"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out bytes.Buffer
			err := run(t.Context(), tt.args, strings.NewReader(""), &out)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("err = %v, want %q", err, tt.want)
			}
		})
	}
}

func FuzzSummarize(f *testing.F) {
	f.Add([]byte(`{"label":"a","p50us":1,"p99us":2}` + "\n" + `{"label":"b","backlog":10,"ingest":{"msgsPerSec":1}}`))
	f.Add([]byte("{\n"))
	f.Fuzz(func(t *testing.T, in []byte) {
		// Neither may panic, whatever the input.
		summarizeRTT(bytes.NewReader(in), &bytes.Buffer{}, "a")
		summarizeDrain(bytes.NewReader(in), &bytes.Buffer{})
	})
}
