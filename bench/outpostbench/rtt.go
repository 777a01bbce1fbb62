package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"outpost/bench/summary"
	"outpost/internal/certs"
	"outpost/internal/client"
	"outpost/internal/sas"
	"outpost/internal/service"
)

// rttResult is one round-trip run: calls made one after another, each
// timed from the request leaving to its answer arriving.
type rttResult struct {
	Label string  `json:"label"`
	Calls int     `json:"calls"`
	Size  int     `json:"size"`
	P50us float64 `json:"p50us"`
	P90us float64 `json:"p90us"`
	P99us float64 `json:"p99us"`
	MaxUs float64 `json:"maxUs"`
	Mean  float64 `json:"meanUs"`
}

// newRTTResult computes exact percentiles (nearest rank) from all samples.
func newRTTResult(label string, size int, d []time.Duration) rttResult {
	r := rttResult{Label: label, Calls: len(d), Size: size}
	if len(d) == 0 {
		return r
	}
	s := slices.Clone(d)
	slices.Sort(s)
	q := func(p float64) float64 {
		i := int(p*float64(len(s))+0.999999) - 1
		return us(s[min(max(i, 0), len(s)-1)])
	}
	var sum time.Duration
	for _, v := range s {
		sum += v
	}
	r.P50us, r.P90us, r.P99us = q(0.50), q(0.90), q(0.99)
	r.MaxUs = us(s[len(s)-1])
	r.Mean = us(sum / time.Duration(len(s)))
	return r
}

func us(d time.Duration) float64 { return float64(d.Nanoseconds()/100) / 10 }

// jsonPayload is a JSON string of exactly size bytes, quotes included, so
// both sides of the comparison carry the same bytes.
func jsonPayload(size int) []byte {
	b := make([]byte, max(size, 2))
	b[0], b[len(b)-1] = '"', '"'
	for i := 1; i < len(b)-1; i++ {
		b[i] = 'a' + byte(i%26)
	}
	return b
}

type rttFlags struct {
	calls, warmup, size int
	label               string
}

func (f *rttFlags) register(fs *flag.FlagSet, label string) {
	fs.IntVar(&f.calls, "calls", 1000, "measured calls, one after another")
	fs.IntVar(&f.warmup, "warmup", 50, "unmeasured calls first")
	fs.IntVar(&f.size, "size", 256, "request and response payload bytes")
	fs.StringVar(&f.label, "label", label, "name of the run, copied into the result")
}

func (f *rttFlags) check() error {
	if f.calls < 1 || f.warmup < 0 || f.size < 2 {
		return errors.New("need --calls >= 1, --warmup >= 0, --size >= 2")
	}
	return nil
}

// methodsCmd measures direct method round trips through a running hub:
// POST /twins/{d}/methods on the service REST API, the hub forwards the
// request to the connected device over MQTT, the device (internal/client)
// answers with the payload it got, the hub answers the POST.
func methodsCmd(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("methods", flag.ContinueOnError)
	hubDir := fs.String("hub-dir", "", "the hub's --data-dir (required)")
	mqttAddr := fs.String("mqtt-addr", "", "the hub's MQTT address, host:port (required: HostName carries the HTTPS port)")
	var f rttFlags
	f.register(fs, "outpost-method")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *hubDir == "" || *mqttAddr == "" {
		return errors.New("methods: need --hub-dir and --mqtt-addr")
	}
	if err := f.check(); err != nil {
		return fmt.Errorf("methods: %w", err)
	}
	svc, err := openHub(*hubDir)
	if err != nil {
		return err
	}
	// A fresh id per run, so that runs against one hub don't collide.
	devs, err := createDevices(ctx, svc, fmt.Sprintf("method-%d-", time.Now().UnixNano()), 1)
	if err != nil {
		return err
	}
	roots, err := service.LoadCA(filepath.Join(*hubDir, certs.CAFile))
	if err != nil {
		return err
	}
	dev, err := client.New(client.Config{
		ConnectionString: service.DeviceConnectionString(devs[0], svc.HostName(), ""),
		RootCAs:          roots,
		DialAddr:         *mqttAddr,
	})
	if err != nil {
		return err
	}
	defer dev.Close()
	dev.OnMethod("echo", func(_ context.Context, _ string, payload []byte) (int, []byte) {
		return 200, payload
	})
	if err := dev.Connect(ctx); err != nil {
		return fmt.Errorf("methods: device connect: %w", err)
	}
	id := devs[0].DeviceID
	payload := jsonPayload(f.size)
	call := func() error {
		res, err := svc.InvokeMethod(ctx, id, "", service.MethodRequest{
			MethodName: "echo", Payload: payload, ResponseTimeoutInSeconds: 10,
		})
		if err != nil {
			return err
		}
		if res.Status != 200 || !bytes.Equal(bytes.TrimSpace(res.Payload), payload) {
			return fmt.Errorf("method answered %d with %d bytes, want 200 with the %d bytes sent", res.Status, len(res.Payload), len(payload))
		}
		return nil
	}
	// The device's method subscription is acknowledged asynchronously:
	// until the hub has it, calls fail as DeviceNotOnline.
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := call()
		if err == nil {
			break
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("methods: first call: %w", err)
		}
		time.Sleep(50 * time.Millisecond) // poll interval; the deadline bounds the wait
	}
	lat, err := timeCalls(f, call)
	if err != nil {
		return fmt.Errorf("methods: %w", err)
	}
	return emit(stdout, newRTTResult(f.label, f.size, lat))
}

// timeCalls makes f.warmup unmeasured calls, then f.calls timed ones.
func timeCalls(f rttFlags, call func() error) ([]time.Duration, error) {
	for range f.warmup {
		if err := call(); err != nil {
			return nil, err
		}
	}
	lat := make([]time.Duration, 0, f.calls)
	for range f.calls {
		t := time.Now()
		if err := call(); err != nil {
			return nil, err
		}
		lat = append(lat, time.Since(t))
	}
	return lat, nil
}

// mqttRTTCmd is the peer of methodsCmd on a plain MQTT broker: a
// requester publishes on bench/req/N, a responder subscribed there
// publishes the payload back on bench/res/N, where the requester is
// subscribed. Both are internal/client over TLS, the same client the
// device uses in methodsCmd; both directions are QoS 0, as a method
// request and response are.
func mqttRTTCmd(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("mqtt-rtt", flag.ContinueOnError)
	addr := fs.String("addr", "", "broker host:port, TLS (required)")
	caFile := fs.String("ca", "", "PEM file of the CA of the broker's certificate (required)")
	serverName := fs.String("servername", "localhost", "TLS server name to verify")
	var f rttFlags
	f.register(fs, "mosquitto-rtt")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *addr == "" || *caFile == "" {
		return errors.New("mqtt-rtt: need --addr and --ca")
	}
	if err := f.check(); err != nil {
		return fmt.Errorf("mqtt-rtt: %w", err)
	}
	roots, err := service.LoadCA(*caFile)
	if err != nil {
		return err
	}
	_, port, err := splitPort(*addr)
	if err != nil {
		return fmt.Errorf("mqtt-rtt: --addr: %w", err)
	}
	// The broker ignores the credentials; the client insists on a
	// connection string, so it gets one naming the broker.
	connect := func(id string) (*client.Client, error) {
		cs := sas.ConnectionString{HostName: *serverName + ":" + port, DeviceID: id, SharedAccessKey: sas.GenerateKey()}
		return client.New(client.Config{ConnectionString: cs.String(), RootCAs: roots, DialAddr: *addr})
	}
	resp, err := connect("rtt-responder")
	if err != nil {
		return err
	}
	defer resp.Close()
	if err := resp.Subscribe("bench/req/+", 0, func(t string, p []byte) {
		n := strings.TrimPrefix(t, "bench/req/")
		if err := resp.Publish(ctx, "bench/res/"+n, 0, p); err != nil {
			logf("responder: %v", err)
		}
	}); err != nil {
		return err
	}
	if err := resp.Connect(ctx); err != nil {
		return fmt.Errorf("mqtt-rtt: responder connect: %w", err)
	}
	type answer struct {
		n    string
		size int
	}
	answers := make(chan answer, 16)
	req, err := connect("rtt-requester")
	if err != nil {
		return err
	}
	defer req.Close()
	if err := req.Subscribe("bench/res/+", 0, func(t string, p []byte) {
		answers <- answer{strings.TrimPrefix(t, "bench/res/"), len(p)}
	}); err != nil {
		return err
	}
	if err := req.Connect(ctx); err != nil {
		return fmt.Errorf("mqtt-rtt: requester connect: %w", err)
	}
	payload := jsonPayload(f.size)
	seq := 0
	call := func() error {
		seq++
		n := strconv.Itoa(seq)
		if err := req.Publish(ctx, "bench/req/"+n, 0, payload); err != nil {
			return err
		}
		t := time.NewTimer(10 * time.Second)
		defer t.Stop()
		for {
			select {
			case a := <-answers:
				if a.n != n {
					continue // a late answer to an earlier call
				}
				if a.size != len(payload) {
					return fmt.Errorf("answer %s has %d bytes, want %d", n, a.size, len(payload))
				}
				return nil
			case <-t.C:
				return fmt.Errorf("no answer to request %s in 10s", n)
			case <-ctx.Done():
				return ctx.Err()
			}
		}
	}
	lat, err := timeCalls(f, call)
	if err != nil {
		return fmt.Errorf("mqtt-rtt: %w", err)
	}
	return emit(stdout, newRTTResult(f.label, f.size, lat))
}

func splitPort(addr string) (host, port string, err error) {
	i := strings.LastIndexByte(addr, ':')
	if i < 0 {
		return "", "", fmt.Errorf("no port in %q", addr)
	}
	if _, err := strconv.ParseUint(addr[i+1:], 10, 16); err != nil {
		return "", "", fmt.Errorf("bad port in %q", addr)
	}
	return addr[:i], addr[i+1:], nil
}

// summarizeRTTCmd is `outpostbench summarize-rtt --peer LABEL < rtt.jsonl`.
func summarizeRTTCmd(args []string, r io.Reader, w io.Writer) error {
	fs := flag.NewFlagSet("summarize-rtt", flag.ContinueOnError)
	peer := fs.String("peer", "mosquitto-rtt", "`label` to quote ratios against")
	if err := parse(fs, args); err != nil {
		return err
	}
	return summarizeRTT(r, w, *peer)
}

// summarizeRTT reads rttResult lines of several runs per label, in the
// order they ran (alternating labels), and prints a markdown table of
// medians, with the ratio of every label to peer as the median of
// per-round ratios: the i-th run of a label against the i-th of the peer,
// which ran seconds apart.
func summarizeRTT(r io.Reader, w io.Writer, peerLabel string) error {
	order, runs, err := summary.Read(r, func(res rttResult) (string, error) { return res.Label, nil })
	if err != nil {
		return fmt.Errorf("summarize-rtt: %w", err)
	}
	fmt.Fprintf(w, "| run | rounds | p50 (median) | p99 (median) | p50 × %s | p99 × %s |\n", peerLabel, peerLabel)
	fmt.Fprintln(w, "|---|---:|---:|---:|---:|---:|")
	peer := runs[peerLabel]
	for _, label := range order {
		rs := runs[label]
		p50 := func(r rttResult) float64 { return r.P50us }
		p99 := func(r rttResult) float64 { return r.P99us }
		fmt.Fprintf(w, "| %s | %d | %s | %s | %s | %s |\n", label, len(rs),
			summary.Ms(summary.Median(rs, p50)), summary.Ms(summary.Median(rs, p99)),
			summary.Ratio(rs, peer, p50), summary.Ratio(rs, peer, p99))
	}
	return nil
}
