package identity

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"reflect"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"outpost/internal/status"
)

var now = time.Date(2024, 5, 6, 7, 8, 9, 0, time.UTC)

// wantErr checks err is a *status.Error with the given status and a message
// containing msg.
func wantErr(t *testing.T, err error, wantStatus int, msg string) {
	t.Helper()
	var e *status.Error
	if !errors.As(err, &e) {
		t.Fatalf("err = %v, want *status.Error", err)
	}
	if e.Status != wantStatus {
		t.Errorf("status = %d, want %d (%v)", e.Status, wantStatus, e)
	}
	if !strings.Contains(e.Message, msg) {
		t.Errorf("message = %q, want it to contain %q", e.Message, msg)
	}
}

func TestValidateDeviceID(t *testing.T) {
	tests := []struct {
		id string
		ok bool
	}{
		{"dev1", true},
		{"A-b.c%d_e*f?g!h(i)j,k:l=m@n$o'p", true},
		{"$weird", true},
		{strings.Repeat("x", 128), true},
		{strings.Repeat("x", 129), false},
		{"", false},
		{"a b", false},
		{"a/b", false},
		{"a#b", false},
		{"a+b", false},
		{"café", false},
		{"a\x00b", false},
		{"a\"b", false},
		{".", false},
		{"..", false},
		{"...", true},
		{".a", true},
	}
	for _, tt := range tests {
		t.Run(tt.id, func(t *testing.T) {
			err := ValidateDeviceID(tt.id)
			if tt.ok && err != nil {
				t.Fatalf("ValidateDeviceID(%q) = %v, want nil", tt.id, err)
			}
			if !tt.ok {
				wantErr(t, err, http.StatusBadRequest, "device id")
			}
		})
	}
}

func TestValidateModuleID(t *testing.T) {
	tests := []struct {
		id string
		ok bool
	}{
		{"filter", true},
		{"$edgeAgent", true},
		{"$edgeHub", true},
		{"$edgehub", false},
		{"$custom", false},
		{"mod$ule", true},
		{"", false},
		{"a/b", false},
		{".", false},
		{"..", false},
		{strings.Repeat("m", 129), false},
	}
	for _, tt := range tests {
		t.Run(tt.id, func(t *testing.T) {
			if err := ValidateModuleID(tt.id); (err == nil) != tt.ok {
				t.Fatalf("ValidateModuleID(%q) = %v, want ok=%v", tt.id, err, tt.ok)
			}
		})
	}
}

func key(n int) string { return base64.StdEncoding.EncodeToString(make([]byte, n)) }

func TestPrepareNewDeviceDefaults(t *testing.T) {
	d := &Device{DeviceID: "d1", ConnectionState: Connected, CloudToDeviceMessageCount: 7, LastActivityTime: now}
	if err := PrepareNewDevice(d, now); err != nil {
		t.Fatal(err)
	}
	if d.Status != StatusEnabled || !d.Enabled() {
		t.Errorf("status = %q, want enabled", d.Status)
	}
	if d.Authentication.Type != AuthSAS {
		t.Errorf("auth type = %q, want sas", d.Authentication.Type)
	}
	for _, k := range []string{d.Authentication.SymmetricKey.PrimaryKey, d.Authentication.SymmetricKey.SecondaryKey} {
		b, err := base64.StdEncoding.DecodeString(k)
		if err != nil || len(b) != KeySize {
			t.Errorf("key %q: %d bytes, err %v; want %d", k, len(b), err, KeySize)
		}
	}
	if d.Authentication.SymmetricKey.PrimaryKey == d.Authentication.SymmetricKey.SecondaryKey {
		t.Error("primary and secondary keys are equal")
	}
	if !regexp.MustCompile(`^6\d{17}$`).MatchString(d.GenerationID) {
		t.Errorf("generationId = %q, want an 18-digit tick count", d.GenerationID)
	}
	if d.ETag == "" || d.ConnectionState != Disconnected || d.CloudToDeviceMessageCount != 0 || !d.LastActivityTime.IsZero() {
		t.Errorf("server fields not reset: %+v", d)
	}
	if d.DeviceScope != "" || d.ParentScopes == nil || len(d.ParentScopes) != 0 {
		t.Errorf("scopes = %q %q, want empty and []", d.DeviceScope, d.ParentScopes)
	}
	if got := Keys(d.Authentication); len(got) != 2 {
		t.Errorf("Keys = %q, want two", got)
	}
}

func TestPrepareNewDeviceUnique(t *testing.T) {
	a, b := &Device{DeviceID: "e", Capabilities: Capabilities{IoTEdge: true}}, &Device{DeviceID: "e", Capabilities: Capabilities{IoTEdge: true}}
	if err := PrepareNewDevice(a, now); err != nil {
		t.Fatal(err)
	}
	if err := PrepareNewDevice(b, now); err != nil {
		t.Fatal(err)
	}
	if a.GenerationID == b.GenerationID || a.ETag == b.ETag || a.DeviceScope == b.DeviceScope ||
		a.Authentication.SymmetricKey == b.Authentication.SymmetricKey {
		t.Errorf("two creations at the same instant share values:\n%+v\n%+v", a, b)
	}
}

func TestPrepareNewDeviceAuth(t *testing.T) {
	thumb40 := strings.Repeat("aB", 20)
	thumb64 := strings.Repeat("0F", 32)
	tests := []struct {
		name string
		auth Authentication
		want string // "" for success, else part of the message
		typ  string
	}{
		{"given keys", Authentication{Type: AuthSAS, SymmetricKey: SymmetricKey{key(16), key(64)}}, "", AuthSAS},
		{"primary only", Authentication{SymmetricKey: SymmetricKey{PrimaryKey: key(32)}}, "", AuthSAS},
		{"short key", Authentication{SymmetricKey: SymmetricKey{PrimaryKey: key(15)}}, "16 to 64 bytes", ""},
		{"long key", Authentication{SymmetricKey: SymmetricKey{SecondaryKey: key(65)}}, "secondary key decodes to 65", ""},
		{"not base64", Authentication{SymmetricKey: SymmetricKey{PrimaryKey: "!!!"}}, "not valid base64", ""},
		{"sas with thumbprint", Authentication{Type: AuthSAS, X509Thumbprint: X509Thumbprint{PrimaryThumbprint: thumb40}}, "only for selfSigned", ""},
		{"self signed", Authentication{Type: AuthSelfSigned, X509Thumbprint: X509Thumbprint{thumb40, thumb64}}, "", AuthSelfSigned},
		{"thumbprint implies self signed", Authentication{X509Thumbprint: X509Thumbprint{PrimaryThumbprint: thumb64}}, "", AuthSelfSigned},
		{"self signed no primary", Authentication{Type: AuthSelfSigned, X509Thumbprint: X509Thumbprint{SecondaryThumbprint: thumb40}}, "needs a primary thumbprint", ""},
		{"thumbprint length", Authentication{Type: AuthSelfSigned, X509Thumbprint: X509Thumbprint{PrimaryThumbprint: thumb40[:39]}}, "40 (SHA-1) or 64 (SHA-256)", ""},
		{"thumbprint hex", Authentication{Type: AuthSelfSigned, X509Thumbprint: X509Thumbprint{PrimaryThumbprint: strings.Repeat("g", 40)}}, "not a hex digit", ""},
		{"self signed with keys", Authentication{Type: AuthSelfSigned, SymmetricKey: SymmetricKey{PrimaryKey: key(32)}, X509Thumbprint: X509Thumbprint{PrimaryThumbprint: thumb40}}, "only for sas", ""},
		{"ca", Authentication{Type: AuthCA}, "", AuthCA},
		{"ca with key", Authentication{Type: AuthCA, SymmetricKey: SymmetricKey{PrimaryKey: key(32)}}, "neither keys nor thumbprints", ""},
		{"none", Authentication{Type: AuthNone}, "", AuthNone},
		{"unknown", Authentication{Type: "password"}, "not one of sas", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := &Device{DeviceID: "d", Authentication: tt.auth}
			err := PrepareNewDevice(d, now)
			if tt.want != "" {
				wantErr(t, err, http.StatusBadRequest, tt.want)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if d.Authentication.Type != tt.typ {
				t.Errorf("type = %q, want %q", d.Authentication.Type, tt.typ)
			}
			if tt.typ == AuthSAS {
				k := d.Authentication.SymmetricKey
				if tt.auth.SymmetricKey.PrimaryKey != "" && k.PrimaryKey != tt.auth.SymmetricKey.PrimaryKey {
					t.Error("given primary key was replaced")
				}
				if k.PrimaryKey == "" || k.SecondaryKey == "" {
					t.Error("missing key not generated")
				}
			} else if len(Keys(d.Authentication)) != 0 {
				t.Errorf("Keys of %s = %q, want none", tt.typ, Keys(d.Authentication))
			}
		})
	}
}

func TestPrepareNewDeviceRules(t *testing.T) {
	parent := "ms-azure-iot-edge://gw-1234567890123456789"
	tests := []struct {
		name   string
		policy Policy
		d      Device
		want   string
	}{
		{"bad id", Policy{}, Device{DeviceID: "a b"}, "not allowed"},
		{"bad status", Policy{}, Device{DeviceID: "d", Status: "paused"}, "not one of enabled, disabled"},
		{"edge with parent", Policy{}, Device{DeviceID: "e", Capabilities: Capabilities{IoTEdge: true}, ParentScopes: []string{parent}},
			"only non-edge devices can be children"},
		{"two parents", Policy{}, Device{DeviceID: "c", ParentScopes: []string{parent, parent}}, "exactly one parent"},
		{"scopes disagree", Policy{}, Device{DeviceID: "c", DeviceScope: "ms-azure-iot-edge://x-1", ParentScopes: []string{parent}}, "different parents"},
		{"not a scope", Policy{}, Device{DeviceID: "c", DeviceScope: "gw"}, "not an edge device scope"},
		{"own parent", Policy{}, Device{DeviceID: "gw", ParentScopes: []string{parent}}, "cannot be its own parent"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := tt.d
			wantErr(t, tt.policy.PrepareNewDevice(&d, now), http.StatusBadRequest, tt.want)
		})
	}

	t.Run("edge gets own scope", func(t *testing.T) {
		d := &Device{DeviceID: "my-edge-1", Capabilities: Capabilities{IoTEdge: true}, DeviceScope: "ignored"}
		if err := PrepareNewDevice(d, now); err != nil {
			t.Fatal(err)
		}
		if !regexp.MustCompile(`^ms-azure-iot-edge://my-edge-1-[1-9]\d{18}$`).MatchString(d.DeviceScope) {
			t.Errorf("deviceScope = %q", d.DeviceScope)
		}
		if id, ok := ScopeDeviceID(d.DeviceScope); !ok || id != "my-edge-1" {
			t.Errorf("ScopeDeviceID = %q, %v", id, ok)
		}
		if ParentScope(d) != "" || ParentChanged(nil, d) {
			t.Error("new edge device has a parent")
		}
	})
	t.Run("child the SDK way", func(t *testing.T) {
		d := &Device{DeviceID: "c", DeviceScope: parent}
		if err := PrepareNewDevice(d, now); err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(d.ParentScopes, []string{parent}) || d.DeviceScope != parent || !ParentChanged(nil, d) {
			t.Errorf("scopes = %q %q", d.DeviceScope, d.ParentScopes)
		}
	})
	t.Run("nested edge allowed", func(t *testing.T) {
		d := &Device{DeviceID: "e2", Capabilities: Capabilities{IoTEdge: true}, ParentScopes: []string{parent}}
		if err := (Policy{AllowNested: true}).PrepareNewDevice(d, now); err != nil {
			t.Fatal(err)
		}
		if d.DeviceScope == parent || !strings.HasPrefix(d.DeviceScope, ScopePrefix+"e2-") || ParentScope(d) != parent {
			t.Errorf("scopes = %q %q", d.DeviceScope, d.ParentScopes)
		}
	})
}

// TestDeviceJSON pins the JSON names to Azure's service REST API.
func TestDeviceJSON(t *testing.T) {
	d := &Device{DeviceID: "d"}
	if err := PrepareNewDevice(d, now); err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(d)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	want := []string{"authentication", "capabilities", "cloudToDeviceMessageCount", "connectionState",
		"connectionStateUpdatedTime", "deviceId", "deviceScope", "etag", "generationId", "lastActivityTime",
		"parentScopes", "status", "statusReason", "statusUpdatedTime"}
	if got := keys(m); !reflect.DeepEqual(got, want) {
		t.Errorf("device keys = %q\nwant %q", got, want)
	}
	auth := m["authentication"].(map[string]any)
	if got := keys(auth); !reflect.DeepEqual(got, []string{"symmetricKey", "type", "x509Thumbprint"}) {
		t.Errorf("authentication keys = %q", got)
	}
	if got := keys(auth["symmetricKey"].(map[string]any)); !reflect.DeepEqual(got, []string{"primaryKey", "secondaryKey"}) {
		t.Errorf("symmetricKey keys = %q", got)
	}
	if got := keys(auth["x509Thumbprint"].(map[string]any)); !reflect.DeepEqual(got, []string{"primaryThumbprint", "secondaryThumbprint"}) {
		t.Errorf("x509Thumbprint keys = %q", got)
	}
	if _, ok := m["capabilities"].(map[string]any)["iotEdge"]; !ok {
		t.Error("capabilities.iotEdge missing")
	}
	if m["lastActivityTime"] != "0001-01-01T00:00:00Z" {
		t.Errorf("lastActivityTime = %v, want Azure's zero time", m["lastActivityTime"])
	}
	if ps, ok := m["parentScopes"].([]any); !ok || len(ps) != 0 {
		t.Errorf("parentScopes = %v, want []", m["parentScopes"])
	}
	var back Device
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(&back, d) {
		t.Errorf("round trip:\n%+v\nwant\n%+v", back, *d)
	}

	mb, err := json.Marshal(EdgeModules("e", now)[0])
	if err != nil {
		t.Fatal(err)
	}
	m = nil
	if err := json.Unmarshal(mb, &m); err != nil {
		t.Fatal(err)
	}
	want = []string{"authentication", "cloudToDeviceMessageCount", "connectionState", "connectionStateUpdatedTime",
		"deviceId", "etag", "generationId", "lastActivityTime", "managedBy", "moduleId"}
	if got := keys(m); !reflect.DeepEqual(got, want) {
		t.Errorf("module keys = %q\nwant %q", got, want)
	}
}

func keys(m map[string]any) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

func mustDevice(t *testing.T, p Policy, d Device) *Device {
	t.Helper()
	if err := p.PrepareNewDevice(&d, now); err != nil {
		t.Fatal(err)
	}
	return &d
}

func TestPrepareUpdate(t *testing.T) {
	later := now.Add(time.Hour)
	gw := mustDevice(t, Policy{}, Device{DeviceID: "gw", Capabilities: Capabilities{IoTEdge: true}})
	gw2 := mustDevice(t, Policy{}, Device{DeviceID: "gw2", Capabilities: Capabilities{IoTEdge: true}})
	leaf := mustDevice(t, Policy{}, Device{DeviceID: "leaf"})
	child := mustDevice(t, Policy{}, Device{DeviceID: "child"})
	if err := AttachChild(gw, child, false); err != nil {
		t.Fatal(err)
	}

	t.Run("keeps server fields and keys", func(t *testing.T) {
		old := leaf.Clone()
		old.ConnectionState = Connected
		old.LastActivityTime = now
		old.CloudToDeviceMessageCount = 3
		upd := &Device{DeviceID: "leaf", GenerationID: "1", ETag: "x", Status: StatusDisabled, StatusReason: "stolen",
			ConnectionState: Disconnected, CloudToDeviceMessageCount: 99}
		if err := PrepareUpdate(old, upd, false, later); err != nil {
			t.Fatal(err)
		}
		if upd.GenerationID != old.GenerationID || upd.ConnectionState != Connected || upd.CloudToDeviceMessageCount != 3 ||
			!upd.LastActivityTime.Equal(now) {
			t.Errorf("server fields changed: %+v", upd)
		}
		if upd.ETag == old.ETag || upd.ETag == "x" {
			t.Errorf("etag = %q, want a fresh one", upd.ETag)
		}
		if upd.Authentication != old.Authentication {
			t.Error("authentication not kept")
		}
		if upd.Enabled() || !upd.StatusUpdatedTime.Equal(later) || upd.StatusReason != "stolen" {
			t.Errorf("status = %q at %v", upd.Status, upd.StatusUpdatedTime)
		}
	})
	t.Run("empty secondary keeps stored key", func(t *testing.T) {
		k := key(32)
		upd := &Device{DeviceID: "leaf", Authentication: Authentication{Type: AuthSAS, SymmetricKey: SymmetricKey{PrimaryKey: k}}}
		if err := PrepareUpdate(leaf, upd, false, later); err != nil {
			t.Fatal(err)
		}
		if upd.Authentication.SymmetricKey != (SymmetricKey{k, leaf.Authentication.SymmetricKey.SecondaryKey}) {
			t.Errorf("keys = %+v", upd.Authentication.SymmetricKey)
		}
	})
	t.Run("id mismatch", func(t *testing.T) {
		wantErr(t, PrepareUpdate(leaf, &Device{DeviceID: "other"}, false, later), 400, "does not match")
	})
	t.Run("edge scope immutable", func(t *testing.T) {
		upd := gw.Clone()
		upd.DeviceScope = "ms-azure-iot-edge://gw-1"
		if err := PrepareUpdate(gw, upd, true, later); err != nil {
			t.Fatal(err)
		}
		if upd.DeviceScope != gw.DeviceScope {
			t.Errorf("deviceScope = %q, want %q", upd.DeviceScope, gw.DeviceScope)
		}
	})
	t.Run("edge on", func(t *testing.T) {
		upd := leaf.Clone()
		upd.Capabilities.IoTEdge = true
		if err := PrepareUpdate(leaf, upd, false, later); err != nil {
			t.Fatal(err)
		}
		if id, ok := ScopeDeviceID(upd.DeviceScope); !ok || id != "leaf" {
			t.Errorf("deviceScope = %q", upd.DeviceScope)
		}
	})
	t.Run("edge on for a child", func(t *testing.T) {
		upd := child.Clone()
		upd.Capabilities.IoTEdge = true
		wantErr(t, PrepareUpdate(child, upd, false, later), 400, "device 'child' is a child of 'gw': only non-edge devices can be children")
		upd = child.Clone()
		upd.Capabilities.IoTEdge = true
		if err := (Policy{AllowNested: true}).PrepareUpdate(child, upd, false, later); err != nil {
			t.Fatal(err)
		}
		if ParentScope(upd) != gw.DeviceScope || upd.DeviceScope == gw.DeviceScope {
			t.Errorf("nested: scopes = %q %q", upd.DeviceScope, upd.ParentScopes)
		}
	})
	t.Run("edge off with children", func(t *testing.T) {
		upd := gw.Clone()
		upd.Capabilities.IoTEdge = false
		wantErr(t, PrepareUpdate(gw, upd, true, later), 400, "has child devices")
		upd = gw.Clone()
		upd.Capabilities.IoTEdge = false
		if err := PrepareUpdate(gw, upd, false, later); err != nil {
			t.Fatal(err)
		}
		if upd.DeviceScope != "" || ParentScope(upd) != "" {
			t.Errorf("scopes = %q %q, want none", upd.DeviceScope, upd.ParentScopes)
		}
	})
	t.Run("omitted scopes keep parent", func(t *testing.T) {
		upd := &Device{DeviceID: "child", Authentication: child.Authentication}
		if err := PrepareUpdate(child, upd, false, later); err != nil {
			t.Fatal(err)
		}
		if !IsChildOf(upd, gw) || ParentChanged(child, upd) {
			t.Errorf("scopes = %q %q, want gw's", upd.DeviceScope, upd.ParentScopes)
		}
	})
	t.Run("explicit empty scopes detach", func(t *testing.T) {
		upd := child.Clone()
		upd.DeviceScope, upd.ParentScopes = "", []string{}
		if err := PrepareUpdate(child, upd, false, later); err != nil {
			t.Fatal(err)
		}
		if ParentScope(upd) != "" || !ParentChanged(child, upd) {
			t.Errorf("scopes = %q %q, want none", upd.DeviceScope, upd.ParentScopes)
		}
	})
	t.Run("new scope re-parents", func(t *testing.T) {
		upd := child.Clone()
		upd.DeviceScope, upd.ParentScopes = gw2.DeviceScope, []string{gw2.DeviceScope}
		if err := PrepareUpdate(child, upd, false, later); err != nil {
			t.Fatal(err)
		}
		if !ParentChanged(child, upd) || ValidateParent(gw2, upd) != nil {
			t.Error("re-parent not reported or not valid")
		}
		wantErr(t, ValidateParent(gw, upd), 400, "is not the scope of edge device 'gw'")
	})
}

func TestAttachChild(t *testing.T) {
	e1 := mustDevice(t, Policy{}, Device{DeviceID: "e1", Capabilities: Capabilities{IoTEdge: true}})
	e2 := mustDevice(t, Policy{}, Device{DeviceID: "e2", Capabilities: Capabilities{IoTEdge: true}})
	leaf := mustDevice(t, Policy{}, Device{DeviceID: "c"})
	other := mustDevice(t, Policy{}, Device{DeviceID: "x"})
	owned := leaf.Clone()
	if err := AttachChild(e1, owned, false); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name        string
		policy      Policy
		edge, child *Device
		force       bool
		want        string
	}{
		{"own parent", Policy{}, e1, e1.Clone(), false, "a device cannot be its own parent"},
		{"parent not edge", Policy{}, other, leaf.Clone(), false, "device 'x' is not an IoT Edge device: only edge devices can be parents"},
		{"edge child", Policy{}, e1, e2.Clone(), false,
			"device 'e2' is an IoT Edge device: only non-edge devices can be children (a child device has exactly one parent, which is an edge device)"},
		{"re-parent", Policy{}, e2, owned.Clone(), false, "device 'c' already has parent 'e1': re-parenting needs --force"},
		{"re-parent forced", Policy{}, e2, owned.Clone(), true, ""},
		{"same parent again", Policy{}, e1, owned.Clone(), false, ""},
		{"fresh", Policy{}, e2, leaf.Clone(), false, ""},
		{"nested", Policy{AllowNested: true}, e1, e2.Clone(), false, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := tt.child.Clone()
			err := tt.policy.AttachChild(tt.edge, tt.child, tt.force)
			if tt.want != "" {
				wantErr(t, err, http.StatusBadRequest, tt.want)
				if !reflect.DeepEqual(before, tt.child) {
					t.Error("child changed by a refused attach")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !IsChildOf(tt.child, tt.edge) || !reflect.DeepEqual(tt.child.ParentScopes, []string{tt.edge.DeviceScope}) {
				t.Errorf("parentScopes = %q, want [%q]", tt.child.ParentScopes, tt.edge.DeviceScope)
			}
			wantScope := tt.edge.DeviceScope
			if tt.child.IsEdge() {
				wantScope = before.DeviceScope
			}
			if tt.child.DeviceScope != wantScope {
				t.Errorf("deviceScope = %q, want %q", tt.child.DeviceScope, wantScope)
			}
			if err := tt.policy.ValidateParent(tt.edge, tt.child); err != nil {
				t.Errorf("ValidateParent after attach: %v", err)
			}
		})
	}

	t.Run("nested cycle", func(t *testing.T) {
		p := Policy{AllowNested: true}
		a, b := e1.Clone(), e2.Clone()
		if err := p.AttachChild(a, b, false); err != nil { // b under a
			t.Fatal(err)
		}
		wantErr(t, p.AttachChild(b, a, false), 400, "child of its own child")
	})
}

func TestDetachChild(t *testing.T) {
	e1 := mustDevice(t, Policy{}, Device{DeviceID: "e1", Capabilities: Capabilities{IoTEdge: true}})
	e2 := mustDevice(t, Policy{}, Device{DeviceID: "e2", Capabilities: Capabilities{IoTEdge: true}})
	c := mustDevice(t, Policy{}, Device{DeviceID: "c"})
	wantErr(t, DetachChild(e1, c), 400, "device 'c' is not a child of 'e1'")
	if err := AttachChild(e1, c, false); err != nil {
		t.Fatal(err)
	}
	wantErr(t, DetachChild(e2, c), 400, "is not a child of 'e2'")
	if err := DetachChild(e1, c); err != nil {
		t.Fatal(err)
	}
	if c.DeviceScope != "" || c.ParentScopes == nil || len(c.ParentScopes) != 0 || IsChildOf(c, e1) {
		t.Errorf("after detach: %q %q", c.DeviceScope, c.ParentScopes)
	}

	p := Policy{AllowNested: true}
	if err := p.AttachChild(e1, e2, false); err != nil {
		t.Fatal(err)
	}
	own := e2.DeviceScope
	if err := DetachChild(e1, e2); err != nil {
		t.Fatal(err)
	}
	if e2.DeviceScope != own || ParentScope(e2) != "" {
		t.Errorf("nested detach: %q %q", e2.DeviceScope, e2.ParentScopes)
	}
}

func TestScopeDeviceID(t *testing.T) {
	tests := []struct {
		scope, id string
		ok        bool
	}{
		{"ms-azure-iot-edge://gw-637232034417418145", "gw", true},
		{"ms-azure-iot-edge://my-edge-2-1234567890123456789", "my-edge-2", true},
		{"ms-azure-iot-edge://123-456", "123", true},
		{"ms-azure-iot-edge://gw-", "", false},
		{"ms-azure-iot-edge://-123", "", false},
		{"ms-azure-iot-edge://gw", "", false},
		{"ms-azure-iot-edge://gw-12a", "", false},
		{"ms-azure-iot-edge://g w-12", "", false},
		{"iot-edge://gw-12", "", false},
		{"", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.scope, func(t *testing.T) {
			id, ok := ScopeDeviceID(tt.scope)
			if id != tt.id || ok != tt.ok {
				t.Errorf("ScopeDeviceID(%q) = %q, %v; want %q, %v", tt.scope, id, ok, tt.id, tt.ok)
			}
		})
	}
}

func TestModules(t *testing.T) {
	ms := EdgeModules("gw", now)
	if len(ms) != 2 || ms[0].ModuleID != EdgeAgent || ms[1].ModuleID != EdgeHub {
		t.Fatalf("EdgeModules = %+v", ms)
	}
	for _, m := range ms {
		if m.DeviceID != "gw" || len(Keys(m.Authentication)) != 2 || m.GenerationID == "" || m.ETag == "" ||
			m.ConnectionState != Disconnected || m.ManagedBy != ManagedByEdge {
			t.Errorf("module %+v", m)
		}
	}
	if ms[0].Authentication.SymmetricKey == ms[1].Authentication.SymmetricKey {
		t.Error("system modules share keys")
	}

	tests := []struct {
		name string
		m    Module
		want string
	}{
		{"ok", Module{DeviceID: "d", ModuleID: "filter"}, ""},
		{"system", Module{DeviceID: "d", ModuleID: EdgeHub}, "reserved for the IoT Edge runtime"},
		{"dollar", Module{DeviceID: "d", ModuleID: "$mine"}, "reserved for IoT Edge system modules"},
		{"bad device", Module{DeviceID: "d/x", ModuleID: "m"}, "device id"},
		{"bad auth", Module{DeviceID: "d", ModuleID: "m", Authentication: Authentication{Type: "x"}}, "not one of"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := tt.m
			err := PrepareNewModule(&m, now)
			if tt.want != "" {
				wantErr(t, err, 400, tt.want)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(Keys(m.Authentication)) != 2 || m.GenerationID == "" {
				t.Errorf("module %+v", m)
			}
		})
	}
	if err := PrepareSystemModule(&Module{DeviceID: "d", ModuleID: "filter"}, now); err == nil {
		t.Error("PrepareSystemModule accepted a user module")
	}

	t.Run("update", func(t *testing.T) {
		old := Module{DeviceID: "d", ModuleID: "m"}
		if err := PrepareNewModule(&old, now); err != nil {
			t.Fatal(err)
		}
		upd := Module{DeviceID: "d", ModuleID: "m", GenerationID: "x"}
		if err := PrepareModuleUpdate(&old, &upd, now); err != nil {
			t.Fatal(err)
		}
		if upd.GenerationID != old.GenerationID || upd.Authentication != old.Authentication || upd.ETag == old.ETag {
			t.Errorf("update = %+v", upd)
		}
		wantErr(t, PrepareModuleUpdate(&old, &Module{DeviceID: "d", ModuleID: "n"}, now), 400, "does not match")
	})
}

func TestETags(t *testing.T) {
	tests := []struct {
		ifMatch, etag string
		want          bool
	}{
		{"", "abc", true},
		{"*", "abc", true},
		{`"*"`, "abc", true}, // as the Azure SDKs send it
		{`"abc"`, "abc", true},
		{`abc`, "abc", true},
		{`W/"abc"`, "abc", true},
		{` "x", "abc" `, "abc", true},
		{`"abd"`, "abc", false},
		{`"ABC"`, "abc", false},
		{`""`, "", false},
		{`"abc"`, `"abc"`, true},
	}
	for _, tt := range tests {
		t.Run(tt.ifMatch, func(t *testing.T) {
			if got := MatchETag(tt.ifMatch, tt.etag); got != tt.want {
				t.Errorf("MatchETag(%q, %q) = %v, want %v", tt.ifMatch, tt.etag, got, tt.want)
			}
		})
	}
	if a, b := NewETag(), NewETag(); a == b || strings.ContainsAny(a, `",`) {
		t.Errorf("NewETag gave %q and %q", a, b)
	}
	if got := ETagFromRevision(1); got != "AAAAAAAAAAE=" {
		t.Errorf("ETagFromRevision(1) = %q", got)
	}
	if r, ok := RevisionFromETag(QuoteETag(ETagFromRevision(42))); !ok || r != 42 {
		t.Errorf("RevisionFromETag = %d, %v", r, ok)
	}
	if _, ok := RevisionFromETag(NewETag()); ok {
		t.Error("RevisionFromETag accepted a random etag")
	}
}

func TestThumbprints(t *testing.T) {
	a := Authentication{Type: AuthSelfSigned, X509Thumbprint: X509Thumbprint{PrimaryThumbprint: strings.Repeat("ab", 20)}}
	if !MatchThumbprint(a, strings.ToUpper(strings.Repeat("ab", 20))) || !MatchThumbprint(a, strings.TrimSuffix(strings.Repeat("ab:", 20), ":")) {
		t.Error("thumbprint not matched across case or colons")
	}
	if MatchThumbprint(a, "") || MatchThumbprint(a, strings.Repeat("cd", 20)) {
		t.Error("wrong thumbprint matched")
	}
}

func FuzzScopeDeviceID(f *testing.F) {
	f.Add("ms-azure-iot-edge://gw-637232034417418145")
	f.Add("ms-azure-iot-edge://a-b-1")
	f.Add("ms-azure-iot-edge://-")
	f.Fuzz(func(t *testing.T, scope string) {
		id, ok := ScopeDeviceID(scope)
		if !ok {
			return
		}
		if err := ValidateDeviceID(id); err != nil {
			t.Fatalf("ScopeDeviceID(%q) = %q, an invalid id", scope, id)
		}
		if got, ok := ScopeDeviceID(NewEdgeScope(id)); !ok || got != id {
			t.Fatalf("NewEdgeScope(%q) parses back to %q, %v", id, got, ok)
		}
	})
}

func FuzzMatchETag(f *testing.F) {
	f.Add(`W/"abc", "d"`, "abc")
	f.Add("*", "")
	f.Fuzz(func(t *testing.T, ifMatch, etag string) {
		MatchETag(ifMatch, etag)
		if u := unquoteETag(etag); u != "" && !strings.Contains(u, ",") && !MatchETag(QuoteETag(etag), etag) {
			t.Fatalf("MatchETag(QuoteETag(%q)) = false", etag)
		}
	})
}
