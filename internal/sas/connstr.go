package sas

import (
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"time"
)

// ConnectionString is a device, module or service connection string.
// HostName is the hub's identity (it may carry a :port when the hub does
// not listen on the protocol's default); GatewayHostName only changes
// where a device's socket goes.
type ConnectionString struct {
	HostName              string
	DeviceID              string
	ModuleID              string
	SharedAccessKey       string
	SharedAccessKeyName   string
	SharedAccessSignature string
	GatewayHostName       string
	X509                  bool
}

// Field names as Azure spells them; matched case-insensitively on input.
const (
	fHostName  = "HostName"
	fDeviceID  = "DeviceId"
	fModuleID  = "ModuleId"
	fKeyName   = "SharedAccessKeyName"
	fKey       = "SharedAccessKey"
	fSignature = "SharedAccessSignature"
	fX509      = "x509"
	fGateway   = "GatewayHostName"
)

// ParseConnectionString parses "Key=Value;Key=Value…". Values may contain
// '=' (base64 keys, SAS tokens). It checks the combination of fields:
//   - HostName is always required;
//   - a device or module string has DeviceId and exactly one of
//     SharedAccessKey, SharedAccessSignature or x509=true
//     (SharedAccessKeyName may accompany SharedAccessKey: a hub policy
//     used for a device);
//   - a service string has no DeviceId and has SharedAccessKeyName and
//     SharedAccessKey.
func ParseConnectionString(s string) (ConnectionString, error) {
	var cs ConnectionString
	seen := map[string]bool{}
	for _, part := range strings.Split(strings.TrimSpace(s), ";") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		k, v, ok := strings.Cut(part, "=")
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		name, known := canonicalField(k)
		if !known {
			return ConnectionString{}, fmt.Errorf("connection string: unknown field %q", truncate(k))
		}
		if !ok || v == "" {
			return ConnectionString{}, fmt.Errorf("connection string: empty %s", name)
		}
		if seen[name] {
			return ConnectionString{}, fmt.Errorf("connection string: %s given twice", name)
		}
		seen[name] = true
		switch name {
		case fHostName:
			cs.HostName = v
		case fDeviceID:
			cs.DeviceID = v
		case fModuleID:
			cs.ModuleID = v
		case fKeyName:
			cs.SharedAccessKeyName = v
		case fKey:
			cs.SharedAccessKey = v
		case fSignature:
			cs.SharedAccessSignature = v
		case fGateway:
			cs.GatewayHostName = v
		case fX509:
			switch strings.ToLower(v) {
			case "true":
				cs.X509 = true
			case "false":
			default:
				return ConnectionString{}, fmt.Errorf("connection string: x509 must be true or false, not %q", truncate(v))
			}
		}
	}
	if err := cs.validate(); err != nil {
		return ConnectionString{}, err
	}
	return cs, nil
}

func canonicalField(k string) (string, bool) {
	for _, f := range []string{fHostName, fDeviceID, fModuleID, fKeyName, fKey, fSignature, fX509, fGateway} {
		if strings.EqualFold(k, f) {
			return f, true
		}
	}
	return "", false
}

func (cs ConnectionString) validate() error {
	if cs.HostName == "" {
		return errors.New("connection string: missing HostName")
	}
	if cs.SharedAccessKey != "" {
		if _, err := base64.StdEncoding.DecodeString(cs.SharedAccessKey); err != nil {
			return errors.New("connection string: SharedAccessKey is not base64")
		}
	}
	if cs.SharedAccessSignature != "" {
		if _, err := ParseToken(cs.SharedAccessSignature); err != nil {
			return fmt.Errorf("connection string: SharedAccessSignature: %w", err)
		}
	}
	if cs.DeviceID == "" {
		switch {
		case cs.ModuleID != "":
			return errors.New("connection string: ModuleId without DeviceId")
		case cs.SharedAccessKeyName == "" || cs.SharedAccessKey == "":
			return errors.New("connection string: missing DeviceId (device) or SharedAccessKeyName and SharedAccessKey (service)")
		case cs.SharedAccessSignature != "" || cs.X509:
			return errors.New("connection string: a service string takes SharedAccessKeyName and SharedAccessKey only")
		case cs.GatewayHostName != "":
			return errors.New("connection string: GatewayHostName needs a DeviceId")
		}
		return nil
	}
	n := 0
	for _, set := range []bool{cs.SharedAccessKey != "", cs.SharedAccessSignature != "", cs.X509} {
		if set {
			n++
		}
	}
	if n != 1 {
		return errors.New("connection string: need exactly one of SharedAccessKey, SharedAccessSignature or x509=true")
	}
	if cs.SharedAccessKeyName != "" && cs.SharedAccessKey == "" {
		return errors.New("connection string: SharedAccessKeyName without SharedAccessKey")
	}
	return nil
}

// IsService reports whether this is a service (hub policy) string.
func (cs ConnectionString) IsService() bool { return cs.DeviceID == "" }

// String renders the connection string with fields in Azure's order.
func (cs ConnectionString) String() string {
	var parts []string
	add := func(k, v string) {
		if v != "" {
			parts = append(parts, k+"="+v)
		}
	}
	add(fHostName, cs.HostName)
	add(fDeviceID, cs.DeviceID)
	add(fModuleID, cs.ModuleID)
	add(fKeyName, cs.SharedAccessKeyName)
	add(fKey, cs.SharedAccessKey)
	add(fSignature, cs.SharedAccessSignature)
	if cs.X509 {
		add(fX509, "true")
	}
	add(fGateway, cs.GatewayHostName)
	return strings.Join(parts, ";")
}

// Token returns a token for this identity valid until expiry: the
// SharedAccessSignature as given, or one signed with SharedAccessKey for
// the device, module or (service strings) the whole hub. X.509 strings
// have no token.
func (cs ConnectionString) Token(expiry time.Time) (string, error) {
	switch {
	case cs.SharedAccessSignature != "":
		return cs.SharedAccessSignature, nil
	case cs.SharedAccessKey == "":
		return "", errors.New("connection string has no key to sign with")
	case cs.IsService():
		return Sign(cs.HostName, cs.SharedAccessKey, cs.SharedAccessKeyName, expiry)
	default:
		return Sign(DeviceResource(cs.HostName, cs.DeviceID, cs.ModuleID), cs.SharedAccessKey, cs.SharedAccessKeyName, expiry)
	}
}
