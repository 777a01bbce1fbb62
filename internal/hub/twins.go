package hub

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"

	"outpost/internal/identity"
	"outpost/internal/manifest"
	"outpost/internal/status"
	"outpost/internal/twin"
)

// twinRecord is what the twins bucket stores: the twin and, when the
// revision changed desired properties, the change as devices must receive
// it. Keeping the change with the twin lets every replica's watcher push
// it to the devices connected there without diffing documents.
type twinRecord struct {
	Twin *twin.Twin `json:"twin"`
	// DesiredPatch is the desired change this revision made (a merge
	// patch, or Diff of the old and new documents after a replace), and
	// DesiredVersion the desired $version it produced.
	DesiredPatch   map[string]any `json:"desiredPatch,omitempty"`
	DesiredVersion int64          `json:"desiredVersion,omitempty"`
}

func decodeTwin(key string, rev uint64, raw []byte) (any, error) {
	var env struct {
		Twin           json.RawMessage `json:"twin"`
		DesiredPatch   json.RawMessage `json:"desiredPatch"`
		DesiredVersion int64           `json:"desiredVersion"`
	}
	if err := json.Unmarshal(raw, &env); err != nil {
		return nil, fmt.Errorf("decode twin: %w", err)
	}
	t, err := twin.Decode(env.Twin)
	if err != nil {
		return nil, fmt.Errorf("decode twin: %w", err)
	}
	t.ETag = etagOf(rev)
	rec := &twinRecord{Twin: t, DesiredVersion: env.DesiredVersion}
	if len(env.DesiredPatch) > 0 {
		if rec.DesiredPatch, err = twin.ParsePatch(env.DesiredPatch); err != nil {
			return nil, fmt.Errorf("decode twin: desired patch: %w", err)
		}
	}
	return rec, nil
}

func (h *Hub) newTwinRecord(deviceID, moduleID string) *twinRecord {
	return &twinRecord{Twin: twin.New(deviceID, moduleID, h.now())}
}

func twinKey(deviceID, moduleID string) string {
	if moduleID == "" {
		return deviceKey(deviceID)
	}
	return moduleKey(deviceID, moduleID)
}

// owner returns the device (and module, when moduleID is set) a twin
// belongs to, or the 404 to answer.
func (h *Hub) owner(ctx context.Context, deviceID, moduleID string) (*identity.Device, *identity.Module, error) {
	dr, ok, err := h.lookup(ctx, h.devices, h.devTab, deviceKey(deviceID))
	if err != nil {
		return nil, nil, err
	}
	if !ok {
		return nil, nil, deviceNotFound(deviceID)
	}
	if moduleID == "" {
		return dr.val.(*identity.Device), nil, nil
	}
	mr, ok, err := h.lookup(ctx, h.modules, h.modTab, moduleKey(deviceID, moduleID))
	if err != nil {
		return nil, nil, err
	}
	if !ok {
		return nil, nil, moduleNotFound(deviceID, moduleID)
	}
	return dr.val.(*identity.Device), mr.val.(*identity.Module), nil
}

// compose is compose with the identity's connection state and activity.
func (h *Hub) compose(t *twin.Twin, d *identity.Device, m *identity.Module) *twin.Twin {
	if m != nil {
		return compose(t, d, h.withModulePresence(m))
	}
	return compose(t, h.withPresence(d), nil)
}

// compose returns a copy of the stored twin with the registry fields a
// served twin carries (status, scopes, capabilities…).
func compose(t *twin.Twin, d *identity.Device, m *identity.Module) *twin.Twin {
	c := t.Clone()
	c.Status = d.Status
	c.StatusReason = d.StatusReason
	if m == nil {
		c.DeviceETag = d.ETag
		c.ConnectionState = d.ConnectionState
		c.LastActivityTime = d.LastActivityTime
		c.CloudToDeviceMessageCount = d.CloudToDeviceMessageCount
		c.AuthenticationType = d.Authentication.Type
		c.X509Thumbprint = (*twin.X509Thumbprint)(&d.Authentication.X509Thumbprint)
		c.Capabilities = &twin.Capabilities{IoTEdge: d.IsEdge()}
		c.DeviceScope = d.DeviceScope
		c.ParentScopes = append([]string{}, d.ParentScopes...)
	} else {
		c.DeviceETag = m.ETag
		c.ConnectionState = m.ConnectionState
		c.LastActivityTime = m.LastActivityTime
		c.CloudToDeviceMessageCount = m.CloudToDeviceMessageCount
		c.AuthenticationType = m.Authentication.Type
		c.X509Thumbprint = (*twin.X509Thumbprint)(&m.Authentication.X509Thumbprint)
	}
	return c
}

// GetTwin returns the twin of a device (moduleID empty) or module.
func (h *Hub) GetTwin(deviceID, moduleID string) (*twin.Twin, error) {
	d, m, err := h.owner(context.Background(), deviceID, moduleID)
	if err != nil {
		return nil, err
	}
	r, ok := h.twinTab.get(twinKey(deviceID, moduleID))
	if !ok {
		// A crash between writing the device and its twin leaves no twin;
		// it reads as a fresh one and is stored on its first change.
		return h.compose(h.newTwinRecord(deviceID, moduleID).Twin, d, m), nil
	}
	return h.compose(r.val.(*twinRecord).Twin, d, m), nil
}

// TwinPatch is a service-side twin PATCH: tags and desired properties.
// Reported properties belong to the device and are refused.
type TwinPatch struct {
	Tags    map[string]any
	Desired map[string]any
}

// ParseTwinPatch decodes a service PATCH body
// ({"tags":{…},"properties":{"desired":{…}}}), refusing reported
// properties as IoT Hub does.
func ParseTwinPatch(body []byte) (TwinPatch, error) {
	// The sections are validated by the twin package when applied; here
	// only the envelope is read. Other top-level fields (deviceId, etag…
	// of a whole twin sent back) are ignored, as IoT Hub does.
	if err := twin.CheckText("twin patch", body); err != nil {
		return TwinPatch{}, err
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	var doc map[string]any
	if err := dec.Decode(&doc); err != nil || doc == nil {
		return TwinPatch{}, badTwin("twin patch is not a JSON object")
	}
	if _, err := dec.Token(); err != io.EOF {
		return TwinPatch{}, badTwin("twin patch has data after its JSON object")
	}
	var p TwinPatch
	if v, ok := doc["tags"]; ok && v != nil {
		if p.Tags, ok = v.(map[string]any); !ok {
			return TwinPatch{}, badTwin("tags must be a JSON object")
		}
	}
	if v, ok := doc["properties"]; ok && v != nil {
		props, ok := v.(map[string]any)
		if !ok {
			return TwinPatch{}, badTwin("properties must be a JSON object")
		}
		if r, ok := props["reported"].(map[string]any); ok && len(r) > 0 {
			return TwinPatch{}, badTwin("reported properties belong to the device: the service cannot change them")
		}
		if v, ok := props["desired"]; ok && v != nil {
			if p.Desired, ok = v.(map[string]any); !ok {
				return TwinPatch{}, badTwin("properties.desired must be a JSON object")
			}
		}
	}
	return p, nil
}

func badTwin(msg string) error {
	return status.BadRequest(status.CodeArgumentInvalid, "%s", msg)
}

// PatchTwin merges p into a twin. ifMatch ("" or "*" for none) is checked
// against the twin's etag; without one, concurrent patches merge.
func (h *Hub) PatchTwin(ctx context.Context, deviceID, moduleID string, p TwinPatch, ifMatch string) (*twin.Twin, error) {
	return h.changeTwin(ctx, deviceID, moduleID, ifMatch, func(t *twin.Twin) (map[string]any, int64, error) {
		v, err := t.Patch(p.Tags, p.Desired, h.now())
		if err != nil || p.Desired == nil {
			return nil, 0, err
		}
		if err := checkDeployment(moduleID, t); err != nil {
			return nil, 0, err
		}
		return p.Desired, v, nil
	})
}

// checkDeployment refuses $edgeHub desired properties the edge would
// refuse to apply (routes, store-and-forward TTL): the operator learns it
// from the 400, instead of from the edge's log, with the twin unchanged.
func checkDeployment(moduleID string, t *twin.Twin) error {
	if moduleID != identity.EdgeHub {
		return nil
	}
	if _, _, err := manifest.EdgeHubSettings("properties.desired", t.Desired()); err != nil {
		return badTwin(err.Error())
	}
	return nil
}

// ReplaceTwin replaces a twin's tags and desired properties (PUT);
// reported properties in n are ignored.
func (h *Hub) ReplaceTwin(ctx context.Context, deviceID, moduleID string, n *twin.Twin, ifMatch string) (*twin.Twin, error) {
	return h.changeTwin(ctx, deviceID, moduleID, ifMatch, func(t *twin.Twin) (map[string]any, int64, error) {
		old := t.Desired()
		v, err := t.Replace(n, h.now())
		if err != nil {
			return nil, 0, err
		}
		if err := checkDeployment(moduleID, t); err != nil {
			return nil, 0, err
		}
		return twin.Diff(old, t.Desired()), v, nil
	})
}

// PatchReported merges a device's reported patch into its twin and
// returns the new reported $version. It is the data plane's call; the
// service API never changes reported properties.
func (h *Hub) PatchReported(ctx context.Context, deviceID, moduleID string, patch map[string]any) (int64, error) {
	return h.PatchReportedAtLeast(ctx, deviceID, moduleID, patch, 0)
}

// PatchReportedAtLeast is PatchReported for a patch an edge held offline
// (twin.ParseVersionedPatch): the new reported $version is at least
// atLeast. The data plane allows it only to an edge acting for an
// identity in its scope.
func (h *Hub) PatchReportedAtLeast(ctx context.Context, deviceID, moduleID string, patch map[string]any, atLeast int64) (int64, error) {
	var v int64
	_, err := h.changeTwin(ctx, deviceID, moduleID, "*", func(t *twin.Twin) (map[string]any, int64, error) {
		var err error
		v, err = t.PatchReportedAtLeast(patch, atLeast, h.now())
		return nil, 0, err
	})
	return v, err
}

// changeTwin is the compare-and-set loop of every twin change. fn mutates
// a private copy and returns the desired change to publish, if any.
func (h *Hub) changeTwin(ctx context.Context, deviceID, moduleID, ifMatch string, fn func(t *twin.Twin) (map[string]any, int64, error)) (*twin.Twin, error) {
	key := twinKey(deviceID, moduleID)
	stale := func() error {
		return status.PreconditionFailed("etag %s does not match the twin's current etag", strings.Trim(ifMatch, `" `))
	}
	for attempt := 0; ; attempt++ {
		d, m, err := h.owner(ctx, deviceID, moduleID)
		if err != nil {
			return nil, err
		}
		cur, ok, err := h.lookup(ctx, h.twins, h.twinTab, key)
		if err != nil {
			return nil, err
		}
		var t *twin.Twin
		if ok {
			if !identity.MatchETag(ifMatch, etagOf(cur.rev)) {
				if cur, ok, err = h.reload(ctx, h.twins, h.twinTab, key); err != nil {
					return nil, err
				}
				if !ok || !identity.MatchETag(ifMatch, etagOf(cur.rev)) {
					return nil, stale()
				}
			}
			t = cur.val.(*twinRecord).Twin.Clone()
		} else {
			if !isAny(ifMatch) {
				return nil, stale()
			}
			cur = nil
			t = h.newTwinRecord(deviceID, moduleID).Twin
		}
		patch, v, err := fn(t)
		if err != nil {
			return nil, err
		}
		rec := &twinRecord{Twin: t}
		if len(patch) > 0 {
			rec.DesiredPatch, rec.DesiredVersion = patch, v
		}
		r, err := h.write(ctx, h.twins, h.twinTab, key, cur, rec)
		if err == nil {
			return h.compose(r.val.(*twinRecord).Twin, d, m), nil
		}
		if !errors.Is(err, errConflict) && !errors.Is(err, errExists) {
			return nil, err
		}
		if !isAny(ifMatch) {
			return nil, stale()
		}
		if attempt >= maxCASRetries {
			return nil, errTooBusy
		}
		if _, _, err := h.reload(ctx, h.twins, h.twinTab, key); err != nil {
			return nil, err
		}
	}
}
