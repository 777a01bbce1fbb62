// Package archtest enforces the dependency direction drawn in
// docs/architecture.md, using `go list -deps`.
package archtest

import (
	"encoding/json"
	"io"
	"os/exec"
	"strings"
	"testing"
)

const mod = "outpost/"

// leaves may import only the standard library and each other.
var leaves = []string{"message", "sas", "topic", "identity", "twin", "query", "route", "mqttwire", "edgeproto", "status"}

// allowed lists, for each internal package prefix, which internal packages
// it may depend on (transitively). A package not listed here may depend on
// anything except cmd.
var allowed = map[string][]string{
	// mqttwire is the MQTT 3.1.1 codec of the edge's link and the load
	// generator: a leaf on the standard library alone.
	"mqttwire": {},
	// wsconn is MQTT over WebSocket as a net.Conn, for the gateway and
	// the device SDK: the standard library and the WebSocket library.
	"wsconn": {},
	// edgeproto is the hub↔edge contract, imported by both ends.
	"edgeproto": {"topic", "message"},
	"gateway":   {"message", "sas", "topic", "identity", "twin", "query", "route", "certs", "metrics", "edgeproto", "mqttwire", "wsconn", "status"},
	"certs":     {},
	"client":    {"message", "sas", "topic", "certs", "edgeproto", "backoff", "wsconn", "status"},
	// hubserver is the hub's process wiring: the hub and its data plane
	// and service API, the device endpoint, certificates; manifest, with
	// which the hub checks the deployments written to $edgeHub twins.
	"hubserver": {"hub", "gateway", "certs", "metrics", "message", "sas", "topic", "identity", "twin", "query", "route", "edgeproto", "mqttwire", "manifest", "wsconn", "status"},
	// status is the one error a device or service caller sees, with its
	// HTTPS and MQTT bodies: on message alone (its tracking ids).
	"status": {"message"},
}

// forbidden pairs: a package under the first never imports the second.
var forbidden = [][2]string{
	{"hub", "edge"},
	{"edge", "hub"},
	{"hubserver", "edge"},
	{"edge", "hubserver"},
	// edgeserver is the edge's process wiring, as hubserver is the hub's.
	{"edgeserver", "hub"},
	{"edgeserver", "hubserver"},
	{"hub", "edgeserver"},
	{"hubserver", "edgeserver"},
	{"edge", "edgeserver"},
}

type pkg struct {
	ImportPath string
	Deps       []string
	Standard   bool
}

func listPackages(t *testing.T) []pkg {
	t.Helper()
	cmd := exec.Command("go", "list", "-deps=false", "-json", "outpost/...")
	cmd.Dir = "../.."
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	dec := json.NewDecoder(strings.NewReader(string(out)))
	var pkgs []pkg
	for {
		var p pkg
		if err := dec.Decode(&p); err == io.EOF {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		pkgs = append(pkgs, p)
	}
	return pkgs
}

// rel returns the path below outpost/internal/, or "" for other packages.
func rel(path string) string {
	if r, ok := strings.CutPrefix(path, mod+"internal/"); ok {
		return r
	}
	return ""
}

func top(r string) string {
	first, _, _ := strings.Cut(r, "/")
	return first
}

func isLeaf(r string) bool {
	for _, l := range leaves {
		if top(r) == l {
			return true
		}
	}
	return false
}

func TestDependencyDirection(t *testing.T) {
	pkgs := listPackages(t)
	if len(pkgs) < 2 {
		t.Fatalf("go list found %d packages; expected the whole module", len(pkgs))
	}
	for _, p := range pkgs {
		r := rel(p.ImportPath)
		for _, d := range p.Deps {
			if strings.HasPrefix(d, mod+"cmd/") {
				t.Errorf("%s depends on %s: nothing imports cmd", p.ImportPath, d)
			}
			if r == "" || strings.HasSuffix(r, "test") {
				continue
			}
			dr := rel(d)
			if strings.HasPrefix(d, mod) && dr == "" {
				t.Errorf("%s depends on %s outside internal/", p.ImportPath, d)
				continue
			}
			if isLeaf(r) {
				if dr != "" && !isLeaf(dr) {
					t.Errorf("leaf %s depends on non-leaf %s", p.ImportPath, d)
				}
				if dr == "" && !isStd(d) {
					t.Errorf("leaf %s depends on third-party %s", p.ImportPath, d)
				}
			}
			if ok, listed := allowed[top(r)]; listed && dr != "" && top(dr) != top(r) && !contains(ok, top(dr)) {
				t.Errorf("%s depends on %s; allowed: %v", p.ImportPath, d, ok)
			}
			for _, f := range forbidden {
				if top(r) == f[0] && dr != "" && top(dr) == f[1] {
					t.Errorf("%s depends on %s: %s and %s never import each other", p.ImportPath, d, f[0], f[1])
				}
			}
		}
	}
}

func isStd(path string) bool {
	first, _, _ := strings.Cut(path, "/")
	return !strings.Contains(first, ".") && !strings.HasPrefix(path, mod)
}

func contains(s []string, x string) bool {
	for _, v := range s {
		if v == x {
			return true
		}
	}
	return false
}

// TestBinaryHasNoTestingPackage: test helpers stay out of the outpost
// binary (package testing registers its flags in whatever links it).
func TestBinaryHasNoTestingPackage(t *testing.T) {
	cmd := exec.Command("go", "list", "-deps", "outpost/cmd/outpost")
	cmd.Dir = "../.."
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	deps := strings.Fields(string(out))
	if len(deps) < 10 {
		t.Fatalf("go list -deps found %d packages; expected the binary's dependencies", len(deps))
	}
	for _, d := range deps {
		if d == "testing" || strings.HasPrefix(d, "testing/") {
			t.Errorf("the outpost binary depends on %s", d)
		}
	}
}
