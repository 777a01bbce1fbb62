package route

import (
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"outpost/internal/message"
	"outpost/internal/query"
)

var (
	deviceMsg = &message.Message{DeviceID: "child1", Body: []byte("hi"),
		System: message.System{ConnDeviceID: "child1"}}
	sensorOut = &message.Message{DeviceID: "edge1", ModuleID: "SimulatedTemperatureSensor",
		System: message.System{OutputName: "temperatureOutput", ConnDeviceID: "edge1", ConnModuleID: "SimulatedTemperatureSensor"}}
	filterOut = &message.Message{DeviceID: "edge1", ModuleID: "filtermodule",
		System: message.System{OutputName: "output1"}}
	filterNoOut = &message.Message{DeviceID: "edge1", ModuleID: "filtermodule"}
	// stampedOnly names its module only through the stamped system property.
	stampedOnly = &message.Message{DeviceID: "edge1",
		System: message.System{ConnModuleID: "filtermodule", OutputName: "output1"}}
)

func TestSources(t *testing.T) {
	msgs := map[string]*message.Message{
		"device": deviceMsg, "sensorOut": sensorOut, "filterOut": filterOut,
		"filterNoOut": filterNoOut, "stampedOnly": stampedOnly,
	}
	tests := []struct {
		source string
		kind   SourceKind
		want   string // messages that match, comma-separated
	}{
		{"/*", AllMessages, "device,sensorOut,filterOut,filterNoOut,stampedOnly"},
		{"/messages/*", Messages, "device,sensorOut,filterOut,filterNoOut,stampedOnly"},
		{"/messages/modules/*", AnyModule, "sensorOut,filterOut,filterNoOut,stampedOnly"},
		{"/messages/modules/filtermodule/*", Module, "filterOut,filterNoOut,stampedOnly"},
		{"/messages/modules/filtermodule/outputs/*", ModuleOutputs, "filterOut,stampedOnly"},
		{"/messages/modules/filtermodule/outputs/output1", ModuleOutput, "filterOut,stampedOnly"},
		{"/messages/modules/filtermodule/outputs/output2", ModuleOutput, ""},
		{"/messages/modules/SimulatedTemperatureSensor/outputs/temperatureOutput", ModuleOutput, "sensorOut"},
		{"/messages/modules/simulatedtemperaturesensor/*", Module, ""}, // ids are case-sensitive
		{"/messages/modules/child1/*", Module, ""},                     // a device is not a module
	}
	order := []string{"device", "sensorOut", "filterOut", "filterNoOut", "stampedOnly"}
	for _, tt := range tests {
		t.Run(tt.source, func(t *testing.T) {
			r, err := ParseRoute("FROM " + tt.source + " INTO $upstream")
			if err != nil {
				t.Fatalf("ParseRoute: %v", err)
			}
			if r.Source.Kind != tt.kind || r.Source.String() != tt.source {
				t.Errorf("source = %+v (%s), want kind %d", r.Source, r.Source, tt.kind)
			}
			var got []string
			for _, name := range order {
				if r.Match(msgs[name]) {
					got = append(got, name)
				}
			}
			if strings.Join(got, ",") != tt.want {
				t.Errorf("matches %v, want %s", got, tt.want)
			}
		})
	}
}

func TestSinks(t *testing.T) {
	tests := []struct {
		sink string
		want Sink
		name string
	}{
		{"$upstream", Sink{Kind: Upstream}, "$upstream"},
		{"$UPSTREAM", Sink{Kind: Upstream}, "$upstream"},
		{`BrokeredEndpoint("/modules/filtermodule/inputs/input1")`, Sink{Kind: ModuleInput, Module: "filtermodule", Input: "input1"}, "/modules/filtermodule/inputs/input1"},
		{`brokeredendpoint ( '/modules/m/inputs/i' )`, Sink{Kind: ModuleInput, Module: "m", Input: "i"}, "/modules/m/inputs/i"},
		{`BrokeredEndpoint(\"/modules/m/inputs/i\")`, Sink{Kind: ModuleInput, Module: "m", Input: "i"}, "/modules/m/inputs/i"},
		{`BrokeredEndpoint("/devices/child-1/messages/devicebound")`, Sink{Kind: DeviceBound, Device: "child-1"}, "/devices/child-1/messages/devicebound"},
		{`BrokeredEndpoint("/devices/a*b?(c)/messages/devicebound")`, Sink{Kind: DeviceBound, Device: "a*b?(c)"}, "/devices/a*b?(c)/messages/devicebound"},
	}
	for _, tt := range tests {
		t.Run(tt.sink, func(t *testing.T) {
			r, err := ParseRoute("FROM /messages/* INTO " + tt.sink)
			if err != nil {
				t.Fatalf("ParseRoute: %v", err)
			}
			if r.Sink != tt.want {
				t.Errorf("sink = %+v, want %+v", r.Sink, tt.want)
			}
			if r.Sink.String() != tt.name {
				t.Errorf("String() = %q, want %q", r.Sink.String(), tt.name)
			}
			back, ok := ParseSink(r.Sink.String())
			if !ok || back != r.Sink {
				t.Errorf("ParseSink(%q) = %+v, %v", r.Sink.String(), back, ok)
			}
		})
	}
	for _, bad := range []string{"", "upstream", "/modules/m/inputs", "/modules//inputs/i", "/devices/d/messages/events", "/modules/m/inputs/i/x"} {
		if s, ok := ParseSink(bad); ok {
			t.Errorf("ParseSink(%q) = %+v, want refusal", bad, s)
		}
	}
}

func TestConditions(t *testing.T) {
	enq := time.Date(2024, 5, 6, 7, 8, 9, 500_000_000, time.UTC)
	jsonMsg := &message.Message{
		DeviceID: "child1",
		Body:     []byte(`{"machine":{"temperature":31.5,"pressure":2},"ambient":{"humidity":"25"},"tags":["a","b"]}`),
		Properties: map[string]string{
			"temperature": "35", "alert": "x", "level": "high", "count": "007",
		},
		System: message.System{
			ContentType: "application/json", ContentEncoding: "utf-8",
			MessageID: "mid-1", CorrelationID: "cid-1", UserID: "u1", To: "/devices/child1/messages/events",
			ConnDeviceID: "child1", EnqueuedTime: enq,
		},
	}
	looseJSON := &message.Message{DeviceID: "child1", Body: []byte("\xef\xbb\xbf {\"a\": 1}")}
	notJSON := &message.Message{DeviceID: "child1", Body: []byte("not json"),
		System: message.System{ContentType: "application/json", ContentEncoding: "utf-8"}}
	tests := []struct {
		name string
		msg  *message.Message
		cond string
		want bool
	}{
		{"app prop as number", jsonMsg, "temperature > 30", true},
		{"app prop as number, false", jsonMsg, "temperature > 40", false},
		{"app prop equal number", jsonMsg, "temperature = 35", true},
		{"app prop as string", jsonMsg, "alert = 'x'", true},
		{"app prop leading zeros", jsonMsg, "count = 7 AND count = '007'", true},
		{"app prop not a number", jsonMsg, "level > 1", false},
		{"app prop not a number, negated", jsonMsg, "NOT level > 1", false},
		{"app prop missing", jsonMsg, "IS_DEFINED(nope)", false},
		{"app prop IN", jsonMsg, "level IN ['high', 'critical']", true},
		{"app props are case-sensitive", jsonMsg, "Alert = 'x'", false},
		{"$contentType", jsonMsg, "$contentType = 'application/json'", true},
		{"$contentEncoding", jsonMsg, "$contentEncoding = 'utf-8'", true},
		{"$messageId", jsonMsg, "$messageId = 'mid-1'", true},
		{"$correlationId", jsonMsg, "$correlationId = 'cid-1'", true},
		{"$userId", jsonMsg, "$userId = 'u1'", true},
		{"$to", jsonMsg, "STARTSWITH($to, '/devices/child1')", true},
		{"$connectionDeviceId", jsonMsg, "$connectionDeviceId = 'child1'", true},
		{"no $connectionModuleId on a device", jsonMsg, "NOT IS_DEFINED($connectionModuleId)", true},
		{"$connectionModuleId", sensorOut, "$connectionModuleId = 'SimulatedTemperatureSensor'", true},
		{"$connectionModuleId falls back to ModuleID", filterOut, "$connectionModuleId = 'filtermodule'", true},
		{"$connectionDeviceId falls back to DeviceID", filterOut, "$connectionDeviceId = 'edge1'", true},
		{"$outputName", sensorOut, "$outputName = 'temperatureOutput'", true},
		{"$enqueuedTime", jsonMsg, "$enqueuedTime = '2024-05-06T07:08:09.5000000Z'", true},
		{"$enqueuedTime ordered", jsonMsg, "$enqueuedTime > '2024-05-06T07:08:09.0000000Z' AND $enqueuedTime < '2024-05-06T07:08:10'", true},
		{"no $enqueuedTime", filterOut, "IS_DEFINED($enqueuedTime)", false},
		{"unknown system property", jsonMsg, "IS_DEFINED($nope)", false},
		{"$body number", jsonMsg, "$body.machine.temperature > 30", true},
		{"$body number, false", jsonMsg, "$body.machine.temperature > 32", false},
		{"$body string stays a string", jsonMsg, "$body.ambient.humidity > 20", false},
		{"$body string", jsonMsg, "$body.ambient.humidity = '25'", true},
		{"$body array", jsonMsg, "$body.tags[1] = 'b' AND IS_ARRAY($body.tags)", true},
		{"$body object", jsonMsg, "IS_OBJECT($body) AND IS_OBJECT($body.machine)", true},
		{"$body combined with props", jsonMsg, "$body.machine.pressure = 2 AND alert = 'x' AND $contentType = 'application/json'", true},
		{"$body lenient: JSON without content type", looseJSON, "$body.a = 1", true},
		{"$body not JSON", notJSON, "IS_DEFINED($body)", false},
		{"$body not JSON, field", notJSON, "NOT $body.a = 1", false},
		{"$body of non-JSON text", deviceMsg, "IS_DEFINED($body.x)", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := ParseRoute("FROM /messages/* WHERE " + tt.cond + " INTO $upstream")
			if err != nil {
				t.Fatalf("ParseRoute: %v", err)
			}
			if got := r.Match(tt.msg); got != tt.want {
				t.Errorf("Match(%s) = %v, want %v", tt.cond, got, tt.want)
			}
		})
	}
}

func TestMessageDocDecodesOnce(t *testing.T) {
	msg := &message.Message{Body: []byte(`{"a":1}`)}
	d := MessageDoc(msg)
	if v, ok := d.Lookup([]string{"$body", "a"}); !ok || v != 1.0 {
		t.Fatalf("$body.a = %v, %v", v, ok)
	}
	msg.Body = []byte(`{"a":2}`) // a second decode would see this
	if v, _ := d.Lookup([]string{"$body", "a"}); v != 1.0 {
		t.Errorf("body decoded again: $body.a = %v", v)
	}
	if _, ok := d.Lookup(nil); ok {
		t.Errorf("Lookup(nil) defined")
	}
	if _, ok := d.Lookup([]string{"alert", "x"}); ok {
		t.Errorf("nested path into an application property defined")
	}
}

func TestSyntax(t *testing.T) {
	tests := []struct {
		text  string
		canon string
	}{
		{"FROM /messages/* INTO $upstream", "FROM /messages/* INTO $upstream"},
		{"select * from /* into $upstream", "FROM /* INTO $upstream"},
		{"SELECT*FROM /messages/modules/* WHERE a=1 INTO $upstream", "FROM /messages/modules/* WHERE a = 1 INTO $upstream"},
		{"  FROM   /messages/*   WHERE   (temperature > 30 OR alert = \"x\")   AND $body.a <> 1  INTO  BrokeredEndpoint ( \"/modules/m/inputs/i\" )  ",
			`FROM /messages/* WHERE (temperature > 30 OR alert = 'x') AND $body.a != 1 INTO BrokeredEndpoint("/modules/m/inputs/i")`},
		{"FROM /messages/* WHERE $body.x = 'into' INTO $upstream", "FROM /messages/* WHERE $body.x = 'into' INTO $upstream"},
		{"FROM /messages/*\nWHERE NOT IS_DEFINED($connectionModuleId)\nINTO BrokeredEndpoint('/devices/c1/messages/devicebound')",
			`FROM /messages/* WHERE NOT IS_DEFINED($connectionModuleId) INTO BrokeredEndpoint("/devices/c1/messages/devicebound")`},
	}
	for _, tt := range tests {
		t.Run(tt.text, func(t *testing.T) {
			r, err := ParseRoute(tt.text)
			if err != nil {
				t.Fatalf("ParseRoute: %v", err)
			}
			if r.String() != tt.canon {
				t.Errorf("String() = %s\nwant       %s", r.String(), tt.canon)
			}
			if r.Text != tt.text {
				t.Errorf("Text = %q", r.Text)
			}
		})
	}
}

func TestSyntaxErrors(t *testing.T) {
	tests := []struct {
		text string
		pos  int
		msg  string
	}{
		{"", 1, "expected FROM, found end of route"},
		{"INTO $upstream", 1, "expected FROM, found 'INTO'"},
		{"SELECT FROM /messages/* INTO $upstream", 8, "expected '*' after SELECT, found 'FROM'"},
		{"FROM", 5, "expected a source after FROM, found end of route"},
		{"FROM /foo INTO $upstream", 6, "unknown source '/foo': expected " + sourceForms},
		{"FROM /messages/modules/*/outputs/x INTO $upstream", 6, "unknown source '/messages/modules/*/outputs/x': expected " + sourceForms},
		{"FROM /messages/* $upstream", 18, "expected WHERE or INTO, found '$upstream'"},
		{"FROM /messages/* WHERE a = 1 $upstream", 30, "expected AND, OR or INTO, found '$upstream'"},
		{"FROM /messages/* WHERE a = INTO $upstream", 28, "expected a value after '=', found 'INTO'"},
		{"FROM /messages/* WHERE INTO $upstream", 24, "expected a condition, found 'INTO'"},
		{"FROM /messages/* WHERE a = 1", 29, "expected AND, OR or INTO, found end of route"},
		{"FROM /messages/* INTO", 22, "expected " + sinkForms + ", found end of route"},
		{"FROM /messages/* INTO $downstream", 23, "expected " + sinkForms + ", found '$downstream'"},
		{`FROM /messages/* INTO BrokeredEndpoint("/modules/m/outputs/o")`, 41, `unknown endpoint '/modules/m/outputs/o': expected "/modules/{m}/inputs/{i}" or "/devices/{d}/messages/devicebound"`},
		{`FROM /messages/* INTO BrokeredEndpoint("/modules/m/inputs/i"`, 61, "expected ')', found end of route"},
		{`FROM /messages/* INTO BrokeredEndpoint("/modules/m/inputs/i)`, 40, "unterminated endpoint string"},
		{`FROM /messages/* INTO BrokeredEndpoint(/modules/m/inputs/i)`, 40, "expected a quoted endpoint, found '/modules/m/inputs/i)'"},
		{"FROM /messages/* INTO $upstream extra", 33, "expected end of route, found 'extra'"},
	}
	for _, tt := range tests {
		t.Run(tt.text, func(t *testing.T) {
			_, err := ParseRoute(tt.text)
			var se *query.SyntaxError
			if !errors.As(err, &se) {
				t.Fatalf("ParseRoute = %v, want *query.SyntaxError", err)
			}
			if se.Pos != tt.pos || se.Msg != tt.msg {
				t.Errorf("got  %d %s\nwant %d %s", se.Pos, se.Msg, tt.pos, tt.msg)
			}
		})
	}
}

func decodeRoutes(t *testing.T, manifest string) map[string]any {
	t.Helper()
	var m struct {
		EdgeHub struct {
			Desired struct {
				Routes map[string]any `json:"routes"`
			} `json:"properties.desired"`
		} `json:"$edgeHub"`
	}
	if err := json.Unmarshal([]byte(manifest), &m); err != nil {
		t.Fatalf("manifest: %v", err)
	}
	return m.EdgeHub.Desired.Routes
}

func TestManifests(t *testing.T) {
	// From the IoT Edge offline documentation: no routes means the default.
	offline := `{"$edgeHub": {"properties.desired": {"schemaVersion": "1.0", "routes": {},
		"storeAndForwardConfiguration": {"timeToLiveSecs": 7200}}}}`
	tbl, err := ParseRoutes(decodeRoutes(t, offline))
	if err != nil {
		t.Fatalf("ParseRoutes: %v", err)
	}
	if len(tbl.Routes) != 1 || tbl.Routes[0].Name != DefaultName || tbl.Routes[0].String() != DefaultText {
		t.Fatalf("empty routes gave %+v", tbl.Routes)
	}
	if got := tbl.Match(deviceMsg); len(got) != 1 || got[0].Sink.Kind != Upstream {
		t.Errorf("default route: %+v", got)
	}
	if nilTbl, err := ParseRoutes(nil); err != nil || len(nilTbl.Routes) != 1 || nilTbl.Routes[0].Name != DefaultName {
		t.Errorf("ParseRoutes(nil) = %+v, %v", nilTbl, err)
	}

	// The tutorial deployment, quotes escaped as a manifest holds them.
	tutorial := `{"$edgeHub": {"properties.desired": {"schemaVersion": "1.1", "routes": {
		"sensorToFilter": "FROM /messages/modules/SimulatedTemperatureSensor/outputs/temperatureOutput INTO BrokeredEndpoint(\"/modules/filtermodule/inputs/input1\")",
		"filterToIoTHub": "FROM /messages/modules/filtermodule/outputs/output1 INTO $upstream",
		"hot": {"route": "FROM /messages/* WHERE $body.machine.temperature > 30 INTO BrokeredEndpoint(\"/devices/child1/messages/devicebound\")", "priority": 1, "timeToLiveSecs": 60},
		"removed": null
	}}}}`
	tbl, err = ParseRoutes(decodeRoutes(t, tutorial))
	if err != nil {
		t.Fatalf("ParseRoutes: %v", err)
	}
	var names []string
	for _, r := range tbl.Routes {
		names = append(names, r.Name)
	}
	if !slices.Equal(names, []string{"filterToIoTHub", "hot", "sensorToFilter"}) {
		t.Errorf("routes %v", names)
	}
	hotBody := &message.Message{DeviceID: "edge1", ModuleID: "SimulatedTemperatureSensor", Body: []byte(`{"machine":{"temperature":31}}`),
		System: message.System{OutputName: "temperatureOutput", ContentType: "application/json", ContentEncoding: "utf-8"}}
	tests := []struct {
		name string
		msg  *message.Message
		want []string // sink names in result order
	}{
		{"sensor output", sensorOut, []string{"/modules/filtermodule/inputs/input1"}},
		// priority 0 (the default) comes before the hot route's 1
		{"hot sensor output", hotBody, []string{"/modules/filtermodule/inputs/input1", "/devices/child1/messages/devicebound"}},
		{"filter output", filterOut, []string{"$upstream"}},
		{"filter without output", filterNoOut, nil},
		{"child telemetry", deviceMsg, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got []string
			for _, r := range tbl.Match(tt.msg) {
				got = append(got, r.Sink.String())
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("sinks %v, want %v", got, tt.want)
			}
		})
	}
	hot := tbl.Match(hotBody)[1]
	if hot.Name != "hot" || hot.Priority != 1 || hot.TTL != time.Minute {
		t.Errorf("hot route = %+v", hot)
	}
}

func TestRouteObjects(t *testing.T) {
	const text = "FROM /messages/* INTO $upstream"
	tests := []struct {
		name     string
		value    any
		priority int
		ttl      time.Duration
		err      string
	}{
		{"string", text, 0, 0, ""},
		{"object", map[string]any{"route": text}, 0, 0, ""},
		{"priority and ttl", map[string]any{"route": text, "priority": 9.0, "timeToLiveSecs": 86400.0}, 9, 24 * time.Hour, ""},
		{"ttl 0 is global", map[string]any{"route": text, "priority": 0.0, "timeToLiveSecs": 0.0}, 0, 0, ""},
		{"max ttl", map[string]any{"route": text, "timeToLiveSecs": 2147483647.0}, 0, MaxTTL, ""},
		{"json.Number", map[string]any{"route": text, "priority": json.Number("3")}, 3, 0, ""},
		{"null fields", map[string]any{"route": text, "priority": nil, "timeToLiveSecs": nil}, 0, 0, ""},
		{"priority 10", map[string]any{"route": text, "priority": 10.0}, 0, 0, `route "r": priority 10 out of range 0-9`},
		{"priority -1", map[string]any{"route": text, "priority": -1.0}, 0, 0, `route "r": priority -1 out of range 0-9`},
		{"priority fraction", map[string]any{"route": text, "priority": 1.5}, 0, 0, `route "r": priority must be a whole number, got a number`},
		{"priority string", map[string]any{"route": text, "priority": "1"}, 0, 0, `route "r": priority must be a whole number, got a string`},
		{"negative ttl", map[string]any{"route": text, "timeToLiveSecs": -5.0}, 0, 0, `route "r": timeToLiveSecs -5 out of range 0-2147483647`},
		{"ttl over int32", map[string]any{"route": text, "timeToLiveSecs": 2147483648.0}, 0, 0, `route "r": timeToLiveSecs 2147483648 out of range 0-2147483647`},
		{"unknown field", map[string]any{"route": text, "prio": 1.0}, 0, 0, `route "r": unknown field "prio" (want route, priority, timeToLiveSecs)`},
		{"no route", map[string]any{"priority": 1.0}, 0, 0, `route "r": "route" must be a non-empty string`},
		{"route not a string", map[string]any{"route": 5.0}, 0, 0, `route "r": "route" must be a non-empty string`},
		{"a number", 5.0, 0, 0, `route "r": want a string or an object {"route": …}, got a number`},
		{"an array", []any{text}, 0, 0, `route "r": want a string or an object {"route": …}, got an array`},
		{"syntax", "FROM /messages/* WHERE a = 1 $upstream", 0, 0, `route "r": syntax error at position 30: expected AND, OR or INTO, found '$upstream'`},
		{"syntax in object", map[string]any{"route": "FROM /x INTO $upstream"}, 0, 0, `route "r": syntax error at position 6: unknown source '/x': expected ` + sourceForms},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tbl, err := ParseRoutes(map[string]any{"ok": text, "r": tt.value})
			if tt.err != "" {
				if err == nil || err.Error() != tt.err {
					t.Fatalf("ParseRoutes error = %v\nwant %s", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseRoutes: %v", err)
			}
			r := tbl.Routes[1]
			if r.Name != "r" || r.Priority != tt.priority || r.TTL != tt.ttl {
				t.Errorf("route = %+v", r)
			}
		})
	}
	// The error names the route and keeps the syntax error inspectable.
	_, err := ParseRoutes(map[string]any{"r2": "FROM /messages/* WHERE a"})
	var se *query.SyntaxError
	if !errors.As(err, &se) || !strings.HasPrefix(err.Error(), `route "r2": syntax error at position 25: expected AND, OR or INTO`) {
		t.Errorf("error = %v", err)
	}
}

func TestMatchMerge(t *testing.T) {
	route := func(name, text string, prio int, ttl time.Duration) Route {
		r, err := ParseRoute(text)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		r.Name, r.Priority, r.TTL = name, prio, ttl
		return r
	}
	up := "FROM /messages/* INTO $upstream"
	upHot := "FROM /messages/* WHERE temperature > 30 INTO $upstream"
	toFilter := `FROM /messages/* INTO BrokeredEndpoint("/modules/filter/inputs/in")`
	hot := &message.Message{DeviceID: "d", Properties: map[string]string{"temperature": "40"}}
	cold := &message.Message{DeviceID: "d", Properties: map[string]string{"temperature": "10"}}
	tests := []struct {
		name   string
		routes []Route
		global time.Duration
		msg    *message.Message
		want   []string // name/priority/ttl per result
	}{
		{"one sink, higher priority and longer TTL from different routes",
			[]Route{route("a", up, 5, time.Hour), route("b", upHot, 2, time.Minute)}, 0, hot,
			[]string{"b/2/1h0m0s"}},
		{"condition false: only the other route",
			[]Route{route("a", up, 5, time.Hour), route("b", upHot, 2, time.Minute)}, 0, cold,
			[]string{"a/5/1h0m0s"}},
		{"equal priority: first by name",
			[]Route{route("a", up, 3, time.Minute), route("b", upHot, 3, time.Hour)}, 0, hot,
			[]string{"a/3/1h0m0s"}},
		{"global TTL unknown: 0 outlives explicit",
			[]Route{route("a", up, 1, 0), route("b", upHot, 0, time.Hour)}, 0, hot,
			[]string{"b/0/0s"}},
		{"global TTL shorter than explicit",
			[]Route{route("a", up, 1, 0), route("b", upHot, 0, time.Hour)}, time.Minute, hot,
			[]string{"b/0/1h0m0s"}},
		{"global TTL longer than explicit",
			[]Route{route("a", up, 1, 0), route("b", upHot, 0, time.Minute)}, time.Hour, hot,
			[]string{"b/0/0s"}},
		{"two sinks ordered by priority",
			[]Route{route("a", up, 4, 0), route("f", toFilter, 1, 0)}, 0, hot,
			[]string{"f/1/0s", "a/4/0s"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tbl := Table{Routes: tt.routes, GlobalTTL: tt.global}
			var got []string
			for _, r := range tbl.Match(tt.msg) {
				got = append(got, r.Name+"/"+itoa(r.Priority)+"/"+r.TTL.String())
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("got %v, want %v", got, tt.want)
			}
		})
	}
}

func itoa(i int) string { return string(rune('0' + i)) }

func FuzzParseRoute(f *testing.F) {
	for _, s := range []string{
		"FROM /messages/* INTO $upstream",
		"SELECT * FROM /* WHERE a = 1 INTO $upstream",
		`FROM /messages/modules/m/outputs/o WHERE $body.x > 2 AND NOT IS_DEFINED($connectionModuleId) INTO BrokeredEndpoint("/modules/f/inputs/i")`,
		`FROM /messages/modules/m/* INTO BrokeredEndpoint(\"/devices/d/messages/devicebound\")`,
		`from /messages/modules/* where temperature in [1, '2'] into brokeredendpoint('/modules/a/inputs/b')`,
	} {
		f.Add(s)
	}
	msgs := []*message.Message{deviceMsg, sensorOut, filterOut, filterNoOut, stampedOnly,
		{DeviceID: "d", ModuleID: "m", Body: []byte(`{"x":3}`), Properties: map[string]string{"a": "1", "temperature": "2"}}}
	f.Fuzz(func(t *testing.T, s string) {
		r, err := ParseRoute(s)
		if err != nil {
			var se *query.SyntaxError
			if !errors.As(err, &se) {
				t.Fatalf("ParseRoute(%q) = %T %v", s, err, err)
			}
			if n := len([]rune(s)); se.Pos < 1 || se.Pos > n+1 {
				t.Fatalf("ParseRoute(%q): position %d outside 1..%d", s, se.Pos, n+1)
			}
			return
		}
		canon := r.String()
		r2, err := ParseRoute(canon)
		if err != nil {
			t.Fatalf("ParseRoute(%q) ok, canonical %q fails: %v", s, canon, err)
		}
		if r2.String() != canon || r2.Sink != r.Sink || r2.Source != r.Source {
			t.Fatalf("canonical form not stable: %q -> %q", canon, r2.String())
		}
		if back, ok := ParseSink(r.Sink.String()); !ok || back != r.Sink {
			t.Fatalf("sink %q does not read back", r.Sink.String())
		}
		for _, m := range msgs {
			if r.Match(m) != r2.Match(m) {
				t.Fatalf("%q and its canonical form disagree", s)
			}
		}
	})
}
