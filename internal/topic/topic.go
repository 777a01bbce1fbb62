// Package topic is the Azure IoT Hub MQTT topic grammar: the topics
// devices and modules publish and receive, the on-behalf-of forms an edge
// uses on its link to its parent, the subscription filters, and the
// property-bag codec. PROTOCOL.md is the reference.
//
// Parsing is strict about structure (every literal segment, ids from
// Azure's character set, numeric statuses and versions) and lenient about
// what SDKs vary in (a missing or extra trailing '/', unknown query
// parameters), because the same parser guards the broker's ACL.
package topic

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"outpost/internal/message"
)

// Kind says what a topic carries.
type Kind int

// Topic kinds. Twin and method kinds cover both the device-facing and the
// on-behalf-of forms; Topic.OnBehalfOf tells them apart.
const (
	KindUnknown        Kind = iota
	KindTelemetry           // devices/{d}[/modules/{m}]/messages/events/{bag}
	KindC2D                 // devices/{d}/messages/devicebound/{bag}
	KindModuleInput         // devices/{d}/modules/{m}/inputs/{input}/{bag}
	KindTwinGet             // $iothub/twin/GET/?$rid=
	KindTwinReported        // $iothub/twin/PATCH/properties/reported/?$rid=
	KindTwinResponse        // $iothub/twin/res/{status}/?$rid=[&$version=]
	KindTwinDesired         // $iothub/twin/PATCH/properties/desired/?$version=
	KindMethodRequest       // $iothub/methods/POST/{name}/?$rid=
	KindMethodResponse      // $iothub/methods/res/{status}/?$rid=
)

var kindNames = [...]string{"unknown", "telemetry", "c2d", "module-input", "twin-get", "twin-reported",
	"twin-response", "twin-desired", "method-request", "method-response"}

func (k Kind) String() string {
	if k < 0 || int(k) >= len(kindNames) {
		return "kind(" + strconv.Itoa(int(k)) + ")"
	}
	return kindNames[k]
}

// FromDevice reports whether clients publish topics of this kind (the
// others are published by the server).
func (k Kind) FromDevice() bool {
	switch k {
	case KindTelemetry, KindTwinGet, KindTwinReported, KindMethodResponse:
		return true
	}
	return false
}

// Topic is a parsed topic.
type Topic struct {
	Kind Kind
	// DeviceID and ModuleID are the identity the topic concerns: from the
	// topic path for message kinds, from OnBehalfOf for on-behalf-of
	// forms, empty for the device-facing twin and method forms (those
	// concern the connected client).
	DeviceID, ModuleID string
	// Output is the module output ($.on) of a telemetry topic; Input the
	// input name of a module-input topic.
	Output, Input string
	MethodName    string
	RID           string // $rid
	Status        int    // twin and method responses
	Version       int64  // $version; 0 when absent
	// Bag is the decoded property bag of message kinds; nil otherwise.
	Bag map[string]string
	// OnBehalfOf is the clientId (device or device/module) of an
	// $iothub/{clientId}/… form; empty for device-facing forms.
	OnBehalfOf string
}

// ClientID returns deviceId or deviceId/moduleId for the topic's identity.
func (t Topic) ClientID() string { return message.ClientID(t.DeviceID, t.ModuleID) }

// ErrUnknown is wrapped by Parse and ParseFilter for text that is no
// topic or filter of the grammar, so a broker can refuse it plainly.
var ErrUnknown = errors.New("unknown topic")

// maxIDLen is Azure's limit for device and module ids.
const maxIDLen = 128

// ValidID reports whether s is a device or module id Azure accepts: 1 to
// 128 ASCII letters, digits and - . % _ * ? ! ( ) , : = @ $ ', and
// neither "." nor ".." (see identity.ValidateDeviceID).
func ValidID(s string) bool {
	if s == "" || len(s) > maxIDLen || s == "." || s == ".." {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' {
			continue
		}
		if !strings.ContainsRune("-.%_*?!(),:=@$'", rune(c)) {
			return false
		}
	}
	return true
}

// ValidName checks names that sit in one topic segment (method, input and
// output names): non-empty, and free of the characters that would change
// the topic's structure or act as MQTT wildcards.
func ValidName(s string) bool {
	return s != "" && !strings.ContainsAny(s, "/?#+\x00")
}

// ParseClientID splits "device" or "device/module" and checks both ids.
func ParseClientID(c string) (deviceID, moduleID string, err error) {
	d, m, hasModule := strings.Cut(c, "/")
	if !ValidID(d) || hasModule && !ValidID(m) {
		return "", "", fmt.Errorf("bad client id %q", clip(c))
	}
	return d, m, nil
}

func clip(s string) string {
	if len(s) > 80 {
		return s[:80] + "…"
	}
	return s
}

func unknown(t string) error { return fmt.Errorf("%w %q", ErrUnknown, clip(t)) }

// Parse parses any topic of the grammar: the ones devices, modules and
// edges publish, and the ones the server publishes to them (which the Go
// client and the edge's upstream link receive).
func Parse(t string) (Topic, error) {
	switch {
	case strings.HasPrefix(t, "devices/"):
		return parseDevices(t)
	case strings.HasPrefix(t, "$iothub/"):
		return parseIoTHub(t)
	}
	return Topic{}, unknown(t)
}

// parseDevices parses the message topics. The bag is everything after the
// fixed part, less one trailing '/' (modules send "…/%24.on=out1/").
func parseDevices(t string) (Topic, error) {
	rest := t[len("devices/"):]
	d, rest, ok := strings.Cut(rest, "/")
	if !ok || !ValidID(d) {
		return Topic{}, unknown(t)
	}
	tp := Topic{DeviceID: d}
	var bag string
	if r, ok := cutSegments(rest, "messages", "events"); ok {
		tp.Kind, bag = KindTelemetry, r
	} else if r, ok := cutSegments(rest, "messages", "devicebound"); ok {
		tp.Kind, bag = KindC2D, r
	} else if r, ok := strings.CutPrefix(rest, "modules/"); ok {
		m, r, _ := strings.Cut(r, "/")
		if !ValidID(m) {
			return Topic{}, unknown(t)
		}
		tp.ModuleID = m
		if r2, ok := cutSegments(r, "messages", "events"); ok {
			tp.Kind, bag = KindTelemetry, r2
		} else if r2, ok := strings.CutPrefix(r, "inputs/"); ok {
			in, r3, _ := strings.Cut(r2, "/")
			if !ValidName(in) {
				return Topic{}, unknown(t)
			}
			tp.Kind, tp.Input, bag = KindModuleInput, in, r3
		} else {
			return Topic{}, unknown(t)
		}
	} else {
		return Topic{}, unknown(t)
	}
	b, err := DecodeBag(strings.TrimSuffix(bag, "/"))
	if err != nil {
		return Topic{}, fmt.Errorf("topic %q: %w", clip(t), err)
	}
	tp.Bag = b
	if tp.Kind == KindTelemetry {
		tp.Output = b[message.KeyOutputName]
	}
	return tp, nil
}

// cutSegments matches "a/b" or "a/b/…" at the start of s and returns what
// follows the "a/b/", or "" when s is exactly "a/b".
func cutSegments(s, a, b string) (string, bool) {
	p := a + "/" + b
	if s == p {
		return "", true
	}
	return strings.CutPrefix(s, p+"/")
}

// twinPattern is one $iothub form, as the path segments after "$iothub/"
// (the path always ends in '/', hence the final ""). "{c}" stands for the
// on-behalf-of clientId, one or two segments; "{s}" for a status; "{n}"
// for a method name.
type twinPattern struct {
	kind Kind
	segs []string
}

// The literals make these forms disjoint even when ids equal literal
// words ("twin", "methods", "res"); TestParseAmbiguousIDs checks it.
var iothubPatterns = []twinPattern{
	{KindTwinGet, []string{"twin", "GET", ""}},
	{KindTwinReported, []string{"twin", "PATCH", "properties", "reported", ""}},
	{KindTwinDesired, []string{"twin", "PATCH", "properties", "desired", ""}},
	{KindTwinResponse, []string{"twin", "res", "{s}", ""}},
	{KindMethodRequest, []string{"methods", "POST", "{n}", ""}},
	{KindMethodResponse, []string{"methods", "res", "{s}", ""}},
	{KindTwinGet, []string{"{c}", "twin", "get", ""}},
	{KindTwinReported, []string{"{c}", "twin", "reported", ""}},
	{KindTwinDesired, []string{"{c}", "twin", "desired", ""}},
	{KindTwinResponse, []string{"{c}", "twin", "res", "{s}", ""}},
	{KindMethodRequest, []string{"{c}", "methods", "post", "{n}", ""}},
	{KindMethodResponse, []string{"{c}", "methods", "res", "{s}", ""}},
}

func parseIoTHub(t string) (Topic, error) {
	path, query, ok := strings.Cut(t[len("$iothub/"):], "?")
	if !ok {
		return Topic{}, unknown(t)
	}
	segs := strings.Split(path, "/")
	for _, p := range iothubPatterns {
		tp, ok := p.match(segs)
		if !ok {
			continue
		}
		if err := tp.parseQuery(query); err != nil {
			return Topic{}, fmt.Errorf("topic %q: %w", clip(t), err)
		}
		return tp, nil
	}
	return Topic{}, unknown(t)
}

func (p twinPattern) match(segs []string) (Topic, bool) {
	tp := Topic{Kind: p.kind}
	ps := p.segs
	if ps[0] == "{c}" {
		// The clientId takes one segment or two; the rest must fit exactly.
		extra := len(segs) - len(ps)
		if extra != 0 && extra != 1 {
			return Topic{}, false
		}
		c := strings.Join(segs[:1+extra], "/")
		d, m, err := ParseClientID(c)
		if err != nil {
			return Topic{}, false
		}
		tp.OnBehalfOf, tp.DeviceID, tp.ModuleID = c, d, m
		segs, ps = segs[1+extra:], ps[1:]
	}
	if len(segs) != len(ps) {
		return Topic{}, false
	}
	for i, want := range ps {
		got := segs[i]
		switch want {
		case "{s}":
			n, err := strconv.Atoi(got)
			if err != nil || n < -1<<31 || n > 1<<31-1 {
				return Topic{}, false
			}
			tp.Status = n
		case "{n}":
			if !ValidName(got) {
				return Topic{}, false
			}
			tp.MethodName = got
		default:
			if got != want {
				return Topic{}, false
			}
		}
	}
	return tp, true
}

// parseQuery reads $rid and $version and checks the kind has what it
// needs. Other parameters are ignored, as Azure ignores them.
func (tp *Topic) parseQuery(q string) error {
	bag, err := DecodeBag(q)
	if err != nil {
		return err
	}
	tp.RID = bag["$rid"]
	if v, ok := bag["$version"]; ok {
		if tp.Version, err = strconv.ParseInt(v, 10, 64); err != nil {
			return fmt.Errorf("bad $version %q", clip(v))
		}
	}
	switch tp.Kind {
	case KindTwinDesired:
		if _, ok := bag["$version"]; !ok {
			return errors.New("missing $version")
		}
	default:
		if tp.RID == "" {
			return errors.New("missing $rid")
		}
	}
	return nil
}

// String renders the topic; Parse(t.String()) gives t back for any t that
// Parse returned.
func (t Topic) String() string {
	switch t.Kind {
	case KindTelemetry:
		bag := t.Bag
		if t.Output != "" && bag[message.KeyOutputName] != t.Output {
			bag = make(map[string]string, len(t.Bag)+1)
			for k, v := range t.Bag {
				bag[k] = v
			}
			bag[message.KeyOutputName] = t.Output
		}
		return Telemetry(t.DeviceID, t.ModuleID, bag)
	case KindC2D:
		return C2D(t.DeviceID, t.Bag)
	case KindModuleInput:
		return ModuleInput(t.DeviceID, t.ModuleID, t.Input, t.Bag)
	}
	obo := t.OnBehalfOf
	switch t.Kind {
	case KindTwinGet:
		if obo != "" {
			return OBOTwinGet(obo, t.RID)
		}
		return TwinGet(t.RID)
	case KindTwinReported:
		if obo != "" {
			return OBOTwinReported(obo, t.RID)
		}
		return TwinReported(t.RID)
	case KindTwinResponse:
		if obo != "" {
			return OBOTwinResponse(obo, t.Status, t.RID, t.Version)
		}
		return TwinResponse(t.Status, t.RID, t.Version)
	case KindTwinDesired:
		if obo != "" {
			return OBOTwinDesired(obo, t.Version)
		}
		return TwinDesiredPatch(t.Version)
	case KindMethodRequest:
		if obo != "" {
			return OBOMethodRequest(obo, t.MethodName, t.RID)
		}
		return MethodRequest(t.MethodName, t.RID)
	case KindMethodResponse:
		if obo != "" {
			return OBOMethodResponse(obo, t.Status, t.RID)
		}
		return MethodResponse(t.Status, t.RID)
	}
	return ""
}
