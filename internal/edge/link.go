package edge

import (
	"context"
	"fmt"

	"outpost/internal/edge/upstream"
	"outpost/internal/status"
)

// NewUpstreamLink makes the edge's real Uplink: internal/edge/upstream's
// Link. It is Config.NewUplink's default.
func NewUpstreamLink(d UplinkDeps) (Uplink, error) {
	l, err := upstream.New(upstream.Config{
		HubHostName: d.HubHostName,
		DeviceID:    d.DeviceID,
		Key:         d.Key,
		Addr:        d.Addr,
		RootCAs:     d.RootCAs,
		Store:       d.Store,
		Local:       d.Local,
		Logger:      d.Logger,
		Now:         d.Now,
		KeepAlive:   d.KeepAlive,
		Endpoints:   d.UpstreamEndpoints,
		Observer:    d.Observer,
		OnState:     d.OnState,
		OnSetAside:  d.OnSetAside,
	})
	if err != nil {
		return nil, err
	}
	return upstreamLink{l}, nil
}

// upstreamLink adapts *upstream.Link to Uplink: the link's calls as they
// are, but for the hub's refusals, mapped so a device sees them.
type upstreamLink struct{ *upstream.Link }

// DrainsUpstreamEndpoints reports that the link drains every endpoint
// UplinkDeps.UpstreamEndpoints lists, by priority (EndpointDrainer).
func (upstreamLink) DrainsUpstreamEndpoints() bool { return true }

func (u upstreamLink) SyncIdentities(ctx context.Context) (*Snapshot, error) {
	s, err := u.Link.SyncIdentities(ctx)
	return s, linkErr(err)
}

func (u upstreamLink) SignEdgeCA(ctx context.Context, csrPEM []byte) ([]byte, []byte, error) {
	chain, root, err := u.Link.SignEdgeCA(ctx, csrPEM)
	return chain, root, linkErr(err)
}

func (u upstreamLink) TwinGet(ctx context.Context, deviceID, moduleID string) ([]byte, error) {
	b, err := u.Link.TwinGet(ctx, deviceID, moduleID)
	return b, linkErr(err)
}

func (u upstreamLink) TwinReported(ctx context.Context, deviceID, moduleID string, patch []byte) (int64, error) {
	v, err := u.Link.TwinReported(ctx, deviceID, moduleID, patch)
	return v, linkErr(err)
}

// linkErr passes a hub's refusal (a 4xx *status.Error) on to the device
// as is. A 5xx means the hub could not answer: it becomes a plain error,
// so that the edge answers from its caches, as it does offline.
func linkErr(err error) error {
	if se, ok := status.As(err); ok && se.Status >= 500 {
		return fmt.Errorf("hub failed (%d): %s", se.Status, se)
	}
	return err
}
