package main

import (
	"bytes"
	"cmp"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"outpost/internal/edge"
	"outpost/internal/sas"
	"outpost/internal/service"
)

// edgeStatusTimeout bounds the whole request: the edge answers from
// memory, so anything slow is a network problem worth reporting.
const edgeStatusTimeout = 15 * time.Second

// runEdgeStatus is `outpost edge status`: it reads the edge's GET /status
// and shows its link, queues, last sync, clients, TTL and routes.
func runEdgeStatus(ctx context.Context, args []string) error {
	c := newCommand("edge status", "--edge-url https://HOST:PORT [--ca FILE] [--connection-string CS] [-o json|table]")
	edgeURL := c.requiredString("edge-url", "the edge's HTTPS address, https://HOST:PORT")
	ca := c.String("ca", "", "PEM file of the hub's root CA, which the edge's certificate chains to (default $"+envCA+", else the system roots)")
	connStr := c.String("connection-string", "", "the edge device's connection string, to sign a token; needed unless the edge is reached on loopback")
	out := c.output("table", "json", "table")
	if err := c.parse(args); err != nil {
		return err
	}
	u, err := statusURL(*edgeURL)
	if err != nil {
		return err
	}
	caFile := orEnv(*ca, envCA)
	tlsCfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if caFile != "" {
		if tlsCfg.RootCAs, err = service.LoadCA(caFile); err != nil {
			return err
		}
	}
	var auth string
	if *connStr != "" {
		cs, err := sas.ParseConnectionString(*connStr)
		if err != nil {
			return fmt.Errorf("--connection-string: %w", err)
		}
		if cs.IsService() || cs.ModuleID != "" {
			return errors.New("--connection-string: want the edge device's own connection string")
		}
		if auth, err = cs.Token(time.Now().Add(time.Hour)); err != nil {
			return fmt.Errorf("--connection-string: %w", err)
		}
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = tlsCfg
	defer tr.CloseIdleConnections()
	raw, st, err := fetchEdgeStatus(ctx, &http.Client{Transport: tr, Timeout: edgeStatusTimeout}, u, auth)
	if err != nil {
		return err
	}
	if *out == "json" {
		return printRaw(stdout, "json", raw)
	}
	return writeEdgeStatus(stdout, st, time.Now())
}

// statusURL turns --edge-url into the URL of GET /status.
func statusURL(s string) (string, error) {
	u, err := url.Parse(strings.TrimSpace(s))
	if err != nil || u.Host == "" {
		return "", fmt.Errorf("--edge-url %q: want https://HOST:PORT", s)
	}
	if u.Scheme != "https" {
		return "", fmt.Errorf("--edge-url %q: the edge serves HTTPS only; want https://HOST:PORT", s)
	}
	u.Path = strings.TrimSuffix(u.Path, "/") + "/status"
	u.RawQuery, u.Fragment = "", ""
	return u.String(), nil
}

// fetchEdgeStatus GETs the status and returns it both as sent (for -o
// json, so fields this CLI does not know yet still show) and decoded.
func fetchEdgeStatus(ctx context.Context, c *http.Client, u, auth string) ([]byte, *edge.Status, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, nil, fmt.Errorf("edge status: %w", err)
	}
	req.Header.Set("Accept", "application/json")
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, nil, fmt.Errorf("edge status: %w", err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return nil, nil, fmt.Errorf("edge status: read answer: %w", err)
	}
	switch {
	case resp.StatusCode == http.StatusUnauthorized:
		hint := "the edge answers /status without credentials on loopback only; pass --connection-string with the edge device's connection string"
		if auth != "" {
			hint = "the token was refused: is --connection-string the edge device's own, with its current key?"
		}
		return nil, nil, fmt.Errorf("edge status: %s: %s", resp.Status, hint)
	case resp.StatusCode != http.StatusOK:
		return nil, nil, fmt.Errorf("edge status: %s: %s", resp.Status, strings.TrimSpace(string(raw)))
	}
	var st edge.Status
	if err := json.Unmarshal(raw, &st); err != nil {
		return nil, nil, fmt.Errorf("edge status: not a status document: %w", err)
	}
	return raw, &st, nil
}

// writeEdgeStatus renders the status for a person: a summary, then the
// queues, connected clients and routes, each as a table.
func writeEdgeStatus(w io.Writer, st *edge.Status, now time.Time) error {
	var b bytes.Buffer
	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	line := func(k, v string) { fmt.Fprintf(tw, "%s\t%s\n", k, v) }

	line("Edge:", st.DeviceID)
	line("Synced:", yesNo(st.Synced))
	link := "down"
	if st.Link.Connected {
		link = "connected"
	}
	if st.Link.Since != nil {
		link += fmt.Sprintf(" since %s (%s)", stamp(*st.Link.Since), ago(now, *st.Link.Since))
	}
	line("Link:", link)
	line("Offline periods:", fmt.Sprint(st.Link.OfflinePeriods))
	if st.Link.LastError != "" {
		line("Last link error:", oneLine(st.Link.LastError))
	}
	lastSync := "never"
	if st.LastSync != nil {
		lastSync = fmt.Sprintf("%s (%s)", stamp(*st.LastSync), ago(now, *st.LastSync))
	}
	line("Last sync:", lastSync)
	line("TTL:", seconds(st.TTLSeconds))
	storage := fmt.Sprintf("%d bytes", st.Storage.Bytes)
	if st.Storage.MaxBytes > 0 {
		storage += fmt.Sprintf(" of %d (%.1f%%)", st.Storage.MaxBytes, 100*float64(st.Storage.Bytes)/float64(st.Storage.MaxBytes))
	}
	line("Storage:", storage)
	line("Dropped:", fmt.Sprintf("%d expired (TTL), %d with no route; %d batches refused (quota)", st.Expired, st.NoRoute, st.QuotaRefusals))
	setAside := "none"
	if sa := st.SetAside; sa.Total > 0 {
		var parts []string
		for _, r := range slices.Sorted(maps.Keys(sa.ByReason)) {
			if n := sa.ByReason[r]; n > 0 {
				parts = append(parts, fmt.Sprintf("%d %s", n, r))
			}
		}
		setAside = fmt.Sprintf("%d refused for good by the hub (%s)", sa.Total, strings.Join(parts, ", "))
	}
	line("Set aside:", setAside)
	if c := st.Certificates; c.EdgeCANotAfter != nil {
		ca := fmt.Sprintf("expires %s (%s), from the %s", stamp(*c.EdgeCANotAfter), until(now, *c.EdgeCANotAfter), c.EdgeCASource)
		if c.EdgeCAExpiresSoon && c.EdgeCANotAfter.After(now) {
			ca += "; EXPIRES SOON"
		}
		line("Edge CA:", ca)
	}
	if c := st.Certificates; c.ServerCertNotAfter != nil {
		srv := fmt.Sprintf("expires %s (%s)", stamp(*c.ServerCertNotAfter), until(now, *c.ServerCertNotAfter))
		if c.ServerCertRenewAt != nil {
			srv += ", renewed from " + stamp(*c.ServerCertRenewAt)
		} else {
			srv += ", ends with the edge CA"
		}
		line("Server cert:", srv)
	}
	line("Connected clients:", fmt.Sprint(len(st.ConnectedClients)))
	if err := tw.Flush(); err != nil {
		return err
	}

	if len(st.SetAside.Recent) > 0 {
		b.WriteString("\nSet aside (latest):\n")
		tw = tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "  AT\tIDENTITY\tMESSAGE ID\tREASON\tDETAIL")
		for _, r := range st.SetAside.Recent {
			id := r.DeviceID
			if r.ModuleID != "" {
				id += "/" + r.ModuleID
			}
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\n", stamp(r.At), oneLine(id), oneLine(r.MessageID), r.Reason, oneLine(r.Message))
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}

	b.WriteString("\nQueues:\n")
	if len(st.Queues) == 0 {
		b.WriteString("  none\n")
	} else {
		// Highest priority first, as the edge drains them; then by name.
		names := slices.Sorted(maps.Keys(st.Queues))
		slices.SortStableFunc(names, func(a, b string) int {
			return cmp.Compare(st.Queues[a].Priority, st.Queues[b].Priority)
		})
		tw = tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "  ENDPOINT\tLENGTH\tBYTES\tOLDEST\tPRIORITY\tTTL")
		for _, n := range names {
			q := st.Queues[n]
			oldest := "-"
			if q.Length > 0 {
				oldest = (time.Duration(q.OldestAgeSeconds * float64(time.Second))).Round(time.Second).String()
			}
			fmt.Fprintf(tw, "  %s\t%d\t%d\t%s\t%d\t%s\n", oneLine(n), q.Length, q.Bytes, oldest, q.Priority, seconds(q.TTLSeconds))
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}

	b.WriteString("\nConnected clients:\n")
	if len(st.ConnectedClients) == 0 {
		b.WriteString("  none\n")
	}
	for _, c := range st.ConnectedClients {
		fmt.Fprintf(&b, "  %s\n", oneLine(c))
	}

	b.WriteString("\nRoutes:\n")
	if len(st.Routes) == 0 {
		b.WriteString("  none\n")
	} else {
		tw = tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
		for _, n := range slices.Sorted(maps.Keys(st.Routes)) {
			fmt.Fprintf(tw, "  %s\t%s\n", oneLine(n), oneLine(st.Routes[n]))
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	_, err := w.Write(b.Bytes())
	return err
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no: the edge must reach its hub once before it can run offline"
}

func stamp(t time.Time) string { return t.UTC().Format(time.RFC3339) }

// ago says how long before now t was, to the second.
func ago(now, t time.Time) string {
	d := now.Sub(t).Round(time.Second)
	if d < 0 {
		return "in the future: check the clocks"
	}
	return d.String() + " ago"
}

// until says how long after now t is, to the minute.
func until(now, t time.Time) string {
	d := t.Sub(now).Round(time.Minute)
	if d <= 0 {
		return "EXPIRED"
	}
	return "in " + d.String()
}

func seconds(s int64) string {
	return fmt.Sprintf("%ds (%s)", s, time.Duration(s)*time.Second)
}

// oneLine keeps a value from the edge from breaking the layout (or
// writing control sequences to the terminal).
func oneLine(s string) string {
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, s)
}
