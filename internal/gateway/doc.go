// Package gateway is the device endpoint shared by the hub and the edge:
// MQTT 3.1.1 over TLS, MQTT over WebSocket, and the device HTTPS API, as
// the Azure IoT SDKs speak them (see PROTOCOL.md). It authenticates
// clients, enforces which topics each may use, and hands every request to
// a Backend: the hub's writes to JetStream, the edge's to its store.
//
// The MQTT protocol engine is mochi-mqtt, used as a library: the gateway
// is a mochi hook that never lets mochi route a message to a client.
// Every publish is classified and served here; every push to a device
// (twin responses, desired patches, methods, C2D, module inputs) is
// written to that one client, and only past deliverable: a topic name
// (never a filter: no wildcards) matching a filter the client was
// granted. What mochi would route itself, a Will or a retained message,
// is refused in OnACLCheck. A CONNECT with a Will is refused with CONNACK
// 5 (not authorized), as a Will is a publish mochi would make for the
// client; the Azure IoT SDKs set none. A PUBLISH's retain flag is
// ignored: it is served like any other and nothing is retained.
//
// Acknowledgements mean durable. For QoS 1 telemetry the gateway takes
// the PUBACK away from mochi (OnPublish returns ErrRejectPacket), queues
// the message on the connection's ordered pipeline, and writes the PUBACK
// once Backend.Telemetry has returned nil for a batch holding it. The
// pipeline hands the backend everything queued at once, so a client with
// many messages in flight costs one backend commit per batch, not per
// message, and PUBACKs leave in PUBLISH order [MQTT-4.6.0-2].
//
// Lock order: Server.mu before conn.mu. Neither is held while calling the
// Backend or writing to a network connection.
package gateway
