package service

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
)

// Twin is a device or module twin as the service API returns it. The
// typed fields are the ones programs use; Raw keeps the whole document,
// fields this client does not know included, for display.
type Twin struct {
	DeviceID   string         `json:"deviceId"`
	ModuleID   string         `json:"moduleId,omitempty"`
	ETag       string         `json:"etag,omitempty"`
	Version    int64          `json:"version,omitempty"`
	Status     string         `json:"status,omitempty"`
	Tags       map[string]any `json:"tags,omitempty"`
	Properties struct {
		Desired  map[string]any `json:"desired,omitempty"`
		Reported map[string]any `json:"reported,omitempty"`
	} `json:"properties"`
	Raw json.RawMessage `json:"-"`
}

// UnmarshalJSON keeps the raw document next to the typed fields.
func (t *Twin) UnmarshalJSON(b []byte) error {
	type plain Twin
	var p plain
	if err := json.Unmarshal(b, &p); err != nil {
		return err
	}
	*t = Twin(p)
	t.Raw = append(json.RawMessage(nil), b...)
	return nil
}

// TwinPatch is the body of a twin update: tags and desired properties.
// In a PATCH, a nil leaf removes the property.
type TwinPatch struct {
	Tags       map[string]any `json:"tags,omitempty"`
	Properties *struct {
		Desired map[string]any `json:"desired,omitempty"`
	} `json:"properties,omitempty"`
}

// NewTwinPatch builds a patch of tags and desired properties; either may
// be nil.
func NewTwinPatch(tags, desired map[string]any) TwinPatch {
	p := TwinPatch{Tags: tags}
	if desired != nil {
		p.Properties = &struct {
			Desired map[string]any `json:"desired,omitempty"`
		}{Desired: desired}
	}
	return p
}

func twinPath(deviceID, moduleID string) string {
	if moduleID == "" {
		return Path("twins", deviceID)
	}
	return Path("twins", deviceID, "modules", moduleID)
}

// GetTwin returns the twin of a device (moduleID empty) or of a module.
func (c *Client) GetTwin(ctx context.Context, deviceID, moduleID string) (*Twin, error) {
	if deviceID == "" {
		return nil, errors.New("get twin: empty device id")
	}
	var t Twin
	if _, err := c.doJSON(ctx, http.MethodGet, twinPath(deviceID, moduleID), nil, nil, &t); err != nil {
		return nil, err
	}
	return &t, nil
}

// UpdateTwin merges patch into the twin (PATCH). With a non-empty etag the
// hub applies it only if the twin's etag still matches (412 otherwise).
func (c *Client) UpdateTwin(ctx context.Context, deviceID, moduleID string, patch any, etag string) (*Twin, error) {
	if deviceID == "" {
		return nil, errors.New("update twin: empty device id")
	}
	var t Twin
	if _, err := c.doJSON(ctx, http.MethodPatch, twinPath(deviceID, moduleID), patch, ifMatch(etag), &t); err != nil {
		return nil, err
	}
	return &t, nil
}

// ReplaceTwin replaces the twin's tags and desired properties (PUT).
func (c *Client) ReplaceTwin(ctx context.Context, deviceID, moduleID string, twin any, etag string) (*Twin, error) {
	if deviceID == "" {
		return nil, errors.New("replace twin: empty device id")
	}
	var t Twin
	if _, err := c.doJSON(ctx, http.MethodPut, twinPath(deviceID, moduleID), twin, ifMatch(etag), &t); err != nil {
		return nil, err
	}
	return &t, nil
}
