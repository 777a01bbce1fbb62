package gateway

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"time"

	"outpost/internal/message"
	"outpost/internal/sas"
	"outpost/internal/status"
)

// Backend is what the hub or the edge plugs into the gateway. The gateway
// speaks the protocol, authenticates the transport and enforces topic
// rules; the backend owns identities, storage and presence. It is a set
// of small interfaces so each side can be read (and faked) by concern.
type Backend interface {
	Authenticator
	TelemetrySink
	TwinStore
	Presence
	Scoper
	C2DQueue
}

// Authenticator looks up and verifies identities.
type Authenticator interface {
	// Authenticate checks credentials the gateway has already parsed and
	// screened (username host and client id match, token audience matches
	// the identity and has not expired). The backend looks the identity up
	// (exists? enabled?) and verifies the secret, typically with VerifySAS
	// or VerifyX509. Errors should be *AuthError so the reason is logged
	// and counted; any other error is treated as "backend unavailable".
	Authenticate(ctx context.Context, c Credentials) (Identity, error)
}

// TelemetrySink accepts device-to-cloud messages.
type TelemetrySink interface {
	// Telemetry stores msgs, in order. A nil return means the messages are
	// durable: the gateway acknowledges them to the device only then.
	// via is the authenticated connection; each message's DeviceID and
	// ModuleID name the identity it comes from, which differs from via
	// only when an edge publishes on behalf of an identity in its scope
	// (already checked with InScope). The gateway stamps the connection
	// ids ($.cdid, $.cmid) and OutputName; EnqueuedTime is the backend's.
	// A batch may hold messages of several identities only when via is
	// an edge. Any error (quota exceeded, store failure) makes the gateway
	// drop the device connection without acknowledging, since MQTT 3.1.1
	// has no negative PUBACK; HTTPS answers with the error's status.
	Telemetry(ctx context.Context, via Identity, msgs []*message.Message) error
}

// TwinStore serves twin reads and reported-property patches.
type TwinStore interface {
	// TwinGet returns the twin body the SDK expects:
	// {"desired":{…,"$version":n},"reported":{…,"$version":m}}.
	TwinGet(ctx context.Context, id Identity) ([]byte, error)
	// TwinReported applies a reported-properties patch and returns the
	// new reported version.
	TwinReported(ctx context.Context, id Identity, patch []byte) (version int64, err error)
}

// Presence is told when sessions start and end so the backend can track
// connection state and push pending work (desired patches, C2D).
//
// Both run on the connection's goroutine and must not block for long:
// start owned goroutines for slow work. Disconnected of an old session
// may arrive after Connected of a new one for the same identity (session
// takeover); compare Session values to tell them apart.
type Presence interface {
	Connected(s Session)
	Disconnected(s Session)
}

// Scoper answers whether an edge may act for an identity.
type Scoper interface {
	// InScope reports whether edge may act on behalf of deviceID/moduleID
	// (a child device, or a module of the edge or of a child). The gateway
	// caches answers for the life of the edge's connection: when an
	// edge's scope shrinks, call Server.DisconnectIdentity for the edge.
	InScope(ctx context.Context, edge Identity, deviceID, moduleID string) (bool, error)
}

// C2DQueue serves cloud-to-device messages to HTTPS devices, which poll.
// MQTT devices get C2D pushed through Session.SendC2D instead.
type C2DQueue interface {
	// C2DReceive locks and returns the next message, or a nil message
	// when there is none.
	C2DReceive(ctx context.Context, id Identity) (msg *message.Message, lock string, err error)
	// C2DSettle completes, rejects or abandons a locked message.
	C2DSettle(ctx context.Context, id Identity, lock string, action Settle) error
}

// Extender is an optional Backend extension that serves Outpost's own
// request/reply topics, used by the edge's link to its parent (identity
// sync, certificate signing, presence reports).
//
// A client subscribes to edgeproto.ResFilter, then publishes
// edgeproto.RequestTopic(name, rid) with any payload. The gateway calls
// Extension and replies on edgeproto.ResponseTopic(status, rid): 200 with
// the reply as body, or the error's status (see status.From) with its
// status.Error.MQTTBody. Requests of one connection are served
// in order, and all before the Disconnected of the session that carried
// them. Without an Extender every request is answered 404.
type Extender interface {
	// Extension serves a request of s, the connection's own session
	// (never one reached through an edge), so a backend can tell a
	// request of a taken-over connection from one of its successor.
	Extension(ctx context.Context, s Session, name string, payload []byte) (reply []byte, err error)
}

// Settle is how an HTTPS device settles a locked C2D message.
type Settle int

// Settle actions, as in the IoT Hub device HTTPS API.
const (
	Complete Settle = iota + 1 // DELETE …/devicebound/{lock}
	Reject                     // DELETE …/devicebound/{lock}?reject
	Abandon                    // POST …/devicebound/{lock}/abandon
)

func (a Settle) String() string {
	switch a {
	case Complete:
		return "complete"
	case Reject:
		return "reject"
	case Abandon:
		return "abandon"
	}
	return fmt.Sprintf("settle(%d)", int(a))
}

// AuthMethod says how an identity proved itself.
type AuthMethod string

// Authentication methods, named as in the IoT Hub registry.
const (
	AuthSAS            AuthMethod = "sas"
	AuthX509Thumbprint AuthMethod = "x509_thumbprint"
	AuthX509CA         AuthMethod = "x509_ca"
	// AuthOnBehalfOf marks an identity reached through an edge's
	// connection: the edge authenticated, the identity is in its scope.
	AuthOnBehalfOf AuthMethod = "on_behalf_of"
)

// Identity is an authenticated device or module.
type Identity struct {
	DeviceID   string
	ModuleID   string
	AuthMethod AuthMethod
	// TokenExpiry is when a SAS-authenticated connection must end; zero
	// for X.509. The gateway drops the connection then (plus ClockSkew).
	TokenExpiry time.Time
	// Edge is set for an IoT Edge device, which may act on behalf of the
	// identities in its scope (see Scoper).
	Edge bool
	// Via is the client id of the edge connection that carried an
	// on-behalf-of request; empty when the identity is connected itself.
	Via string
}

// ClientID is deviceId or deviceId/moduleId.
func (id Identity) ClientID() string { return message.ClientID(id.DeviceID, id.ModuleID) }

// Credentials are what a client presented, after the gateway parsed them.
type Credentials struct {
	// ClientID is deviceId or deviceId/moduleId, as in MQTT CONNECT.
	ClientID string
	DeviceID string
	ModuleID string
	// Token is the parsed SAS token; nil when the client sent none.
	Token *sas.Token
	// Password is the token text exactly as sent (for backends that
	// forward it); empty for X.509.
	Password string
	// PeerCerts is the TLS client certificate chain, leaf first.
	PeerCerts []*x509.Certificate
	// Transport is "mqtt", "mqtt-ws" or "https".
	Transport string
}

// Session is one connected identity as the backend sees it: a device or
// module on its own connection, or an identity reached through an edge.
// Its methods are safe for concurrent use and fail with ErrNotConnected
// once the session has ended.
type Session interface {
	Identity() Identity
	// SendDesired publishes a desired-properties patch (including its
	// "$version") if the client subscribed to desired updates.
	SendDesired(version int64, patch []byte) error
	// InvokeMethod publishes a direct method request, assigning the $rid,
	// and waits for the device's response or ctx. ErrNotConnected and
	// ErrNotSubscribed mean the request was not sent; ErrConnectionLost
	// means it was and the connection ended before the response, so the
	// device may have run it: a caller must not send it again.
	InvokeMethod(ctx context.Context, name string, payload []byte) (status int, resp []byte, err error)
	// SendC2D publishes a cloud-to-device message at QoS 1. The channel
	// yields one value: nil when the device acknowledged it (the backend
	// may then delete it from its queue), or why it was not: unsent
	// (ErrNotSubscribed, ErrNotConnected), or sent and unacknowledged
	// when the connection ended (ErrConnectionLost), which counts as a
	// delivery. Unacknowledged messages are not resent by the gateway:
	// the backend redelivers from its queue, e.g. on the next Connected.
	// A client that subscribed at QoS 0 gets QoS 0, and nil once it is
	// written.
	SendC2D(msg *message.Message) (acked <-chan error)
	// SendInput publishes a message to a module's named input, likewise.
	SendInput(input string, msg *message.Message) (acked <-chan error)
	// Disconnect ends the session. For an identity reached through an
	// edge it stops routing to it but leaves the edge connected.
	Disconnect(reason string)
}

// Errors a Session reports.
var (
	ErrNotConnected = errors.New("not connected")
	// ErrConnectionLost: the connection ended after the request or message
	// was written (or while writing it), so the device may have it.
	ErrConnectionLost = errors.New("connection lost after sending")
	ErrNotSubscribed  = errors.New("client has not subscribed to this topic")
	ErrNotSupported   = errors.New("not supported for this session")
)

// AuthError is an authentication failure with a reason that is logged and
// counted (see Server.AuthFailures). Messages are for logs, never sent to
// the client, which only learns "not authorized".
type AuthError struct {
	Reason AuthReason
	Err    error
}

func (e *AuthError) Error() string {
	if e.Err == nil {
		return "authentication failed: " + string(e.Reason)
	}
	return "authentication failed: " + string(e.Reason) + ": " + e.Err.Error()
}

func (e *AuthError) Unwrap() error { return e.Err }

// AuthReason classifies authentication failures for logs and counters.
type AuthReason string

// Reasons for refusing a client.
const (
	ReasonBadUsername   AuthReason = "bad_username"   // username malformed, wrong host or client id
	ReasonBadClientID   AuthReason = "bad_client_id"  // client id not a device or module id
	ReasonNoCredentials AuthReason = "no_credentials" // neither token nor certificate
	ReasonBadToken      AuthReason = "bad_token"      // token does not parse
	ReasonWrongAudience AuthReason = "wrong_audience" // token for another identity or hub
	ReasonExpired       AuthReason = "expired"
	ReasonBadSignature  AuthReason = "bad_signature"
	ReasonBadCert       AuthReason = "bad_certificate"
	ReasonWrongMethod   AuthReason = "wrong_auth_method" // e.g. a token for an X.509 identity
	ReasonNotFound      AuthReason = "not_found"
	ReasonDisabled      AuthReason = "disabled"
	ReasonBackend       AuthReason = "backend_error" // the backend failed; the client may retry
)

// AuthFailed returns an *AuthError.
func AuthFailed(reason AuthReason, err error) error { return &AuthError{Reason: reason, Err: err} }

// Errors backends may return (wrapped or not) for common cases. A backend
// chooses what a device sees for a failed twin, extension or HTTPS request
// by returning (or wrapping) a *status.Error; a deadline is a 504, any
// other error a 500 (status.From).
var (
	ErrQuotaExceeded = status.Errorf(http.StatusServiceUnavailable, status.CodeQuotaExceeded,
		"message store quota exceeded; retry later")
	ErrThrottled = status.Errorf(http.StatusTooManyRequests, status.CodeThrottling,
		"request rate too high; retry later")
	ErrNotFound        = status.NotFound(status.CodeDeviceNotFound, "identity not found")
	ErrMessageTooLarge = status.Errorf(http.StatusRequestEntityTooLarge, status.CodeMessageTooLarge,
		"message exceeds %d bytes", message.MaxSize)
)
