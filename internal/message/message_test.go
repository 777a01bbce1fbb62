package message

import "testing"

func TestSystemKeysRoundTrip(t *testing.T) {
	keys := []string{KeyMessageID, KeyCorrelationID, KeyUserID, KeyTo, KeyContentType,
		KeyContentEncoding, KeyExpiry, KeyOutputName, KeyConnDeviceID, KeyConnModuleID}
	var m Message
	for i, k := range keys {
		if !m.SystemSet(k, k+"-value") {
			t.Fatalf("SystemSet(%q) refused a system key", k)
		}
		for _, earlier := range keys[:i+1] {
			if v, ok := m.SystemGet(earlier); !ok || v != earlier+"-value" {
				t.Fatalf("after setting %q: SystemGet(%q) = %q, %v", k, earlier, v, ok)
			}
		}
	}
	if m.SystemSet("$.nope", "x") {
		t.Error("SystemSet accepted an unknown key")
	}
	if _, ok := m.SystemGet("app"); ok {
		t.Error("SystemGet found an application key")
	}
}

func TestClientID(t *testing.T) {
	tests := []struct{ d, m, want string }{
		{"dev", "", "dev"},
		{"dev", "mod", "dev/mod"},
		{"edge", "$edgeHub", "edge/$edgeHub"},
	}
	for _, tt := range tests {
		if got := ClientID(tt.d, tt.m); got != tt.want {
			t.Errorf("ClientID(%q, %q) = %q, want %q", tt.d, tt.m, got, tt.want)
		}
	}
}

func TestNewIDUnique(t *testing.T) {
	seen := map[string]bool{}
	for range 1000 {
		id := NewID()
		if len(id) != 32 || seen[id] {
			t.Fatalf("NewID returned %q (len %d, seen before: %v)", id, len(id), seen[id])
		}
		seen[id] = true
	}
}
