package outposttest

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"

	"outpost/internal/disktest"
	"outpost/internal/edgeserver"
	"outpost/internal/sas"
	"outpost/internal/service"
)

// httpsTelemetry posts one message numbered seq as deviceID to the
// edge's device HTTPS API, and returns the status and body.
func (n *EdgeNode) httpsTelemetry(t testing.TB, deviceID string, seq int) (int, string) {
	t.Helper()
	cs, err := sas.ParseConnectionString(service.DeviceConnectionString(n.env.device(deviceID), HubHostName, ""))
	if err != nil {
		t.Fatal(err)
	}
	tok, err := cs.Token(time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	url := fmt.Sprintf("https://%s/devices/%s/messages/events?api-version=2021-04-12", n.HTTPSAddr(), deviceID)
	req, err := http.NewRequest(http.MethodPost, url, strings.NewReader(fmt.Sprintf(`{"seq":%d}`, seq)))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", tok)
	req.Header.Set("iothub-app-"+Seq, strconv.Itoa(seq))
	hc := &http.Client{
		Timeout:   10 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: n.env.RootCAs, ServerName: "localhost"}},
	}
	defer hc.CloseIdleConnections()
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatalf("POST telemetry: %v", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// edgeDisk is a storage folder whose disk a test fills and frees.
type edgeDisk struct {
	dir      string
	fs       vfs.FS // nil: the real one
	fill     func(t *testing.T)
	free     func(t *testing.T)
	injected bool // every write fails while full
}

func tmpfsEdgeDisk(t *testing.T) edgeDisk {
	mnt := disktest.Tmpfs(t, 16<<20)
	var filler string
	return edgeDisk{
		dir:  filepath.Join(mnt, "edge"),
		fill: func(t *testing.T) { filler = disktest.Fill(t, mnt) },
		free: func(t *testing.T) {
			if err := os.Remove(filler); err != nil {
				t.Fatal(err)
			}
		},
	}
}

func injectedEdgeDisk(t *testing.T) edgeDisk {
	d := disktest.NewInjected()
	return edgeDisk{
		dir:      "edge",
		fs:       d.FS,
		injected: true,
		fill:     func(*testing.T) { d.Fill() },
		free:     func(*testing.T) { d.Free() },
	}
}

// The storage folder's disk fills while the link is down: new messages
// are refused (no PUBACK on MQTT, 503 on HTTPS), a twin write that hits
// the full disk fails without taking the edge down, and once space is
// freed the edge takes messages again within a second; every message it
// acked, before and after, reaches the hub in order.
func TestDiskFullThroughEdge(t *testing.T) {
	t.Parallel()
	env := NewEnv(t)
	mon := env.Monitor(t)
	for i, v := range []struct {
		name string
		disk func(t *testing.T) edgeDisk
	}{
		{"injected ENOSPC", injectedEdgeDisk},
		{"tmpfs", tmpfsEdgeDisk},
	} {
		t.Run(v.name, func(t *testing.T) {
			d := v.disk(t)
			edgeID := fmt.Sprintf("edge%d", i)
			mqttID, httpsID := edgeID+"-mqtt", edgeID+"-https"
			env.CreateEdge(edgeID)
			env.CreateDevice(mqttID)
			env.CreateDevice(httpsID)
			env.AddChildren(edgeID, mqttID, httpsID)
			node := env.StartEdge(t, edgeID, WithEdgeConfig(func(c *edgeserver.Config) {
				c.StorageDir, c.StorageFS, c.MinFreeStorageBytes = d.dir, d.fs, 1<<20
			}))
			c := node.Child(t, mqttID)
			p := newPublisher(c)
			p.sendN(t, 5)
			var httpsAcked []int
			for seq := 1; seq <= 3; seq++ {
				if code, body := node.httpsTelemetry(t, httpsID, seq); code != http.StatusNoContent {
					t.Fatalf("HTTPS telemetry %d: %d %s", seq, code, body)
				}
				httpsAcked = append(httpsAcked, seq)
			}
			node.Cut()
			node.AwaitLink(t, false, upstreamKeepAlive)

			d.fill(t)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			if err := p.try(ctx); err == nil {
				t.Fatal("a message was acknowledged on a full disk")
			}
			if code, body := node.httpsTelemetry(t, httpsID, 4); code != http.StatusServiceUnavailable || !strings.Contains(body, "out of disk space") {
				t.Fatalf("HTTPS telemetry on a full disk: %d %s; want 503, out of disk space", code, body)
			}
			// A twin write is held in the store while offline; on the
			// full disk it reaches Pebble and fails there.
			if err := c.WaitConnected(ctx); err != nil {
				t.Fatal(err)
			}
			var twinErr error
			for k := 0; k < 20 && twinErr == nil; k++ {
				_, twinErr = c.UpdateReported(ctx, map[string]any{"k" + strconv.Itoa(k): strings.Repeat("x", 1000)})
			}
			if d.injected && twinErr == nil {
				t.Fatal("twin writes accepted while every write fails")
			}
			if twinErr != nil && !strings.Contains(twinErr.Error(), "status 503") {
				t.Errorf("twin write on a full disk: %v; want status 503", twinErr)
			}
			t.Logf("twin write on the full disk: %v", twinErr)
			if st := node.Edge().Status(); st.DiskFullRefusals == 0 {
				t.Errorf("no disk-full refusal in /status: %+v", st)
			}

			d.free(t)
			freed := time.Now()
			CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
				if code, body := node.httpsTelemetry(t, httpsID, 4); code != http.StatusNoContent {
					return fmt.Errorf("HTTPS telemetry: %d %s", code, body)
				}
				return nil
			})
			took := time.Since(freed)
			httpsAcked = append(httpsAcked, 4)
			reopens := node.Edge().Status().Storage.Reopens
			t.Logf("edge intake again %v after the space was freed (store reopens %d)", took.Round(time.Millisecond), reopens)
			if took > time.Second {
				t.Errorf("edge intake again %v after the space was freed, want within 1 s", took)
			}
			if d.injected && reopens == 0 {
				t.Error("the store never reopened after its failed write")
			}
			p.sendN(t, 5) // rides out the reconnect of the refused client
			if _, err := c.UpdateReported(ctx, map[string]any{"after": true}); err != nil {
				t.Errorf("twin write after the space was freed: %v", err)
			}

			node.Restore()
			mon.AwaitDelivered(t, 30*time.Second, map[string][]int{mqttID: p.ackedSeqs(), httpsID: httpsAcked})
		})
	}
}
