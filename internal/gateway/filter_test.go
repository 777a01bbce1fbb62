package gateway

import (
	"strings"
	"testing"
)

func TestMatchFilter(t *testing.T) {
	tests := []struct {
		filter, topic string
		want          bool
	}{
		{"$iothub/twin/res/#", "$iothub/twin/res/200/?$rid=1", true},
		{"$iothub/twin/res/#", "$iothub/twin/res", true},
		{"$iothub/twin/res/#", "$iothub/twin/PATCH/properties/desired/?$version=1", false},
		{"$iothub/methods/POST/#", "$iothub/methods/POST/reboot/?$rid=1", true},
		{"devices/d/messages/devicebound/#", "devices/d/messages/devicebound/", true},
		{"devices/d/messages/devicebound/#", "devices/d/messages/devicebound/a=b", true},
		{"devices/d/messages/devicebound/#", "devices/e/messages/devicebound/", false},
		{"devices/+/messages/devicebound/#", "devices/e/messages/devicebound/x", true},
		{"devices/d/modules/m/#", "devices/d/modules/m/inputs/in1/", true},
		{"a/+", "a/b", true},
		{"a/+", "a/b/c", false},
		{"a/+", "a", false},
		{"a/b", "a/b", true},
		{"a/b", "a/b/", false},
		{"a/b/", "a/b/", true},
		{"#", "a/b", true},
		{"#", "$SYS/x", false},
		{"+/x", "$iothub/x", false},
		{"$outpost/res/#", "$outpost/res/200/?$rid=7", true},
	}
	for _, tt := range tests {
		t.Run(tt.filter+" "+tt.topic, func(t *testing.T) {
			if got := matchFilter(tt.filter, tt.topic); got != tt.want {
				t.Fatalf("matchFilter(%q, %q) = %v, want %v", tt.filter, tt.topic, got, tt.want)
			}
		})
	}
}

func FuzzMatchFilter(f *testing.F) {
	f.Add("a/+/c", "a/b/c")
	f.Add("$iothub/twin/res/#", "$iothub/twin/res/200/?$rid=1")
	f.Add("#", "")
	f.Fuzz(func(t *testing.T, filter, topicName string) {
		got := matchFilter(filter, topicName)
		if !strings.ContainsAny(filter, "+#") && got != (filter == topicName) {
			t.Fatalf("literal filter %q vs %q: %v", filter, topicName, got)
		}
		if !strings.ContainsAny(topicName, "+#") && !matchFilter(topicName, topicName) {
			t.Fatalf("topic %q does not match itself", topicName)
		}
	})
}
