package service

import (
	"outpost/internal/identity"
	"outpost/internal/sas"
)

// DeviceConnectionString renders the connection string a device uses to
// connect: its primary key for a SAS device, x509=true for a certificate
// device. hostName is the hub's (Client.HostName); gatewayHostName, when
// set, sends the device through that edge gateway.
func DeviceConnectionString(d identity.Device, hostName, gatewayHostName string) string {
	return connectionString(d.Authentication, hostName, d.DeviceID, "", gatewayHostName)
}

// ModuleConnectionString is DeviceConnectionString for a module.
func ModuleConnectionString(m identity.Module, hostName, gatewayHostName string) string {
	return connectionString(m.Authentication, hostName, m.DeviceID, m.ModuleID, gatewayHostName)
}

func connectionString(a identity.Authentication, host, deviceID, moduleID, gateway string) string {
	cs := sas.ConnectionString{HostName: host, DeviceID: deviceID, ModuleID: moduleID, GatewayHostName: gateway}
	switch a.Type {
	case identity.AuthSelfSigned, identity.AuthCA:
		cs.X509 = true
	default:
		cs.SharedAccessKey = a.SymmetricKey.PrimaryKey
	}
	return cs.String()
}
