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

// moduleCommand declares --device-id, --module-id (when needModule) and
// -o; mod stays empty without --module-id.
func moduleCommand(name, synopsis string, needModule bool) (c *cmdFlags, dev, mod *string) {
	c = newHubCommand("module-identity "+name, synopsis)
	dev, mod = c.deviceID(), new(string)
	if needModule {
		mod = c.requiredString("module-id", "module id")
	}
	c.output("json")
	return c, dev, mod
}

func miCreate(ctx context.Context, args []string) error {
	c, d, m := moduleCommand("create", "--device-id D --module-id M [--auth-method M]", true)
	var auth authFlags
	auth.register(c.FlagSet)
	c.check(c.checkOutput) // before the auth flags, as it always was
	c.check(auth.check)
	return c.run(args, func(s *service.Client) (any, error) {
		return s.CreateModule(ctx, identity.Module{DeviceID: *d, ModuleID: *m, Authentication: auth.auth})
	})
}

func miShow(ctx context.Context, args []string) error {
	c, d, m := moduleCommand("show", "--device-id D --module-id M", true)
	return c.run(args, func(s *service.Client) (any, error) { return s.GetModule(ctx, *d, *m) })
}

func miDelete(ctx context.Context, args []string) error {
	c, d, m := moduleCommand("delete", "--device-id D --module-id M", true)
	return c.run(args, func(s *service.Client) (any, error) { return nil, s.DeleteModule(ctx, *d, *m, "") })
}

func miList(ctx context.Context, args []string) error {
	c, d, _ := moduleCommand("list", "--device-id D", false)
	return c.run(args, func(s *service.Client) (any, error) { return list(s.ListModules(ctx, *d)) })
}
