package topic

import (
	"reflect"
	"strings"
	"testing"
)

func TestAllowedSubscription(t *testing.T) {
	tests := []struct {
		filter, d, m string
		want         bool
	}{
		{"devices/dev1/messages/devicebound/#", "dev1", "", true},
		{"$iothub/methods/POST/#", "dev1", "", true},
		{"$iothub/twin/res/#", "dev1", "", true},
		{"$iothub/twin/PATCH/properties/desired/#", "dev1", "", true},
		{"$iothub/methods/POST/#", "d", "m", true},
		{"$iothub/twin/res/#", "d", "m", true},
		{"$iothub/twin/PATCH/properties/desired/#", "d", "m", true},
		{"devices/d/modules/m/inputs/#", "d", "m", true},
		{"devices/d/modules/m/#", "d", "m", true},

		{"devices/dev2/messages/devicebound/#", "dev1", "", false},
		{"devices/Dev1/messages/devicebound/#", "dev1", "", false},
		{"devices/+/messages/devicebound/#", "dev1", "", false},
		{"devices/dev1/messages/devicebound/+", "dev1", "", false},
		{"devices/dev1/#", "dev1", "", false},
		{"devices/d/messages/devicebound/#", "d", "m", false},
		{"devices/d/modules/m/inputs/#", "d", "", false},
		{"devices/d/modules/m2/inputs/#", "d", "m", false},
		{"devices/d2/modules/m/inputs/#", "d", "m", false},
		{"devices/d/modules/+/inputs/#", "d", "m", false},
		{"devices/d/modules/m/inputs/in1", "d", "m", false},
		{"#", "d", "", false},
		{"$iothub/#", "d", "", false},
		{"$iothub/+/twin/res/#", "d", "", false},
		{"$iothub/d/twin/res/#", "d", "", false},
		{"$iothub/methods/POST/reboot", "d", "", false},
		{"$iothub/twin/PATCH/properties/reported/#", "d", "", false},
		{"devices/d/messages/events/#", "d", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.filter+"@"+tt.d+"/"+tt.m, func(t *testing.T) {
			if got := AllowedSubscription(tt.filter, tt.d, tt.m); got != tt.want {
				t.Fatalf("AllowedSubscription = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestFiltersAllowed(t *testing.T) {
	for _, id := range [][2]string{{"dev1", ""}, {"e1", "$edgeHub"}} {
		fs := Filters(id[0], id[1])
		if len(fs) < 4 {
			t.Fatalf("Filters(%v) = %v", id, fs)
		}
		for _, f := range fs {
			if !AllowedSubscription(f, id[0], id[1]) {
				t.Errorf("Filters(%v) lists %q but AllowedSubscription refuses it", id, f)
			}
		}
	}
}

func TestParseFilterOBO(t *testing.T) {
	tests := []struct {
		in   string
		want Topic
	}{
		{OBOTwinResponseFilter("c1"), Topic{Kind: KindTwinResponse, DeviceID: "c1", OnBehalfOf: "c1"}},
		{OBOTwinDesiredFilter("e/m"), Topic{Kind: KindTwinDesired, DeviceID: "e", ModuleID: "m", OnBehalfOf: "e/m"}},
		{OBOMethodFilter("twin"), Topic{Kind: KindMethodRequest, DeviceID: "twin", OnBehalfOf: "twin"}},
		{C2DFilter("c1"), Topic{Kind: KindC2D, DeviceID: "c1"}},
		{ModuleInputFilter("e", "m"), Topic{Kind: KindModuleInput, DeviceID: "e", ModuleID: "m"}},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseFilter(tt.in)
			if err != nil || !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("ParseFilter = %+v, %v; want %+v", got, err, tt.want)
			}
		})
	}
	for _, bad := range []string{"$iothub/+/twin/res/#", "$iothub/a/b/c/twin/res/#", "$iothub//twin/res/#", "$iothub/c/twin/res/+"} {
		if _, err := ParseFilter(bad); err == nil {
			t.Errorf("ParseFilter(%q): no error", bad)
		}
	}
}

func FuzzParseFilter(f *testing.F) {
	for _, s := range []string{FilterMethods, C2DFilter("d"), ModuleInputFilter("d", "m"), OBOMethodFilter("e/m"), "$iothub/+/twin/res/#"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		tp, err := ParseFilter(s)
		if err != nil {
			return
		}
		if tp.Kind == KindUnknown {
			t.Fatalf("ParseFilter(%q) gave no kind", s)
		}
		if tp.OnBehalfOf != "" && tp.ClientID() != tp.OnBehalfOf {
			t.Fatalf("ParseFilter(%q): OnBehalfOf %q but ids %q", s, tp.OnBehalfOf, tp.ClientID())
		}
	})
}

func TestMatch(t *testing.T) {
	tests := []struct {
		filter, name string
		want         bool
	}{
		{"$iothub/twin/res/#", "$iothub/twin/res/200/?$rid=1", true},
		{"$iothub/twin/res/#", "$iothub/twin/res", true},
		{"$iothub/twin/res/#", "$iothub/twin/PATCH/properties/desired/?$version=1", false},
		{"$iothub/methods/POST/#", "$iothub/methods/POST/reboot/?$rid=1", true},
		{"$iothub/e/twin/res/#", "$iothub/e/twin/res/200/?$rid=1", true},
		{"$outpost/res/#", "$outpost/res/200/?$rid=7", true},
		{"devices/d/messages/devicebound/#", "devices/d/messages/devicebound/", true},
		{"devices/d/messages/devicebound/#", "devices/d/messages/devicebound/a=b", true},
		{"devices/d/messages/devicebound/#", "devices/e/messages/devicebound/", false},
		{"devices/+/messages/devicebound/#", "devices/e/messages/devicebound/x", true},
		{"devices/d/modules/m/#", "devices/d/modules/m/inputs/in1/", true},
		{"a/+", "a/b", true},
		{"a/+", "a/b/c", false},
		{"a/+", "a", false},
		{"a/b", "a/b", true},
		{"a/b", "a/c", false},
		{"a/b", "a/b/", false},
		{"a/b/", "a/b/", true},
		{"a/b/c", "a/b", false},
		{"a/#", "a", true},
		{"a/#", "a/b/c", true},
		{"+/b/#", "x/b/", true},
		{"#", "a/b", true},
		{"#", "", false},
		// A name with wildcards is invalid and matches nothing, not even
		// the identical filter.
		{"$iothub/methods/POST/#", "$iothub/methods/POST/#", false},
		{"$iothub/twin/res/#", "$iothub/twin/res/#", false},
		{"$iothub/twin/PATCH/properties/desired/#", "$iothub/twin/PATCH/properties/desired/#", false},
		{"devices/d/messages/devicebound/#", "devices/d/messages/devicebound/#", false},
		{"devices/+/messages/devicebound/#", "devices/+/messages/devicebound/x", false},
		{"#", "a/+", false},
		{"a/+", "a/+", false},
		{"a/b+", "a/b+", false},
		{"a/#", "a/b#", false},
		{"#", "a/\x00", false},
		{"#", "$SYS/x", false},
		{"+/x", "$iothub/x", false},
		{"a/#/b", "a/x/b", false},
		{"#/b", "a/b", false},
	}
	for _, tt := range tests {
		t.Run(tt.filter+" "+tt.name, func(t *testing.T) {
			if got := Match(tt.filter, tt.name); got != tt.want {
				t.Fatalf("Match(%q, %q) = %v, want %v", tt.filter, tt.name, got, tt.want)
			}
		})
	}
}

func FuzzMatch(f *testing.F) {
	f.Add("a/+/#", "a/b/c")
	f.Add("$iothub/twin/res/#", "$iothub/twin/res/200/?$rid=1")
	f.Add("#", "")
	f.Add("$iothub/methods/POST/#", "$iothub/methods/POST/#")
	f.Fuzz(func(t *testing.T, filter, name string) {
		got := Match(filter, name)
		if got && !ValidTopicName(name) {
			t.Fatalf("filter %q matched invalid name %q", filter, name)
		}
		if !strings.ContainsAny(filter, "+#") && got != (filter == name && ValidTopicName(name)) {
			t.Fatalf("literal filter %q vs %q: %v", filter, name, got)
		}
		if ValidTopicName(name) && !Match(name, name) {
			t.Fatalf("name %q does not match itself", name)
		}
		if got && filter == name+"/x" {
			t.Fatalf("%q matched %q", filter, name)
		}
	})
}

func TestValidTopicNameLength(t *testing.T) {
	longest := "devices/d/messages/events/" + strings.Repeat("x", MaxNameLen-len("devices/d/messages/events/"))
	if !ValidTopicName(longest) || !Match("devices/d/messages/events/#", longest) {
		t.Errorf("a %d-byte name refused", len(longest))
	}
	if ValidTopicName(longest+"x") || Match("devices/d/messages/events/#", longest+"x") {
		t.Errorf("a %d-byte name accepted: its length does not fit a packet", len(longest)+1)
	}
}
