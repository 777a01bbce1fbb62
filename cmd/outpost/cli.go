package main

// Shared pieces of the commands: the frame every command is declared in
// (cmdFlags: flags, required flags, checks, the hub connection, -o and
// printing), sub-verb dispatch, and the json/table/tsv renderers shaped
// like az's -o.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strings"
	"text/tabwriter"

	"outpost/internal/service"
)

// Environment fallbacks of --hub-connection-string and --ca.
const (
	envHubConnectionString = "OUTPOST_HUB_CONNECTION_STRING"
	envCA                  = "OUTPOST_CA"
)

// stdout and stderr are where the admin commands write; tests swap them.
var (
	stdout io.Writer = os.Stdout
	stderr io.Writer = os.Stderr
)

// caUsage is the help of --ca where it names the hub's CA.
const caUsage = "PEM file of the CA that signed the hub's certificate (default $" + envCA + ", else the system roots)"

// orEnv is a flag's value, or else the environment variable's.
func orEnv(value, env string) string {
	if value == "" {
		return os.Getenv(env)
	}
	return value
}

// serviceFlags are the flags every admin command takes to reach the hub.
type serviceFlags struct {
	connStr string
	ca      string
}

func (h *serviceFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&h.connStr, "hub-connection-string", "", "the hub's service connection string (default $"+envHubConnectionString+")")
	fs.StringVar(&h.ca, "ca", "", caUsage)
}

// client builds a service client from the flags, falling back to the
// environment.
func (h *serviceFlags) client() (*service.Client, error) {
	cs := orEnv(h.connStr, envHubConnectionString)
	if cs == "" {
		return nil, errors.New("no hub connection string: pass --hub-connection-string or set " + envHubConnectionString)
	}
	return service.New(service.Config{ConnectionString: cs, CAFile: orEnv(h.ca, envCA)})
}

// allFormats are the -o formats printRaw renders.
var allFormats = []string{"json", "table", "tsv"}

// cmdFlags is the one frame of the CLI's commands: the flag set (embedded,
// so that a command declares its own flags on it), the flags it requires,
// its own checks, and, when it has them, -o and the hub connection flags.
// A command declares its flags and checks, then calls run (or parse).
type cmdFlags struct {
	*flag.FlagSet
	hub      *serviceFlags // nil: the command does not reach the hub
	out      *string       // nil: no -o; results print as JSON
	formats  []string
	required []requiredFlag
	checks   []func() error
}

type requiredFlag struct {
	name  string
	value *string
}

// newCommand starts a command whose usage is "outpost name synopsis".
func newCommand(name, synopsis string) *cmdFlags {
	return &cmdFlags{FlagSet: newFlagSet(name, name+" "+synopsis)}
}

// newHubCommand is newCommand for a command that talks to the hub's
// service API: it takes --hub-connection-string and --ca.
func newHubCommand(name, synopsis string) *cmdFlags {
	c := newCommand(name, synopsis)
	c.hub = new(serviceFlags)
	c.hub.register(c.FlagSet)
	return c
}

// requiredString declares a string flag that must not be empty.
func (c *cmdFlags) requiredString(name, usage string) *string {
	p := c.String(name, "", usage+" (required)")
	c.required = append(c.required, requiredFlag{name, p})
	return p
}

// deviceID declares the usual --device-id.
func (c *cmdFlags) deviceID() *string { return c.requiredString("device-id", "device id") }

// output declares -o and --output, one flag under two names. formats are
// the ones it accepts and the help names (default: all three).
func (c *cmdFlags) output(def string, formats ...string) *string {
	if len(formats) == 0 {
		formats = allFormats
	}
	c.out, c.formats = new(string), formats
	usage := "output format: " + orList(formats)
	c.StringVar(c.out, "o", def, usage)
	c.StringVar(c.out, "output", def, usage)
	return c.out
}

// check adds a check of the flags' values, run after the required flags
// in the order added. A check may also keep what it parsed.
func (c *cmdFlags) check(f func() error) { c.checks = append(c.checks, f) }

// checkOutput validates -o. parse runs it after the other checks; a
// command that has always reported a bad -o before some of its own checks
// adds it among them, so that its errors keep their precedence.
func (c *cmdFlags) checkOutput() error {
	if c.out == nil {
		return nil
	}
	return checkFormat(*c.out, c.formats...)
}

// parse parses args, then checks the required flags, the checks and -o,
// in that order.
func (c *cmdFlags) parse(args []string) error {
	if err := parseFlags(c.FlagSet, args); err != nil {
		return err
	}
	for _, r := range c.required {
		if err := required(r.name, *r.value); err != nil {
			return err
		}
	}
	for _, f := range c.checks {
		if err := f(); err != nil {
			return err
		}
	}
	return c.checkOutput()
}

// run is the rest of a hub command's life once its flags are declared:
// parse and check them, connect to the hub, call, and print what call
// returns (nothing when it returns nil).
func (c *cmdFlags) run(args []string, call func(*service.Client) (any, error)) error {
	if err := c.parse(args); err != nil {
		return err
	}
	svc, err := c.hub.client()
	if err != nil {
		return err
	}
	v, err := call(svc)
	if err != nil || v == nil {
		return err
	}
	return c.print(v)
}

// print writes a result to stdout in the -o format, or as JSON for a
// command without -o. A json.RawMessage is a document from the hub,
// printed as it came.
func (c *cmdFlags) print(v any) error {
	format := "json"
	if c.out != nil {
		format = *c.out
	}
	if raw, ok := v.(json.RawMessage); ok {
		return printRaw(stdout, format, raw)
	}
	return printValue(stdout, format, v)
}

// list is a call's list result, with nil as an empty list so that it
// prints [] rather than null.
func list[T any](s []T, err error) (any, error) {
	if s == nil {
		s = []T{}
	}
	return s, err
}

// newFlagSet returns a FlagSet that reports errors instead of exiting and
// prints its usage on stderr.
func newFlagSet(name, synopsis string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: outpost %s\n\nflags:\n", synopsis)
		fs.PrintDefaults()
	}
	return fs
}

// parseFlags parses args and refuses leftover positional arguments, which
// are almost always a flag typed without its dashes or a missing quote.
func parseFlags(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return errUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "unexpected argument %q\n", fs.Arg(0))
		fs.Usage()
		return errUsage
	}
	return nil
}

// parseServerFlags parses the flags of hub, edge and demo, which keep the
// flag package's own usage and name a stray argument in the error.
func parseServerFlags(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		return errUsage
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%s: unexpected argument %q", fs.Name(), fs.Arg(0))
	}
	return nil
}

// required fails when a mandatory flag is empty.
func required(name, value string) error {
	if strings.TrimSpace(value) == "" {
		return fmt.Errorf("--%s is required", name)
	}
	return nil
}

// subcommand is one verb of a command group (device-identity create, …).
type subcommand struct {
	summary string
	run     func(ctx context.Context, args []string) error
}

// dispatch runs the sub-verb named by args[0].
func dispatch(ctx context.Context, group string, subs map[string]subcommand, args []string) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		var b strings.Builder
		fmt.Fprintf(&b, "usage: outpost %s <command> [flags]\n\ncommands:\n", group)
		for _, n := range slices.Sorted(maps.Keys(subs)) {
			fmt.Fprintf(&b, "  %-18s %s\n", n, subs[n].summary)
		}
		fmt.Fprint(stderr, b.String())
		if len(args) == 0 {
			return errUsage
		}
		return nil
	}
	s, ok := subs[args[0]]
	if !ok {
		return fmt.Errorf("unknown command %q for %s (try: outpost %s --help)", args[0], group, group)
	}
	return s.run(ctx, args[1:])
}

// splitList splits a comma-separated id list, trimming the spaces az's
// join(`, `, …) puts after the commas, and drops empty entries.
func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// parseJSONObject parses a flag value that must hold a JSON object.
func parseJSONObject(flagName, s string) (map[string]any, error) {
	var m map[string]any
	dec := json.NewDecoder(strings.NewReader(s))
	dec.UseNumber()
	if err := dec.Decode(&m); err != nil {
		return nil, fmt.Errorf("--%s: invalid JSON object: %v", flagName, err)
	}
	if dec.More() {
		return nil, fmt.Errorf("--%s: invalid JSON object: trailing data", flagName)
	}
	if m == nil {
		return nil, fmt.Errorf("--%s: expected a JSON object, got null", flagName)
	}
	return m, nil
}

// checkFormat validates an -o value against the formats a command takes.
func checkFormat(o string, formats ...string) error {
	if slices.Contains(formats, o) {
		return nil
	}
	return fmt.Errorf("-o: unknown output format %q (want %s)", o, orList(formats))
}

// orList joins words as "a, b or c".
func orList(words []string) string {
	if len(words) < 2 {
		return strings.Join(words, "")
	}
	return strings.Join(words[:len(words)-1], ", ") + " or " + words[len(words)-1]
}

// printValue renders v (anything JSON-encodable) in the chosen format. A
// slice renders one row per element; anything else as one row.
func printValue(w io.Writer, format string, v any) error {
	raw, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode output: %w", err)
	}
	return printRaw(w, format, raw)
}

// printRaw renders a JSON document in the chosen format.
func printRaw(w io.Writer, format string, raw []byte) error {
	switch format {
	case "json":
		var buf bytes.Buffer
		if err := json.Indent(&buf, raw, "", "  "); err != nil {
			return fmt.Errorf("format output: %w", err)
		}
		buf.WriteByte('\n')
		_, err := w.Write(buf.Bytes())
		return err
	case "table", "tsv":
		rows, err := rowsOf(raw)
		if err != nil {
			return err
		}
		if format == "table" {
			return writeTable(w, rows)
		}
		return writeTSV(w, rows)
	}
	return checkFormat(format, allFormats...)
}

// field is one top-level member of an object, in document order.
type field struct {
	key string
	val json.RawMessage
}

// row is a rendered record: the fields of an object, or a single unnamed
// value for a scalar.
type row []field

// rowsOf splits a JSON document into rows: an array gives one row per
// element, anything else one row.
func rowsOf(raw []byte) ([]row, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) > 0 && raw[0] == '[' {
		var items []json.RawMessage
		if err := json.Unmarshal(raw, &items); err != nil {
			return nil, fmt.Errorf("format output: %w", err)
		}
		rows := make([]row, 0, len(items))
		for _, it := range items {
			r, err := rowOf(it)
			if err != nil {
				return nil, err
			}
			rows = append(rows, r)
		}
		return rows, nil
	}
	r, err := rowOf(raw)
	if err != nil {
		return nil, err
	}
	return []row{r}, nil
}

// rowOf reads an object's members in document order, which encoding/json's
// maps would lose: the order of a query's projection is the column order.
func rowOf(raw json.RawMessage) (row, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || raw[0] != '{' {
		return row{{val: raw}}, nil
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	if _, err := dec.Token(); err != nil {
		return nil, fmt.Errorf("format output: %w", err)
	}
	var r row
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return nil, fmt.Errorf("format output: %w", err)
		}
		k, _ := t.(string)
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return nil, fmt.Errorf("format output: %w", err)
		}
		r = append(r, field{key: k, val: v})
	}
	return r, nil
}

// cell renders a value for table and tsv: strings bare, null empty, and
// everything else (numbers, booleans, nested objects) as compact JSON.
func cell(v json.RawMessage) string {
	v = bytes.TrimSpace(v)
	if len(v) == 0 || string(v) == "null" {
		return ""
	}
	if v[0] == '"' {
		var s string
		if json.Unmarshal(v, &s) == nil {
			return s
		}
	}
	var buf bytes.Buffer
	if json.Compact(&buf, v) == nil {
		return buf.String()
	}
	return string(v)
}

// columns is the union of the rows' keys, in order of first appearance.
func columns(rows []row) []string {
	seen := map[string]bool{}
	var cols []string
	for _, r := range rows {
		for _, f := range r {
			if !seen[f.key] {
				seen[f.key] = true
				cols = append(cols, f.key)
			}
		}
	}
	return cols
}

func (r row) get(key string) (json.RawMessage, bool) {
	for _, f := range r {
		if f.key == key {
			return f.val, true
		}
	}
	return nil, false
}

// writeTable renders an aligned table with a header of the column names.
func writeTable(w io.Writer, rows []row) error {
	if len(rows) == 0 {
		return nil
	}
	cols := columns(rows)
	var buf bytes.Buffer
	tw := tabwriter.NewWriter(&buf, 0, 0, 2, ' ', 0)
	header := make([]string, len(cols))
	rule := make([]string, len(cols))
	for i, c := range cols {
		if c == "" {
			c = "Result"
		}
		header[i] = c
		rule[i] = strings.Repeat("-", len(c))
	}
	fmt.Fprintln(tw, strings.Join(header, "\t"))
	fmt.Fprintln(tw, strings.Join(rule, "\t"))
	for _, r := range rows {
		cells := make([]string, len(cols))
		for i, c := range cols {
			v, _ := r.get(c)
			cells[i] = tableSafe(cell(v))
		}
		fmt.Fprintln(tw, strings.Join(cells, "\t"))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	// Empty last cells leave padding at the end of lines; drop it.
	var b strings.Builder
	for line := range strings.Lines(buf.String()) {
		b.WriteString(strings.TrimRight(line, " \n"))
		b.WriteByte('\n')
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// writeTSV writes one row a line, its values separated by tabs, without a
// header, so that a shell can consume it; a single projected field gives
// the bare values.
func writeTSV(w io.Writer, rows []row) error {
	var b strings.Builder
	for _, r := range rows {
		for i, f := range r {
			if i > 0 {
				b.WriteByte('\t')
			}
			b.WriteString(tableSafe(cell(f.val)))
		}
		b.WriteByte('\n')
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// tableSafe keeps a cell on one line and in one column.
func tableSafe(s string) string {
	return strings.NewReplacer("\t", " ", "\n", " ", "\r", " ").Replace(s)
}
