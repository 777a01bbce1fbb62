package edge

import (
	"testing"

	"outpost/internal/edge/store"
)

func TestConsumerOf(t *testing.T) {
	e := &Edge{cfg: Config{DeviceID: "edge1"}}
	tests := []struct {
		ep   string
		want consumer
		ok   bool
	}{
		{"/modules/filter/inputs/in1", consumer{deviceID: "edge1", moduleID: "filter", input: "in1"}, true},
		{"/devices/child1/messages/devicebound", consumer{deviceID: "child1"}, true},
		{"$upstream", consumer{}, false},
		{"/modules/filter", consumer{}, false},
	}
	for _, tc := range tests {
		t.Run(tc.ep, func(t *testing.T) {
			got, ok := e.consumerOf(tc.ep)
			if ok != tc.ok || got != tc.want {
				t.Fatalf("consumerOf(%q) = %+v, %v", tc.ep, got, ok)
			}
		})
	}
}

func TestSealer(t *testing.T) {
	a, err := newSealer("edge1", edgeKey)
	if err != nil {
		t.Fatal(err)
	}
	b, err := newSealer("edge2", edgeKey)
	if err != nil {
		t.Fatal(err)
	}
	sealed := a.seal("slot", []byte("secret"))
	tests := []struct {
		name string
		s    *sealer
		slot string
		data []byte
		ok   bool
	}{
		{"same key and slot", a, "slot", sealed, true},
		{"other slot", a, "other", sealed, false},
		{"other edge", b, "slot", sealed, false},
		{"truncated", a, "slot", sealed[:5], false},
		{"tampered", a, "slot", append(append([]byte{}, sealed[:len(sealed)-1]...), sealed[len(sealed)-1]^1), false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			plain, err := tc.s.open(tc.slot, tc.data)
			if tc.ok != (err == nil) || (tc.ok && string(plain) != "secret") {
				t.Fatalf("open: %q, %v", plain, err)
			}
		})
	}
	if _, err := newSealer("e", "not base64!"); err == nil {
		t.Fatal("bad key accepted")
	}
}

// FuzzEdgeHubDesired feeds $edgeHub desired documents: whatever arrives,
// a TTL and a route table stay in force, and the stored config reloads.
func FuzzEdgeHubDesired(f *testing.F) {
	for _, s := range []string{
		`{"routes":{"a":"FROM /messages/* INTO $upstream"},"storeAndForwardConfiguration":{"timeToLiveSecs":60}}`,
		`{"routes":{"a":{"route":"FROM /messages/modules/m/* INTO BrokeredEndpoint(\"/modules/f/inputs/i\")","priority":1}}}`,
		`{"routes":{"a":null}}`,
		`{"storeAndForwardConfiguration":{"timeToLiveSecs":-1}}`,
		`{"storeAndForwardConfiguration":{"timeToLiveSecs":1e30}}`,
		`[]`, `null`, `{"$version":3}`,
	} {
		f.Add(s)
	}
	hub := newFakeHub(f)
	dir := f.TempDir()
	e, err := New(Config{
		HubHostName: hubHost, DeviceID: "edge1", Key: edgeKey, StorageDir: dir,
		NewUplink: func(UplinkDeps) (Uplink, error) { return &fakeUplink{hub: hub}, nil },
	})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { e.Close() })
	f.Fuzz(func(t *testing.T, doc string) {
		e.EdgeHubDesired([]byte(doc))
		if ttl := e.st.TTL(); ttl <= 0 || ttl > store.MaxTTL {
			t.Fatalf("TTL %v in force", ttl)
		}
		if len(e.routeTable().Routes) == 0 {
			t.Fatal("no routes in force")
		}
		if err := e.loadConfig(); err != nil {
			t.Fatalf("stored config does not reload: %v", err)
		}
	})
}
