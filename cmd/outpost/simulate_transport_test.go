package main

import (
	"testing"

	"outpost/internal/client"
)

func TestSimulateAutoTransport(t *testing.T) {
	tests := []struct {
		name, cs string
		want     client.Transport
	}{
		{"hub on the MQTT default port", "HostName=hub;DeviceId=d;SharedAccessKey=a2V5", client.MQTT},
		{"hub HTTPS port means WebSocket", "HostName=localhost:18443;DeviceId=d;SharedAccessKey=a2V5", client.MQTTWebSocket},
		{"gateway port is MQTT", "HostName=localhost:18443;DeviceId=d;SharedAccessKey=a2V5;GatewayHostName=localhost:28883", client.MQTT},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := simulation{transport: "auto"}
			cfg, err := s.clientConfig(tt.cs)
			if err != nil {
				t.Fatal(err)
			}
			if cfg.Transport != tt.want {
				t.Errorf("transport %v, want %v", cfg.Transport, tt.want)
			}
		})
	}
}
