package main

import (
	"context"
	"errors"

	"outpost/internal/service"
)

// runDeviceTwin is `outpost device-twin show|update`, shaped like
// `az iot hub device-twin` (and module-twin, through --module-id).
func runDeviceTwin(ctx context.Context, args []string) error {
	return dispatch(ctx, "device-twin", map[string]subcommand{
		"show":   {"show a device or module twin", dtShow},
		"update": {"merge tags and desired properties into a twin", dtUpdate},
	}, args)
}

func dtShow(ctx context.Context, args []string) error {
	fs := newFlagSet("device-twin show", "device-twin show --device-id D [--module-id M]")
	var hub serviceFlags
	hub.register(fs)
	d := fs.String("device-id", "", "device id (required)")
	m := fs.String("module-id", "", "module id, for a module twin")
	out := outputFlag(fs, "json")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if err := required("device-id", *d); err != nil {
		return err
	}
	if err := checkOutput(*out); err != nil {
		return err
	}
	c, err := hub.client()
	if err != nil {
		return err
	}
	t, err := c.GetTwin(ctx, *d, *m)
	if err != nil {
		return err
	}
	return printRaw(stdout, *out, t.Raw)
}

func dtUpdate(ctx context.Context, args []string) error {
	fs := newFlagSet("device-twin update", "device-twin update --device-id D [--module-id M] [--desired JSON] [--tags JSON] [--etag E]")
	var hub serviceFlags
	hub.register(fs)
	d := fs.String("device-id", "", "device id (required)")
	m := fs.String("module-id", "", "module id, for a module twin")
	desired := fs.String("desired", "", `desired properties to merge, as a JSON object; null removes a property`)
	tags := fs.String("tags", "", `tags to merge, as a JSON object; null removes a tag`)
	etag := fs.String("etag", "", "apply only if the twin's etag still is this (default: unconditionally)")
	out := outputFlag(fs, "json")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if err := required("device-id", *d); err != nil {
		return err
	}
	if *desired == "" && *tags == "" {
		return errors.New("nothing to update: pass --desired and/or --tags")
	}
	if err := checkOutput(*out); err != nil {
		return err
	}
	var patchTags, patchDesired map[string]any
	var err error
	if *tags != "" {
		if patchTags, err = parseJSONObject("tags", *tags); err != nil {
			return err
		}
	}
	if *desired != "" {
		if patchDesired, err = parseJSONObject("desired", *desired); err != nil {
			return err
		}
	}
	c, err := hub.client()
	if err != nil {
		return err
	}
	t, err := c.UpdateTwin(ctx, *d, *m, service.NewTwinPatch(patchTags, patchDesired), *etag)
	if err != nil {
		return err
	}
	return printRaw(stdout, *out, t.Raw)
}
