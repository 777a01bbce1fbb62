package main

import (
	"flag"
	"fmt"
	"math"

	"outpost/internal/gateway"
)

// addRateFlags declares the rates the device endpoint holds clients to,
// the same for `outpost hub` and `outpost edge`; checkRates validates
// them after parsing.
func addRateFlags(fs *flag.FlagSet, r *gateway.Rates) {
	fs.Float64Var(&r.ClientPackets, "client-packet-rate", gateway.DefaultClientPackets,
		"MQTT packets a second one device or module connection may send (edges are not bound); -1: no limit")
	fs.Float64Var(&r.ClientBytes, "client-byte-rate", gateway.DefaultClientBytes,
		"bytes a second one device or module connection may send (edges are not bound); -1: no limit")
	fs.Float64Var(&r.ConnectRate, "connect-rate", gateway.DefaultConnectRate,
		"connections a second the MQTT and WebSocket listeners start together; more wait to be accepted; -1: no limit")
}

// checkRates refuses a rate that is zero (it would stop every client),
// not a number or infinite; a negative one means no limit.
func checkRates(cmd string, r *gateway.Rates) error {
	for _, f := range []struct {
		name string
		v    *float64
	}{{"client-packet-rate", &r.ClientPackets}, {"client-byte-rate", &r.ClientBytes}, {"connect-rate", &r.ConnectRate}} {
		switch v := *f.v; {
		case math.IsNaN(v) || math.IsInf(v, 0) || v == 0:
			return fmt.Errorf("%s: --%s %v: want a positive number a second, or -1 for no limit", cmd, f.name, v)
		case v < 0:
			*f.v = -1
		}
	}
	return nil
}
