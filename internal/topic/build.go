package topic

import "strconv"

// Builders. Ids, method and input names are written as they are: callers
// pass names that passed ValidID (ids) or come from a parsed topic. $rid
// values and bags are encoded.

// Telemetry is the topic a device (moduleID empty) or module publishes
// telemetry on. A module output goes in the bag as $.on.
func Telemetry(deviceID, moduleID string, bag map[string]string) string {
	p := "devices/" + deviceID
	if moduleID != "" {
		p += "/modules/" + moduleID
	}
	return p + "/messages/events/" + EncodeBag(bag)
}

// C2D is the topic a cloud-to-device message is delivered on. The '/'
// before the bag is there even when the bag is empty: the SDK needs it.
func C2D(deviceID string, bag map[string]string) string {
	return "devices/" + deviceID + "/messages/devicebound/" + EncodeBag(bag)
}

// ModuleInput is the topic a message for a module input is delivered on,
// with the '/' the SDK needs before the bag.
func ModuleInput(deviceID, moduleID, input string, bag map[string]string) string {
	return "devices/" + deviceID + "/modules/" + moduleID + "/inputs/" + input + "/" + EncodeBag(bag)
}

// TwinGet is the topic a client asks for its twin on.
func TwinGet(rid string) string { return "$iothub/twin/GET/" + ridQuery(rid) }

// TwinReported is the topic a client sends a reported-properties patch on.
func TwinReported(rid string) string {
	return "$iothub/twin/PATCH/properties/reported/" + ridQuery(rid)
}

// TwinResponse answers a twin request; $version is omitted when 0 (a GET
// answer carries the versions in its body).
func TwinResponse(status int, rid string, version int64) string {
	return "$iothub/twin/res/" + strconv.Itoa(status) + "/" + ridQuery(rid) + versionParam(version)
}

// TwinDesiredPatch is the topic a desired-properties patch is pushed on.
func TwinDesiredPatch(version int64) string {
	return "$iothub/twin/PATCH/properties/desired/?$version=" + strconv.FormatInt(version, 10)
}

// MethodRequest is the topic a direct method call reaches a client on.
func MethodRequest(name, rid string) string {
	return "$iothub/methods/POST/" + name + "/" + ridQuery(rid)
}

// MethodResponse is the topic a client answers a direct method on.
func MethodResponse(status int, rid string) string {
	return "$iothub/methods/res/" + strconv.Itoa(status) + "/" + ridQuery(rid)
}

// On-behalf-of forms, for an edge acting for clientID (device or
// device/module) on its link to its parent.

// OBOTwinGet asks for clientID's twin.
func OBOTwinGet(clientID, rid string) string {
	return "$iothub/" + clientID + "/twin/get/" + ridQuery(rid)
}

// OBOTwinReported sends clientID's reported-properties patch.
func OBOTwinReported(clientID, rid string) string {
	return "$iothub/" + clientID + "/twin/reported/" + ridQuery(rid)
}

// OBOTwinResponse answers a twin request made for clientID.
func OBOTwinResponse(clientID string, status int, rid string, version int64) string {
	return "$iothub/" + clientID + "/twin/res/" + strconv.Itoa(status) + "/" + ridQuery(rid) + versionParam(version)
}

// OBOTwinDesired pushes a desired-properties patch for clientID.
func OBOTwinDesired(clientID string, version int64) string {
	return "$iothub/" + clientID + "/twin/desired/?$version=" + strconv.FormatInt(version, 10)
}

// OBOMethodRequest carries a direct method call for clientID.
func OBOMethodRequest(clientID, name, rid string) string {
	return "$iothub/" + clientID + "/methods/post/" + name + "/" + ridQuery(rid)
}

// OBOMethodResponse answers a direct method call made to clientID.
func OBOMethodResponse(clientID string, status int, rid string) string {
	return "$iothub/" + clientID + "/methods/res/" + strconv.Itoa(status) + "/" + ridQuery(rid)
}

func ridQuery(r string) string { return "?$rid=" + escape(r) }

func versionParam(v int64) string {
	if v == 0 {
		return ""
	}
	return "&$version=" + strconv.FormatInt(v, 10)
}
