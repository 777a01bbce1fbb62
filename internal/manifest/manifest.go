// Package manifest reads and validates IoT Edge deployment manifests, as
// `outpost edge set-modules --content deployment.json` takes them:
//
//	{"modulesContent": {
//	  "$edgeAgent": {"properties.desired": {"schemaVersion": "1.1",
//	      "systemModules": {"edgeHub": {"env": {"storageFolder": {"value": "/data"}}, …}},
//	      "modules": {"filter": {"env": {"K": {"value": "v"}}, …}}, …}},
//	  "$edgeHub": {"properties.desired": {"schemaVersion": "1.1",
//	      "routes": {…}, "storeAndForwardConfiguration": {"timeToLiveSecs": 7200}}},
//	  "{module}": {"properties.desired": {…}}}}
//
// or the same wrapped in {"content": …}, as the az CLI also accepts. The
// hub keeps each part as the desired properties of the module twin it
// names; the edge applies $edgeHub's routes and TTL, and honours the
// edgeHub module's env.storageFolder at its next start. Container
// settings (image, createOptions …) are kept as written and otherwise
// ignored: Outpost runs no containers.
//
// Errors name the field at fault by its JSON path.
package manifest

import (
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"outpost/internal/route"
	"outpost/internal/twin"
)

// The system modules' twin names.
const (
	EdgeAgent = "$edgeAgent"
	EdgeHub   = "$edgeHub"
)

// MaxTTL is the largest timeToLiveSecs IoT Edge accepts (int32).
const MaxTTL = math.MaxInt32 * time.Second

// Manifest is a parsed, valid deployment manifest.
type Manifest struct {
	// Desired holds each module twin's desired properties, as written,
	// by twin name ($edgeAgent, $edgeHub and any other module).
	Desired map[string]map[string]any
	// SchemaVersion is $edgeHub's schemaVersion.
	SchemaVersion string
	// Routes are $edgeHub's routes; the default route when it names
	// none.
	Routes route.Table
	// TTL is storeAndForwardConfiguration.timeToLiveSecs; 0 when the
	// manifest does not set it.
	TTL time.Duration
	// EdgeHubEnv is the edgeHub system module's environment
	// ($edgeAgent's systemModules.edgeHub.env); ModuleEnv that of the
	// other modules, by name (modules.{name}.env).
	EdgeHubEnv map[string]string
	ModuleEnv  map[string]map[string]string
}

// Error is an invalid manifest: Field is the JSON path at fault.
type Error struct {
	Field string
	Err   error
}

func (e *Error) Error() string {
	if e.Field == "" {
		return "deployment manifest: " + e.Err.Error()
	}
	return "deployment manifest: " + e.Field + ": " + e.Err.Error()
}

func (e *Error) Unwrap() error { return e.Err }

func fieldErr(field, format string, args ...any) error {
	return &Error{Field: field, Err: fmt.Errorf(format, args...)}
}

// Parse reads and validates a deployment manifest.
func Parse(data []byte) (*Manifest, error) {
	root, err := twin.DecodeObject(data)
	if err != nil {
		return nil, &Error{Err: fmt.Errorf("not a JSON object: %w", err)}
	}
	path := "modulesContent"
	if c, ok := root["content"]; ok {
		obj, ok := c.(map[string]any)
		if !ok {
			return nil, fieldErr("content", "want an object, got %s", jsonType(c))
		}
		root, path = obj, "content.modulesContent"
	}
	mc, ok := root["modulesContent"].(map[string]any)
	if !ok {
		if v, present := root["modulesContent"]; present {
			return nil, fieldErr(path, "want an object, got %s", jsonType(v))
		}
		return nil, fieldErr(path, "missing: a manifest holds modulesContent with $edgeAgent and $edgeHub")
	}
	m := &Manifest{Desired: map[string]map[string]any{}, ModuleEnv: map[string]map[string]string{}}
	names := make([]string, 0, len(mc))
	for n := range mc {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		f := path + "." + n
		if n == "" || strings.ContainsAny(n, "/?#+") {
			return nil, fieldErr(f, "module name %q is not valid", n)
		}
		mod, ok := mc[n].(map[string]any)
		if !ok {
			return nil, fieldErr(f, "want an object, got %s", jsonType(mc[n]))
		}
		des, ok := mod["properties.desired"].(map[string]any)
		if !ok {
			if v, present := mod["properties.desired"]; present {
				return nil, fieldErr(f+".properties.desired", "want an object, got %s", jsonType(v))
			}
			return nil, fieldErr(f+".properties.desired", "missing")
		}
		m.Desired[n] = des
	}
	hub, ok := m.Desired[EdgeHub]
	if !ok {
		return nil, fieldErr(path+"."+EdgeHub, "missing: the edge hub's routes and storeAndForwardConfiguration live there")
	}
	if err := m.parseEdgeHub(path+"."+EdgeHub+".properties.desired", hub); err != nil {
		return nil, err
	}
	if agent, ok := m.Desired[EdgeAgent]; ok {
		if err := m.parseEdgeAgent(path+"."+EdgeAgent+".properties.desired", agent); err != nil {
			return nil, err
		}
	}
	return m, nil
}

func (m *Manifest) parseEdgeHub(f string, des map[string]any) error {
	sv, err := schemaVersion(f, des)
	if err != nil {
		return err
	}
	m.SchemaVersion = sv
	m.Routes, m.TTL, err = EdgeHubSettings(f, des)
	return err
}

// EdgeHubSettings reads what an edge applies of $edgeHub's desired
// properties des: its routes (the default route when there are none) and
// storeAndForwardConfiguration.timeToLiveSecs (0 when unset). Errors name
// the field at fault below f. The hub checks every change of the $edgeHub
// twin with it, so that a deployment the edge would refuse is refused
// when it is written.
func EdgeHubSettings(f string, des map[string]any) (route.Table, time.Duration, error) {
	var routes map[string]any
	if v, ok := des["routes"]; ok && v != nil {
		r, ok := v.(map[string]any)
		if !ok {
			return route.Table{}, 0, fieldErr(f+".routes", "want an object, got %s", jsonType(v))
		}
		routes = r
	}
	tbl, err := route.ParseRoutes(routes)
	if err != nil {
		return route.Table{}, 0, &Error{Field: f + ".routes", Err: err}
	}
	var ttl time.Duration
	if v, ok := des["storeAndForwardConfiguration"]; ok && v != nil {
		saf, ok := v.(map[string]any)
		if !ok {
			return route.Table{}, 0, fieldErr(f+".storeAndForwardConfiguration", "want an object, got %s", jsonType(v))
		}
		if t, ok := saf["timeToLiveSecs"]; ok {
			if ttl, err = ParseTTL(t); err != nil {
				return route.Table{}, 0, &Error{Field: f + ".storeAndForwardConfiguration.timeToLiveSecs", Err: err}
			}
		}
	}
	return tbl, ttl, nil
}

func (m *Manifest) parseEdgeAgent(f string, des map[string]any) error {
	if _, err := schemaVersion(f, des); err != nil {
		return err
	}
	if v, ok := des["systemModules"]; ok && v != nil {
		sys, ok := v.(map[string]any)
		if !ok {
			return fieldErr(f+".systemModules", "want an object, got %s", jsonType(v))
		}
		for _, n := range sortedKeys(sys) {
			env, err := moduleEnv(f+".systemModules."+n, sys[n])
			if err != nil {
				return err
			}
			if n == "edgeHub" {
				m.EdgeHubEnv = env
			}
		}
	}
	if v, ok := des["modules"]; ok && v != nil {
		mods, ok := v.(map[string]any)
		if !ok {
			return fieldErr(f+".modules", "want an object, got %s", jsonType(v))
		}
		for _, n := range sortedKeys(mods) {
			if n == "" || strings.ContainsAny(n, "/?#+$") {
				return fieldErr(f+".modules", "module name %q is not valid", n)
			}
			env, err := moduleEnv(f+".modules."+n, mods[n])
			if err != nil {
				return err
			}
			if env != nil {
				m.ModuleEnv[n] = env
			}
		}
	}
	return nil
}

// EdgeHubEnv reads the edgeHub system module's environment from the
// $edgeAgent desired properties (systemModules.edgeHub.env), as the edge
// fetches them from the hub; nil when none is set.
func EdgeHubEnv(agentDesired map[string]any) (map[string]string, error) {
	sys, ok := agentDesired["systemModules"].(map[string]any)
	if !ok {
		return nil, nil
	}
	return moduleEnv("systemModules.edgeHub", sys["edgeHub"])
}

// moduleEnv reads a module's "env": {"NAME": {"value": v}}; values that
// are numbers or booleans are taken in their JSON form, as a container's
// environment would hold them.
func moduleEnv(f string, mod any) (map[string]string, error) {
	if mod == nil {
		return nil, nil
	}
	obj, ok := mod.(map[string]any)
	if !ok {
		return nil, fieldErr(f, "want an object, got %s", jsonType(mod))
	}
	raw, ok := obj["env"]
	if !ok || raw == nil {
		return nil, nil
	}
	envs, ok := raw.(map[string]any)
	if !ok {
		return nil, fieldErr(f+".env", "want an object, got %s", jsonType(raw))
	}
	out := make(map[string]string, len(envs))
	for _, k := range sortedKeys(envs) {
		fk := f + ".env." + k
		if k == "" || strings.ContainsAny(k, "=\x00") {
			return nil, fieldErr(f+".env", "variable name %q is not valid", k)
		}
		e, ok := envs[k].(map[string]any)
		if !ok {
			return nil, fieldErr(fk, `want {"value": …}, got %s`, jsonType(envs[k]))
		}
		switch v := e["value"].(type) {
		case string:
			out[k] = v
		case json.Number:
			out[k] = v.String()
		case float64:
			out[k] = strconv.FormatFloat(v, 'g', -1, 64)
		case bool:
			out[k] = strconv.FormatBool(v)
		default:
			return nil, fieldErr(fk+".value", "want a string, number or boolean, got %s", jsonType(e["value"]))
		}
	}
	return out, nil
}

// schemaVersion checks a system module's schemaVersion: present, "1.x".
func schemaVersion(f string, des map[string]any) (string, error) {
	v, ok := des["schemaVersion"]
	if !ok {
		return "", fieldErr(f+".schemaVersion", `missing (IoT Edge uses "1.0" or "1.1")`)
	}
	s, ok := v.(string)
	if !ok {
		return "", fieldErr(f+".schemaVersion", "want a string such as \"1.1\", got %s", jsonType(v))
	}
	major, minor, ok := strings.Cut(s, ".")
	if _, err := strconv.Atoi(minor); !ok || major != "1" || err != nil {
		return "", fieldErr(f+".schemaVersion", "%q is not a 1.x schema version", s)
	}
	return s, nil
}

// ParseTTL reads timeToLiveSecs: a whole number of seconds in
// [1, MaxInt32], as IoT Edge allows.
func ParseTTL(v any) (time.Duration, error) {
	var n int64
	switch x := v.(type) {
	case json.Number:
		i, err := x.Int64()
		if err != nil {
			f, ferr := x.Float64()
			if ferr != nil || f != math.Trunc(f) {
				return 0, fmt.Errorf("%s is not a whole number of seconds", x.String())
			}
			return 0, fmt.Errorf("%s out of range [1, %d]", x.String(), math.MaxInt32)
		}
		n = i
	case float64:
		if x != math.Trunc(x) {
			return 0, fmt.Errorf("%v is not a whole number of seconds", x)
		}
		if math.Abs(x) > math.MaxInt64/2 {
			return 0, fmt.Errorf("%v out of range [1, %d]", x, math.MaxInt32)
		}
		n = int64(x)
	default:
		return 0, fmt.Errorf("want a number of seconds, got %s", jsonType(v))
	}
	if n < 1 || n > math.MaxInt32 {
		return 0, fmt.Errorf("%d out of range [1, %d]", n, math.MaxInt32)
	}
	return time.Duration(n) * time.Second, nil
}

func sortedKeys(m map[string]any) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}

func jsonType(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case string:
		return "a string"
	case bool:
		return "a boolean"
	case json.Number, float64:
		return "a number"
	case []any:
		return "an array"
	case map[string]any:
		return "an object"
	}
	return fmt.Sprintf("%T", v)
}
