package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"outpost/internal/certs"
	"outpost/internal/edge"
	"outpost/internal/sas"
)

// sampleStatus is what an edge that has been offline for a while answers.
const sampleStatus = `{
  "deviceId": "edge1",
  "synced": true,
  "link": {
    "connected": false,
    "since": "2026-03-01T11:58:00Z",
    "lastError": "dial tcp 10.0.0.1:8883: connect: connection refused",
    "offlinePeriods": 3
  },
  "queues": {
    "$upstream": {"length": 1200, "bytes": 307200, "oldestAgeSeconds": 125.4, "priority": 0, "ttlSeconds": 7200},
    "BrokeredEndpoint(/modules/filter/inputs/in)": {"length": 0, "bytes": 0, "oldestAgeSeconds": 0, "priority": 1, "ttlSeconds": 60}
  },
  "lastSync": "2026-03-01T11:00:00Z",
  "connectedClients": ["child1", "edge1/filter"],
  "ttlSeconds": 7200,
  "routes": {
    "toFilter": "FROM /messages/* WHERE $connectionModuleId IS NULL INTO BrokeredEndpoint(\"/modules/filter/inputs/in\")",
    "upstream": "FROM /messages/modules/filter/* INTO $upstream"
  },
  "expired": 5,
  "noRoute": 2,
  "quotaRefusals": 1,
  "storage": {"bytes": 307200, "maxBytes": 1048576},
  "futureField": "kept by -o json"
}`

const edgeKey = "ZWRnZS1rZXktZm9yLXRlc3RzLW9ubHktMzItYnl0ZXM="

// statusEdge is a TLS server shaped like the edge: a certificate for
// 127.0.0.1 from an edge CA the hub's root signed, and GET /status.
type statusEdge struct {
	url    string
	caFile string // the hub's root CA

	mu       sync.Mutex
	needAuth bool
	lastAuth string
	body     string
}

func newStatusEdge(t *testing.T) *statusEdge {
	t.Helper()
	root, err := certs.NewRootCA("test hub root", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	edgeCA, err := root.NewIntermediate("edge1 edge CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	cert, _, _, err := edgeCA.IssueServer([]string{"localhost", "127.0.0.1"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	se := &statusEdge{body: sampleStatus}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		se.mu.Lock()
		needAuth, body := se.needAuth, se.body
		se.lastAuth = r.Header.Get("Authorization")
		se.mu.Unlock()
		if r.Method != http.MethodGet || r.URL.Path != "/status" {
			http.NotFound(w, r)
			return
		}
		if needAuth {
			tok, err := sas.ParseToken(r.Header.Get("Authorization"))
			if err != nil || !tok.Verify(edgeKey) || !sas.MatchesDevice(tok, "hub.test", "edge1", "") {
				w.WriteHeader(http.StatusUnauthorized)
				io.WriteString(w, `{"Message":"ErrorCode:IotHubUnauthorizedAccess;Unauthorized"}`)
				return
			}
		}
		w.Header().Set("Content-Type", "application/json; charset=utf-8")
		io.WriteString(w, body)
	}))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // handshake errors of the untrusted case
	srv.StartTLS()
	t.Cleanup(srv.Close)
	se.url = srv.URL
	se.caFile = filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(se.caFile, root.CertPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	return se
}

func (se *statusEdge) set(needAuth bool, body string) {
	se.mu.Lock()
	se.needAuth, se.body = needAuth, body
	se.mu.Unlock()
}

func (se *statusEdge) auth() string {
	se.mu.Lock()
	defer se.mu.Unlock()
	return se.lastAuth
}

// runStatus runs the command in-process, capturing its output.
func runStatus(t *testing.T, args ...string) (string, error) {
	t.Helper()
	var o, e bytes.Buffer
	stdout, stderr = &o, &e
	t.Cleanup(func() { stdout, stderr = os.Stdout, os.Stderr })
	err := runEdgeStatus(context.Background(), args)
	return o.String(), err
}

func TestEdgeStatusCommand(t *testing.T) {
	se := newStatusEdge(t)
	t.Setenv(envCA, "")
	edgeCS := "HostName=hub.test;DeviceId=edge1;SharedAccessKey=" + edgeKey
	otherCS := "HostName=hub.test;DeviceId=edge1;SharedAccessKey=" + sas.GenerateKey()

	tests := []struct {
		name     string
		needAuth bool
		env      string // OUTPOST_CA
		args     []string
		wantErr  string // substring; "" for success
		want     []string
		check    func(t *testing.T, out string)
	}{
		{
			name: "table",
			args: []string{"--edge-url", se.url, "--ca", se.caFile},
			want: []string{
				"Edge:", "edge1",
				"Link:", "down since 2026-03-01T11:58:00Z",
				"Offline periods:", "3",
				"Last link error:", "connection refused",
				"Last sync:", "2026-03-01T11:00:00Z",
				"TTL:", "7200s (2h0m0s)",
				"307200 bytes of 1048576 (29.3%)",
				"5 expired (TTL), 2 with no route; 1 batches refused (quota)",
				"ENDPOINT", "$upstream", "1200", "2m5s",
				"BrokeredEndpoint(/modules/filter/inputs/in)",
				"  child1\n", "  edge1/filter\n",
				"toFilter", "FROM /messages/modules/filter/* INTO $upstream",
			},
			check: func(t *testing.T, out string) {
				if i, j := strings.Index(out, "$upstream  "), strings.Index(out, "BrokeredEndpoint(/modules/filter/inputs/in)  "); i < 0 || j < 0 || i > j {
					t.Errorf("queues not in priority order:\n%s", out)
				}
				if strings.Contains(out, "futureField") {
					t.Error("table shows fields it does not know")
				}
			},
		},
		{
			name: "json keeps the document",
			args: []string{"--edge-url", se.url + "/", "--ca", se.caFile, "-o", "json"},
			check: func(t *testing.T, out string) {
				var got, want map[string]any
				if err := json.Unmarshal([]byte(out), &got); err != nil {
					t.Fatalf("output is not JSON: %v\n%s", err, out)
				}
				if err := json.Unmarshal([]byte(sampleStatus), &want); err != nil {
					t.Fatal(err)
				}
				gb, _ := json.Marshal(got)
				wb, _ := json.Marshal(want)
				if !bytes.Equal(gb, wb) {
					t.Errorf("json output differs from the edge's document:\n%s", out)
				}
				if !strings.HasPrefix(out, "{\n  \"deviceId\": \"edge1\",") {
					t.Errorf("json not indented in the edge's order:\n%s", out)
				}
			},
		},
		{
			name: "CA from the environment",
			env:  se.caFile,
			args: []string{"--edge-url", se.url, "--output", "json"},
			want: []string{`"deviceId": "edge1"`},
		},
		{
			name:     "token from the connection string",
			needAuth: true,
			args:     []string{"--edge-url", se.url, "--ca", se.caFile, "--connection-string", edgeCS},
			want:     []string{"edge1", "$upstream"},
			check: func(t *testing.T, out string) {
				if !strings.HasPrefix(se.auth(), "SharedAccessSignature sr=hub.test%2Fdevices%2Fedge1") {
					t.Errorf("Authorization %q", se.auth())
				}
			},
		},
		{
			name:     "unauthorized without credentials",
			needAuth: true,
			args:     []string{"--edge-url", se.url, "--ca", se.caFile},
			wantErr:  "pass --connection-string",
		},
		{
			name:     "unauthorized with the wrong key",
			needAuth: true,
			args:     []string{"--edge-url", se.url, "--ca", se.caFile, "--connection-string", otherCS},
			wantErr:  "the token was refused",
		},
		{
			name:    "untrusted without CA",
			args:    []string{"--edge-url", se.url},
			wantErr: "certificate",
		},
		{
			name:    "missing url",
			args:    []string{"--ca", se.caFile},
			wantErr: "--edge-url is required",
		},
		{
			name:    "plain http",
			args:    []string{"--edge-url", strings.Replace(se.url, "https://", "http://", 1)},
			wantErr: "HTTPS only",
		},
		{
			name:    "no scheme",
			args:    []string{"--edge-url", strings.TrimPrefix(se.url, "https://")},
			wantErr: "want https://HOST:PORT",
		},
		{
			name:    "bad output",
			args:    []string{"--edge-url", se.url, "-o", "tsv"},
			wantErr: "unknown output format",
		},
		{
			name:    "service connection string",
			args:    []string{"--edge-url", se.url, "--connection-string", "HostName=hub.test;SharedAccessKeyName=iothubowner;SharedAccessKey=" + edgeKey},
			wantErr: "edge device's own connection string",
		},
		{
			name:    "missing CA file",
			args:    []string{"--edge-url", se.url, "--ca", filepath.Join(t.TempDir(), "nope.pem")},
			wantErr: "read CA",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			se.set(tt.needAuth, sampleStatus)
			t.Setenv(envCA, tt.env)
			out, err := runStatus(t, tt.args...)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			for _, w := range tt.want {
				if !strings.Contains(out, w) {
					t.Errorf("output lacks %q:\n%s", w, out)
				}
			}
			if tt.check != nil {
				tt.check(t, out)
			}
		})
	}

	t.Run("not a status document", func(t *testing.T) {
		se.set(false, `["not", "a", "status"]`)
		if _, err := runStatus(t, "--edge-url", se.url, "--ca", se.caFile); err == nil || !strings.Contains(err.Error(), "not a status document") {
			t.Errorf("err %v", err)
		}
	})
}

func TestWriteEdgeStatus(t *testing.T) {
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	since := now.Add(-90 * time.Second)
	caExpiry := now.Add(10 * 24 * time.Hour)
	renewAt := time.Date(2026, 3, 8, 0, 0, 0, 0, time.UTC)
	caFar := now.Add(365 * 24 * time.Hour)
	tests := []struct {
		name string
		st   edge.Status
		want string
	}{
		{
			name: "never synced, nothing queued",
			st:   edge.Status{DeviceID: "e", TTLSeconds: 7200},
			want: `Edge:               e
Synced:             no: the edge must reach its hub once before it can run offline
Link:               down
Offline periods:    0
Last sync:          never
TTL:                7200s (2h0m0s)
Storage:            0 bytes
Dropped:            0 expired (TTL), 0 with no route; 0 batches refused (quota)
Set aside:          none
Connected clients:  0

Queues:
  none

Connected clients:
  none

Routes:
  none
`,
		},
		{
			name: "online with a queue",
			st: edge.Status{
				DeviceID: "e", Synced: true, TTLSeconds: 60,
				Link:             edge.LinkStatus{Connected: true, Since: &since, OfflinePeriods: 1},
				LastSync:         &since,
				Queues:           map[string]edge.QueueStatus{"$upstream": {Length: 2, Bytes: 20, OldestAgeSeconds: 1.6, TTLSeconds: 60}},
				ConnectedClients: []string{"d\x1b[2Jx"},
				Routes:           map[string]string{"r": "FROM /messages/* INTO $upstream"},
				Storage:          edge.StorageUsage{Bytes: 20},
			},
			want: `Edge:               e
Synced:             yes
Link:               connected since 2026-03-01T11:58:30Z (1m30s ago)
Offline periods:    1
Last sync:          2026-03-01T11:58:30Z (1m30s ago)
TTL:                60s (1m0s)
Storage:            20 bytes
Dropped:            0 expired (TTL), 0 with no route; 0 batches refused (quota)
Set aside:          none
Connected clients:  1

Queues:
  ENDPOINT   LENGTH  BYTES  OLDEST  PRIORITY  TTL
  $upstream  2       20     2s      0         60s (1m0s)

Connected clients:
  d [2Jx

Routes:
  r  FROM /messages/* INTO $upstream
`,
		},
		{
			name: "messages set aside",
			st: edge.Status{
				DeviceID: "e", Synced: true, TTLSeconds: 60,
				SetAside: edge.SetAsideStatus{
					Total:    3,
					ByReason: map[string]uint64{"not_in_scope": 2, "too_large": 1, "invalid": 0},
					Recent: []edge.SetAsideEntry{{
						At: since, Endpoint: "$upstream", Seq: 7, DeviceID: "gone", MessageID: "m1",
						Reason: "not_in_scope", Message: "gone: identity not in this edge's scope",
					}},
				},
			},
			want: `Edge:               e
Synced:             yes
Link:               down
Offline periods:    0
Last sync:          never
TTL:                60s (1m0s)
Storage:            0 bytes
Dropped:            0 expired (TTL), 0 with no route; 0 batches refused (quota)
Set aside:          3 refused for good by the hub (2 not_in_scope, 1 too_large)
Connected clients:  0

Set aside (latest):
  AT                    IDENTITY  MESSAGE ID  REASON        DETAIL
  2026-03-01T11:58:30Z  gone      m1          not_in_scope  gone: identity not in this edge's scope

Queues:
  none

Connected clients:
  none

Routes:
  none
`,
		},
		{
			name: "edge CA expires soon",
			st: edge.Status{
				DeviceID: "e", Synced: true, TTLSeconds: 60,
				Certificates: edge.CertStatus{
					EdgeCANotAfter: &caExpiry, EdgeCAExpiresSoon: true, EdgeCASource: "hub",
					ServerCertNotAfter: &caExpiry,
				},
			},
			want: `Edge:               e
Synced:             yes
Link:               down
Offline periods:    0
Last sync:          never
TTL:                60s (1m0s)
Storage:            0 bytes
Dropped:            0 expired (TTL), 0 with no route; 0 batches refused (quota)
Set aside:          none
Edge CA:            expires 2026-03-11T12:00:00Z (in 240h0m0s), from the hub; EXPIRES SOON
Server cert:        expires 2026-03-11T12:00:00Z (in 240h0m0s), ends with the edge CA
Connected clients:  0

Queues:
  none

Connected clients:
  none

Routes:
  none
`,
		},
		{
			name: "server certificate renewed before the edge CA expires",
			st: edge.Status{
				DeviceID: "e", Synced: true, TTLSeconds: 60,
				Certificates: edge.CertStatus{
					EdgeCANotAfter: &caFar, EdgeCASource: "hub",
					ServerCertNotAfter: &caExpiry, ServerCertRenewAt: &renewAt,
				},
			},
			want: `Edge:               e
Synced:             yes
Link:               down
Offline periods:    0
Last sync:          never
TTL:                60s (1m0s)
Storage:            0 bytes
Dropped:            0 expired (TTL), 0 with no route; 0 batches refused (quota)
Set aside:          none
Edge CA:            expires 2027-03-01T12:00:00Z (in 8760h0m0s), from the hub
Server cert:        expires 2026-03-11T12:00:00Z (in 240h0m0s), renewed from 2026-03-08T00:00:00Z
Connected clients:  0

Queues:
  none

Connected clients:
  none

Routes:
  none
`,
		},
		{
			name: "edge CA expired",
			st: edge.Status{
				DeviceID: "e", Synced: true, TTLSeconds: 60,
				Certificates: edge.CertStatus{EdgeCANotAfter: &since, EdgeCAExpiresSoon: true, EdgeCASource: "operator"},
			},
			want: `Edge:               e
Synced:             yes
Link:               down
Offline periods:    0
Last sync:          never
TTL:                60s (1m0s)
Storage:            0 bytes
Dropped:            0 expired (TTL), 0 with no route; 0 batches refused (quota)
Set aside:          none
Edge CA:            expires 2026-03-01T11:58:30Z (EXPIRED), from the operator
Connected clients:  0

Queues:
  none

Connected clients:
  none

Routes:
  none
`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var b bytes.Buffer
			if err := writeEdgeStatus(&b, &tt.st, now); err != nil {
				t.Fatal(err)
			}
			if b.String() != tt.want {
				t.Errorf("got\n%s\nwant\n%s", b.String(), tt.want)
			}
		})
	}
}

// TestWriteEdgeStatusOrder pins the order of queues (as the edge drains
// them: priority, then name) and of routes (by name).
func TestWriteEdgeStatusOrder(t *testing.T) {
	st := edge.Status{
		DeviceID: "e",
		Queues: map[string]edge.QueueStatus{
			"b": {Priority: 1, TTLSeconds: 60}, "a": {Priority: 1, TTLSeconds: 60},
			"z": {Priority: 0, TTLSeconds: 60}, "c": {Priority: 2, TTLSeconds: 60},
		},
		Routes: map[string]string{"r2": "FROM /b INTO $upstream", "r1": "FROM /a INTO $upstream"},
	}
	var b bytes.Buffer
	if err := writeEdgeStatus(&b, &st, time.Now()); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`
Queues:
  ENDPOINT  LENGTH  BYTES  OLDEST  PRIORITY  TTL
  z         0       0      -       0         60s (1m0s)
  a         0       0      -       1         60s (1m0s)
  b         0       0      -       1         60s (1m0s)
  c         0       0      -       2         60s (1m0s)
`, `
Routes:
  r1  FROM /a INTO $upstream
  r2  FROM /b INTO $upstream
`} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("got\n%s\nwant it to contain\n%s", b.String(), want)
		}
	}
}
