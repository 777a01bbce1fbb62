package edge

import (
	"context"
	"crypto/x509"
	"log/slog"
	"time"

	"outpost/internal/edge/store"
	"outpost/internal/edge/upstream"
	"outpost/internal/identity"
)

// Uplink is what the edge needs of its link to the parent hub
// (internal/edge/upstream's Link, through a thin adapter, or a fake in
// tests). Declared here, where it is used, so the edge core can be built
// and tested without a hub.
type Uplink interface {
	// Run connects and reconnects until ctx ends.
	Run(ctx context.Context) error
	// State is the link's current state.
	State() LinkState
	// SyncIdentities fetches the identities in the edge's scope; it fails
	// fast (ErrOffline) when the link is down.
	SyncIdentities(ctx context.Context) (*Snapshot, error)
	// SignEdgeCA has the hub sign the edge CA's CSR.
	SignEdgeCA(ctx context.Context, csrPEM []byte) (chainPEM, rootPEM []byte, err error)
	// TwinGet and TwinReported act on behalf of a local client.
	TwinGet(ctx context.Context, deviceID, moduleID string) ([]byte, error)
	TwinReported(ctx context.Context, deviceID, moduleID string, patch []byte) (int64, error)
	// Attach and Detach tell the hub a local client came or went, so
	// cloud-to-device traffic for it is routed through the edge.
	Attach(deviceID, moduleID string)
	Detach(deviceID, moduleID string)
	// Kick wakes the drain of the upstream queues (and makes it list
	// UplinkDeps.UpstreamEndpoints again).
	Kick()
}

// UplinkDeps is what the edge hands the function that makes its Uplink
// (it maps onto upstream.Config).
type UplinkDeps struct {
	HubHostName string
	DeviceID    string
	Key         string
	// Addr is the dial address (--upstream-addr); empty: HubHostName.
	Addr    string
	RootCAs *x509.CertPool
	Logger  *slog.Logger
	Now     func() time.Time
	// Store holds the "$upstream" queue the link drains.
	Store *store.Store
	// Local is the edge, which serves deliveries from the cloud.
	Local Local
	// OnState must be called on every link state change.
	OnState func(LinkState)
	// KeepAlive bounds how long a silent link goes unnoticed; zero means
	// the link's default.
	KeepAlive time.Duration
	// UpstreamEndpoints lists the store endpoints to drain, highest
	// priority first (Edge.UpstreamEndpoints). It changes when routes
	// do; the edge Kicks the link then. A link that drains them all,
	// with store.NextByPriority, says so by implementing
	// EndpointDrainer; others drain UpstreamEndpoint alone, and the edge
	// then queues every route into $upstream there.
	UpstreamEndpoints func() []string
	// Observer, if set, learns how long each message forwarded to the
	// hub waited between being stored and being acknowledged; it must
	// not block.
	Observer interface{ ObserveForwarded(time.Duration) }
	// OnSetAside, if set, learns of each message the link set aside
	// because the hub refused it for good; it must not block.
	OnSetAside func(SetAside)
}

// SetAside is a drained message the hub refused for good.
type SetAside = upstream.SetAside

// EndpointDrainer is implemented by an Uplink that drains every endpoint
// UplinkDeps.UpstreamEndpoints lists, serving them by store priority.
type EndpointDrainer interface {
	DrainsUpstreamEndpoints() bool
}

// Local is what the link calls for traffic from the cloud to local
// clients; *Edge implements it.
type Local = upstream.Local

// LinkState describes the link to the hub. The link's own type, so a
// state change reaches the edge as the link reported it.
type LinkState = upstream.State

// Snapshot is the identities in the edge's scope, as the hub sent them.
// The edge stores it sealed, as JSON, to serve offline after a restart.
type Snapshot = identity.ScopeSnapshot

// ErrOffline is what an Uplink returns (wrapped or not) when the link is
// down; the link's own sentinel, so its errors need no mapping.
var ErrOffline = upstream.ErrOffline
