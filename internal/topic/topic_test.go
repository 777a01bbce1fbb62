package topic

import (
	"errors"
	"reflect"
	"strings"
	"testing"

	"outpost/internal/message"
)

func TestParse(t *testing.T) {
	tests := []struct {
		in   string
		want Topic
	}{
		// Telemetry as the Node SDK sends it.
		{"devices/dev1/messages/events/%24.mid=abc&%24.ct=application%2Fjson&temp=hot",
			Topic{Kind: KindTelemetry, DeviceID: "dev1", Bag: map[string]string{"$.mid": "abc", "$.ct": "application/json", "temp": "hot"}}},
		{"devices/dev1/messages/events/", Topic{Kind: KindTelemetry, DeviceID: "dev1", Bag: map[string]string{}}},
		{"devices/dev1/messages/events", Topic{Kind: KindTelemetry, DeviceID: "dev1", Bag: map[string]string{}}},
		{"devices/d/modules/m/messages/events/%24.on=out1/",
			Topic{Kind: KindTelemetry, DeviceID: "d", ModuleID: "m", Output: "out1", Bag: map[string]string{"$.on": "out1"}}},
		{"devices/d/modules/$edgeHub/messages/events/a=b",
			Topic{Kind: KindTelemetry, DeviceID: "d", ModuleID: "$edgeHub", Bag: map[string]string{"a": "b"}}},
		{"devices/a:b(c)!/messages/events/k=v%20w",
			Topic{Kind: KindTelemetry, DeviceID: "a:b(c)!", Bag: map[string]string{"k": "v w"}}},
		// Server to device.
		{"devices/d/messages/devicebound/%24.mid=1&%24.to=%2Fdevices%2Fd%2Fmessages%2FdeviceBound&p=q",
			Topic{Kind: KindC2D, DeviceID: "d", Bag: map[string]string{"$.mid": "1", "$.to": "/devices/d/messages/deviceBound", "p": "q"}}},
		{"devices/d/messages/devicebound/", Topic{Kind: KindC2D, DeviceID: "d", Bag: map[string]string{}}},
		{"devices/d/modules/m/inputs/in1/%24.mid=1",
			Topic{Kind: KindModuleInput, DeviceID: "d", ModuleID: "m", Input: "in1", Bag: map[string]string{"$.mid": "1"}}},
		{"devices/d/modules/m/inputs/in1/", Topic{Kind: KindModuleInput, DeviceID: "d", ModuleID: "m", Input: "in1", Bag: map[string]string{}}},
		// Twins and methods, device side.
		{"$iothub/twin/GET/?$rid=1", Topic{Kind: KindTwinGet, RID: "1"}},
		{"$iothub/twin/PATCH/properties/reported/?$rid=2", Topic{Kind: KindTwinReported, RID: "2"}},
		{"$iothub/twin/PATCH/properties/reported/?$rid=2&$version=3&x=y", Topic{Kind: KindTwinReported, RID: "2", Version: 3}},
		{"$iothub/twin/res/200/?$rid=1", Topic{Kind: KindTwinResponse, Status: 200, RID: "1"}},
		{"$iothub/twin/res/204/?$rid=2&$version=7", Topic{Kind: KindTwinResponse, Status: 204, RID: "2", Version: 7}},
		{"$iothub/twin/PATCH/properties/desired/?$version=9", Topic{Kind: KindTwinDesired, Version: 9}},
		{"$iothub/methods/POST/reboot/?$rid=a1", Topic{Kind: KindMethodRequest, MethodName: "reboot", RID: "a1"}},
		{"$iothub/methods/res/500/?$rid=a1", Topic{Kind: KindMethodResponse, Status: 500, RID: "a1"}},
		{"$iothub/methods/res/200/?%24rid=a1", Topic{Kind: KindMethodResponse, Status: 200, RID: "a1"}},
		// On behalf of.
		{"$iothub/child1/twin/get/?$rid=5", Topic{Kind: KindTwinGet, OnBehalfOf: "child1", DeviceID: "child1", RID: "5"}},
		{"$iothub/e1/m1/twin/get/?$rid=5", Topic{Kind: KindTwinGet, OnBehalfOf: "e1/m1", DeviceID: "e1", ModuleID: "m1", RID: "5"}},
		{"$iothub/c/twin/reported/?$rid=6", Topic{Kind: KindTwinReported, OnBehalfOf: "c", DeviceID: "c", RID: "6"}},
		{"$iothub/c/twin/res/204/?$rid=6&$version=4", Topic{Kind: KindTwinResponse, OnBehalfOf: "c", DeviceID: "c", Status: 204, RID: "6", Version: 4}},
		{"$iothub/e/m/twin/desired/?$version=4", Topic{Kind: KindTwinDesired, OnBehalfOf: "e/m", DeviceID: "e", ModuleID: "m", Version: 4}},
		{"$iothub/c/methods/post/go/?$rid=7", Topic{Kind: KindMethodRequest, OnBehalfOf: "c", DeviceID: "c", MethodName: "go", RID: "7"}},
		{"$iothub/e/m/methods/res/200/?$rid=7", Topic{Kind: KindMethodResponse, OnBehalfOf: "e/m", DeviceID: "e", ModuleID: "m", Status: 200, RID: "7"}},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := Parse(tt.in)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("Parse =\n %+v\nwant\n %+v", got, tt.want)
			}
		})
	}
}

func TestParseErrors(t *testing.T) {
	tests := []string{
		"",
		"devices",
		"devices/",
		"devices//messages/events/",
		"devices/d",
		"devices/d/messages",
		"devices/d/messages/eventsx",
		"devices/d/messages/other/",
		"devices/d+/messages/events/",
		"devices/d#/messages/events/",
		"devices/" + strings.Repeat("x", 129) + "/messages/events/",
		"devices/d/modules//messages/events/",
		"devices/d/modules/m",
		"devices/d/modules/m/inputs//",
		"devices/d/modules/m/outputs/o/",
		"devices/d/messages/events/%zz=1",
		"$iothub/twin/GET/",
		"$iothub/twin/GET/?x=1",
		"$iothub/twin/GET?$rid=1",
		"$iothub/twin/get/?$rid=1",
		"$iothub/twin/res/abc/?$rid=1",
		"$iothub/twin/res/200/?$rid=1&$version=x",
		"$iothub/twin/PATCH/properties/desired/?$rid=1",
		"$iothub/methods/POST//?$rid=1",
		"$iothub/methods/POST/a/b/?$rid=1",
		"$iothub/methods/res/99999999999/?$rid=1",
		"$iothub/a/b/c/twin/get/?$rid=1",
		"$iothub/+/twin/get/?$rid=1",
		"$iothub//twin/get/?$rid=1",
		"$iothub/c/twin/GET/?$rid=1",
		"$other/twin/GET/?$rid=1",
	}
	for _, in := range tests {
		t.Run(in, func(t *testing.T) {
			if got, err := Parse(in); err == nil {
				t.Fatalf("Parse(%q) = %+v, want error", in, got)
			}
		})
	}
	if _, err := Parse("nope"); !errors.Is(err, ErrUnknown) {
		t.Fatalf("Parse(nope) error %v does not wrap ErrUnknown", err)
	}
}

// TestParseAmbiguousIDs uses ids equal to the grammar's literal words, so
// that on-behalf-of forms could be mistaken for device-facing ones.
func TestParseAmbiguousIDs(t *testing.T) {
	words := []string{"twin", "methods", "res", "get", "post", "GET", "POST", "PATCH", "properties", "desired", "reported", "messages", "modules", "inputs", "events"}
	var clients []string
	for _, d := range words {
		clients = append(clients, d)
		for _, m := range words {
			clients = append(clients, d+"/"+m)
		}
	}
	for _, c := range clients {
		d, m, err := ParseClientID(c)
		if err != nil {
			t.Fatal(err)
		}
		for _, want := range []Topic{
			{Kind: KindTwinGet, RID: "1"},
			{Kind: KindTwinReported, RID: "1"},
			{Kind: KindTwinResponse, Status: 200, RID: "1", Version: 2},
			{Kind: KindTwinDesired, Version: 2},
			{Kind: KindMethodRequest, MethodName: "res", RID: "1"},
			{Kind: KindMethodResponse, Status: 200, RID: "1"},
		} {
			want.OnBehalfOf, want.DeviceID, want.ModuleID = c, d, m
			s := want.String()
			got, err := Parse(s)
			if err != nil || !reflect.DeepEqual(got, want) {
				t.Fatalf("Parse(%q) = %+v, %v; want %+v", s, got, err, want)
			}
		}
		for _, want := range []Topic{
			{Kind: KindTelemetry, DeviceID: d, ModuleID: m, Bag: map[string]string{"a": "b"}},
			{Kind: KindC2D, DeviceID: d, Bag: map[string]string{}},
		} {
			if want.Kind == KindC2D && m != "" {
				continue
			}
			s := want.String()
			got, err := Parse(s)
			if err != nil || !reflect.DeepEqual(got, want) {
				t.Fatalf("Parse(%q) = %+v, %v; want %+v", s, got, err, want)
			}
		}
		if m != "" {
			want := Topic{Kind: KindModuleInput, DeviceID: d, ModuleID: m, Input: "inputs", Bag: map[string]string{}}
			s := want.String()
			if got, err := Parse(s); err != nil || !reflect.DeepEqual(got, want) {
				t.Fatalf("Parse(%q) = %+v, %v; want %+v", s, got, err, want)
			}
		}
	}
}

func TestBuilders(t *testing.T) {
	tests := []struct{ got, want string }{
		{Telemetry("d", "", map[string]string{"$.mid": "abc", "$.ct": "application/json", "temp": "hot"}),
			"devices/d/messages/events/%24.ct=application%2Fjson&%24.mid=abc&temp=hot"},
		{Telemetry("d", "m", map[string]string{"$.on": "out1"}), "devices/d/modules/m/messages/events/%24.on=out1"},
		{Telemetry("d", "", nil), "devices/d/messages/events/"},
		{C2D("d", nil), "devices/d/messages/devicebound/"},
		{C2D("d", map[string]string{"$.mid": "1", "a b": "c&d"}), "devices/d/messages/devicebound/%24.mid=1&a%20b=c%26d"},
		{ModuleInput("d", "m", "in1", nil), "devices/d/modules/m/inputs/in1/"},
		{ModuleInput("d", "m", "in1", map[string]string{"$.mid": "1"}), "devices/d/modules/m/inputs/in1/%24.mid=1"},
		{TwinGet("1"), "$iothub/twin/GET/?$rid=1"},
		{TwinReported("2"), "$iothub/twin/PATCH/properties/reported/?$rid=2"},
		{TwinResponse(200, "1", 0), "$iothub/twin/res/200/?$rid=1"},
		{TwinResponse(204, "2", 5), "$iothub/twin/res/204/?$rid=2&$version=5"},
		{TwinDesiredPatch(7), "$iothub/twin/PATCH/properties/desired/?$version=7"},
		{MethodRequest("reboot", "a&b"), "$iothub/methods/POST/reboot/?$rid=a%26b"},
		{MethodResponse(200, "a1"), "$iothub/methods/res/200/?$rid=a1"},
		{OBOTwinGet("e/m", "1"), "$iothub/e/m/twin/get/?$rid=1"},
		{OBOTwinReported("c", "1"), "$iothub/c/twin/reported/?$rid=1"},
		{OBOTwinResponse("c", 204, "1", 3), "$iothub/c/twin/res/204/?$rid=1&$version=3"},
		{OBOTwinDesired("c", 3), "$iothub/c/twin/desired/?$version=3"},
		{OBOMethodRequest("c", "go", "1"), "$iothub/c/methods/post/go/?$rid=1"},
		{OBOMethodResponse("c", 404, "1"), "$iothub/c/methods/res/404/?$rid=1"},
	}
	for _, tt := range tests {
		t.Run(tt.want, func(t *testing.T) {
			if tt.got != tt.want {
				t.Fatalf("built %q, want %q", tt.got, tt.want)
			}
			tp, err := Parse(tt.got)
			if err != nil {
				t.Fatal(err)
			}
			if s := tp.String(); s != tt.want {
				t.Fatalf("Parse then String = %q, want %q", s, tt.want)
			}
		})
	}
}

func TestKindFromDevice(t *testing.T) {
	for k := KindUnknown; k <= KindMethodResponse; k++ {
		want := k == KindTelemetry || k == KindTwinGet || k == KindTwinReported || k == KindMethodResponse
		if k.FromDevice() != want {
			t.Errorf("%v.FromDevice() = %v", k, !want)
		}
		if k.String() == "" || strings.HasPrefix(k.String(), "kind(") {
			t.Errorf("Kind %d has no name", int(k))
		}
	}
}

func TestDecodeBag(t *testing.T) {
	tests := []struct {
		in   string
		want map[string]string
	}{
		{"", map[string]string{}},
		{"a=1&b=2", map[string]string{"a": "1", "b": "2"}},
		{"%24.mid=x&%24.cid=y", map[string]string{"$.mid": "x", "$.cid": "y"}},
		{"flag&a=", map[string]string{"flag": "", "a": ""}},
		{"a=b=c", map[string]string{"a": "b=c"}},
		{"a=1&&b=2&", map[string]string{"a": "1", "b": "2"}},
		{"a=1&a=2", map[string]string{"a": "2"}},
		{"=v&x=y", map[string]string{"x": "y"}},
		{"k=a+b%2Bc%20d", map[string]string{"k": "a b+c d"}},
		{"%C3%A9=%E2%82%AC", map[string]string{"é": "€"}},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := DecodeBag(tt.in)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("DecodeBag = %v, want %v", got, tt.want)
			}
		})
	}
	for _, bad := range []string{"a=%zz", "%2=1", "a=%"} {
		if _, err := DecodeBag(bad); err == nil {
			t.Errorf("DecodeBag(%q): no error", bad)
		}
	}
}

func TestEncodeBag(t *testing.T) {
	m := map[string]string{"z": "1", "$.mid": "m 1", "a": "x/y!", "$.ct": "application/json"}
	want := "%24.ct=application%2Fjson&%24.mid=m%201&a=x%2Fy%21&z=1"
	for range 5 { // map order varies between calls
		if got := EncodeBag(m); got != want {
			t.Fatalf("EncodeBag = %q, want %q", got, want)
		}
	}
	back, err := DecodeBag(want)
	if err != nil || !reflect.DeepEqual(back, m) {
		t.Fatalf("DecodeBag(EncodeBag) = %v, %v", back, err)
	}
	if EncodeBag(nil) != "" {
		t.Fatal("EncodeBag(nil) not empty")
	}
}

func TestToMessage(t *testing.T) {
	bag := map[string]string{
		"$.mid": "m1", "$.cid": "c1", "$.ct": "application/json", "$.ce": "utf-8", "$.on": "out1",
		"$.uid": "u", "$.to": "/x", "$.exp": "2030-01-01T00:00:00Z",
		"$.cdid": "spoofed", "$.cmid": "spoofed", "$.ifid": "iface",
		"temp": "hot", "$notsystem": "kept",
	}
	msg := message.Message{DeviceID: "d"}
	ToMessage(bag, &msg)
	wantSys := message.System{MessageID: "m1", CorrelationID: "c1", ContentType: "application/json", ContentEncoding: "utf-8",
		OutputName: "out1", UserID: "u", To: "/x", Expiry: "2030-01-01T00:00:00Z"}
	if msg.System != wantSys {
		t.Fatalf("System = %+v\nwant %+v", msg.System, wantSys)
	}
	wantProps := map[string]string{"temp": "hot", "$notsystem": "kept"}
	if !reflect.DeepEqual(msg.Properties, wantProps) {
		t.Fatalf("Properties = %v, want %v", msg.Properties, wantProps)
	}
}

func TestServerToMessageKeepsConnectionIDs(t *testing.T) {
	bag := map[string]string{"$.mid": "m1", "$.cdid": "child1", "$.cmid": "filter", "temp": "hot"}
	var msg message.Message
	ServerToMessage(bag, &msg)
	if msg.System.ConnDeviceID != "child1" || msg.System.ConnModuleID != "filter" || msg.System.MessageID != "m1" || msg.Properties["temp"] != "hot" {
		t.Fatalf("ServerToMessage = %+v", msg)
	}
	if _, ok := msg.Properties["$.cdid"]; ok {
		t.Fatal("connection id leaked into the application properties")
	}
}

func TestFromMessage(t *testing.T) {
	msg := message.Message{
		Properties: map[string]string{"a": "1", "$.mid": "app"},
		System: message.System{MessageID: "m1", CorrelationID: "c1", ContentType: "ct", ContentEncoding: "ce",
			ConnDeviceID: "d", ConnModuleID: "m", OutputName: "o", InputName: "ignored"},
	}
	want := map[string]string{"a": "1", "$.mid": "m1", "$.cid": "c1", "$.ct": "ct", "$.ce": "ce", "$.cdid": "d", "$.cmid": "m", "$.on": "o"}
	if got := FromMessage(&msg); !reflect.DeepEqual(got, want) {
		t.Fatalf("FromMessage = %v, want %v", got, want)
	}
	// A C2D topic built from a message decodes back to the same bag.
	tp, err := Parse(C2D("d", FromMessage(&msg)))
	if err != nil || !reflect.DeepEqual(tp.Bag, want) {
		t.Fatalf("C2D round trip: %v, %v", tp.Bag, err)
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"devices/dev1/messages/events/%24.mid=abc&%24.ct=application%2Fjson&temp=hot",
		"devices/d/modules/m/messages/events/%24.on=out1/",
		"devices/d/messages/devicebound/",
		"devices/d/modules/m/inputs/in1/%24.mid=1",
		"$iothub/twin/GET/?$rid=1",
		"$iothub/twin/PATCH/properties/reported/?$rid=2",
		"$iothub/twin/res/204/?$rid=2&$version=7",
		"$iothub/twin/PATCH/properties/desired/?$version=9",
		"$iothub/methods/POST/reboot/?$rid=a1",
		"$iothub/methods/res/500/?$rid=a1",
		"$iothub/e/m/twin/get/?$rid=5",
		"$iothub/twin/twin/res/200/?$rid=1",
		"$iothub/c/methods/post/go/?$rid=7",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		tp, err := Parse(s)
		if err != nil {
			return
		}
		again, err := Parse(tp.String())
		if err != nil {
			t.Fatalf("Parse(%q) = %+v; re-parse of %q: %v", s, tp, tp.String(), err)
		}
		if !reflect.DeepEqual(again, tp) {
			t.Fatalf("re-parse differs:\n%+v\n%+v", again, tp)
		}
	})
}

func FuzzDecodeBag(f *testing.F) {
	for _, s := range []string{"", "a=1&b=2", "%24.mid=x", "flag&&=v", "a=%zz", "k=a+b%2B"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		m, err := DecodeBag(s)
		if err != nil {
			return
		}
		back, err := DecodeBag(EncodeBag(m))
		if err != nil {
			t.Fatalf("DecodeBag(EncodeBag(%v)): %v", m, err)
		}
		if !reflect.DeepEqual(back, m) {
			t.Fatalf("bag round trip: %v vs %v", back, m)
		}
	})
}

func BenchmarkParseTelemetry(b *testing.B) {
	const s = "devices/dev1/messages/events/%24.mid=abc&%24.ct=application%2Fjson&temp=hot"
	for b.Loop() {
		if _, err := Parse(s); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkParseOBOTwin(b *testing.B) {
	const s = "$iothub/e/m/twin/res/204/?$rid=6&$version=4"
	for b.Loop() {
		if _, err := Parse(s); err != nil {
			b.Fatal(err)
		}
	}
}
