package edge

import (
	"context"
	"encoding/json"
	"errors"
	"maps"

	"outpost/internal/edge/store"
	"outpost/internal/identity"
	"outpost/internal/manifest"
)

// The deployment: `outpost edge set-modules` writes a manifest's parts
// into the $edgeAgent and $edgeHub module twins at the hub. $edgeHub's
// routes and TTL reach the edge through the link (EdgeHubDesired, live).
// From $edgeAgent the edge takes the edgeHub module's environment, whose
// storageFolder applies at the next start; it GETs that twin on behalf of
// its own $edgeAgent module whenever it comes online, and keeps the last
// one it saw.

// kvEdgeHubEnv holds the edgeHub module's environment last fetched.
const kvEdgeHubEnv = "edge/edgehub-env"

// fetchEdgeAgent gets the $edgeAgent twin through the link and, when the
// edgeHub module's environment changed, persists it and tells
// Config.OnEdgeHubEnv.
func (e *Edge) fetchEdgeAgent(ctx context.Context) {
	rctx, cancel := context.WithTimeout(ctx, replayTimeout)
	body, err := e.up.TwinGet(rctx, e.cfg.DeviceID, identity.EdgeAgent)
	cancel()
	if err != nil {
		e.log.Info("$edgeAgent twin not fetched", "error", err)
		return
	}
	var doc struct {
		Desired map[string]any `json:"desired"`
	}
	if err := json.Unmarshal(body, &doc); err != nil {
		e.log.Warn("$edgeAgent twin from hub", "error", err)
		return
	}
	env, err := manifest.EdgeHubEnv(doc.Desired)
	if err != nil {
		e.log.Error("refusing the edgeHub module environment in $edgeAgent; the previous stays in force", "error", err)
		return
	}
	if env == nil {
		env = map[string]string{}
	}
	prev := e.EdgeHubEnv()
	if maps.Equal(prev, env) {
		return
	}
	b, err := json.Marshal(env)
	if err != nil {
		return
	}
	if err := e.st.Put([]byte(kvEdgeHubEnv), b); err != nil {
		e.log.Error("persisting the edgeHub module environment", "error", err)
		return
	}
	e.log.Info("edgeHub module environment from the deployment", "variables", len(env), "storageFolder", env["storageFolder"])
	if e.cfg.OnEdgeHubEnv != nil {
		e.cfg.OnEdgeHubEnv(maps.Clone(env))
	}
}

// EdgeHubEnv is the edgeHub module's environment as last fetched from the
// $edgeAgent twin (a deployment manifest's systemModules.edgeHub.env);
// empty when none was.
func (e *Edge) EdgeHubEnv() map[string]string {
	v, err := e.st.Get([]byte(kvEdgeHubEnv))
	if errors.Is(err, store.ErrNotFound) || err != nil {
		return map[string]string{}
	}
	var env map[string]string
	if json.Unmarshal(v, &env) != nil || env == nil {
		return map[string]string{}
	}
	return env
}
