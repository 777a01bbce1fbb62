// Command outpostbench provisions and drives the Outpost targets of the
// benchmarks (bench/run.sh): it creates devices through the hub's service
// REST API and writes the mqttload --creds file for them, measures direct
// method round trips against a running hub and the raw MQTT request/response
// peer against mosquitto, and runs the edge drain scenario end to end.
//
//	outpostbench provision-hub  --hub-dir DIR --devices 10 --out creds.jsonl
//	outpostbench provision-edge --hub-dir DIR --edge-id edge1 --children 10 --out creds.jsonl --edge-cs FILE
//	outpostbench certs --dir DIR
//	outpostbench methods  --hub-dir DIR --calls 1000 --label outpost-methods
//	outpostbench mqtt-rtt --addr 127.0.0.1:PORT --ca FILE --calls 1000 --label mosquitto-rtt
//	outpostbench drain --outpost BIN --mqttload BIN --dir DIR --backlog 100000
//	outpostbench summarize-rtt --peer mosquitto-rtt < rtt.jsonl
//	outpostbench summarize-drain < drain.jsonl
//
// Everything it reports is one JSON object a line on stdout; progress goes
// to stderr.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "outpostbench:", err)
		os.Exit(1)
	}
}

const usage = "usage: outpostbench provision-hub|provision-edge|certs|methods|mqtt-rtt|drain|summarize-rtt|summarize-drain [flags]"

func run(ctx context.Context, args []string, stdin io.Reader, stdout io.Writer) error {
	if len(args) == 0 {
		return fmt.Errorf("%s", usage)
	}
	cmd, args := args[0], args[1:]
	switch cmd {
	case "provision-hub":
		return provisionHubCmd(ctx, args)
	case "provision-edge":
		return provisionEdgeCmd(ctx, args)
	case "certs":
		return certsCmd(args)
	case "methods":
		return methodsCmd(ctx, args, stdout)
	case "mqtt-rtt":
		return mqttRTTCmd(ctx, args, stdout)
	case "drain":
		return drainCmd(ctx, args, stdout)
	case "summarize-drain":
		return summarizeDrain(stdin, stdout)
	case "summarize-rtt":
		return summarizeRTTCmd(args, stdin, stdout)
	default:
		return fmt.Errorf("unknown command %q; %s", cmd, usage)
	}
}

// parse parses args into fs and refuses positional arguments.
func parse(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%s: unexpected argument %q", fs.Name(), fs.Arg(0))
	}
	return nil
}

// emit writes v as one JSON line.
func emit(w io.Writer, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "%s\n", b)
	return err
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "outpostbench: "+format+"\n", args...)
}
