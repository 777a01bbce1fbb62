// Package message is the shared vocabulary of Outpost: a device-to-cloud or
// cloud-to-device message with its application and system properties.
// It imports only the standard library so every other package may use it.
package message

import (
	"crypto/rand"
	"encoding/hex"
	"time"
)

// MaxSize is the largest message body Azure IoT Hub accepts (256 KiB).
const MaxSize = 256 * 1024

// System property keys as they appear, decoded, in an MQTT property bag.
const (
	KeyMessageID       = "$.mid"
	KeyCorrelationID   = "$.cid"
	KeyUserID          = "$.uid"
	KeyTo              = "$.to"
	KeyContentType     = "$.ct"
	KeyContentEncoding = "$.ce"
	KeyExpiry          = "$.exp"
	KeyOutputName      = "$.on"
	KeyConnDeviceID    = "$.cdid"
	KeyConnModuleID    = "$.cmid"
)

// System holds the system properties of a message. Connection ids are
// stamped by the server from the authenticated identity, never trusted
// from the client.
type System struct {
	MessageID       string    `json:"messageId,omitempty"`
	CorrelationID   string    `json:"correlationId,omitempty"`
	UserID          string    `json:"userId,omitempty"`
	To              string    `json:"to,omitempty"`
	ContentType     string    `json:"contentType,omitempty"`
	ContentEncoding string    `json:"contentEncoding,omitempty"`
	Expiry          string    `json:"expiryTimeUtc,omitempty"`
	OutputName      string    `json:"outputName,omitempty"`
	InputName       string    `json:"inputName,omitempty"`
	ConnDeviceID    string    `json:"connectionDeviceId,omitempty"`
	ConnModuleID    string    `json:"connectionModuleId,omitempty"`
	EnqueuedTime    time.Time `json:"enqueuedTime,omitzero"`
	// EdgeID, EdgeStore and EdgeSeq say which edge stored a message, in
	// which of its stores (a wiped edge has a new one) and where, so the
	// hub can drop replays of the same message after a reconnect or crash.
	EdgeID    string `json:"edgeId,omitempty"`
	EdgeStore string `json:"edgeStore,omitempty"`
	EdgeSeq   uint64 `json:"edgeSeq,omitempty"`
}

// Message is one telemetry, module output/input or C2D message.
type Message struct {
	DeviceID   string            `json:"deviceId"`
	ModuleID   string            `json:"moduleId,omitempty"`
	Body       []byte            `json:"body"`
	Properties map[string]string `json:"properties,omitempty"`
	System     System            `json:"systemProperties"`
}

// ClientID is deviceId or deviceId/moduleId, as used in MQTT and scopes.
func ClientID(deviceID, moduleID string) string {
	if moduleID == "" {
		return deviceID
	}
	return deviceID + "/" + moduleID
}

// NewID returns a random 128-bit hex id, used for message and lock ids.
func NewID() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic("crypto/rand: " + err.Error()) // the kernel RNG does not fail
	}
	return hex.EncodeToString(b[:])
}

// SystemGet returns the system property named by its bag key ($.mid …).
func (m *Message) SystemGet(key string) (string, bool) {
	s := &m.System
	switch key {
	case KeyMessageID:
		return s.MessageID, s.MessageID != ""
	case KeyCorrelationID:
		return s.CorrelationID, s.CorrelationID != ""
	case KeyUserID:
		return s.UserID, s.UserID != ""
	case KeyTo:
		return s.To, s.To != ""
	case KeyContentType:
		return s.ContentType, s.ContentType != ""
	case KeyContentEncoding:
		return s.ContentEncoding, s.ContentEncoding != ""
	case KeyExpiry:
		return s.Expiry, s.Expiry != ""
	case KeyOutputName:
		return s.OutputName, s.OutputName != ""
	case KeyConnDeviceID:
		return s.ConnDeviceID, s.ConnDeviceID != ""
	case KeyConnModuleID:
		return s.ConnModuleID, s.ConnModuleID != ""
	}
	return "", false
}

// SystemSet sets the system property named by its bag key and reports
// whether the key is a known system property.
func (m *Message) SystemSet(key, v string) bool {
	s := &m.System
	switch key {
	case KeyMessageID:
		s.MessageID = v
	case KeyCorrelationID:
		s.CorrelationID = v
	case KeyUserID:
		s.UserID = v
	case KeyTo:
		s.To = v
	case KeyContentType:
		s.ContentType = v
	case KeyContentEncoding:
		s.ContentEncoding = v
	case KeyExpiry:
		s.Expiry = v
	case KeyOutputName:
		s.OutputName = v
	case KeyConnDeviceID:
		s.ConnDeviceID = v
	case KeyConnModuleID:
		s.ConnModuleID = v
	default:
		return false
	}
	return true
}
