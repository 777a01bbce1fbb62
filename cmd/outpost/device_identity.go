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
// creation.
type authFlags struct {
	method        string
	primaryThumb  string
	secondaryTumb string
}

func (a *authFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&a.method, "auth-method", "shared_private_key", "shared_private_key, x509_thumbprint or x509_ca")
	fs.StringVar(&a.primaryThumb, "primary-thumbprint", "", "primary X.509 thumbprint (x509_thumbprint)")
	fs.StringVar(&a.secondaryTumb, "secondary-thumbprint", "", "secondary X.509 thumbprint (x509_thumbprint)")
}

// authentication turns the flags into the registry's authentication
// mechanism. Keys are left empty so the hub generates them.
func (a *authFlags) authentication() (identity.Authentication, error) {
	var auth identity.Authentication
	switch a.method {
	case "shared_private_key":
		if a.primaryThumb != "" || a.secondaryTumb != "" {
			return auth, errors.New("--primary-thumbprint and --secondary-thumbprint need --auth-method x509_thumbprint")
		}
		auth.Type = identity.AuthSAS
	case "x509_thumbprint":
		if a.primaryThumb == "" {
			return auth, errors.New("--auth-method x509_thumbprint needs --primary-thumbprint")
		}
		auth.Type = identity.AuthSelfSigned
		auth.X509Thumbprint.PrimaryThumbprint = a.primaryThumb
		auth.X509Thumbprint.SecondaryThumbprint = a.secondaryTumb
	case "x509_ca":
		if a.primaryThumb != "" || a.secondaryTumb != "" {
			return auth, errors.New("--primary-thumbprint and --secondary-thumbprint need --auth-method x509_thumbprint")
		}
		auth.Type = identity.AuthCA
	default:
		return auth, fmt.Errorf("--auth-method: unknown method %q (want shared_private_key, x509_thumbprint or x509_ca)", a.method)
	}
	return auth, nil
}

func checkStatus(s string) error {
	if s != "enabled" && s != "disabled" {
		return fmt.Errorf("--status: want enabled or disabled, not %q", s)
	}
	return nil
}

func diCreate(ctx context.Context, args []string) error {
	fs := newFlagSet("device-identity create", "device-identity create --device-id ID [--edge-enabled] [--auth-method M] [--status S]")
	var hub serviceFlags
	var auth authFlags
	hub.register(fs)
	auth.register(fs)
	id := fs.String("device-id", "", "device id (required)")
	edge := fs.Bool("edge-enabled", false, "make it an IoT Edge device")
	status := fs.String("status", "enabled", "enabled or disabled")
	out := outputFlag(fs, "json")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if err := required("device-id", *id); err != nil {
		return err
	}
	if err := checkStatus(*status); err != nil {
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
	d := identity.Device{DeviceID: *id, Status: *status, Authentication: a}
	d.Capabilities.IoTEdge = *edge
	created, err := c.CreateDevice(ctx, d)
	if err != nil {
		return err
	}
	return printValue(stdout, *out, created)
}

// deviceIDCommand runs a command that needs only the hub and --device-id.
func deviceIDCommand(ctx context.Context, name string, args []string, run func(ctx context.Context, c *service.Client, id, out string) error) error {
	fs := newFlagSet("device-identity "+name, "device-identity "+name+" --device-id ID")
	var hub serviceFlags
	hub.register(fs)
	id := fs.String("device-id", "", "device id (required)")
	out := outputFlag(fs, "json")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if err := required("device-id", *id); err != nil {
		return err
	}
	if err := checkOutput(*out); err != nil {
		return err
	}
	c, err := hub.client()
	if err != nil {
		return err
	}
	return run(ctx, c, *id, *out)
}

func diShow(ctx context.Context, args []string) error {
	return deviceIDCommand(ctx, "show", args, func(ctx context.Context, c *service.Client, id, out string) error {
		d, err := c.GetDevice(ctx, id)
		if err != nil {
			return err
		}
		return printValue(stdout, out, d)
	})
}

func diDelete(ctx context.Context, args []string) error {
	return deviceIDCommand(ctx, "delete", args, func(ctx context.Context, c *service.Client, id, _ string) error {
		return c.DeleteDevice(ctx, id, "")
	})
}

func diUpdate(ctx context.Context, args []string) error {
	fs := newFlagSet("device-identity update", "device-identity update --device-id ID [--status enabled|disabled] [--status-reason TEXT]")
	var hub serviceFlags
	hub.register(fs)
	id := fs.String("device-id", "", "device id (required)")
	status := fs.String("status", "", "enabled or disabled")
	reason := fs.String("status-reason", "", "why the status changed")
	out := outputFlag(fs, "json")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if err := required("device-id", *id); err != nil {
		return err
	}
	if *status != "" {
		if err := checkStatus(*status); err != nil {
			return err
		}
	}
	if err := checkOutput(*out); err != nil {
		return err
	}
	c, err := hub.client()
	if err != nil {
		return err
	}
	d, err := c.GetDevice(ctx, *id)
	if err != nil {
		return err
	}
	if *status != "" {
		d.Status = *status
	}
	if *reason != "" {
		d.StatusReason = *reason
	}
	// The etag read above makes this a compare-and-set: a concurrent change
	// fails with PreconditionFailed instead of being overwritten.
	updated, err := c.UpdateDevice(ctx, d)
	if err != nil {
		return err
	}
	return printValue(stdout, *out, updated)
}

func diList(ctx context.Context, args []string) error {
	fs := newFlagSet("device-identity list", "device-identity list [-o json|table|tsv]")
	var hub serviceFlags
	hub.register(fs)
	out := outputFlag(fs, "json")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if err := checkOutput(*out); err != nil {
		return err
	}
	c, err := hub.client()
	if err != nil {
		return err
	}
	ds, err := c.ListDevices(ctx)
	if err != nil {
		return err
	}
	if ds == nil {
		ds = []identity.Device{}
	}
	return printValue(stdout, *out, ds)
}

// childrenCommand parses the flags of add-children and remove-children.
func childrenCommand(name string, args []string, withForce bool) (c *service.Client, edge string, children []string, force bool, err error) {
	fs := newFlagSet("device-identity "+name, "device-identity "+name+" --device-id EDGE --child-list a,b,c")
	var hub serviceFlags
	hub.register(fs)
	id := fs.String("device-id", "", "the edge (parent) device id (required)")
	list := fs.String("child-list", "", "child device ids, separated by commas (required)")
	var f *bool
	if withForce {
		f = fs.Bool("force", false, "take children away from another parent")
	}
	if err = parseFlags(fs, args); err != nil {
		return
	}
	if err = required("device-id", *id); err != nil {
		return
	}
	if err = required("child-list", *list); err != nil {
		return
	}
	children = splitList(*list)
	if len(children) == 0 {
		err = errors.New("--child-list: no device ids")
		return
	}
	if f != nil {
		force = *f
	}
	c, err = hub.client()
	return c, *id, children, force, err
}

func diAddChildren(ctx context.Context, args []string) error {
	c, edge, children, force, err := childrenCommand("add-children", args, true)
	if err != nil {
		return err
	}
	return c.AddChildren(ctx, edge, children, force)
}

func diRemoveChildren(ctx context.Context, args []string) error {
	c, edge, children, _, err := childrenCommand("remove-children", args, false)
	if err != nil {
		return err
	}
	return c.RemoveChildren(ctx, edge, children)
}

func diListChildren(ctx context.Context, args []string) error {
	fs := newFlagSet("device-identity list-children", "device-identity list-children --device-id EDGE [-o json|table|tsv]")
	var hub serviceFlags
	hub.register(fs)
	id := fs.String("device-id", "", "the edge (parent) device id (required)")
	// One id a line unless asked otherwise: it is what scripts want.
	out := outputFlag(fs, "tsv")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if err := required("device-id", *id); err != nil {
		return err
	}
	if err := checkOutput(*out); err != nil {
		return err
	}
	c, err := hub.client()
	if err != nil {
		return err
	}
	ids, err := c.ListChildren(ctx, *id)
	if err != nil {
		return err
	}
	if ids == nil {
		ids = []string{}
	}
	return printValue(stdout, *out, ids)
}

// diConnectionString is `device-identity connection-string show`.
func diConnectionString(ctx context.Context, args []string) error {
	return dispatch(ctx, "device-identity connection-string", map[string]subcommand{
		"show": {"print a device's (or module's) connection string", diConnectionStringShow},
	}, args)
}

func diConnectionStringShow(ctx context.Context, args []string) error {
	fs := newFlagSet("device-identity connection-string show", "device-identity connection-string show --device-id ID [--module-id M] [--gateway-hostname H]")
	var hub serviceFlags
	hub.register(fs)
	id := fs.String("device-id", "", "device id (required)")
	mod := fs.String("module-id", "", "module id, for a module's connection string")
	gw := fs.String("gateway-hostname", "", "GatewayHostName: the edge device the client connects through")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if err := required("device-id", *id); err != nil {
		return err
	}
	c, err := hub.client()
	if err != nil {
		return err
	}
	var cs string
	if *mod == "" {
		d, err := c.GetDevice(ctx, *id)
		if err != nil {
			return err
		}
		cs = service.DeviceConnectionString(d, c.HostName(), *gw)
	} else {
		m, err := c.GetModule(ctx, *id, *mod)
		if err != nil {
			return err
		}
		cs = service.ModuleConnectionString(m, c.HostName(), *gw)
	}
	_, err = fmt.Fprintln(stdout, cs)
	return err
}
