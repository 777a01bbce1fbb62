// Package twin holds device and module twin documents and their rules:
// JSON merge patches, section versions, $metadata, and Azure IoT Hub's
// validation limits.
//
// It is pure: the hub keeps twins in JetStream KV and the edge in its
// twin cache, both as the JSON of Twin, and both call these functions so
// a patch accepted offline at the edge is accepted by the hub later.
// Every mutation validates a copy and commits only on success, so a
// refused patch leaves the twin exactly as it was.
package twin

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"io"
	"time"

	"outpost/internal/status"
)

// X509Thumbprint mirrors the registry's thumbprints on a device twin.
type X509Thumbprint struct {
	PrimaryThumbprint   string `json:"primaryThumbprint"`
	SecondaryThumbprint string `json:"secondaryThumbprint"`
}

// Capabilities mirrors the registry's capabilities on a device twin.
type Capabilities struct {
	IoTEdge bool `json:"iotEdge"`
}

// Properties are a twin's two property sections. Each holds the
// properties plus the server's "$version" and "$metadata".
type Properties struct {
	Desired  map[string]any `json:"desired"`
	Reported map[string]any `json:"reported"`
}

// Twin is a device or module twin in Azure's JSON shape. The identity
// fields (status, connection state, authentication type, thumbprints,
// capabilities, scopes) are copies of the registry entry that the caller
// fills when it serves the twin; this package does not maintain them.
type Twin struct {
	DeviceID                  string          `json:"deviceId"`
	ModuleID                  string          `json:"moduleId,omitempty"`
	ETag                      string          `json:"etag"`
	DeviceETag                string          `json:"deviceEtag,omitempty"`
	Status                    string          `json:"status,omitempty"`
	StatusReason              string          `json:"statusReason,omitempty"`
	ConnectionState           string          `json:"connectionState,omitempty"`
	LastActivityTime          time.Time       `json:"lastActivityTime,omitzero"`
	CloudToDeviceMessageCount int             `json:"cloudToDeviceMessageCount,omitempty"`
	AuthenticationType        string          `json:"authenticationType,omitempty"`
	X509Thumbprint            *X509Thumbprint `json:"x509Thumbprint,omitempty"`
	ModelID                   string          `json:"modelId,omitempty"`
	// Version counts every change to the twin: tags, desired or reported.
	Version      int64          `json:"version"`
	Tags         map[string]any `json:"tags,omitempty"`
	Properties   Properties     `json:"properties"`
	Capabilities *Capabilities  `json:"capabilities,omitempty"`
	DeviceScope  string         `json:"deviceScope,omitempty"`
	ParentScopes []string       `json:"parentScopes,omitempty"`
}

// New returns the twin of a new device (moduleID empty) or module: empty
// sections at $version 1.
func New(deviceID, moduleID string, now time.Time) *Twin {
	ts := timestamp(now)
	t := &Twin{
		DeviceID: deviceID,
		ModuleID: moduleID,
		Version:  1,
		Tags:     map[string]any{},
		Properties: Properties{
			Desired: map[string]any{keyVersion: int64(1), keyMetadata: map[string]any{
				keyLastUpdated: ts, keyLastUpdatedVersion: int64(1)}},
			Reported: map[string]any{keyVersion: int64(1), keyMetadata: map[string]any{
				keyLastUpdated: ts}},
		},
	}
	t.ETag = VersionETag(t.Version)
	return t
}

// Decode parses a twin, stored or sent whole by a client (a PUT),
// keeping numbers exact (json.Number). It must be one JSON object: a PUT
// of null, or of an object followed by more, would otherwise replace the
// tags and desired properties with whatever the first value left.
func Decode(data []byte) (*Twin, error) {
	if err := CheckText("twin", data); err != nil {
		return nil, err
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	var t *Twin
	if err := dec.Decode(&t); err != nil {
		return nil, errorf(status.CodeArgumentInvalid, "twin is not valid JSON: %v", err)
	}
	if t == nil {
		return nil, errorf(status.CodeArgumentInvalid, "twin is null, not a JSON object")
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errorf(status.CodeArgumentInvalid, "twin has data after its JSON object")
	}
	if t.Tags == nil {
		t.Tags = map[string]any{}
	}
	if t.Properties.Desired == nil {
		t.Properties.Desired = map[string]any{}
	}
	if t.Properties.Reported == nil {
		t.Properties.Reported = map[string]any{}
	}
	return t, nil
}

// DecodeObject parses one JSON object (a twin document, a section or a
// patch), keeping numbers exact (json.Number); null, another value or
// data after the object is an error.
func DecodeObject(b []byte) (map[string]any, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var m map[string]any
	if err := dec.Decode(&m); err != nil {
		return nil, err
	}
	if m == nil {
		return nil, errors.New("null")
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("data after the object")
	}
	return m, nil
}

// VersionETag renders a twin version as an etag in Azure's twin form
// (base64 of the big-endian 64-bit version, "AAAAAAAAAAE=" for 1). Every
// mutation sets ETag this way; a store with its own revisions may
// overwrite it.
func VersionETag(v int64) string {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], uint64(v))
	return base64.StdEncoding.EncodeToString(b[:])
}

func timestamp(now time.Time) string { return now.UTC().Format(time.RFC3339Nano) }

// Clone returns a deep copy of t.
func (t *Twin) Clone() *Twin {
	c := *t
	if t.X509Thumbprint != nil {
		x := *t.X509Thumbprint
		c.X509Thumbprint = &x
	}
	if t.Capabilities != nil {
		x := *t.Capabilities
		c.Capabilities = &x
	}
	if t.ParentScopes != nil {
		c.ParentScopes = append([]string{}, t.ParentScopes...)
	}
	c.Tags = cloneMap(t.Tags)
	c.Properties.Desired = cloneMap(t.Properties.Desired)
	c.Properties.Reported = cloneMap(t.Properties.Reported)
	return &c
}

// DesiredVersion is the desired section's $version.
func (t *Twin) DesiredVersion() int64 { return SectionVersion(t.Properties.Desired) }

// ReportedVersion is the reported section's $version.
func (t *Twin) ReportedVersion() int64 { return SectionVersion(t.Properties.Reported) }

// Desired returns a copy of the desired properties without $version and
// $metadata: the document Diff compares.
func (t *Twin) Desired() map[string]any { return content(t.Properties.Desired) }

// Reported returns a copy of the reported properties without $version
// and $metadata.
func (t *Twin) Reported() map[string]any { return content(t.Properties.Reported) }

// SectionVersion reads a section's $version, whichever numeric type JSON
// decoding gave it; 0 if absent.
func SectionVersion(section map[string]any) int64 {
	n, _ := toInt64(section[keyVersion])
	return n
}

// mutate applies f to a copy of t and commits it, with the twin version
// bumped, only if f succeeds.
func (t *Twin) mutate(f func(c *Twin) error) error {
	c := t.Clone()
	if err := f(c); err != nil {
		return err
	}
	c.Version++
	c.ETag = VersionETag(c.Version)
	*t = *c
	return nil
}

// PatchDesired merges patch into the desired properties and returns the
// new desired $version. The size limit applies to the result.
func (t *Twin) PatchDesired(patch map[string]any, now time.Time) (int64, error) {
	var v int64
	err := t.mutate(func(c *Twin) (err error) {
		c.Properties.Desired, v, err = patchSection(c.Properties.Desired, patch, "desired properties", true, 0, now)
		return err
	})
	return v, err
}

// PatchReported merges patch into the reported properties and returns the
// new reported $version.
func (t *Twin) PatchReported(patch map[string]any, now time.Time) (int64, error) {
	return t.PatchReportedAtLeast(patch, 0, now)
}

// PatchReportedAtLeast is PatchReported with the new reported $version
// raised to atLeast if it would be lower: an edge answered its client
// versions from its cache while offline, and the client must not see
// them go back once the held patch reaches the hub.
func (t *Twin) PatchReportedAtLeast(patch map[string]any, atLeast int64, now time.Time) (int64, error) {
	var v int64
	err := t.mutate(func(c *Twin) (err error) {
		c.Properties.Reported, v, err = patchSection(c.Properties.Reported, patch, "reported properties", false, atLeast, now)
		return err
	})
	return v, err
}

// PatchTags merges patch into the tags, which have no versions or
// metadata of their own, only the twin version.
func (t *Twin) PatchTags(patch map[string]any) error {
	return t.mutate(func(c *Twin) error { return patchTags(c, patch) })
}

func patchTags(c *Twin, patch map[string]any) error {
	if err := ValidatePatch(patch); err != nil {
		return err
	}
	if c.Tags == nil {
		c.Tags = map[string]any{}
	}
	Merge(c.Tags, patch)
	return checkSize("tags after the patch", c.Tags, MaxTagsSize)
}

// Patch applies a service PATCH: tags and desired patches, either nil,
// both or neither committed. It returns the desired $version, new if
// desired was patched.
func (t *Twin) Patch(tags, desired map[string]any, now time.Time) (int64, error) {
	v := t.DesiredVersion()
	err := t.mutate(func(c *Twin) (err error) {
		if tags != nil {
			if err := patchTags(c, tags); err != nil {
				return err
			}
		}
		if desired != nil {
			c.Properties.Desired, v, err = patchSection(c.Properties.Desired, desired, "desired properties", true, 0, now)
		}
		return err
	})
	return v, err
}

// ReplaceDesired replaces the desired properties with doc (null values are
// dropped; $version and $metadata in doc are ignored) and returns the new
// $version. Devices hold the old desired document, so send them
// Diff(old, new), not doc.
func (t *Twin) ReplaceDesired(doc map[string]any, now time.Time) (int64, error) {
	var v int64
	err := t.mutate(func(c *Twin) (err error) {
		c.Properties.Desired, v, err = replaceSection(c.Properties.Desired, doc, now)
		return err
	})
	return v, err
}

// Replace applies a service PUT: n's tags and desired properties replace
// t's; n's reported properties are ignored, as Azure ignores them. It
// returns the new desired $version. Send devices Diff of the old and new
// desired documents.
func (t *Twin) Replace(n *Twin, now time.Time) (int64, error) {
	var v int64
	err := t.mutate(func(c *Twin) (err error) {
		tags := n.Tags
		if tags == nil {
			tags = map[string]any{}
		}
		if err := ValidatePatch(tags); err != nil {
			return err
		}
		c.Tags = map[string]any{}
		Merge(c.Tags, tags)
		if err := checkSize("tags", c.Tags, MaxTagsSize); err != nil {
			return err
		}
		desired := n.Properties.Desired
		if desired == nil {
			desired = map[string]any{}
		}
		c.Properties.Desired, v, err = replaceSection(c.Properties.Desired, desired, now)
		return err
	})
	return v, err
}

// stamp writes $metadata entries for one update of a section.
type stamp struct {
	ts      string
	version int64
	desired bool // desired metadata also carries $lastUpdatedVersion
}

func (s stamp) mark(m map[string]any) {
	m[keyLastUpdated] = s.ts
	if s.desired {
		m[keyLastUpdatedVersion] = s.version
	}
}

// build returns fresh metadata for value v and everything under it.
func (s stamp) build(v any) map[string]any {
	m := map[string]any{}
	s.mark(m)
	if vm, ok := v.(map[string]any); ok {
		for k, c := range vm {
			if c != nil {
				m[k] = s.build(c)
			}
		}
	}
	return m
}

// apply updates meta, the metadata of an object, for patch merged into
// that object: patched keys are stamped, deleted keys lose their
// metadata, untouched keys keep theirs.
func (s stamp) apply(meta, patch map[string]any) {
	for k, v := range patch {
		if v == nil {
			delete(meta, k)
			continue
		}
		vm, isMap := v.(map[string]any)
		if cur, ok := meta[k].(map[string]any); ok && isMap {
			s.mark(cur)
			s.apply(cur, vm)
			continue
		}
		meta[k] = s.build(v)
	}
}

// patchSection returns sec with patch merged and its next $version, at
// least atLeast.
func patchSection(sec, patch map[string]any, what string, desired bool, atLeast int64, now time.Time) (map[string]any, int64, error) {
	if err := ValidatePatch(patch); err != nil {
		return nil, 0, err
	}
	data := content(sec)
	Merge(data, patch)
	if err := checkSize(what+" after the patch", data, MaxSectionSize); err != nil {
		return nil, 0, err
	}
	v := max(SectionVersion(sec)+1, atLeast)
	meta, _ := deepCopy(sec[keyMetadata]).(map[string]any)
	if meta == nil {
		meta = map[string]any{}
	}
	st := stamp{ts: timestamp(now), version: v, desired: desired}
	st.apply(meta, patch)
	st.mark(meta)
	data[keyVersion] = v
	data[keyMetadata] = meta
	return data, v, nil
}

func replaceSection(sec, doc map[string]any, now time.Time) (map[string]any, int64, error) {
	if err := ValidateDocument(doc); err != nil {
		return nil, 0, err
	}
	data := map[string]any{}
	Merge(data, content(doc))
	if err := checkSize("desired properties", data, MaxSectionSize); err != nil {
		return nil, 0, err
	}
	v := SectionVersion(sec) + 1
	meta := stamp{ts: timestamp(now), version: v, desired: true}.build(data)
	data[keyVersion] = v
	data[keyMetadata] = meta
	return data, v, nil
}

// StripMetadata returns a deep copy of section without its $metadata,
// keeping $version: what IoT Hub shows devices.
func StripMetadata(section map[string]any) map[string]any {
	out := make(map[string]any, len(section))
	for k, v := range section {
		if k != keyMetadata {
			out[k] = deepCopy(v)
		}
	}
	return out
}

// SectionsForDevice is the body of the MQTT twin GET response:
// {"desired":{…,"$version":n},"reported":{…,"$version":m}}, without
// metadata, as IoT Hub answers devices.
func (t *Twin) SectionsForDevice() []byte {
	b, err := encode(map[string]any{
		"desired":  StripMetadata(t.Properties.Desired),
		"reported": StripMetadata(t.Properties.Reported),
	})
	if err != nil {
		// Only values that bypassed validation can fail to encode.
		return []byte(`{"desired":{},"reported":{}}`)
	}
	return b
}

// DesiredPatchBody is the body the server publishes to a device for a
// desired update: the patch plus "$version". patch is not modified; it
// must have passed ValidatePatch (nil is returned otherwise).
func DesiredPatchBody(patch map[string]any, version int64) []byte {
	m := make(map[string]any, len(patch)+1)
	for k, v := range patch {
		m[k] = v
	}
	m[keyVersion] = version
	b, err := encode(m)
	if err != nil {
		return nil
	}
	return b
}

// SplitVersion separates a received desired update body into the patch
// and its $version, as an edge needs when it relays a parent's update to
// its cached twin. ok is false if the body carries no $version.
func SplitVersion(body map[string]any) (patch map[string]any, version int64, ok bool) {
	patch = make(map[string]any, len(body))
	for k, v := range body {
		if k == keyVersion {
			version, ok = toInt64(v)
			continue
		}
		patch[k] = v
	}
	return patch, version, ok
}
