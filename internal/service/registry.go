package service

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"

	"outpost/internal/identity"
)

// CreateDevice registers a new device. Empty symmetric keys are generated
// by the hub. It fails with a 409 *Error when the id is taken.
func (c *Client) CreateDevice(ctx context.Context, d identity.Device) (identity.Device, error) {
	if d.DeviceID == "" {
		return identity.Device{}, errors.New("create device: empty device id")
	}
	var out identity.Device
	_, err := c.doJSON(ctx, http.MethodPut, Path("devices", d.DeviceID), d, nil, &out)
	return out, err
}

// CreateEdgeDevice registers a new IoT Edge device with generated keys.
func (c *Client) CreateEdgeDevice(ctx context.Context, id string) (identity.Device, error) {
	d := identity.Device{DeviceID: id}
	d.Capabilities.IoTEdge = true
	return c.CreateDevice(ctx, d)
}

// GetDevice returns a device's registry entry.
func (c *Client) GetDevice(ctx context.Context, id string) (identity.Device, error) {
	var out identity.Device
	_, err := c.doJSON(ctx, http.MethodGet, Path("devices", id), nil, nil, &out)
	return out, err
}

// UpdateDevice replaces a device's registry entry. It is applied only if
// the stored etag is d.ETag; an empty d.ETag updates unconditionally ("*").
func (c *Client) UpdateDevice(ctx context.Context, d identity.Device) (identity.Device, error) {
	etag := d.ETag
	if etag == "" {
		etag = "*"
	}
	var out identity.Device
	_, err := c.doJSON(ctx, http.MethodPut, Path("devices", d.DeviceID), d, ifMatch(etag), &out)
	return out, err
}

// DeleteDevice removes a device, its modules and its twin. A non-empty etag
// makes the delete conditional.
func (c *Client) DeleteDevice(ctx context.Context, id, etag string) error {
	if etag == "" {
		etag = "*"
	}
	_, err := c.doJSON(ctx, http.MethodDelete, Path("devices", id), nil, ifMatch(etag), nil)
	return err
}

// ListDevices returns every device in the registry.
func (c *Client) ListDevices(ctx context.Context) ([]identity.Device, error) {
	var out []identity.Device
	_, err := c.doJSON(ctx, http.MethodGet, Path("devices"), nil, nil, &out)
	return out, err
}

// CreateModule registers a new module on an existing device.
func (c *Client) CreateModule(ctx context.Context, m identity.Module) (identity.Module, error) {
	if m.DeviceID == "" || m.ModuleID == "" {
		return identity.Module{}, errors.New("create module: empty device or module id")
	}
	var out identity.Module
	_, err := c.doJSON(ctx, http.MethodPut, Path("devices", m.DeviceID, "modules", m.ModuleID), m, nil, &out)
	return out, err
}

// GetModule returns a module's registry entry.
func (c *Client) GetModule(ctx context.Context, deviceID, moduleID string) (identity.Module, error) {
	var out identity.Module
	_, err := c.doJSON(ctx, http.MethodGet, Path("devices", deviceID, "modules", moduleID), nil, nil, &out)
	return out, err
}

// UpdateModule replaces a module's registry entry, conditional on m.ETag
// when it is set.
func (c *Client) UpdateModule(ctx context.Context, m identity.Module) (identity.Module, error) {
	etag := m.ETag
	if etag == "" {
		etag = "*"
	}
	var out identity.Module
	_, err := c.doJSON(ctx, http.MethodPut, Path("devices", m.DeviceID, "modules", m.ModuleID), m, ifMatch(etag), &out)
	return out, err
}

// DeleteModule removes a module and its twin.
func (c *Client) DeleteModule(ctx context.Context, deviceID, moduleID, etag string) error {
	if etag == "" {
		etag = "*"
	}
	_, err := c.doJSON(ctx, http.MethodDelete, Path("devices", deviceID, "modules", moduleID), nil, ifMatch(etag), nil)
	return err
}

// ListModules returns the modules of a device.
func (c *Client) ListModules(ctx context.Context, deviceID string) ([]identity.Module, error) {
	var out []identity.Module
	_, err := c.doJSON(ctx, http.MethodGet, Path("devices", deviceID, "modules"), nil, nil, &out)
	return out, err
}

// childrenRequest is the body of POST /devices/{id}/children, an Outpost
// extension that sets many parents in one call with the rules checked by
// the hub (only non-edge children; one parent unless forced).
type childrenRequest struct {
	Children []string `json:"children"`
	Force    bool     `json:"force"`
}

// AddChildren makes each device in children a child of the edge device
// edgeID. Without force, a child that already has another parent is an
// error; with force it moves to edgeID.
func (c *Client) AddChildren(ctx context.Context, edgeID string, children []string, force bool) error {
	if len(children) == 0 {
		return errors.New("add children: empty child list")
	}
	_, err := c.doJSON(ctx, http.MethodPost, Path("devices", edgeID, "children"), childrenRequest{Children: children, Force: force}, nil, nil)
	return err
}

// RemoveChildren detaches each of children from the edge device edgeID.
func (c *Client) RemoveChildren(ctx context.Context, edgeID string, children []string) error {
	for _, ch := range children {
		if _, err := c.doJSON(ctx, http.MethodDelete, Path("devices", edgeID, "children", ch), nil, nil, nil); err != nil {
			return err
		}
	}
	return nil
}

// ListChildren returns the ids of the edge device edgeID's children,
// sorted. The hub may answer with ids or with device documents; both are
// understood.
func (c *Client) ListChildren(ctx context.Context, edgeID string) ([]string, error) {
	var items []json.RawMessage
	if _, err := c.doJSON(ctx, http.MethodGet, Path("devices", edgeID, "children"), nil, nil, &items); err != nil {
		return nil, err
	}
	ids := make([]string, 0, len(items))
	for _, it := range items {
		var id string
		if json.Unmarshal(it, &id) != nil {
			var d struct {
				DeviceID string `json:"deviceId"`
			}
			if err := json.Unmarshal(it, &d); err != nil || d.DeviceID == "" {
				return nil, fmt.Errorf("list children: unexpected entry %.80s", it)
			}
			id = d.DeviceID
		}
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids, nil
}
