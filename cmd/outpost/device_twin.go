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

// twinCommand declares the flags both verbs take: the twin's device and
// module, and -o.
func twinCommand(name, synopsis string) (c *cmdFlags, dev, mod *string) {
	c = newHubCommand("device-twin "+name, synopsis)
	dev = c.deviceID()
	mod = c.String("module-id", "", "module id, for a module twin")
	c.output("json")
	return c, dev, mod
}

// twinDocument is the twin as the hub sent it.
func twinDocument(t *service.Twin, err error) (any, error) {
	if err != nil {
		return nil, err
	}
	return t.Raw, nil
}

func dtShow(ctx context.Context, args []string) error {
	c, d, m := twinCommand("show", "--device-id D [--module-id M]")
	return c.run(args, func(s *service.Client) (any, error) { return twinDocument(s.GetTwin(ctx, *d, *m)) })
}

func dtUpdate(ctx context.Context, args []string) error {
	c, d, m := twinCommand("update", "--device-id D [--module-id M] [--desired JSON] [--tags JSON] [--etag E]")
	desired := c.String("desired", "", `desired properties to merge, as a JSON object; null removes a property`)
	tags := c.String("tags", "", `tags to merge, as a JSON object; null removes a tag`)
	etag := c.String("etag", "", "apply only if the twin's etag still is this (default: unconditionally)")
	c.check(func() error {
		if *desired == "" && *tags == "" {
			return errors.New("nothing to update: pass --desired and/or --tags")
		}
		return nil
	})
	c.check(c.checkOutput) // before the JSON errors, as it always was
	var patchTags, patchDesired map[string]any
	c.check(func() (err error) {
		if *tags != "" {
			if patchTags, err = parseJSONObject("tags", *tags); err != nil {
				return err
			}
		}
		if *desired != "" {
			patchDesired, err = parseJSONObject("desired", *desired)
		}
		return err
	})
	return c.run(args, func(s *service.Client) (any, error) {
		return twinDocument(s.UpdateTwin(ctx, *d, *m, service.NewTwinPatch(patchTags, patchDesired), *etag))
	})
}
