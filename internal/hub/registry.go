package hub

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"

	"outpost/internal/identity"
	"outpost/internal/status"
)

func decodeDevice(key string, rev uint64, raw []byte) (any, error) {
	d := new(identity.Device)
	if err := json.Unmarshal(raw, d); err != nil {
		return nil, fmt.Errorf("decode device: %w", err)
	}
	d.ETag = etagOf(rev)
	if d.ParentScopes == nil {
		d.ParentScopes = []string{}
	}
	return d, nil
}

func decodeModule(key string, rev uint64, raw []byte) (any, error) {
	m := new(identity.Module)
	if err := json.Unmarshal(raw, m); err != nil {
		return nil, fmt.Errorf("decode module: %w", err)
	}
	m.ETag = etagOf(rev)
	return m, nil
}

// deviceScopes feeds the children index: a device's id and parents.
func deviceScopes(val any) (string, []string) {
	d := val.(*identity.Device)
	if p := identity.ParentScope(d); p != "" {
		return d.DeviceID, []string{p}
	}
	return d.DeviceID, nil
}

func deviceNotFound(id string) error {
	return status.NotFound(status.CodeDeviceNotFound, "Device '%s' not found", id)
}

func moduleNotFound(d, m string) error {
	return status.NotFound(status.CodeModuleNotFound, "Module '%s' on device '%s' not found", m, d)
}

// GetDevice returns a device from this process's index.
func (h *Hub) GetDevice(id string) (identity.Device, error) {
	r, ok := h.devTab.get(deviceKey(id))
	if !ok {
		return identity.Device{}, deviceNotFound(id)
	}
	return *h.withPresence(r.val.(*identity.Device)).Clone(), nil
}

// ListDevices returns up to top devices (all when top <= 0), by id.
func (h *Hub) ListDevices(top int) []identity.Device {
	var out []identity.Device
	h.devTab.each(func(_ string, r *row) bool {
		out = append(out, *h.withPresence(r.val.(*identity.Device)).Clone())
		return true
	})
	slices.SortFunc(out, func(a, b identity.Device) int { return strings.Compare(a.DeviceID, b.DeviceID) })
	if top > 0 && len(out) > top {
		out = out[:top]
	}
	return out
}

// CreateOrUpdateDevice stores d. With an empty ifMatch it creates d and
// answers 409 if the id is taken; with "*" or an etag it replaces the
// stored device (PUT semantics), 412 on an etag mismatch. A replacement
// that moves a child from one parent to another needs force, as
// add-children does; attaching a parentless device or detaching one does
// not.
func (h *Hub) CreateOrUpdateDevice(ctx context.Context, d identity.Device, ifMatch string, force bool) (identity.Device, error) {
	if strings.TrimSpace(ifMatch) == "" {
		return h.createDevice(ctx, d)
	}
	if err := identity.ValidateDeviceID(d.DeviceID); err != nil {
		return identity.Device{}, err
	}
	var becameEdge bool
	r, err := h.mutate(ctx, h.devices, h.devTab, deviceKey(d.DeviceID), ifMatch,
		func() error { return deviceNotFound(d.DeviceID) },
		func(cur any) (any, error) {
			old := cur.(*identity.Device)
			upd := *d.Clone()
			hasChildren := old.IsEdge() && len(h.children.children(old.DeviceScope)) > 0
			if err := identity.PrepareUpdate(old, &upd, hasChildren, h.now()); err != nil {
				return nil, err
			}
			if identity.ParentChanged(old, &upd) {
				if identity.ParentScope(old) != "" && identity.ParentScope(&upd) != "" && !force {
					pid, _ := identity.ScopeDeviceID(identity.ParentScope(old))
					return nil, status.BadRequest(status.CodeInvalidChildDevice,
						"device '%s' already has parent '%s': re-parenting needs force (?force=true), or detach it first", upd.DeviceID, pid)
				}
				if err := h.validateParent(ctx, &upd); err != nil {
					return nil, err
				}
			}
			becameEdge = upd.IsEdge() && !old.IsEdge()
			return &upd, nil
		})
	if err != nil {
		return identity.Device{}, err
	}
	out := *h.withPresence(r.val.(*identity.Device))
	if becameEdge {
		if err := h.ensureEdgeModules(ctx, out.DeviceID); err != nil {
			return identity.Device{}, err
		}
	}
	return out, nil
}

// validateParent checks the parent d names, if any, against the registry.
func (h *Hub) validateParent(ctx context.Context, d *identity.Device) error {
	scope := identity.ParentScope(d)
	if scope == "" {
		return nil
	}
	pid, ok := identity.ScopeDeviceID(scope)
	if !ok {
		return status.BadRequest(status.CodeInvalidChildDevice, "device '%s': %q is not an edge device scope", d.DeviceID, scope)
	}
	pr, ok, err := h.lookup(ctx, h.devices, h.devTab, deviceKey(pid))
	if err != nil {
		return err
	}
	if !ok {
		return status.BadRequest(status.CodeInvalidParentDevice, "parent device '%s' of '%s' does not exist", pid, d.DeviceID)
	}
	return identity.ValidateParent(pr.val.(*identity.Device), d)
}

func (h *Hub) createDevice(ctx context.Context, d identity.Device) (identity.Device, error) {
	d = *d.Clone()
	if err := identity.PrepareNewDevice(&d, h.now()); err != nil {
		return identity.Device{}, err
	}
	if err := h.validateParent(ctx, &d); err != nil {
		return identity.Device{}, err
	}
	key := deviceKey(d.DeviceID)
	if _, ok := h.devTab.get(key); ok {
		return identity.Device{}, deviceExists(d.DeviceID)
	}
	if err := h.sweep(ctx, d.DeviceID); err != nil {
		return identity.Device{}, err
	}
	r, err := h.write(ctx, h.devices, h.devTab, key, nil, &d)
	if errors.Is(err, errExists) {
		return identity.Device{}, deviceExists(d.DeviceID)
	}
	if err != nil {
		return identity.Device{}, err
	}
	out := *r.val.(*identity.Device)
	if _, err := h.put(ctx, h.twins, h.twinTab, key, h.newTwinRecord(out.DeviceID, "")); err != nil {
		return identity.Device{}, err
	}
	if out.IsEdge() {
		if err := h.ensureEdgeModules(ctx, out.DeviceID); err != nil {
			return identity.Device{}, err
		}
	}
	return out, nil
}

func deviceExists(id string) error {
	return status.Conflict(status.CodeDeviceAlreadyExists, "A device with ID '%s' is already registered", id)
}

// sweep removes what a deleted device of the same id may have left behind
// when a crash cut its deletion short: modules and twins.
func (h *Hub) sweep(ctx context.Context, id string) error {
	dk := deviceKey(id)
	for _, k := range h.modTab.below(dk) {
		if err := h.remove(ctx, h.modules, h.modTab, k, 0); err != nil {
			return err
		}
	}
	for _, k := range h.twinTab.below(dk) {
		if err := h.remove(ctx, h.twins, h.twinTab, k, 0); err != nil {
			return err
		}
	}
	for _, k := range append(h.presTab.below(dk), dk) {
		if err := h.removePresence(ctx, k); err != nil {
			return err
		}
	}
	return nil
}

// ensureEdgeModules creates $edgeAgent and $edgeHub, with their twins, on
// an edge device that lacks them.
func (h *Hub) ensureEdgeModules(ctx context.Context, deviceID string) error {
	for _, m := range identity.EdgeModules(deviceID, h.now()) {
		key := moduleKey(deviceID, m.ModuleID)
		if _, ok := h.modTab.get(key); ok {
			continue
		}
		if _, err := h.write(ctx, h.modules, h.modTab, key, nil, &m); err != nil && !errors.Is(err, errExists) {
			return err
		}
		if _, err := h.put(ctx, h.twins, h.twinTab, key, h.newTwinRecord(deviceID, m.ModuleID)); err != nil {
			return err
		}
	}
	return nil
}

// DeleteDevice removes a device with its modules and twins. Deleting an
// edge device detaches its children (they keep working as parentless
// devices). An empty ifMatch or "*" deletes whatever is stored.
func (h *Hub) DeleteDevice(ctx context.Context, id, ifMatch string) error {
	key := deviceKey(id)
	r, err := h.removeIfMatch(ctx, h.devices, h.devTab, key, ifMatch, func() error { return deviceNotFound(id) })
	if err != nil {
		return err
	}
	old := r.val.(*identity.Device)
	// The device record is gone, so the device is deleted; what follows
	// is cleanup that a later create of the same id repeats if a crash
	// interrupts it here.
	if err := h.remove(ctx, h.twins, h.twinTab, key, 0); err != nil {
		return err
	}
	if err := h.sweep(ctx, id); err != nil {
		return err
	}
	if old.IsEdge() {
		for _, cid := range h.children.children(old.DeviceScope) {
			err := h.detach(ctx, old, cid)
			var ie *status.Error
			if err != nil && !errors.As(err, &ie) {
				return fmt.Errorf("detach child %s: %w", cid, err)
			}
		}
	}
	return nil
}

// detach removes child cid from edge by compare-and-set.
func (h *Hub) detach(ctx context.Context, edge *identity.Device, cid string) error {
	return h.relink(ctx, edge, cid, identity.DetachChild)
}

// relink applies a parent/child rule to the stored child cid by
// compare-and-set.
func (h *Hub) relink(ctx context.Context, edge *identity.Device, cid string, rule func(edge, child *identity.Device) error) error {
	_, err := h.mutate(ctx, h.devices, h.devTab, deviceKey(cid), "*",
		func() error { return deviceNotFound(cid) },
		func(cur any) (any, error) {
			c := cur.(*identity.Device).Clone()
			if err := rule(edge, c); err != nil {
				return nil, err
			}
			return c, nil
		})
	return err
}

// AddChildren makes every child in childIDs a child of edge device edgeID.
// All children are checked before any is written, so a refused child
// (an edge device, a device with another parent and no force, a missing
// id) leaves the registry unchanged unless a concurrent writer interferes.
func (h *Hub) AddChildren(ctx context.Context, edgeID string, childIDs []string, force bool) error {
	return h.changeChildren(ctx, edgeID, childIDs, func(edge, child *identity.Device) error {
		return identity.AttachChild(edge, child, force)
	})
}

// RemoveChildren detaches every child in childIDs from edge device edgeID.
// A device that is not edgeID's child is a 400, checked before any write.
func (h *Hub) RemoveChildren(ctx context.Context, edgeID string, childIDs []string) error {
	return h.changeChildren(ctx, edgeID, childIDs, identity.DetachChild)
}

// changeChildren checks rule against every child first, then writes each.
func (h *Hub) changeChildren(ctx context.Context, edgeID string, childIDs []string, rule func(edge, child *identity.Device) error) error {
	er, ok, err := h.lookup(ctx, h.devices, h.devTab, deviceKey(edgeID))
	if err != nil {
		return err
	}
	if !ok {
		return deviceNotFound(edgeID)
	}
	edge := er.val.(*identity.Device)
	if len(childIDs) == 0 {
		return status.BadRequest(status.CodeArgumentInvalid, "no child devices given")
	}
	for _, cid := range childIDs {
		cr, ok, err := h.lookup(ctx, h.devices, h.devTab, deviceKey(cid))
		if err != nil {
			return err
		}
		if !ok {
			return deviceNotFound(cid)
		}
		if err := rule(edge, cr.val.(*identity.Device).Clone()); err != nil {
			return err
		}
	}
	for _, cid := range childIDs {
		if err := h.relink(ctx, edge, cid, rule); err != nil {
			return err
		}
	}
	return nil
}

// ListChildren returns the children of edge device edgeID, by id.
func (h *Hub) ListChildren(edgeID string) ([]identity.Device, error) {
	er, ok := h.devTab.get(deviceKey(edgeID))
	if !ok {
		return nil, deviceNotFound(edgeID)
	}
	edge := er.val.(*identity.Device)
	if !edge.IsEdge() {
		return nil, status.BadRequest(status.CodeInvalidParentDevice,
			"device '%s' is not an IoT Edge device: only edge devices have children", edgeID)
	}
	out := []identity.Device{}
	for _, cid := range h.children.children(edge.DeviceScope) {
		if cr, ok := h.devTab.get(deviceKey(cid)); ok {
			out = append(out, *h.withPresence(cr.val.(*identity.Device)).Clone())
		}
	}
	return out, nil
}

// GetModule returns a module from this process's index.
func (h *Hub) GetModule(deviceID, moduleID string) (identity.Module, error) {
	r, ok := h.modTab.get(moduleKey(deviceID, moduleID))
	if !ok {
		if _, ok := h.devTab.get(deviceKey(deviceID)); !ok {
			return identity.Module{}, deviceNotFound(deviceID)
		}
		return identity.Module{}, moduleNotFound(deviceID, moduleID)
	}
	return *h.withModulePresence(r.val.(*identity.Module)), nil
}

// ListModules returns the modules of a device, by id.
func (h *Hub) ListModules(deviceID string) ([]identity.Module, error) {
	if _, ok := h.devTab.get(deviceKey(deviceID)); !ok {
		return nil, deviceNotFound(deviceID)
	}
	out := []identity.Module{}
	for _, k := range h.modTab.below(deviceKey(deviceID)) {
		if r, ok := h.modTab.get(k); ok {
			out = append(out, *h.withModulePresence(r.val.(*identity.Module)))
		}
	}
	slices.SortFunc(out, func(a, b identity.Module) int { return strings.Compare(a.ModuleID, b.ModuleID) })
	return out, nil
}

// CreateOrUpdateModule stores m, with the same If-Match rules as devices.
func (h *Hub) CreateOrUpdateModule(ctx context.Context, m identity.Module, ifMatch string) (identity.Module, error) {
	if err := identity.ValidateDeviceID(m.DeviceID); err != nil {
		return identity.Module{}, err
	}
	if _, ok := h.devTab.get(deviceKey(m.DeviceID)); !ok {
		return identity.Module{}, deviceNotFound(m.DeviceID)
	}
	key := moduleKey(m.DeviceID, m.ModuleID)
	if strings.TrimSpace(ifMatch) == "" {
		if err := identity.PrepareNewModule(&m, h.now()); err != nil {
			return identity.Module{}, err
		}
		if _, ok := h.modTab.get(key); ok {
			return identity.Module{}, moduleExists(m.DeviceID, m.ModuleID)
		}
		r, err := h.write(ctx, h.modules, h.modTab, key, nil, &m)
		if errors.Is(err, errExists) {
			return identity.Module{}, moduleExists(m.DeviceID, m.ModuleID)
		}
		if err != nil {
			return identity.Module{}, err
		}
		if _, err := h.put(ctx, h.twins, h.twinTab, key, h.newTwinRecord(m.DeviceID, m.ModuleID)); err != nil {
			return identity.Module{}, err
		}
		return *r.val.(*identity.Module), nil
	}
	if err := identity.ValidateModuleID(m.ModuleID); err != nil {
		return identity.Module{}, err
	}
	r, err := h.mutate(ctx, h.modules, h.modTab, key, ifMatch,
		func() error { return moduleNotFound(m.DeviceID, m.ModuleID) },
		func(cur any) (any, error) {
			upd := m
			if err := identity.PrepareModuleUpdate(cur.(*identity.Module), &upd, h.now()); err != nil {
				return nil, err
			}
			return &upd, nil
		})
	if err != nil {
		return identity.Module{}, err
	}
	return *h.withModulePresence(r.val.(*identity.Module)), nil
}

func moduleExists(d, m string) error {
	return status.Conflict(status.CodeModuleAlreadyExists, "A module with ID '%s' is already registered on device '%s'", m, d)
}

// DeleteModule removes a module and its twin. The IoT Edge runtime's
// modules go only with their edge device.
func (h *Hub) DeleteModule(ctx context.Context, deviceID, moduleID, ifMatch string) error {
	key := moduleKey(deviceID, moduleID)
	if identity.IsSystemModule(moduleID) {
		if dr, ok := h.devTab.get(deviceKey(deviceID)); ok && dr.val.(*identity.Device).IsEdge() {
			return status.BadRequest(status.CodeArgumentInvalid,
				"module '%s' belongs to the IoT Edge runtime of '%s' and is deleted with the device", moduleID, deviceID)
		}
	}
	notFound := func() error {
		if _, ok := h.devTab.get(deviceKey(deviceID)); !ok {
			return deviceNotFound(deviceID)
		}
		return moduleNotFound(deviceID, moduleID)
	}
	if _, err := h.removeIfMatch(ctx, h.modules, h.modTab, key, ifMatch, notFound); err != nil {
		return err
	}
	if err := h.remove(ctx, h.twins, h.twinTab, key, 0); err != nil {
		return err
	}
	return h.removePresence(ctx, key)
}
