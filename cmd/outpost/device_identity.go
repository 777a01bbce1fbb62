package main

import (
	"context"
	"errors"
	"flag"
	"fmt"

	"outpost/internal/identity"
	"outpost/internal/service"
)

// runDeviceIdentity is `outpost device-identity …`, shaped like
// `az iot hub device-identity`.
func runDeviceIdentity(ctx context.Context, args []string) error {
	return dispatch(ctx, "device-identity", map[string]subcommand{
		"create":            {"register a device (--edge-enabled for an IoT Edge device)", diCreate},
		"show":              {"show a device", diShow},
		"update":            {"change a device's status", diUpdate},
		"delete":            {"delete a device", diDelete},
		"list":              {"list the devices", diList},
		"add-children":      {"make devices children of an edge device", diAddChildren},
		"remove-children":   {"detach children from an edge device", diRemoveChildren},
		"list-children":     {"list an edge device's children", diListChildren},
		"connection-string": {"show a device or module connection string", diConnectionString},
	}, args)
}

// authFlags are the authentication flags shared by device and module
// creation; check turns them into auth.
type authFlags struct {
	method         string
	primaryThumb   string
	secondaryThumb string
	auth           identity.Authentication
}

func (a *authFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&a.method, "auth-method", "shared_private_key", "shared_private_key, x509_thumbprint or x509_ca")
	fs.StringVar(&a.primaryThumb, "primary-thumbprint", "", "primary X.509 thumbprint (x509_thumbprint)")
	fs.StringVar(&a.secondaryThumb, "secondary-thumbprint", "", "secondary X.509 thumbprint (x509_thumbprint)")
}

// check turns the flags into the registry's authentication mechanism.
// Keys are left empty so the hub generates them.
func (a *authFlags) check() error {
	switch a.method {
	case "shared_private_key", "x509_ca":
		if a.primaryThumb != "" || a.secondaryThumb != "" {
			return errors.New("--primary-thumbprint and --secondary-thumbprint need --auth-method x509_thumbprint")
		}
		a.auth.Type = identity.AuthSAS
		if a.method == "x509_ca" {
			a.auth.Type = identity.AuthCA
		}
	case "x509_thumbprint":
		if a.primaryThumb == "" {
			return errors.New("--auth-method x509_thumbprint needs --primary-thumbprint")
		}
		a.auth.Type = identity.AuthSelfSigned
		a.auth.X509Thumbprint.PrimaryThumbprint = a.primaryThumb
		a.auth.X509Thumbprint.SecondaryThumbprint = a.secondaryThumb
	default:
		return fmt.Errorf("--auth-method: unknown method %q (want shared_private_key, x509_thumbprint or x509_ca)", a.method)
	}
	return nil
}

func checkStatus(s string) error {
	if s != "enabled" && s != "disabled" {
		return fmt.Errorf("--status: want enabled or disabled, not %q", s)
	}
	return nil
}

func diCreate(ctx context.Context, args []string) error {
	c := newHubCommand("device-identity create", "--device-id ID [--edge-enabled] [--auth-method M] [--status S]")
	var auth authFlags
	auth.register(c.FlagSet)
	id := c.deviceID()
	edge := c.Bool("edge-enabled", false, "make it an IoT Edge device")
	status := c.String("status", "enabled", "enabled or disabled")
	c.output("json")
	c.check(func() error { return checkStatus(*status) })
	c.check(c.checkOutput) // before the auth flags, as it always was
	c.check(auth.check)
	return c.run(args, func(s *service.Client) (any, error) {
		d := identity.Device{DeviceID: *id, Status: *status, Authentication: auth.auth}
		d.Capabilities.IoTEdge = *edge
		return s.CreateDevice(ctx, d)
	})
}

// deviceIDCommand runs a command that needs only the hub and --device-id.
func deviceIDCommand(name string, args []string, call func(s *service.Client, id string) (any, error)) error {
	c := newHubCommand("device-identity "+name, "--device-id ID")
	id := c.deviceID()
	c.output("json")
	return c.run(args, func(s *service.Client) (any, error) { return call(s, *id) })
}

func diShow(ctx context.Context, args []string) error {
	return deviceIDCommand("show", args, func(s *service.Client, id string) (any, error) {
		return s.GetDevice(ctx, id)
	})
}

func diDelete(ctx context.Context, args []string) error {
	return deviceIDCommand("delete", args, func(s *service.Client, id string) (any, error) {
		return nil, s.DeleteDevice(ctx, id, "")
	})
}

func diUpdate(ctx context.Context, args []string) error {
	c := newHubCommand("device-identity update", "--device-id ID [--status enabled|disabled] [--status-reason TEXT]")
	id := c.deviceID()
	status := c.String("status", "", "enabled or disabled")
	reason := c.String("status-reason", "", "why the status changed")
	c.output("json")
	c.check(func() error {
		if *status == "" {
			return nil
		}
		return checkStatus(*status)
	})
	return c.run(args, func(s *service.Client) (any, error) {
		d, err := s.GetDevice(ctx, *id)
		if err != nil {
			return nil, err
		}
		if *status != "" {
			d.Status = *status
		}
		if *reason != "" {
			d.StatusReason = *reason
		}
		// The etag read above makes this a compare-and-set: a concurrent
		// change fails with PreconditionFailed instead of being overwritten.
		return s.UpdateDevice(ctx, d)
	})
}

func diList(ctx context.Context, args []string) error {
	c := newHubCommand("device-identity list", "[-o json|table|tsv]")
	c.output("json")
	return c.run(args, func(s *service.Client) (any, error) { return list(s.ListDevices(ctx)) })
}

// childrenCommand declares the flags add-children and remove-children
// share; children holds the parsed --child-list once run has parsed it.
func childrenCommand(name string) (c *cmdFlags, edge *string, children *[]string) {
	c = newHubCommand("device-identity "+name, "--device-id EDGE --child-list a,b,c")
	edge = c.requiredString("device-id", "the edge (parent) device id")
	list := c.requiredString("child-list", "child device ids, separated by commas")
	children = new([]string)
	c.check(func() error {
		if *children = splitList(*list); len(*children) == 0 {
			return errors.New("--child-list: no device ids")
		}
		return nil
	})
	return c, edge, children
}

func diAddChildren(ctx context.Context, args []string) error {
	c, edge, children := childrenCommand("add-children")
	force := c.Bool("force", false, "take children away from another parent")
	return c.run(args, func(s *service.Client) (any, error) {
		return nil, s.AddChildren(ctx, *edge, *children, *force)
	})
}

func diRemoveChildren(ctx context.Context, args []string) error {
	c, edge, children := childrenCommand("remove-children")
	return c.run(args, func(s *service.Client) (any, error) {
		return nil, s.RemoveChildren(ctx, *edge, *children)
	})
}

func diListChildren(ctx context.Context, args []string) error {
	c := newHubCommand("device-identity list-children", "--device-id EDGE [-o json|table|tsv]")
	id := c.requiredString("device-id", "the edge (parent) device id")
	// One id a line unless asked otherwise: it is what scripts want.
	c.output("tsv")
	return c.run(args, func(s *service.Client) (any, error) { return list(s.ListChildren(ctx, *id)) })
}

// diConnectionString is `device-identity connection-string show`.
func diConnectionString(ctx context.Context, args []string) error {
	return dispatch(ctx, "device-identity connection-string", map[string]subcommand{
		"show": {"print a device's (or module's) connection string", diConnectionStringShow},
	}, args)
}

// diConnectionStringShow prints the string alone, for scripts.
func diConnectionStringShow(ctx context.Context, args []string) error {
	c := newHubCommand("device-identity connection-string show", "--device-id ID [--module-id M] [--gateway-hostname H]")
	id := c.deviceID()
	mod := c.String("module-id", "", "module id, for a module's connection string")
	gw := c.String("gateway-hostname", "", "GatewayHostName: the edge device the client connects through")
	return c.run(args, func(s *service.Client) (any, error) {
		var cs string
		if *mod == "" {
			d, err := s.GetDevice(ctx, *id)
			if err != nil {
				return nil, err
			}
			cs = service.DeviceConnectionString(d, s.HostName(), *gw)
		} else {
			m, err := s.GetModule(ctx, *id, *mod)
			if err != nil {
				return nil, err
			}
			cs = service.ModuleConnectionString(m, s.HostName(), *gw)
		}
		_, err := fmt.Fprintln(stdout, cs)
		return nil, err
	})
}
