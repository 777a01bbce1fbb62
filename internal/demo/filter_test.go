package demo

import (
	"testing"

	"outpost/internal/message"
	"outpost/internal/route"
)

func TestRoutesParse(t *testing.T) {
	tbl, err := route.ParseRoutes(Routes("a", "b"))
	if err != nil {
		t.Fatalf("routes: %v", err)
	}
	msg := func(dev, mod, output, kind string) *message.Message {
		return &message.Message{
			DeviceID:   dev,
			ModuleID:   mod,
			Properties: map[string]string{PropKind: kind},
			System:     message.System{ConnDeviceID: dev, ConnModuleID: mod, OutputName: output},
		}
	}
	tests := []struct {
		name string
		msg  *message.Message
		want []string // route names that match
	}{
		{"telemetry goes upstream", msg("a", "", "", KindTelemetry), []string{"telemetry"}},
		{"alert of the source goes to the filter", msg("a", "", "", KindAlert), []string{"alerts"}},
		{"alert of another device goes nowhere", msg("b", "", "", KindAlert), nil},
		{"filter output goes to the target", msg("edge", FilterModule, FilterOutput, KindFiltered), []string{"filtered"}},
		{"filter output never loops back to the filter", msg("edge", FilterModule, FilterOutput, KindAlert), []string{"filtered"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var got []string
			for _, r := range tbl.Match(tc.msg) {
				got = append(got, r.Name)
			}
			if len(got) != len(tc.want) {
				t.Fatalf("matched %v, want %v", got, tc.want)
			}
			for i := range got {
				if got[i] != tc.want[i] {
					t.Fatalf("matched %v, want %v", got, tc.want)
				}
			}
		})
	}
}

func TestFilterAlert(t *testing.T) {
	tests := []struct {
		name string
		body string
		pass bool
	}{
		{"above", `{"temperature":35}`, true},
		{"at threshold", `{"temperature":30}`, false},
		{"below", `{"temperature":12.5}`, false},
		{"no temperature", `{"humidity":80}`, false},
		{"not json", `hot!`, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			in := &message.Message{DeviceID: "a", Body: []byte(tc.body), System: message.System{MessageID: "m1", ConnDeviceID: "a"}}
			out, ok := filterAlert(in, 30)
			if ok != tc.pass {
				t.Fatalf("passed = %v, want %v", ok, tc.pass)
			}
			if !ok {
				return
			}
			if out.Properties[PropKind] != KindFiltered || out.Properties[PropFrom] != "a" {
				t.Errorf("properties %v", out.Properties)
			}
			if out.System.CorrelationID != "m1" || string(out.Body) != tc.body {
				t.Errorf("forwarded %+v", out)
			}
		})
	}
}
