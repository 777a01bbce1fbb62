package identity

import (
	"strconv"
	"strings"
	"time"

	"outpost/internal/status"
)

// ScopeSnapshot is the identities in an edge's scope, as the hub sends
// them to the edge (the reply to its sync-identities request): the edge,
// its children and the modules of both, with their keys and thumbprints,
// and the hub's root CA. It carries keys: it travels only to the edge
// itself, over its authenticated TLS link, and the edge stores it sealed.
type ScopeSnapshot struct {
	Edge        Device    `json:"edge"`
	Devices     []Device  `json:"devices"`
	Modules     []Module  `json:"modules"`
	RootCA      string    `json:"rootCA"`
	HubHostName string    `json:"hubHostName"`
	SyncedAt    time.Time `json:"syncedAt"`
}

// ScopePrefix starts every edge device scope.
const ScopePrefix = "ms-azure-iot-edge://"

// NewEdgeScope returns a fresh scope for edge device id, in Azure's form
// ms-azure-iot-edge://{id}-{19 digits}. The number is random so that a
// device deleted and created again gets a new scope and the old
// children, which name the old scope, are not silently re-adopted.
func NewEdgeScope(id string) string {
	const lo = 1_000_000_000_000_000_000 // the 19-digit numbers are [lo, 10*lo)
	n := lo + randUint64()%(9*lo)
	return ScopePrefix + id + "-" + strconv.FormatUint(n, 10)
}

// ScopeDeviceID returns the edge device id a scope belongs to. Ids may
// themselves contain '-', so the unique number is the part after the
// last '-'.
func ScopeDeviceID(scope string) (string, bool) {
	rest, ok := strings.CutPrefix(scope, ScopePrefix)
	if !ok {
		return "", false
	}
	i := strings.LastIndexByte(rest, '-')
	if i <= 0 || i == len(rest)-1 {
		return "", false
	}
	for _, c := range []byte(rest[i+1:]) {
		if c < '0' || c > '9' {
			return "", false
		}
	}
	id := rest[:i]
	if ValidateDeviceID(id) != nil {
		return "", false
	}
	return id, true
}

// ParentScope returns the scope of d's parent edge, or "" if d has none.
// A non-edge device created the SDK way may carry it in deviceScope only.
func ParentScope(d *Device) string {
	if len(d.ParentScopes) > 0 {
		return d.ParentScopes[0]
	}
	if !d.IsEdge() {
		return d.DeviceScope
	}
	return ""
}

// IsChildOf reports whether child's parent is edge.
func IsChildOf(child, edge *Device) bool {
	return edge.DeviceScope != "" && ParentScope(child) == edge.DeviceScope
}

// AttachChild makes child a child of edge with the zero Policy. See
// Policy.AttachChild.
func AttachChild(edge, child *Device, force bool) error {
	return Policy{}.AttachChild(edge, child, force)
}

// ValidateParent checks, with the zero Policy, that parent may be the
// parent child names. See Policy.ValidateParent.
func ValidateParent(parent, child *Device) error { return Policy{}.ValidateParent(parent, child) }

// checkParent holds the rules every parent/child pair obeys, however it
// was requested.
func (p Policy) checkParent(edge, child *Device) error {
	if edge.DeviceID == child.DeviceID {
		return status.BadRequest(status.CodeInvalidChildDevice, "a device cannot be its own parent")
	}
	if !edge.IsEdge() {
		return status.BadRequest(status.CodeInvalidParentDevice,
			"device '%s' is not an IoT Edge device: only edge devices can be parents", edge.DeviceID)
	}
	if edge.DeviceScope == "" {
		return status.BadRequest(status.CodeInvalidParentDevice, "edge device '%s' has no device scope", edge.DeviceID)
	}
	if child.IsEdge() {
		if !p.AllowNested {
			return edgeChildError(child.DeviceID)
		}
		// Deeper cycles need the whole registry; the caller walks it.
		for _, s := range edge.ParentScopes {
			if s == child.DeviceScope {
				return status.BadRequest(status.CodeInvalidChildDevice,
					"device '%s' is the parent of '%s': a device cannot be the child of its own child", child.DeviceID, edge.DeviceID)
			}
		}
	}
	return nil
}

// AttachChild makes child a child of edge: the add-children rule of IoT
// Hub. A child has exactly one parent, so a child of another edge moves
// only with force; attaching to the current parent again is a no-op. On
// success child.parentScopes is [edge.deviceScope] and, for a non-edge
// child, child.deviceScope is edge.deviceScope too; a nested edge child
// keeps its own deviceScope. On error child is unchanged.
func (p Policy) AttachChild(edge, child *Device, force bool) error {
	if err := p.checkParent(edge, child); err != nil {
		return err
	}
	if cur := ParentScope(child); cur != "" && cur != edge.DeviceScope && !force {
		name := cur
		if id, ok := ScopeDeviceID(cur); ok {
			name = id
		}
		return status.BadRequest(status.CodeInvalidChildDevice,
			"device '%s' already has parent '%s': re-parenting needs --force", child.DeviceID, name)
	}
	child.ParentScopes = []string{edge.DeviceScope}
	if !child.IsEdge() {
		child.DeviceScope = edge.DeviceScope
	}
	return nil
}

// ValidateParent checks a parent that child already names (through
// PrepareNewDevice or PrepareUpdate): parent must be the edge device
// owning that scope and the pair must obey the AttachChild rules.
func (p Policy) ValidateParent(parent, child *Device) error {
	if err := p.checkParent(parent, child); err != nil {
		return err
	}
	if s := ParentScope(child); s != parent.DeviceScope {
		return status.BadRequest(status.CodeInvalidChildDevice,
			"device '%s' names parent scope %q, which is not the scope of edge device '%s' (was the edge device re-created?)",
			child.DeviceID, s, parent.DeviceID)
	}
	return nil
}

// DetachChild removes child from edge. It is an error if child is not
// edge's child, so a stale remove-children cannot detach a device that
// has since moved to another parent. On error child is unchanged.
func DetachChild(edge, child *Device) error {
	if !IsChildOf(child, edge) {
		return status.BadRequest(status.CodeInvalidChildDevice, "device '%s' is not a child of '%s'", child.DeviceID, edge.DeviceID)
	}
	child.ParentScopes = []string{}
	if !child.IsEdge() {
		child.DeviceScope = ""
	}
	return nil
}
