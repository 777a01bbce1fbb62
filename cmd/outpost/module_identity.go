package main

import (
	"context"

	"outpost/internal/identity"
	"outpost/internal/service"
)

// runModuleIdentity is `outpost module-identity …`, shaped like
// `az iot hub module-identity`.
func runModuleIdentity(ctx context.Context, args []string) error {
	return dispatch(ctx, "module-identity", map[string]subcommand{
		"create": {"register a module on a device", miCreate},
		"show":   {"show a module", miShow},
		"delete": {"delete a module", miDelete},
		"list":   {"list a device's modules", miList},
	}, args)
}

// moduleCommand parses --device-id, --module-id (when needModule) and -o,
// and builds the client.
func moduleCommand(name string, args []string, needModule bool) (c *service.Client, dev, mod, out string, err error) {
	synopsis := "module-identity " + name + " --device-id D"
	if needModule {
		synopsis += " --module-id M"
	}
	fs := newFlagSet("module-identity "+name, synopsis)
	var hub serviceFlags
	hub.register(fs)
	d := fs.String("device-id", "", "device id (required)")
	var m *string
	if needModule {
		m = fs.String("module-id", "", "module id (required)")
	}
	o := outputFlag(fs, "json")
	if err = parseFlags(fs, args); err != nil {
		return
	}
	if err = required("device-id", *d); err != nil {
		return
	}
	if needModule {
		if err = required("module-id", *m); err != nil {
			return
		}
		mod = *m
	}
	if err = checkOutput(*o); err != nil {
		return
	}
	c, err = hub.client()
	return c, *d, mod, *o, err
}

func miCreate(ctx context.Context, args []string) error {
	fs := newFlagSet("module-identity create", "module-identity create --device-id D --module-id M [--auth-method M]")
	var hub serviceFlags
	var auth authFlags
	hub.register(fs)
	auth.register(fs)
	d := fs.String("device-id", "", "device id (required)")
	m := fs.String("module-id", "", "module id (required)")
	out := outputFlag(fs, "json")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if err := required("device-id", *d); err != nil {
		return err
	}
	if err := required("module-id", *m); err != nil {
		return err
	}
	if err := checkOutput(*out); err != nil {
		return err
	}
	a, err := auth.authentication()
	if err != nil {
		return err
	}
	c, err := hub.client()
	if err != nil {
		return err
	}
	created, err := c.CreateModule(ctx, identity.Module{DeviceID: *d, ModuleID: *m, Authentication: a})
	if err != nil {
		return err
	}
	return printValue(stdout, *out, created)
}

func miShow(ctx context.Context, args []string) error {
	c, d, m, out, err := moduleCommand("show", args, true)
	if err != nil {
		return err
	}
	mod, err := c.GetModule(ctx, d, m)
	if err != nil {
		return err
	}
	return printValue(stdout, out, mod)
}

func miDelete(ctx context.Context, args []string) error {
	c, d, m, _, err := moduleCommand("delete", args, true)
	if err != nil {
		return err
	}
	return c.DeleteModule(ctx, d, m, "")
}

func miList(ctx context.Context, args []string) error {
	c, d, _, out, err := moduleCommand("list", args, false)
	if err != nil {
		return err
	}
	ms, err := c.ListModules(ctx, d)
	if err != nil {
		return err
	}
	if ms == nil {
		ms = []identity.Module{}
	}
	return printValue(stdout, out, ms)
}
