package edgeserver

import (
	"context"
	"crypto/x509"
	"errors"
	"log/slog"
	"net"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"

	"outpost/internal/edge"
	"outpost/internal/gateway"
)

const testCS = "HostName=hub.test;DeviceId=edge1;SharedAccessKey=c2VjcmV0LWtleS1vZi1lZGdlMQ=="

// TestEdgeConfigCarriesEveryOption sets every option and finds each in
// the edge's configuration under the same name, so an option added to
// Config but not passed on fails here.
func TestEdgeConfigCarriesEveryOption(t *testing.T) {
	cfg := Config{
		ConnectionString:    testCS,
		StorageDir:          t.TempDir(),
		UpstreamAddr:        "127.0.0.1:1",
		HubCA:               x509.NewCertPool(),
		Hostname:            "edge.test",
		MQTTAddr:            "127.0.0.1:0",
		HTTPSAddr:           "127.0.0.1:0",
		MaxStorageBytes:     1 << 20,
		IdentityRefresh:     time.Minute,
		EdgeCACert:          "ca.pem",
		EdgeCAKey:           "ca.key",
		Rates:               gateway.Rates{ClientPackets: 5},
		OnEdgeHubEnv:        func(map[string]string) {},
		Logger:              slog.New(slog.DiscardHandler),
		KeepAlive:           time.Second,
		Now:                 time.Now,
		StorageFS:           vfs.NewMem(),
		MinFreeStorageBytes: -1,
	}
	ec, err := cfg.EdgeConfig()
	if err != nil {
		t.Fatal(err)
	}
	if ec.HubHostName != "hub.test" || ec.DeviceID != "edge1" || ec.Key == "" {
		t.Errorf("from the connection string: hub %q, device %q, key set %v", ec.HubHostName, ec.DeviceID, ec.Key != "")
	}
	if ec.NewUplink == nil {
		t.Error("no upstream link")
	}
	in, out := reflect.ValueOf(cfg), reflect.ValueOf(ec)
	for i := range in.NumField() {
		name := in.Type().Field(i).Name
		if name == "ConnectionString" {
			continue
		}
		v := in.Field(i)
		if v.IsZero() {
			t.Errorf("%s is zero in this test: set it", name)
			continue
		}
		w := out.FieldByName(name)
		if !w.IsValid() {
			t.Errorf("edge.Config has no %s", name)
			continue
		}
		same := false
		if v.Kind() == reflect.Func {
			same = v.Pointer() == w.Pointer()
		} else {
			same = reflect.DeepEqual(v.Interface(), w.Interface())
		}
		if !same {
			t.Errorf("%s: edge.Config has %v, want %v", name, w.Interface(), v.Interface())
		}
	}
}

func TestEdgeConfigRefusesOtherConnectionStrings(t *testing.T) {
	for _, tc := range []struct{ name, cs, want string }{
		{"none", "", "no connection string"},
		{"service", "HostName=hub.test;SharedAccessKeyName=iothubowner;SharedAccessKey=c2VjcmV0", "a service string"},
		{"module", "HostName=hub.test;DeviceId=edge1;ModuleId=m;SharedAccessKey=c2VjcmV0", "a module string"},
		{"not one", "hub.test", "connection string"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Config{ConnectionString: tc.cs, StorageDir: t.TempDir()}.EdgeConfig()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err %v; want one saying %q", err, tc.want)
			}
		})
	}
}

// TestNeverSyncedLifecycle: an edge whose hub is unreachable runs but
// never serves; AwaitReady says so when its context ends, and Close stops
// it with Run's reason, the same on every call.
func TestNeverSyncedLifecycle(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	refused := l.Addr().String()
	l.Close()
	s, err := Start(context.Background(), Config{
		ConnectionString: testCS,
		StorageDir:       t.TempDir(),
		UpstreamAddr:     refused,
		Hostname:         "localhost",
		MQTTAddr:         "127.0.0.1:0",
		HTTPSAddr:        "127.0.0.1:0",
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if err := s.AwaitReady(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("AwaitReady: %v; want the deadline", err)
	}
	select {
	case <-s.Done():
		t.Fatalf("stopped by itself: %v", s.Wait())
	default:
	}
	err = s.Close()
	if !errors.Is(err, edge.ErrNeverSynced) {
		t.Fatalf("Close: %v; want %v", err, edge.ErrNeverSynced)
	}
	if again := s.Close(); again != err {
		t.Errorf("second Close: %v; want %v", again, err)
	}
	<-s.Done()
	if werr := s.Wait(); !errors.Is(werr, edge.ErrNeverSynced) {
		t.Errorf("Wait: %v", werr)
	}
	if err := s.AwaitReady(context.Background()); !errors.Is(err, edge.ErrNeverSynced) {
		t.Errorf("AwaitReady after Close: %v; want Run's error", err)
	}
}

func TestStartRefusesBadConfig(t *testing.T) {
	s, err := Start(context.Background(), Config{ConnectionString: testCS})
	if err == nil || !strings.Contains(err.Error(), "storage folder") || s != nil {
		t.Fatalf("Start without a storage folder: %v, %v", s, err)
	}
}
