// Command mqttload is the MQTT 3.1.1 load generator of Outpost's benchmarks.
//
// Each client keeps exactly --inflight QoS 1 PUBLISHes outstanding (a
// sliding window: a new PUBLISH goes out as soon as a PUBACK frees a slot),
// and every PUBACK's latency is recorded. It is hand-rolled rather than
// built on an MQTT client library so that the window is exact and the
// generator costs little CPU on machines it shares with the broker under test.
//
//	mqttload --addr 127.0.0.1:1883 --clients 10 --inflight 64 --size 256 --count 20000 --json
//	mqttload summarize --baseline mosquitto-mem [--pair outpost-hub=mosquitto-tls] < results.jsonl
//
// The result is acked msg/s (all PUBACKs / wall time from the common start
// to the last PUBACK) and PUBACK latency percentiles.
package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := mainErr(ctx, os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "mqttload:", err)
		os.Exit(1)
	}
}

func mainErr(ctx context.Context, args []string, stdout io.Writer) error {
	if len(args) > 0 && args[0] == "summarize" {
		return summarizeCmd(args[1:], os.Stdin, stdout)
	}
	fs := flag.NewFlagSet("mqttload", flag.ContinueOnError)
	var (
		addr       = fs.String("addr", "127.0.0.1:1883", "broker `host:port`")
		useTLS     = fs.Bool("tls", false, "connect with TLS")
		caFile     = fs.String("ca", "", "PEM `file` of CA certificates to trust (with --tls)")
		serverName = fs.String("servername", "", "TLS server name to verify (default: host of --addr)")
		clients    = fs.Int("clients", 10, "concurrent connections")
		inflight   = fs.Int("inflight", 64, "QoS 1 PUBLISHes outstanding per client")
		size       = fs.Int("size", 256, "payload `bytes`")
		count      = fs.Int("count", 0, "messages per client")
		duration   = fs.Duration("duration", 0, "send for this long instead of --count")
		topic      = fs.String("topic-template", "devices/{id}/messages/events/", "topic; {id} becomes the client id")
		credsFile  = fs.String("creds", "", "JSON lines `file` of {clientId, username, password}, one per client")
		prefix     = fs.String("client-prefix", "mqttload-", "client id prefix when there is no --creds")
		qos        = fs.Uint("qos", 1, "QoS of the PUBLISHes (0 or 1)")
		clean      = fs.Bool("clean", true, "clean session")
		keepalive  = fs.Duration("keepalive", 60*time.Second, "MQTT keepalive")
		timeout    = fs.Duration("timeout", 30*time.Second, "connect timeout, and longest wait for a PUBACK")
		asJSON     = fs.Bool("json", false, "print the result as one JSON line")
		label      = fs.String("label", "", "name of the target, copied into the result")
	)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if *count == 0 && *duration == 0 {
		return errors.New("give --count or --duration")
	}
	explicit := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { explicit[f.Name] = true })

	cfg := Config{
		Addr: *addr, Topic: *topic, Size: *size, QoS: byte(min(*qos, 255)), Inflight: *inflight,
		Count: *count, Duration: *duration, Clean: *clean, Keepalive: *keepalive, Timeout: *timeout,
	}
	if *credsFile != "" {
		creds, err := readCreds(*credsFile)
		if err != nil {
			return err
		}
		if explicit["clients"] {
			if *clients > len(creds) {
				return fmt.Errorf("--clients %d but %s has %d entries", *clients, *credsFile, len(creds))
			}
			creds = creds[:*clients]
		}
		cfg.Creds = creds
	} else {
		for i := range *clients {
			cfg.Creds = append(cfg.Creds, Cred{ClientID: fmt.Sprintf("%s%d", *prefix, i)})
		}
	}
	if *useTLS {
		tc, err := tlsConfig(*addr, *caFile, *serverName)
		if err != nil {
			return err
		}
		cfg.TLS = tc
	}

	res, err := run(ctx, cfg)
	if err != nil {
		return err
	}
	res.Label = *label
	if *asJSON {
		b, err := json.Marshal(res)
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(stdout, "%s\n", b)
		return err
	}
	_, err = fmt.Fprintf(stdout, "%s %s: %d clients x %d in flight, %d B, QoS %d: %d acked in %.2fs = %.0f msg/s; PUBACK p50 %.0fus p90 %.0fus p99 %.0fus max %.0fus\n",
		res.Label, res.Addr, res.Clients, res.Inflight, res.Size, res.QoS, res.Acked, res.Seconds, res.MsgsPerSec,
		res.P50us, res.P90us, res.P99us, res.MaxUs)
	return err
}

// summarizeCmd is `mqttload summarize [--baseline LABEL]... < results.jsonl`.
func summarizeCmd(args []string, stdin io.Reader, stdout io.Writer) error {
	fs := flag.NewFlagSet("mqttload summarize", flag.ContinueOnError)
	var baselines, pairFlags listFlag
	fs.Var(&baselines, "baseline", "`label` to quote ratios against (repeatable)")
	fs.Var(&pairFlags, "pair", "`TARGET=PEER`: quote TARGET's msg/s, p50 and p99 against PEER's (repeatable)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	var pairs []pair
	for _, s := range pairFlags {
		p, err := parsePair(s)
		if err != nil {
			return err
		}
		pairs = append(pairs, p)
	}
	return summarize(stdin, stdout, baselines, pairs)
}

type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(s string) error { *l = append(*l, s); return nil }

func readCreds(path string) ([]Cred, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read creds: %w", err)
	}
	defer f.Close()
	var creds []Cred
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for line := 1; sc.Scan(); line++ {
		s := strings.TrimSpace(sc.Text())
		if s == "" {
			continue
		}
		var c Cred
		if err := json.Unmarshal([]byte(s), &c); err != nil {
			return nil, fmt.Errorf("read creds: %s:%d: %w", path, line, err)
		}
		if c.ClientID == "" {
			return nil, fmt.Errorf("read creds: %s:%d: no clientId", path, line)
		}
		creds = append(creds, c)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read creds: %w", err)
	}
	if len(creds) == 0 {
		return nil, fmt.Errorf("read creds: %s: no entries", path)
	}
	return creds, nil
}

func tlsConfig(addr, caFile, serverName string) (*tls.Config, error) {
	tc := &tls.Config{ServerName: serverName}
	if tc.ServerName == "" {
		host, _, err := net.SplitHostPort(addr)
		if err != nil {
			return nil, fmt.Errorf("tls server name: %w", err)
		}
		tc.ServerName = host
	}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("read ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("read ca: no certificates in %s", caFile)
		}
		tc.RootCAs = pool
	}
	return tc, nil
}
