package identity

import (
	"time"

	"outpost/internal/status"
)

// ManagedByEdge marks modules the IoT Edge runtime owns.
const ManagedByEdge = "iotEdge"

// PrepareNewModule validates a user module about to be created and fills
// what the server owns. Module ids starting with '$' are refused: they
// belong to the IoT Edge runtime (see PrepareSystemModule). The caller
// checks that the device exists.
func PrepareNewModule(m *Module, now time.Time) error {
	if err := ValidateDeviceID(m.DeviceID); err != nil {
		return err
	}
	if err := ValidateModuleID(m.ModuleID); err != nil {
		return err
	}
	if IsSystemModule(m.ModuleID) {
		return status.BadRequest(status.CodeArgumentInvalid,
			"module id %q is reserved for the IoT Edge runtime, which creates it with the edge device", m.ModuleID)
	}
	return prepareModule(m, now)
}

// PrepareSystemModule is PrepareNewModule for the IoT Edge runtime's own
// modules, $edgeAgent and $edgeHub, and only for them.
func PrepareSystemModule(m *Module, now time.Time) error {
	if err := ValidateDeviceID(m.DeviceID); err != nil {
		return err
	}
	if !IsSystemModule(m.ModuleID) {
		return status.BadRequest(status.CodeArgumentInvalid, "module id %q is not an IoT Edge system module", m.ModuleID)
	}
	if m.ManagedBy == "" {
		m.ManagedBy = ManagedByEdge
	}
	return prepareModule(m, now)
}

func prepareModule(m *Module, now time.Time) error {
	if err := prepareAuth(&m.Authentication, nil); err != nil {
		return err
	}
	m.GenerationID = NewGenerationID(now)
	m.ETag = NewETag()
	m.ConnectionState = Disconnected
	m.ConnectionStateUpdatedTime = time.Time{}
	m.LastActivityTime = time.Time{}
	m.CloudToDeviceMessageCount = 0
	return nil
}

// PrepareModuleUpdate validates upd, a full replacement of old, keeping
// what clients may not change, as PrepareUpdate does for devices.
func PrepareModuleUpdate(old, upd *Module, now time.Time) error {
	if upd.DeviceID != old.DeviceID || upd.ModuleID != old.ModuleID {
		return status.BadRequest(status.CodeArgumentInvalid, "module %q of device %q in the body does not match %q of %q",
			upd.ModuleID, upd.DeviceID, old.ModuleID, old.DeviceID)
	}
	if err := prepareAuth(&upd.Authentication, &old.Authentication); err != nil {
		return err
	}
	if upd.ManagedBy == "" {
		upd.ManagedBy = old.ManagedBy
	}
	upd.GenerationID = old.GenerationID
	upd.ETag = NewETag()
	upd.ConnectionState = old.ConnectionState
	upd.ConnectionStateUpdatedTime = old.ConnectionStateUpdatedTime
	upd.LastActivityTime = old.LastActivityTime
	upd.CloudToDeviceMessageCount = old.CloudToDeviceMessageCount
	return nil
}

// EdgeModules returns the $edgeAgent and $edgeHub modules the registry
// creates with an edge device, each with fresh SAS keys.
func EdgeModules(deviceID string, now time.Time) []Module {
	ms := []Module{{DeviceID: deviceID, ModuleID: EdgeAgent}, {DeviceID: deviceID, ModuleID: EdgeHub}}
	for i := range ms {
		ms[i].ManagedBy = ManagedByEdge
		// The default authentication (SAS, generated keys) cannot be
		// refused, and the device id was validated with its device.
		_ = prepareModule(&ms[i], now)
	}
	return ms
}
