package route

import (
	"strings"

	"outpost/internal/message"
)

// SourceKind says which messages a route's FROM selects.
type SourceKind int

const (
	// AllMessages is /*: every message type, today only telemetry.
	AllMessages SourceKind = iota + 1
	// Messages is /messages/*: telemetry and outputs of devices and modules.
	Messages
	// AnyModule is /messages/modules/*.
	AnyModule
	// Module is /messages/modules/{m}/*.
	Module
	// ModuleOutputs is /messages/modules/{m}/outputs/*.
	ModuleOutputs
	// ModuleOutput is /messages/modules/{m}/outputs/{o}.
	ModuleOutput
)

// Source is a route's FROM clause.
type Source struct {
	Kind   SourceKind
	Module string // for Module, ModuleOutputs, ModuleOutput
	Output string // for ModuleOutput
}

func (s Source) String() string {
	switch s.Kind {
	case AllMessages:
		return "/*"
	case Messages:
		return "/messages/*"
	case AnyModule:
		return "/messages/modules/*"
	case Module:
		return "/messages/modules/" + s.Module + "/*"
	case ModuleOutputs:
		return "/messages/modules/" + s.Module + "/outputs/*"
	case ModuleOutput:
		return "/messages/modules/" + s.Module + "/outputs/" + s.Output
	}
	return ""
}

// Match reports whether msg comes from the source. The sending module is
// msg.ModuleID, or the stamped $connectionModuleId when that is empty;
// the output is $outputName.
func (s Source) Match(msg *message.Message) bool {
	mod := msg.ModuleID
	if mod == "" {
		mod = msg.System.ConnModuleID
	}
	out := msg.System.OutputName
	switch s.Kind {
	case AllMessages, Messages:
		return true
	case AnyModule:
		return mod != ""
	case Module:
		return mod != "" && mod == s.Module
	case ModuleOutputs:
		return mod != "" && mod == s.Module && out != ""
	case ModuleOutput:
		return mod != "" && mod == s.Module && out != "" && out == s.Output
	}
	return false
}

const sourceForms = "/*, /messages/*, /messages/modules/*, /messages/modules/{m}/*, " +
	"/messages/modules/{m}/outputs/* or /messages/modules/{m}/outputs/{o}"

// parseSource reads a FROM path.
func parseSource(p string) (Source, bool) {
	switch p {
	case "/*":
		return Source{Kind: AllMessages}, true
	case "/messages/*":
		return Source{Kind: Messages}, true
	case "/messages/modules/*":
		return Source{Kind: AnyModule}, true
	}
	rest, ok := strings.CutPrefix(p, "/messages/modules/")
	if !ok {
		return Source{}, false
	}
	parts := strings.Split(rest, "/")
	if !validName(parts[0]) {
		return Source{}, false
	}
	switch {
	case len(parts) == 2 && parts[1] == "*":
		return Source{Kind: Module, Module: parts[0]}, true
	case len(parts) == 3 && parts[1] == "outputs" && parts[2] == "*":
		return Source{Kind: ModuleOutputs, Module: parts[0]}, true
	case len(parts) == 3 && parts[1] == "outputs" && validName(parts[2]):
		return Source{Kind: ModuleOutput, Module: parts[0], Output: parts[2]}, true
	}
	return Source{}, false
}

// validName accepts a device, module, input or output name: IoT Hub's
// ids allow many punctuation characters (even * and ?), so refuse only
// what would break the route or endpoint syntax.
func validName(s string) bool {
	if s == "" || s == "*" {
		return false
	}
	for _, r := range s {
		if r <= ' ' || r == 0x7f || strings.ContainsRune(`/\"'`, r) {
			return false
		}
	}
	return true
}

// SinkKind says where a route delivers.
type SinkKind int

const (
	// Upstream is $upstream: the parent hub.
	Upstream SinkKind = iota + 1
	// ModuleInput is BrokeredEndpoint("/modules/{m}/inputs/{i}").
	ModuleInput
	// DeviceBound is BrokeredEndpoint("/devices/{d}/messages/devicebound"),
	// an Outpost extension: a local C2D message to a child device.
	DeviceBound
)

// Sink is a route's INTO clause.
type Sink struct {
	Kind   SinkKind
	Module string // ModuleInput
	Input  string // ModuleInput
	Device string // DeviceBound
}

// String is the sink's canonical endpoint name, stable enough to key a
// store queue: $upstream, /modules/{m}/inputs/{i} or
// /devices/{d}/messages/devicebound. ParseSink reads it back.
func (s Sink) String() string {
	switch s.Kind {
	case Upstream:
		return "$upstream"
	case ModuleInput:
		return "/modules/" + s.Module + "/inputs/" + s.Input
	case DeviceBound:
		return "/devices/" + s.Device + "/messages/devicebound"
	}
	return ""
}

// Expr is the sink as a route writes it: $upstream or
// BrokeredEndpoint("…").
func (s Sink) Expr() string {
	if s.Kind == Upstream {
		return "$upstream"
	}
	return `BrokeredEndpoint("` + s.String() + `")`
}

// ParseSink reads an endpoint name as Sink.String writes it.
func ParseSink(name string) (Sink, bool) {
	if name == "$upstream" {
		return Sink{Kind: Upstream}, true
	}
	return parseEndpoint(name)
}

func parseEndpoint(p string) (Sink, bool) {
	parts := strings.Split(p, "/")
	switch {
	case len(parts) == 5 && parts[0] == "" && parts[1] == "modules" && parts[3] == "inputs" &&
		validName(parts[2]) && validName(parts[4]):
		return Sink{Kind: ModuleInput, Module: parts[2], Input: parts[4]}, true
	case len(parts) == 5 && parts[0] == "" && parts[1] == "devices" && parts[3] == "messages" &&
		parts[4] == "devicebound" && validName(parts[2]):
		return Sink{Kind: DeviceBound, Device: parts[2]}, true
	}
	return Sink{}, false
}
