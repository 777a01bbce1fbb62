package identity

import (
	"time"

	"outpost/internal/status"
)

// Policy holds the registry rules that differ between deployments. The
// zero Policy is the mission's rule set: only non-edge devices can be
// children.
type Policy struct {
	// AllowNested lets an edge device be the child of another edge
	// device (Azure's nested edge). The child edge keeps its own
	// deviceScope and names its parent in parentScopes.
	AllowNested bool
}

// PrepareNewDevice validates a device about to be created and fills what
// the server owns, with the zero Policy. See Policy.PrepareNewDevice.
func PrepareNewDevice(d *Device, now time.Time) error { return Policy{}.PrepareNewDevice(d, now) }

// PrepareUpdate validates a replacement of old by upd, with the zero
// Policy. See Policy.PrepareUpdate.
func PrepareUpdate(old, upd *Device, hasChildren bool, now time.Time) error {
	return Policy{}.PrepareUpdate(old, upd, hasChildren, now)
}

// PrepareNewDevice validates a device about to be created and fills what
// the server owns: status (enabled by default), authentication (SAS with
// generated keys by default), generation id, etag, connection state, and
// for an edge device a fresh deviceScope. Client-supplied server fields
// (activity times, counters) are cleared.
//
// A device may be created as a child, as Azure's SDK samples do, by
// setting deviceScope (non-edge) or parentScopes to the parent's scope.
// PrepareNewDevice checks only the form of that request; when
// ParentScope(d) is not empty the caller must look up the parent named by
// ScopeDeviceID and call ValidateParent before storing d.
//
// On error d may be partly filled; callers validate a copy or discard d.
func (p Policy) PrepareNewDevice(d *Device, now time.Time) error {
	if err := ValidateDeviceID(d.DeviceID); err != nil {
		return err
	}
	if err := prepareStatus(d, nil, now); err != nil {
		return err
	}
	if err := prepareAuth(&d.Authentication, nil); err != nil {
		return err
	}
	if err := p.resolveScopes(nil, d, false); err != nil {
		return err
	}
	d.GenerationID = NewGenerationID(now)
	d.ETag = NewETag()
	d.ConnectionState = Disconnected
	d.ConnectionStateUpdatedTime = time.Time{}
	d.LastActivityTime = time.Time{}
	d.CloudToDeviceMessageCount = 0
	return nil
}

// PrepareUpdate validates upd, a full replacement (PUT) of old, and
// carries over what clients may not change: generation id, connection
// state, activity, counters, and an edge device's own deviceScope. It
// sets a new etag; the If-Match check is the caller's, before this call.
//
// Authentication: a type-less, key-less update keeps old's authentication;
// an empty SAS key keeps the stored key.
//
// Edge capability: turning it on gives the device a scope and requires
// that it not be a child (unless AllowNested); turning it off is refused
// while hasChildren, which the caller answers from the registry.
//
// Parent: parentScopes absent (nil) and deviceScope empty keep old's
// parent, so updates that omit the relationship do not detach. An
// explicit empty parentScopes with empty deviceScope detaches, and a new
// scope re-parents, which is how the az CLI edits relationships. When
// ParentChanged(old, upd) and ParentScope(upd) is not empty the caller
// must look up that parent and call ValidateParent. A full PUT is an
// explicit request, so it needs no force to re-parent.
//
// On error upd may be partly filled; callers validate a copy or discard
// it.
func (p Policy) PrepareUpdate(old, upd *Device, hasChildren bool, now time.Time) error {
	if upd.DeviceID != old.DeviceID {
		return status.BadRequest(status.CodeArgumentInvalid, "device id %q in the body does not match %q", upd.DeviceID, old.DeviceID)
	}
	if err := prepareStatus(upd, old, now); err != nil {
		return err
	}
	if err := prepareAuth(&upd.Authentication, &old.Authentication); err != nil {
		return err
	}
	if err := p.resolveScopes(old, upd, hasChildren); err != nil {
		return err
	}
	upd.GenerationID = old.GenerationID
	upd.ETag = NewETag()
	upd.ConnectionState = old.ConnectionState
	upd.ConnectionStateUpdatedTime = old.ConnectionStateUpdatedTime
	upd.LastActivityTime = old.LastActivityTime
	upd.CloudToDeviceMessageCount = old.CloudToDeviceMessageCount
	return nil
}

func prepareStatus(d, old *Device, now time.Time) error {
	switch d.Status {
	case "":
		d.Status = StatusEnabled
	case StatusEnabled, StatusDisabled:
	default:
		return status.BadRequest(status.CodeArgumentInvalid, "status %q is not one of enabled, disabled", d.Status)
	}
	switch {
	case old == nil:
		d.StatusUpdatedTime = time.Time{}
	case old.Status != d.Status:
		d.StatusUpdatedTime = now
	default:
		d.StatusUpdatedTime = old.StatusUpdatedTime
	}
	return nil
}

// resolveScopes settles d's deviceScope and parentScopes from what the
// request asks and what old (nil on create) holds, and enforces the
// relationship rules that need no other device.
func (p Policy) resolveScopes(old, d *Device, hasChildren bool) error {
	oldEdge := old != nil && old.IsEdge()
	newEdge := d.IsEdge()

	// A GET-then-PUT that turns edge off sends the device's own former
	// scope as deviceScope; that is not a parent request.
	ownOldScope := func(s string) bool { return oldEdge && s == old.DeviceScope }

	if len(d.ParentScopes) > 1 {
		return status.BadRequest(status.CodeInvalidChildDevice,
			"device '%s' names %d parents: a child device has exactly one parent", d.DeviceID, len(d.ParentScopes))
	}
	var parent string
	asked := false
	switch {
	case d.ParentScopes != nil:
		asked = true
		if len(d.ParentScopes) == 1 {
			parent = d.ParentScopes[0]
		}
		if !newEdge && d.DeviceScope != "" && d.DeviceScope != parent && !ownOldScope(d.DeviceScope) {
			return status.BadRequest(status.CodeInvalidChildDevice,
				"device '%s': deviceScope %q and parentScopes %q name different parents", d.DeviceID, d.DeviceScope, d.ParentScopes)
		}
	case !newEdge && d.DeviceScope != "" && !ownOldScope(d.DeviceScope):
		asked = true
		parent = d.DeviceScope
	}
	if !asked && old != nil {
		parent = ParentScope(old)
	}
	if parent != "" {
		pid, ok := ScopeDeviceID(parent)
		if !ok {
			return status.BadRequest(status.CodeInvalidChildDevice,
				"device '%s': %q is not an edge device scope (ms-azure-iot-edge://{id}-{number})", d.DeviceID, parent)
		}
		if pid == d.DeviceID {
			return status.BadRequest(status.CodeInvalidChildDevice, "a device cannot be its own parent")
		}
	}

	if oldEdge && !newEdge && hasChildren {
		return status.BadRequest(status.CodeInvalidParentDevice,
			"device '%s' has child devices: remove them before turning off IoT Edge (only edge devices can be parents)", d.DeviceID)
	}
	if newEdge && parent != "" && !p.AllowNested {
		if old != nil && !oldEdge {
			pid, _ := ScopeDeviceID(parent)
			return status.BadRequest(status.CodeInvalidChildDevice,
				"device '%s' is a child of '%s': only non-edge devices can be children; remove it from its parent before turning on IoT Edge",
				d.DeviceID, pid)
		}
		return edgeChildError(d.DeviceID)
	}

	switch {
	case newEdge && oldEdge:
		d.DeviceScope = old.DeviceScope
	case newEdge:
		d.DeviceScope = NewEdgeScope(d.DeviceID)
	default:
		d.DeviceScope = parent
	}
	if parent == "" {
		d.ParentScopes = []string{}
	} else {
		d.ParentScopes = []string{parent}
	}
	return nil
}

func edgeChildError(id string) *status.Error {
	return status.BadRequest(status.CodeInvalidChildDevice,
		"device '%s' is an IoT Edge device: only non-edge devices can be children (a child device has exactly one parent, which is an edge device)", id)
}

// ParentChanged reports whether upd names a different parent than old
// (nil for a device being created), so the caller knows to run
// ValidateParent.
func ParentChanged(old, upd *Device) bool {
	if old == nil {
		return ParentScope(upd) != ""
	}
	return ParentScope(old) != ParentScope(upd)
}
