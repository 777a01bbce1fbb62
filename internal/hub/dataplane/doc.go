// Package dataplane is the hub's data plane: the gateway.Backend that the
// shared device endpoint calls, built on the hub's JetStream state, and
// the service-side calls that reach devices (direct methods, cloud-to-
// device messages, the telemetry read API).
//
// # Telemetry
//
// Device and module telemetry and module outputs go to the stream
// TELEMETRY, one subject per identity: tel.{enc(device)} or
// tel.{enc(device)}.{enc(module)}, where enc is base64url without padding
// (raw ids may hold characters NATS subjects forbid). The body is the NATS
// payload as sent; the envelope (ids, application and system properties,
// enqueued time) travels in the Outpost-Msg header as JSON. Telemetry
// returns only once every message of a batch has its PubAck, so a PUBACK
// to the device means the stream holds the message.
//
// Messages an edge drains carry a replay key (edgeproto: store id,
// sequence, stored time): for an edge connection it becomes
// System.EdgeID/EdgeStore/EdgeSeq and the header Nats-Msg-Id, and the
// stream's duplicate window (two hours) drops replays. The EDGE_STORES
// bucket keeps, per edge store, a sequence past every one stored, which
// store-position answers (storepos.go).
//
// # Presence, methods and desired properties
//
// Each replica keeps the sessions connected to it. For each it subscribes
// outpost.method.{enc(clientId)}, so a method call made on any replica
// reaches the device by NATS request/reply, and announces the connection
// on outpost.presence.{enc(clientId)} so a caller waiting for the device
// to connect (connectTimeoutInSeconds) learns of it at once. A watcher on
// the twins bucket pushes desired patches to the sessions held here; a
// watcher on the registry drops the connections of deleted or disabled
// identities, and of the edge whose scope they leave.
//
// Connection state and lastActivityTime (presence.go) are written off the
// connection goroutines: for a session held here, from its Connected and
// Disconnected; for a client of an edge, from the edge's presence reports
// (Extension "presence"), ended with the edge's link.
//
// # Cloud-to-device
//
// C2D messages sit in the stream C2D, subject c2d.{enc(device)}, at most
// MaxC2DPending (50) per device (DiscardNewPerSubject: a full queue
// refuses new messages with 403 DeviceMaximumQueueDepthExceeded), each
// with a per-message TTL (Nats-TTL; default one hour, or the message's
// expiry). An MQTT device is sent its queue in order at connect and
// whenever a message arrives (SendC2D announces each stored message on
// outpost.c2d.{enc(device)}); a message leaves the stream when the device
// acknowledges it. An HTTPS device polls through a durable consumer of its
// own: a fetch is a lock (the consumer's ack wait, LockTimeout), and the
// lock token is the JetStream ack subject and the lock time, signed for
// the device with a key kept in the KV bucket DATAPLANE_KEYS, so any
// replica can settle it and no device can forge one or use another's. A
// settle also checks that the message is still queued for the device.
//
// Every delivery, over MQTT or HTTPS, counts in the KV bucket
// C2D_DELIVERIES, keyed by the message's stream sequence and stored time:
// durable and shared, where the HTTPS consumer's own count would miss
// MQTT deliveries and an in-memory count would reset at a restart. A
// message is dropped at the delivery after its MaxDeliveryCount-th, or
// when its last allowed delivery is abandoned. MQTT counts a delivery
// before sending and takes it back when nothing was sent (the device had
// not subscribed yet).
//
// A direct method request runs at most once: the method subscriptions
// are a queue group, and a caller retries (within its connect timeout)
// only when no session sent the request, never after the device dropped
// with it pending (gateway.ErrConnectionLost).
package dataplane
