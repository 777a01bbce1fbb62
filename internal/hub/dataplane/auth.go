package dataplane

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"outpost/internal/gateway"
	"outpost/internal/identity"
)

// Authenticate looks the identity up in the in-memory registry and checks
// its secret: a SAS token signed with either key, or a client certificate
// whose thumbprint is registered or that chains to the hub's root CA with
// CN = client id, for client authentication (so never through an edge
// CA). Disabled devices, and modules of disabled devices, are refused.
func (p *Plane) Authenticate(ctx context.Context, c gateway.Credentials) (gateway.Identity, error) {
	dev, err := p.h.GetDevice(c.DeviceID)
	if err != nil {
		return gateway.Identity{}, gateway.AuthFailed(gateway.ReasonNotFound, err)
	}
	if !dev.Enabled() {
		return gateway.Identity{}, gateway.AuthFailed(gateway.ReasonDisabled, fmt.Errorf("device %s is disabled", c.DeviceID))
	}
	auth := dev.Authentication
	if c.ModuleID != "" {
		m, err := p.h.GetModule(c.DeviceID, c.ModuleID)
		if err != nil {
			return gateway.Identity{}, gateway.AuthFailed(gateway.ReasonNotFound, err)
		}
		auth = m.Authentication
	}
	id := gateway.Identity{DeviceID: c.DeviceID, ModuleID: c.ModuleID, Edge: c.ModuleID == "" && dev.IsEdge()}
	now := p.now()
	if c.Token != nil {
		keys := identity.Keys(auth)
		if len(keys) == 0 {
			return gateway.Identity{}, gateway.AuthFailed(gateway.ReasonWrongMethod,
				fmt.Errorf("%s authenticates with %q, not a SAS token", c.ClientID, auth.Type))
		}
		if err := gateway.VerifySAS(c.Token, keys, p.h.HostName(), c.DeviceID, c.ModuleID, now, p.cfg.ClockSkew); err != nil {
			return gateway.Identity{}, err
		}
		id.AuthMethod, id.TokenExpiry = gateway.AuthSAS, c.Token.Expiry
		return id, nil
	}
	switch auth.Type {
	case identity.AuthSelfSigned:
		var thumbs []string
		for _, t := range []string{auth.X509Thumbprint.PrimaryThumbprint, auth.X509Thumbprint.SecondaryThumbprint} {
			if t != "" {
				thumbs = append(thumbs, t)
			}
		}
		if len(thumbs) == 0 {
			return gateway.Identity{}, gateway.AuthFailed(gateway.ReasonBadCert, errors.New("no thumbprint registered"))
		}
		if err := gateway.VerifyX509(c.PeerCerts, thumbs, nil, c.ClientID, now); err != nil {
			return gateway.Identity{}, err
		}
		id.AuthMethod = gateway.AuthX509Thumbprint
	case identity.AuthCA:
		if p.pool == nil {
			return gateway.Identity{}, gateway.AuthFailed(gateway.ReasonBadCert, errors.New("this hub has no CA to verify certificates against"))
		}
		if err := gateway.VerifyX509(c.PeerCerts, nil, p.pool, c.ClientID, now); err != nil {
			return gateway.Identity{}, err
		}
		id.AuthMethod = gateway.AuthX509CA
	default:
		return gateway.Identity{}, gateway.AuthFailed(gateway.ReasonWrongMethod,
			fmt.Errorf("%s authenticates with a SAS token, not a certificate", c.ClientID))
	}
	return id, nil
}

// InScope reports whether edge may act for deviceID/moduleID: a module of
// the edge itself, or a child device whose parentScopes hold the edge's
// scope, or a module of such a child. A disabled child stays in scope:
// the edge refuses it from its next identity sync on (the hub drops the
// edge's connection to make it sync), and until then, offline perhaps
// for days, it acknowledged messages and twin patches of a child it knew
// as enabled, which must still reach the hub. Refusing them here would
// drop the edge's link on every replay and hold up its whole backlog.
func (p *Plane) InScope(ctx context.Context, edge gateway.Identity, deviceID, moduleID string) (bool, error) {
	e, err := p.h.GetDevice(edge.DeviceID)
	if err != nil || !e.IsEdge() || !e.Enabled() || edge.ModuleID != "" {
		return false, nil
	}
	if deviceID != e.DeviceID {
		child, err := p.h.GetDevice(deviceID)
		if err != nil || e.DeviceScope == "" || !slices.Contains(child.ParentScopes, e.DeviceScope) {
			return false, nil
		}
	}
	if moduleID == "" {
		return true, nil
	}
	if _, err := p.h.GetModule(deviceID, moduleID); err != nil {
		return false, nil
	}
	return true, nil
}
