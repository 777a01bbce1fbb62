// Package hub is Outpost's cloud hub: the identity registry (devices, edge
// devices, modules, keys, parent/child scopes), device and module twins and
// the IoT Hub query language, with all state in NATS JetStream.
//
// # Storage
//
// State lives in three JetStream KV buckets: devices, modules and twins.
// Keys are base64url encodings of the ids (device ids may hold characters
// NATS keys forbid), a module's key being its device's key, a dot and the
// module id's encoding. The KV revision of an entry is its etag, so an
// If-Match becomes a compare-and-set, and server-side merges (a twin PATCH
// without If-Match) retry their compare-and-set on conflict.
//
// Every hub process keeps an in-memory index of the three buckets, fed by
// KV watchers, so queries, listings and the data plane's authentication
// never touch the disk, and changes made by other replicas show up within
// the watcher's delivery latency. A process applies its own writes to the
// index from their results, so it always reads what it has just written.
//
// # Durability
//
// By default the hub embeds a single nats-server with JetStream, its store
// in DataDir/jetstream, listening on no port. JetStream acknowledges a write
// once it is in the operating system's page cache and fsyncs its files
// every SyncInterval (nats-server's default: 2 minutes). An acknowledged
// write therefore survives a crash of the hub process, but the writes of the
// last interval may be lost if the machine loses power. Protection against
// power loss comes from replicas: point NATSURL at a NATS cluster and set
// Replicas to 3, and an acknowledged write sits in the memory of a majority
// of nodes. SyncAlways (fsync per write) exists but costs about fifty times
// the throughput, since JetStream does not group-commit.
//
// A device's record, its twin and its modules sit in different buckets and
// are not written atomically. The registry writes them in an order that a
// crash can interrupt harmlessly: the device record is the source of truth,
// a missing twin reads as a fresh one, and leftovers of a deleted device are
// swept when a device of the same id is created again.
package hub
