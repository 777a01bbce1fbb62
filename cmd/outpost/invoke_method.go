package main

import (
	"context"
	"encoding/json"
	"fmt"

	"outpost/internal/service"
)

// runInvokeMethod is `outpost invoke-device-method`, shaped like
// `az iot hub invoke-device-method` (and invoke-module-method, through
// --module-id). It prints the device's answer, {"status":…,"payload":…}.
func runInvokeMethod(ctx context.Context, args []string) error {
	c := newHubCommand("invoke-device-method",
		"--device-id D [--module-id M] --method-name N [--method-payload JSON] [--timeout S] [--connect-timeout S]")
	d := c.deviceID()
	m := c.String("module-id", "", "module id, to call a module's method")
	name := c.requiredString("method-name", "method name")
	payload := c.String("method-payload", "{}", "method payload, as JSON")
	timeout := c.Int("timeout", 30, "seconds the device may take to answer (1 to 300)")
	connect := c.Int("connect-timeout", 0, "seconds to wait for the device to connect (0 to 300)")
	c.output("json")
	c.check(func() error {
		switch {
		case !json.Valid([]byte(*payload)):
			return fmt.Errorf("--method-payload: not valid JSON: %s", *payload)
		case *timeout < 1 || *timeout > 300:
			return fmt.Errorf("--timeout: want 1 to 300 seconds, not %d", *timeout)
		case *connect < 0 || *connect > 300:
			return fmt.Errorf("--connect-timeout: want 0 to 300 seconds, not %d", *connect)
		}
		return nil
	})
	return c.run(args, func(s *service.Client) (any, error) {
		return s.InvokeMethod(ctx, *d, *m, service.MethodRequest{
			MethodName:               *name,
			Payload:                  json.RawMessage(*payload),
			ResponseTimeoutInSeconds: *timeout,
			ConnectTimeoutInSeconds:  *connect,
		})
	})
}
