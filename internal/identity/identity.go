// Package identity is the IoT Hub identity registry's data model and its
// rules: devices, modules, keys, edge scopes and parent/child relations.
//
// It is pure: it stores nothing. The hub keeps these types as JSON in
// JetStream and the edge keeps them in its offline cache; both call the
// same rules here so that a device accepted by one is accepted by the
// other. The JSON shape is Azure IoT Hub's service REST API shape, so the
// Azure service SDKs read our answers unchanged.
package identity

import "time"

// Device status values.
const (
	StatusEnabled  = "enabled"
	StatusDisabled = "disabled"
)

// Connection states.
const (
	Disconnected = "Disconnected"
	Connected    = "Connected"
)

// Authentication types, as Azure spells them in the REST API.
const (
	AuthSAS        = "sas"
	AuthSelfSigned = "selfSigned"
	AuthCA         = "certificateAuthority"
	AuthNone       = "none"
)

// System module ids, created with every IoT Edge device.
const (
	EdgeAgent = "$edgeAgent"
	EdgeHub   = "$edgeHub"
)

// SymmetricKey holds a SAS identity's two keys, standard base64.
type SymmetricKey struct {
	PrimaryKey   string `json:"primaryKey"`
	SecondaryKey string `json:"secondaryKey"`
}

// X509Thumbprint holds a self-signed identity's certificate thumbprints
// (hex SHA-1 or SHA-256).
type X509Thumbprint struct {
	PrimaryThumbprint   string `json:"primaryThumbprint"`
	SecondaryThumbprint string `json:"secondaryThumbprint"`
}

// Authentication is how an identity proves itself.
type Authentication struct {
	Type           string         `json:"type"`
	SymmetricKey   SymmetricKey   `json:"symmetricKey"`
	X509Thumbprint X509Thumbprint `json:"x509Thumbprint"`
}

// Capabilities of a device; only IoT Edge exists.
type Capabilities struct {
	IoTEdge bool `json:"iotEdge"`
}

// Device is one entry of the registry. Times that never happened are the
// zero time, which JSON renders as "0001-01-01T00:00:00Z", as Azure does.
type Device struct {
	DeviceID                   string         `json:"deviceId"`
	GenerationID               string         `json:"generationId"`
	ETag                       string         `json:"etag"`
	ConnectionState            string         `json:"connectionState"`
	ConnectionStateUpdatedTime time.Time      `json:"connectionStateUpdatedTime"`
	Status                     string         `json:"status"`
	StatusReason               string         `json:"statusReason"`
	StatusUpdatedTime          time.Time      `json:"statusUpdatedTime"`
	LastActivityTime           time.Time      `json:"lastActivityTime"`
	CloudToDeviceMessageCount  int            `json:"cloudToDeviceMessageCount"`
	Authentication             Authentication `json:"authentication"`
	Capabilities               Capabilities   `json:"capabilities"`
	// DeviceScope is an edge device's own scope, or a non-edge child's
	// parent scope; empty for a device without parent.
	DeviceScope string `json:"deviceScope"`
	// ParentScopes holds the scope of the device's parent edge, if any.
	// Azure models it as a list but a device has at most one parent.
	ParentScopes []string `json:"parentScopes"`
}

// Module is a module identity of a device.
type Module struct {
	ModuleID                   string         `json:"moduleId"`
	DeviceID                   string         `json:"deviceId"`
	ManagedBy                  string         `json:"managedBy"`
	GenerationID               string         `json:"generationId"`
	ETag                       string         `json:"etag"`
	ConnectionState            string         `json:"connectionState"`
	ConnectionStateUpdatedTime time.Time      `json:"connectionStateUpdatedTime"`
	LastActivityTime           time.Time      `json:"lastActivityTime"`
	CloudToDeviceMessageCount  int            `json:"cloudToDeviceMessageCount"`
	Authentication             Authentication `json:"authentication"`
}

// Enabled reports whether the device may connect. An empty status counts
// as enabled because Azure defaults a missing status to enabled.
func (d *Device) Enabled() bool { return d.Status != StatusDisabled }

// IsEdge reports whether the device is an IoT Edge device.
func (d *Device) IsEdge() bool { return d.Capabilities.IoTEdge }

// Clone returns a copy that shares no memory with d.
func (d *Device) Clone() *Device {
	c := *d
	if d.ParentScopes != nil {
		c.ParentScopes = append([]string{}, d.ParentScopes...)
	}
	return &c
}

// Keys returns the non-empty SAS keys of an identity, primary first. A
// token signed with any of them is valid.
func Keys(a Authentication) []string {
	if a.Type != AuthSAS && a.Type != "" {
		return nil
	}
	var ks []string
	for _, k := range []string{a.SymmetricKey.PrimaryKey, a.SymmetricKey.SecondaryKey} {
		if k != "" {
			ks = append(ks, k)
		}
	}
	return ks
}

// MatchThumbprint reports whether thumb (hex, any case, colons allowed)
// is one of a self-signed identity's thumbprints.
func MatchThumbprint(a Authentication, thumb string) bool {
	if a.Type != AuthSelfSigned {
		return false
	}
	t := normThumb(thumb)
	if t == "" {
		return false
	}
	for _, p := range []string{a.X509Thumbprint.PrimaryThumbprint, a.X509Thumbprint.SecondaryThumbprint} {
		if p != "" && normThumb(p) == t {
			return true
		}
	}
	return false
}
