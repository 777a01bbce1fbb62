// Command outpost is the single binary of Outpost: the hub, the edge, the
// admin CLI, the simulator and the demo. It is the only package that knows
// every other one; it parses flags and wires the parts together.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"maps"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
)

// command is one top-level verb. run receives the arguments after the verb.
type command struct {
	summary string
	run     func(ctx context.Context, args []string) error
}

// commands is the CLI contract of DESIGN.md. Keep names as they are: tools
// and tests drive them.
func commands() map[string]command {
	return map[string]command{
		"version":              {"print the version", runVersion},
		"device-identity":      {"manage devices and their parent/child relations", runDeviceIdentity},
		"module-identity":      {"manage modules", runModuleIdentity},
		"query":                {"run an IoT Hub query", runQuery},
		"device-twin":          {"show or update device and module twins", runDeviceTwin},
		"hub":                  {"run the cloud hub (registry, twins, service REST API)", runHub},
		"edge":                 {"run the edge hub (gateway, store-and-forward, offline cache)", runEdge},
		"monitor-events":       {"stream telemetry as it reaches the hub", runMonitorEvents},
		"invoke-device-method": {"call a direct method on a device or module", runInvokeMethod},
		"c2d-message":          {"send cloud-to-device messages", runC2DMessage},
		"simulate":             {"run simulated devices sending telemetry", runSimulate},
		"certs":                {"create an edge CA signed by the hub's root CA (certs create-edge-ca)", runCerts},
		"demo":                 {"the whole offline story in one process, on loopback (hub, edge, devices, a cut link)", runDemo},
	}
}

// errUsage marks an error already explained by the flag package's usage.
var errUsage = errors.New("usage")

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:])
	stop()
	if err != nil {
		if !errors.Is(err, errUsage) && !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "outpost:", err)
		}
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string) error {
	cmds := commands()
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(cmds)
		if len(args) == 0 {
			return errUsage
		}
		return nil
	}
	c, ok := cmds[args[0]]
	if !ok {
		usage(cmds)
		return fmt.Errorf("unknown command %q", args[0])
	}
	return c.run(ctx, args[1:])
}

func usage(cmds map[string]command) {
	var b strings.Builder
	b.WriteString("usage: outpost <command> [flags]\n\ncommands:\n")
	for _, n := range slices.Sorted(maps.Keys(cmds)) {
		fmt.Fprintf(&b, "  %-22s %s\n", n, cmds[n].summary)
	}
	fmt.Fprint(os.Stderr, b.String())
}

const version = "0.1.0-dev"

func runVersion(ctx context.Context, args []string) error {
	fmt.Println("outpost", version)
	return nil
}
