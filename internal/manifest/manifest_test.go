package manifest

import (
	"encoding/json"
	"errors"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"
)

// docFragments returns the JSON code blocks of the IoT Edge offline
// reference page (a verbatim copy in testdata), in order.
func docFragments(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile("testdata/iot-edge-offline.md")
	if err != nil {
		t.Fatal(err)
	}
	re := regexp.MustCompile("(?s)```json\n(.*?)```")
	var out []string
	for _, m := range re.FindAllStringSubmatch(string(b), -1) {
		out = append(out, m[1])
	}
	return out
}

// TestReferenceExamples wraps the two fragments of the IoT Edge offline
// page into a manifest, as the page intends: the "$edgeHub" member goes
// into modulesContent, the "edgeHub" member into $edgeAgent's
// systemModules. Both must be accepted as written.
func TestReferenceExamples(t *testing.T) {
	frags := docFragments(t)
	var hubFrag, agentFrag string
	for _, f := range frags {
		switch {
		case strings.Contains(f, `"$edgeHub"`):
			hubFrag = f
		case strings.Contains(f, `"edgeHub"`):
			agentFrag = f
		}
	}
	if hubFrag == "" || agentFrag == "" {
		t.Fatalf("fragments not found in the reference page: %d blocks", len(frags))
	}
	doc := `{"modulesContent": {` + hubFrag + `,
		"$edgeAgent": {"properties.desired": {"schemaVersion": "1.0",
			"runtime": {"type": "docker", "settings": {"minDockerVersion": "v1.25"}},
			"systemModules": {` + agentFrag + `}, "modules": {}}}}}`
	m, err := Parse([]byte(doc))
	if err != nil {
		t.Fatalf("reference examples refused: %v\n%s", err, doc)
	}
	if m.SchemaVersion != "1.0" || m.TTL != 7200*time.Second || len(m.Routes.Routes) != 1 {
		t.Fatalf("parsed %q ttl %v routes %d", m.SchemaVersion, m.TTL, len(m.Routes.Routes))
	}
	if got := m.EdgeHubEnv["storageFolder"]; got != "<ModuleStoragePath>" {
		t.Fatalf("edgeHub storageFolder %q", got)
	}
	// The az CLI's {"content": …} wrapper is accepted too.
	if _, err := Parse([]byte(`{"content": ` + doc + `}`)); err != nil {
		t.Fatalf("wrapped manifest refused: %v", err)
	}
}

const validHub = `"$edgeHub": {"properties.desired": {"schemaVersion": "1.1",
	"routes": {"up": "FROM /messages/* INTO $upstream",
		"toFilter": {"route": "FROM /messages/modules/sensor/outputs/out1 INTO BrokeredEndpoint(\"/modules/filter/inputs/in1\")", "priority": 1, "timeToLiveSecs": 60}},
	"storeAndForwardConfiguration": {"timeToLiveSecs": 3600}}}`

const validAgent = `"$edgeAgent": {"properties.desired": {"schemaVersion": "1.1",
	"systemModules": {"edgeAgent": {"type": "docker"}, "edgeHub": {"type": "docker", "env": {"storageFolder": {"value": "/data/edge"}, "N": {"value": 3}}}},
	"modules": {"filter": {"type": "docker", "env": {"MODE": {"value": "fast"}, "ON": {"value": true}}}}}}`

func TestParse(t *testing.T) {
	m, err := Parse([]byte(`{"modulesContent": {` + validAgent + `,` + validHub + `,
		"filter": {"properties.desired": {"threshold": 5}}}}`))
	if err != nil {
		t.Fatal(err)
	}
	switch {
	case m.TTL != time.Hour:
		t.Errorf("ttl %v", m.TTL)
	case len(m.Routes.Routes) != 2 || m.Routes.Routes[0].Name != "toFilter" || m.Routes.Routes[0].Priority != 1:
		t.Errorf("routes %+v", m.Routes.Routes)
	case m.EdgeHubEnv["storageFolder"] != "/data/edge" || m.EdgeHubEnv["N"] != "3":
		t.Errorf("edgeHub env %v", m.EdgeHubEnv)
	case m.ModuleEnv["filter"]["MODE"] != "fast" || m.ModuleEnv["filter"]["ON"] != "true":
		t.Errorf("module env %v", m.ModuleEnv)
	case len(m.Desired) != 3 || m.Desired["filter"]["threshold"] == nil:
		t.Errorf("desired %v", m.Desired)
	}
	// Desired documents stay as written, numbers exact.
	b, _ := json.Marshal(m.Desired["$edgeHub"]["storeAndForwardConfiguration"])
	if string(b) != `{"timeToLiveSecs":3600}` {
		t.Errorf("stored TTL %s", b)
	}
}

func TestParseRefuses(t *testing.T) {
	hubWith := func(desired string) string {
		return `{"modulesContent": {"$edgeHub": {"properties.desired": ` + desired + `}}}`
	}
	tests := []struct {
		name, doc, field string
	}{
		{"not json", `{`, ""},
		{"trailing data", `{"modulesContent": {}} x`, ""},
		{"no modulesContent", `{"modules": {}}`, "modulesContent"},
		{"modulesContent not object", `{"modulesContent": []}`, "modulesContent"},
		{"no edgeHub", `{"modulesContent": {` + validAgent + `}}`, "modulesContent.$edgeHub"},
		{"no desired", `{"modulesContent": {"$edgeHub": {}}}`, "modulesContent.$edgeHub.properties.desired"},
		{"no schemaVersion", hubWith(`{"routes": {}}`), "modulesContent.$edgeHub.properties.desired.schemaVersion"},
		{"schemaVersion 2", hubWith(`{"schemaVersion": "2.0"}`), "modulesContent.$edgeHub.properties.desired.schemaVersion"},
		{"schemaVersion number", hubWith(`{"schemaVersion": 1.0}`), "modulesContent.$edgeHub.properties.desired.schemaVersion"},
		{"bad route", hubWith(`{"schemaVersion": "1.0", "routes": {"r1": "FROM /messages/* INTO nowhere"}}`), "modulesContent.$edgeHub.properties.desired.routes"},
		{"bad priority", hubWith(`{"schemaVersion": "1.1", "routes": {"r1": {"route": "FROM /* INTO $upstream", "priority": 10}}}`), "modulesContent.$edgeHub.properties.desired.routes"},
		{"routes array", hubWith(`{"schemaVersion": "1.0", "routes": []}`), "modulesContent.$edgeHub.properties.desired.routes"},
		{"ttl zero", hubWith(`{"schemaVersion": "1.0", "storeAndForwardConfiguration": {"timeToLiveSecs": 0}}`), "modulesContent.$edgeHub.properties.desired.storeAndForwardConfiguration.timeToLiveSecs"},
		{"ttl above int32", hubWith(`{"schemaVersion": "1.0", "storeAndForwardConfiguration": {"timeToLiveSecs": 2147483648}}`), "modulesContent.$edgeHub.properties.desired.storeAndForwardConfiguration.timeToLiveSecs"},
		{"ttl fraction", hubWith(`{"schemaVersion": "1.0", "storeAndForwardConfiguration": {"timeToLiveSecs": 1.5}}`), "modulesContent.$edgeHub.properties.desired.storeAndForwardConfiguration.timeToLiveSecs"},
		{"ttl string", hubWith(`{"schemaVersion": "1.0", "storeAndForwardConfiguration": {"timeToLiveSecs": "60"}}`), "modulesContent.$edgeHub.properties.desired.storeAndForwardConfiguration.timeToLiveSecs"},
		{"agent without schemaVersion", `{"modulesContent": {"$edgeAgent": {"properties.desired": {}},` + validHub + `}}`, "modulesContent.$edgeAgent.properties.desired.schemaVersion"},
		{"env not object", `{"modulesContent": {"$edgeAgent": {"properties.desired": {"schemaVersion": "1.1", "systemModules": {"edgeHub": {"env": {"storageFolder": "/x"}}}}},` + validHub + `}}`, "modulesContent.$edgeAgent.properties.desired.systemModules.edgeHub.env.storageFolder"},
		{"env value object", `{"modulesContent": {"$edgeAgent": {"properties.desired": {"schemaVersion": "1.1", "modules": {"m": {"env": {"A": {"value": {}}}}}}},` + validHub + `}}`, "modulesContent.$edgeAgent.properties.desired.modules.m.env.A.value"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.doc))
			var me *Error
			if !errors.As(err, &me) {
				t.Fatalf("Parse: %v, want *Error", err)
			}
			if me.Field != tc.field {
				t.Fatalf("field %q, want %q (%v)", me.Field, tc.field, err)
			}
			if tc.field != "" && !strings.Contains(err.Error(), tc.field) {
				t.Fatalf("error %q does not name %s", err, tc.field)
			}
		})
	}
}

func TestParseTTL(t *testing.T) {
	tests := []struct {
		in   any
		want time.Duration
		ok   bool
	}{
		{json.Number("1"), time.Second, true},
		{json.Number("2147483647"), MaxTTL, true},
		{json.Number("2147483648"), 0, false},
		{json.Number("1e40"), 0, false},
		{json.Number("-5"), 0, false},
		{float64(7200), 7200 * time.Second, true},
		{float64(0.5), 0, false},
		{"7200", 0, false},
		{nil, 0, false},
	}
	for _, tc := range tests {
		got, err := ParseTTL(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("ParseTTL(%v) = %v, %v", tc.in, got, err)
		}
	}
}

// FuzzParse: any input is either refused with a field-naming *Error or
// parsed into a manifest whose TTL and routes are in range.
func FuzzParse(f *testing.F) {
	f.Add(`{"modulesContent": {` + validAgent + `,` + validHub + `}}`)
	f.Add(`{"content": {"modulesContent": {"$edgeHub": {"properties.desired": {"schemaVersion": "1.0", "routes": {}}}}}}`)
	f.Add(`{"modulesContent": {"$edgeHub": {"properties.desired": {"schemaVersion": "1.0", "storeAndForwardConfiguration": {"timeToLiveSecs": 1e99}}}}}`)
	f.Add(`[]`)
	f.Fuzz(func(t *testing.T, doc string) {
		m, err := Parse([]byte(doc))
		if err != nil {
			var me *Error
			if !errors.As(err, &me) {
				t.Fatalf("error %v is not an *Error", err)
			}
			return
		}
		if m.TTL < 0 || m.TTL > MaxTTL {
			t.Fatalf("TTL %v", m.TTL)
		}
		if len(m.Routes.Routes) == 0 {
			t.Fatal("no routes")
		}
		if m.SchemaVersion == "" {
			t.Fatal("no schema version")
		}
	})
}
