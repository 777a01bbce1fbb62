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
	fs := newFlagSet("invoke-device-method",
		"invoke-device-method --device-id D [--module-id M] --method-name N [--method-payload JSON] [--timeout S] [--connect-timeout S]")
	var hub serviceFlags
	hub.register(fs)
	d := fs.String("device-id", "", "device id (required)")
	m := fs.String("module-id", "", "module id, to call a module's method")
	name := fs.String("method-name", "", "method name (required)")
	payload := fs.String("method-payload", "{}", "method payload, as JSON")
	timeout := fs.Int("timeout", 30, "seconds the device may take to answer (1 to 300)")
	connect := fs.Int("connect-timeout", 0, "seconds to wait for the device to connect (0 to 300)")
	out := outputFlag(fs, "json")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if err := required("device-id", *d); err != nil {
		return err
	}
	if err := required("method-name", *name); err != nil {
		return err
	}
	if !json.Valid([]byte(*payload)) {
		return fmt.Errorf("--method-payload: not valid JSON: %s", *payload)
	}
	if *timeout < 1 || *timeout > 300 {
		return fmt.Errorf("--timeout: want 1 to 300 seconds, not %d", *timeout)
	}
	if *connect < 0 || *connect > 300 {
		return fmt.Errorf("--connect-timeout: want 0 to 300 seconds, not %d", *connect)
	}
	if err := checkOutput(*out); err != nil {
		return err
	}
	c, err := hub.client()
	if err != nil {
		return err
	}
	res, err := c.InvokeMethod(ctx, *d, *m, service.MethodRequest{
		MethodName:               *name,
		Payload:                  json.RawMessage(*payload),
		ResponseTimeoutInSeconds: *timeout,
		ConnectTimeoutInSeconds:  *connect,
	})
	if err != nil {
		return err
	}
	return printValue(stdout, *out, res)
}
