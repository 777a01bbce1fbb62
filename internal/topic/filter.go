package topic

import "strings"

// Subscription filters that do not name an identity: they concern the
// connected client.
const (
	FilterMethods       = "$iothub/methods/POST/#"
	FilterTwinResponses = "$iothub/twin/res/#"
	FilterTwinDesired   = "$iothub/twin/PATCH/properties/desired/#"
)

// C2DFilter is the filter a device subscribes to for cloud-to-device
// messages.
func C2DFilter(deviceID string) string {
	return "devices/" + deviceID + "/messages/devicebound/#"
}

// ModuleInputFilter is the filter a module subscribes to for its inputs.
func ModuleInputFilter(deviceID, moduleID string) string {
	return "devices/" + deviceID + "/modules/" + moduleID + "/inputs/#"
}

// OBOTwinResponseFilter receives twin responses for clientID on an edge's
// upstream link.
func OBOTwinResponseFilter(clientID string) string { return "$iothub/" + clientID + "/twin/res/#" }

// OBOTwinDesiredFilter receives desired-property patches for clientID.
func OBOTwinDesiredFilter(clientID string) string { return "$iothub/" + clientID + "/twin/desired/#" }

// OBOMethodFilter receives direct method calls for clientID.
func OBOMethodFilter(clientID string) string { return "$iothub/" + clientID + "/methods/post/#" }

// Filters returns every filter a client with this identity may subscribe
// to (moduleID empty for a device): what AllowedSubscription accepts.
func Filters(deviceID, moduleID string) []string {
	fs := []string{FilterMethods, FilterTwinResponses, FilterTwinDesired}
	if moduleID == "" {
		return append(fs, C2DFilter(deviceID))
	}
	return append(fs, ModuleInputFilter(deviceID, moduleID), moduleFilterDotNet(deviceID, moduleID))
}

// moduleFilterDotNet is the broader module filter the .NET SDK uses for
// inputs. Everything under it belongs to the module, so it is as safe as
// ModuleInputFilter.
func moduleFilterDotNet(deviceID, moduleID string) string {
	return "devices/" + deviceID + "/modules/" + moduleID + "/#"
}

// ParseFilter recognises a subscription filter of the grammar and returns
// the kind of topic it receives, with the identity it names (DeviceID,
// ModuleID, and OnBehalfOf for on-behalf-of filters). Any other filter,
// including wildcards in place of ids, wraps ErrUnknown.
func ParseFilter(f string) (Topic, error) {
	switch f {
	case FilterMethods:
		return Topic{Kind: KindMethodRequest}, nil
	case FilterTwinResponses:
		return Topic{Kind: KindTwinResponse}, nil
	case FilterTwinDesired:
		return Topic{Kind: KindTwinDesired}, nil
	}
	if rest, ok := strings.CutPrefix(f, "devices/"); ok {
		d, rest, _ := strings.Cut(rest, "/")
		if !ValidID(d) {
			return Topic{}, unknown(f)
		}
		if rest == "messages/devicebound/#" {
			return Topic{Kind: KindC2D, DeviceID: d}, nil
		}
		if rest, ok := strings.CutPrefix(rest, "modules/"); ok {
			m, rest, _ := strings.Cut(rest, "/")
			if ValidID(m) && (rest == "inputs/#" || rest == "#") {
				return Topic{Kind: KindModuleInput, DeviceID: d, ModuleID: m}, nil
			}
		}
		return Topic{}, unknown(f)
	}
	if rest, ok := strings.CutPrefix(f, "$iothub/"); ok {
		for _, s := range []struct {
			suffix string
			kind   Kind
		}{
			{"/twin/res/#", KindTwinResponse},
			{"/twin/desired/#", KindTwinDesired},
			{"/methods/post/#", KindMethodRequest},
		} {
			if c, ok := strings.CutSuffix(rest, s.suffix); ok {
				d, m, err := ParseClientID(c)
				if err != nil {
					return Topic{}, unknown(f)
				}
				return Topic{Kind: s.kind, DeviceID: d, ModuleID: m, OnBehalfOf: c}, nil
			}
		}
	}
	return Topic{}, unknown(f)
}

// AllowedSubscription reports whether a client authenticated as deviceID
// (and moduleID, for a module) may subscribe to filter: the method and
// twin filters, plus its own C2D filter for a device or its own input
// filter for a module. On-behalf-of filters are never allowed here; the
// gateway checks those against an edge's scope using ParseFilter.
func AllowedSubscription(filter, deviceID, moduleID string) bool {
	tp, err := ParseFilter(filter)
	if err != nil || tp.OnBehalfOf != "" {
		return false
	}
	switch tp.Kind {
	case KindMethodRequest, KindTwinResponse, KindTwinDesired:
		return true
	case KindC2D:
		return moduleID == "" && tp.DeviceID == deviceID
	case KindModuleInput:
		return moduleID != "" && tp.DeviceID == deviceID && tp.ModuleID == moduleID
	}
	return false
}

// MaxNameLen is the longest topic name, in bytes: a packet carries its
// length in 16 bits [MQTT-4.7.3-3]. Encoders write a longer one's length
// wrapped around, and the receiver reads its tail as further packets.
const MaxNameLen = 65535

// ValidTopicName reports whether name may be a topic name, what a
// PUBLISH carries: not empty [MQTT-4.7.3-1], no NUL [MQTT-4.7.3-2], no
// wildcard [MQTT-4.7.1-1] and at most MaxNameLen bytes. A string with '+'
// or '#' is a filter at most; taken for a name, "$iothub/methods/POST/#"
// would pass for the filter every device holds.
func ValidTopicName(name string) bool {
	return name != "" && len(name) <= MaxNameLen && !strings.ContainsAny(name, "+#\x00")
}

// Match reports whether the MQTT topic filter matches the topic name:
// '+' matches one level and a last '#' any number of levels, none
// included ("a/#" matches "a") [MQTT-4.7.1-2]. A name starting with '$'
// is not matched by a filter starting with a wildcard [MQTT-4.7.2-1],
// and a filter with '#' anywhere but last matches nothing. An invalid
// name (see ValidTopicName) matches nothing: a name is never compared
// as a filter.
func Match(filter, name string) bool {
	if !ValidTopicName(name) {
		return false
	}
	if strings.HasPrefix(name, "$") && (strings.HasPrefix(filter, "+") || strings.HasPrefix(filter, "#")) {
		return false
	}
	for {
		f, frest, fmore := strings.Cut(filter, "/")
		if f == "#" {
			return !fmore
		}
		n, nrest, nmore := strings.Cut(name, "/")
		if f != "+" && f != n {
			return false
		}
		if !fmore || !nmore {
			return fmore == nmore || (fmore && frest == "#")
		}
		filter, name = frest, nrest
	}
}
