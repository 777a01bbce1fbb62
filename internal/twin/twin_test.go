package twin

import (
	"encoding/json"
	"errors"
	"math"
	"math/rand/v2"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"outpost/internal/status"
)

var (
	t0 = time.Date(2024, 5, 6, 7, 8, 9, 0, time.UTC)
	t1 = t0.Add(time.Minute)
	t2 = t0.Add(time.Hour)
)

// obj parses a JSON object the way the hub decodes stored twins (float64
// numbers), failing the test on error.
func obj(t testing.TB, s string) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal([]byte(s), &m); err != nil {
		t.Fatalf("bad test JSON %s: %v", s, err)
	}
	return m
}

func wantErr(t *testing.T, err error, code, msg string) {
	t.Helper()
	var e *status.Error
	if !errors.As(err, &e) {
		t.Fatalf("err = %v, want *status.Error", err)
	}
	if e.Status != 400 || e.Code != code || !strings.Contains(e.Message, msg) {
		t.Errorf("err = %d %s %q, want 400 %s containing %q", e.Status, e.Code, e.Message, code, msg)
	}
}

func TestNew(t *testing.T) {
	tw := New("d", "m", t0)
	if tw.DesiredVersion() != 1 || tw.ReportedVersion() != 1 || tw.Version != 1 || tw.ETag != "AAAAAAAAAAE=" {
		t.Errorf("new twin versions: %d %d %d %q", tw.DesiredVersion(), tw.ReportedVersion(), tw.Version, tw.ETag)
	}
	for _, sec := range []map[string]any{tw.Properties.Desired, tw.Properties.Reported} {
		if sec[keyMetadata].(map[string]any)[keyLastUpdated] != "2024-05-06T07:08:09Z" {
			t.Errorf("metadata = %v", sec[keyMetadata])
		}
	}
	b, err := json.Marshal(tw)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"deviceId", "moduleId", "etag", "version", "properties"} {
		if _, ok := m[k]; !ok {
			t.Errorf("twin JSON lacks %q: %s", k, b)
		}
	}
	if _, ok := m["capabilities"]; ok {
		t.Errorf("module twin has capabilities: %s", b)
	}
}

func TestMerge(t *testing.T) {
	tests := []struct {
		name, dst, patch, want string
	}{
		{"add", `{"a":1}`, `{"b":2}`, `{"a":1,"b":2}`},
		{"replace", `{"a":1}`, `{"a":"x"}`, `{"a":"x"}`},
		{"delete", `{"a":1,"b":2}`, `{"a":null}`, `{"b":2}`},
		{"delete missing", `{"a":1}`, `{"z":null}`, `{"a":1}`},
		{"nested merge", `{"a":{"x":1,"y":2}}`, `{"a":{"y":3,"z":4}}`, `{"a":{"x":1,"y":3,"z":4}}`},
		{"nested null delete", `{"a":{"x":1,"y":{"p":1,"q":2}}}`, `{"a":{"y":{"p":null}}}`, `{"a":{"x":1,"y":{"q":2}}}`},
		{"null inside new object", `{}`, `{"a":{"x":null,"y":1}}`, `{"a":{"y":1}}`},
		{"object replaces leaf", `{"a":1}`, `{"a":{"x":1}}`, `{"a":{"x":1}}`},
		{"leaf replaces object", `{"a":{"x":1}}`, `{"a":true}`, `{"a":true}`},
		{"array replaces", `{"a":[1,2,3]}`, `{"a":[4]}`, `{"a":[4]}`},
		{"empty patch", `{"a":1}`, `{}`, `{"a":1}`},
		{"empty object stays", `{"a":{"x":1}}`, `{"a":{"x":null}}`, `{"a":{}}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dst, patch := obj(t, tt.dst), obj(t, tt.patch)
			Merge(dst, patch)
			if want := obj(t, tt.want); !reflect.DeepEqual(dst, want) {
				t.Errorf("Merge = %v, want %v", dst, want)
			}
		})
	}
	t.Run("no aliasing", func(t *testing.T) {
		dst, patch := map[string]any{}, obj(t, `{"a":{"b":[{"c":1}]}}`)
		Merge(dst, patch)
		patch["a"].(map[string]any)["b"].([]any)[0].(map[string]any)["c"] = 2.0
		if !reflect.DeepEqual(dst, obj(t, `{"a":{"b":[{"c":1}]}}`)) {
			t.Errorf("dst shares memory with patch: %v", dst)
		}
	})
}

func TestPatchVersionsAndMetadata(t *testing.T) {
	tw := New("d", "", t0)
	v, err := tw.PatchDesired(obj(t, `{"a":{"x":1,"y":2},"b":"s"}`), t1)
	if err != nil {
		t.Fatal(err)
	}
	if v != 2 || tw.DesiredVersion() != 2 || tw.ReportedVersion() != 1 || tw.Version != 2 || tw.ETag != VersionETag(2) {
		t.Fatalf("versions after one desired patch: ret %d desired %d reported %d twin %d", v, tw.DesiredVersion(), tw.ReportedVersion(), tw.Version)
	}
	v, err = tw.PatchDesired(obj(t, `{"a":{"y":null},"c":true}`), t2)
	if err != nil || v != 3 || tw.Version != 3 {
		t.Fatalf("second patch: %d %v, twin version %d", v, err, tw.Version)
	}
	want := obj(t, `{"a":{"x":1},"b":"s","c":true}`)
	if got := tw.Desired(); !reflect.DeepEqual(got, want) {
		t.Errorf("desired = %v, want %v", got, want)
	}

	meta := tw.Properties.Desired[keyMetadata].(map[string]any)
	ts1, ts2 := timestamp(t1), timestamp(t2)
	check := func(path string, m map[string]any, ts string, ver int64) {
		t.Helper()
		if m == nil {
			t.Errorf("%s: no metadata", path)
			return
		}
		if m[keyLastUpdated] != ts {
			t.Errorf("%s.$lastUpdated = %v, want %s", path, m[keyLastUpdated], ts)
		}
		if n, _ := toInt64(m[keyLastUpdatedVersion]); n != ver {
			t.Errorf("%s.$lastUpdatedVersion = %v, want %d", path, m[keyLastUpdatedVersion], ver)
		}
	}
	sub := func(m map[string]any, k string) map[string]any { r, _ := m[k].(map[string]any); return r }
	check("$metadata", meta, ts2, 3)
	check("a", sub(meta, "a"), ts2, 3)
	check("a.x", sub(sub(meta, "a"), "x"), ts1, 2)
	check("b", sub(meta, "b"), ts1, 2)
	check("c", sub(meta, "c"), ts2, 3)
	if _, ok := sub(meta, "a")["y"]; ok {
		t.Error("deleted a.y keeps metadata")
	}

	rv, err := tw.PatchReported(obj(t, `{"fw":"1.2"}`), t2)
	if err != nil || rv != 2 || tw.Version != 4 || tw.DesiredVersion() != 3 {
		t.Fatalf("reported patch: %d %v; twin %d desired %d", rv, err, tw.Version, tw.DesiredVersion())
	}
	rmeta := tw.Properties.Reported[keyMetadata].(map[string]any)
	if rmeta[keyLastUpdated] != ts2 || sub(rmeta, "fw")[keyLastUpdated] != ts2 {
		t.Errorf("reported metadata = %v", rmeta)
	}
	if _, ok := sub(rmeta, "fw")[keyLastUpdatedVersion]; ok {
		t.Error("reported metadata carries $lastUpdatedVersion")
	}

	if err := tw.PatchTags(obj(t, `{"site":"north"}`)); err != nil || tw.Version != 5 || tw.Tags["site"] != "north" {
		t.Fatalf("tags patch: %v, version %d, tags %v", err, tw.Version, tw.Tags)
	}
}

func TestSectionsForDevice(t *testing.T) {
	tw := New("d", "", t0)
	if _, err := tw.PatchDesired(obj(t, `{"rate":5}`), t1); err != nil {
		t.Fatal(err)
	}
	if _, err := tw.PatchReported(obj(t, `{"ok":true}`), t1); err != nil {
		t.Fatal(err)
	}
	got := obj(t, string(tw.SectionsForDevice()))
	want := obj(t, `{"desired":{"rate":5,"$version":2},"reported":{"ok":true,"$version":2}}`)
	if !reflect.DeepEqual(got, want) {
		t.Errorf("SectionsForDevice = %v, want %v", got, want)
	}
	if _, ok := tw.Properties.Desired[keyMetadata]; !ok {
		t.Error("SectionsForDevice stripped the twin's own metadata")
	}

	patch := obj(t, `{"rate":7,"old":null}`)
	body := DesiredPatchBody(patch, 9)
	if !reflect.DeepEqual(obj(t, string(body)), obj(t, `{"rate":7,"old":null,"$version":9}`)) {
		t.Errorf("DesiredPatchBody = %s", body)
	}
	if _, ok := patch[keyVersion]; ok {
		t.Error("DesiredPatchBody modified its patch")
	}
	p, v, ok := SplitVersion(obj(t, string(body)))
	if !ok || v != 9 || !reflect.DeepEqual(p, patch) {
		t.Errorf("SplitVersion = %v %d %v", p, v, ok)
	}
	if _, _, ok := SplitVersion(patch); ok {
		t.Error("SplitVersion found a version in a plain patch")
	}
}

// nested returns an object whose leaf sits under n nested objects below
// the root: n=10 is Azure's documented limit example.
func nested(n int) map[string]any {
	m := map[string]any{"property": "value"}
	for i := n; i >= 1; i-- {
		m = map[string]any{"l" + strconv.Itoa(i): m}
	}
	return m
}

// padded returns a patch {"k":"xxx…"} whose JSON is exactly n bytes.
func padded(n int) map[string]any {
	return map[string]any{"k": strings.Repeat("x", n-len(`{"k":""}`))}
}

func TestLimits(t *testing.T) {
	tests := []struct {
		name  string
		patch map[string]any
		code  string
		msg   string // empty: accepted
	}{
		{"depth 10", nested(10), "", ""},
		{"depth 11", nested(11), status.CodeArgumentInvalid, "nests objects 11 deep: the limit is 10"},
		{"array counts as a level", map[string]any{"b": []any{nested(9)}}, status.CodeArgumentInvalid, "nests objects 11 deep: the limit is 10"},
		{"array at the limit", map[string]any{"b": []any{nested(8)}}, "", ""},
		{"huge number", map[string]any{"a": json.Number("1e400")}, status.CodeArgumentInvalid, "not a JSON number"},
		{"array leaf", map[string]any{"a": []any{1.0, "x", true, nil, map[string]any{"k": 1.0}}}, "", ""},
		{"size at limit", padded(MaxSectionSize), "", ""},
		{"size over limit", padded(MaxSectionSize + 1), status.CodeTwinSizeExceeded, "the limit is 32768 bytes (32 KiB)"},
		{"empty key", map[string]any{"": 1.0}, status.CodeArgumentInvalid, "keys must not be empty"},
		{"dot", map[string]any{"a.b": 1.0}, status.CodeArgumentInvalid, `key "a.b" contains '.'`},
		{"dollar", map[string]any{"$version": 1.0}, status.CodeArgumentInvalid, `starts with '$'`},
		{"dollar inside", map[string]any{"a$b": 1.0}, status.CodeArgumentInvalid, `key "a$b" contains '$': property and tag names must not contain`},
		{"dollar at the end", map[string]any{"a": map[string]any{"b$": 1.0}}, status.CodeArgumentInvalid, `key "a.b$" contains '$'`},
		{"hash", map[string]any{"a#b": 1.0}, status.CodeArgumentInvalid, `key "a#b" contains '#'`},
		{"space", map[string]any{"a b": 1.0}, status.CodeArgumentInvalid, "contains a space"},
		{"C0 control", map[string]any{"a\tb": 1.0}, status.CodeArgumentInvalid, "control character U+0009"},
		{"C1 control", map[string]any{"a\u0085b": 1.0}, status.CodeArgumentInvalid, "control character U+0085"},
		{"DEL", map[string]any{"a\x7f": 1.0}, status.CodeArgumentInvalid, "control character U+007F"},
		{"bad UTF-8", map[string]any{"a\xff": 1.0}, status.CodeArgumentInvalid, "not valid UTF-8"},
		{"unicode key", map[string]any{"température": 1.0}, "", ""},
		{"key 1024", map[string]any{strings.Repeat("k", 1024): 1.0}, "", ""},
		{"key 1025", map[string]any{strings.Repeat("k", 1025): 1.0}, status.CodeArgumentInvalid, "is 1025 bytes: the limit is 1024"},
		{"nested bad key path", map[string]any{"a": map[string]any{"b": map[string]any{"c.d": 1.0}}}, status.CodeArgumentInvalid, `"a.b.c.d"`},
		{"NaN", map[string]any{"a": math.NaN()}, status.CodeArgumentInvalid, "not a JSON number"},
		{"bad json.Number", map[string]any{"a": json.Number("0x10")}, status.CodeArgumentInvalid, "not a JSON number"},
		{"good json.Number", map[string]any{"a": json.Number("-1.5e+10")}, "", ""},
		{"go int", map[string]any{"a": 3}, "", ""},
		{"foreign type", map[string]any{"a": map[string]string{"x": "y"}}, status.CodeArgumentInvalid, "values must be JSON"},
		{"nil patch", nil, status.CodeArgumentInvalid, "not a JSON object"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := ValidatePatch(tt.patch)
			if tt.msg == "" {
				if err != nil {
					t.Fatalf("ValidatePatch = %v", err)
				}
				return
			}
			wantErr(t, err, tt.code, tt.msg)
		})
	}
}

func TestValidateDocument(t *testing.T) {
	tw := New("d", "", t0)
	if _, err := tw.PatchDesired(padded(MaxSectionSize), t1); err != nil {
		t.Fatal(err)
	}
	// The section with its $version and $metadata is larger than the
	// limit, but those are the server's and do not count.
	if err := ValidateDocument(tw.Properties.Desired); err != nil {
		t.Errorf("ValidateDocument(stored section) = %v", err)
	}
	wantErr(t, ValidateDocument(map[string]any{"$other": 1.0}), status.CodeArgumentInvalid, "starts with '$'")
	wantErr(t, ValidateDocument(padded(MaxSectionSize+1)), status.CodeTwinSizeExceeded, "document is 32769 bytes")
}

// TestRefusedLeavesTwinUnchanged covers every mutation: a refused patch
// must leave the twin exactly as it was, even when the refusal comes
// after part of the work (size after merge, tags before desired).
func TestRefusedLeavesTwinUnchanged(t *testing.T) {
	half := padded(MaxSectionSize/2 + 100)
	other := map[string]any{"k2": half["k"]}
	tests := []struct {
		name string
		do   func(tw *Twin) error
		code string
	}{
		{"desired size after merge", func(tw *Twin) error { _, err := tw.PatchDesired(other, t2); return err }, status.CodeTwinSizeExceeded},
		{"desired bad key", func(tw *Twin) error { _, err := tw.PatchDesired(map[string]any{"ok": 1.0, "a.b": 1.0}, t2); return err }, status.CodeArgumentInvalid},
		{"reported size after merge", func(tw *Twin) error { _, err := tw.PatchReported(other, t2); return err }, status.CodeTwinSizeExceeded},
		{"reported depth", func(tw *Twin) error { _, err := tw.PatchReported(nested(11), t2); return err }, status.CodeArgumentInvalid},
		{"tags size", func(tw *Twin) error { return tw.PatchTags(padded(MaxTagsSize + 1)) }, status.CodeTwinSizeExceeded},
		{"patch: good tags, bad desired", func(tw *Twin) error {
			_, err := tw.Patch(map[string]any{"t": "v"}, other, t2)
			return err
		}, status.CodeTwinSizeExceeded},
		{"patch: bad tags, good desired", func(tw *Twin) error {
			_, err := tw.Patch(map[string]any{"$t": "v"}, map[string]any{"x": 1.0}, t2)
			return err
		}, status.CodeArgumentInvalid},
		{"replace desired", func(tw *Twin) error { _, err := tw.ReplaceDesired(padded(MaxSectionSize+1), t2); return err }, status.CodeTwinSizeExceeded},
		{"replace twin bad tags", func(tw *Twin) error {
			n := New("d", "", t2)
			n.Tags = map[string]any{"a b": 1.0}
			_, err := tw.Replace(n, t2)
			return err
		}, status.CodeArgumentInvalid},
		{"replace twin bad desired", func(tw *Twin) error {
			n := New("d", "", t2)
			n.Tags = map[string]any{"ok": 1.0}
			n.Properties.Desired = nested(11)
			_, err := tw.Replace(n, t2)
			return err
		}, status.CodeArgumentInvalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tw := New("d", "", t0)
			if _, err := tw.PatchDesired(half, t1); err != nil {
				t.Fatal(err)
			}
			if _, err := tw.PatchReported(half, t1); err != nil {
				t.Fatal(err)
			}
			if err := tw.PatchTags(map[string]any{"site": "a"}); err != nil {
				t.Fatal(err)
			}
			before, _ := json.Marshal(tw)
			beforeClone := tw.Clone()
			var e *status.Error
			if err := tt.do(tw); !errors.As(err, &e) || e.Code != tt.code {
				t.Fatalf("err = %v, want code %s", err, tt.code)
			}
			after, _ := json.Marshal(tw)
			if string(before) != string(after) || !reflect.DeepEqual(tw, beforeClone) {
				t.Errorf("twin changed by a refused update:\nbefore %.300s\nafter  %.300s", before, after)
			}
		})
	}
}

func TestReplace(t *testing.T) {
	tw := New("d", "", t0)
	if _, err := tw.Patch(obj(t, `{"site":"a","gone":1}`), obj(t, `{"a":1,"b":{"c":2}}`), t1); err != nil {
		t.Fatal(err)
	}
	if _, err := tw.PatchReported(obj(t, `{"r":1}`), t1); err != nil {
		t.Fatal(err)
	}
	oldDesired := tw.Desired()
	n := &Twin{DeviceID: "d", Tags: obj(t, `{"site":"b"}`), Properties: Properties{
		Desired:  obj(t, `{"b":{"d":3},"e":null,"$version":77}`),
		Reported: obj(t, `{"hacked":true}`),
	}}
	v, err := tw.Replace(n, t2)
	if err != nil {
		t.Fatal(err)
	}
	if v != 3 || tw.DesiredVersion() != 3 || tw.ReportedVersion() != 2 {
		t.Errorf("versions: ret %d desired %d reported %d", v, tw.DesiredVersion(), tw.ReportedVersion())
	}
	if !reflect.DeepEqual(tw.Tags, obj(t, `{"site":"b"}`)) || !reflect.DeepEqual(tw.Desired(), obj(t, `{"b":{"d":3}}`)) ||
		!reflect.DeepEqual(tw.Reported(), obj(t, `{"r":1}`)) {
		t.Errorf("after replace: tags %v desired %v reported %v", tw.Tags, tw.Desired(), tw.Reported())
	}
	meta := tw.Properties.Desired[keyMetadata].(map[string]any)
	if meta["b"].(map[string]any)["d"].(map[string]any)[keyLastUpdated] != timestamp(t2) {
		t.Errorf("replace metadata = %v", meta)
	}
	// What the hub sends devices after a PUT.
	d := Diff(oldDesired, tw.Desired())
	if !reflect.DeepEqual(d, obj(t, `{"a":null,"b":{"c":null,"d":3}}`)) {
		t.Errorf("Diff = %v", d)
	}

	v, err = tw.ReplaceDesired(obj(t, `{"z":1}`), t2)
	if err != nil || v != 4 || !reflect.DeepEqual(tw.Desired(), obj(t, `{"z":1}`)) {
		t.Errorf("ReplaceDesired: %d %v %v", v, err, tw.Desired())
	}
}

func TestDecode(t *testing.T) {
	tw := New("d", "", t0)
	if _, err := tw.PatchDesired(map[string]any{"big": json.Number("9007199254740993")}, t1); err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(tw)
	if err != nil {
		t.Fatal(err)
	}
	back, err := Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	if back.Desired()["big"] != json.Number("9007199254740993") {
		t.Errorf("big number = %v", back.Desired()["big"])
	}
	// Versions decoded as json.Number and as float64 both count.
	for _, tw := range []*Twin{back, mustUnmarshal(t, b)} {
		if v, err := tw.PatchDesired(map[string]any{"x": 1.0}, t2); err != nil || v != 3 || tw.Version != 3 {
			t.Errorf("patch after decode: %d %v version %d", v, err, tw.Version)
		}
	}
	for _, bad := range []string{`[`, `null`, `{} {}`, `{"tags":{}} x`} {
		if _, err := Decode([]byte(bad)); err == nil {
			t.Errorf("Decode accepted %s", bad)
		}
	}
}

func TestDecodeObject(t *testing.T) {
	tests := []struct {
		name, in string
		ok       bool
	}{
		{"object", ` {"big": 9007199254740993} `, true},
		{"null", `null`, false},
		{"array", `[1]`, false},
		{"data after the object", `{"a":1} {"b":2}`, false},
		{"truncated", `{"a":`, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := DecodeObject([]byte(tt.in))
			if (err == nil) != tt.ok {
				t.Fatalf("DecodeObject(%s) = %v, %v; want ok %v", tt.in, m, err, tt.ok)
			}
			if tt.ok && m["big"] != json.Number("9007199254740993") {
				t.Errorf("big = %#v, want the exact json.Number", m["big"])
			}
		})
	}
}

func mustUnmarshal(t *testing.T, b []byte) *Twin {
	var tw Twin
	if err := json.Unmarshal(b, &tw); err != nil {
		t.Fatal(err)
	}
	return &tw
}

func TestParsePatch(t *testing.T) {
	tests := []struct {
		in, msg string
	}{
		{`{"a":1}`, ""},
		{` {"a":{"b":null}} `, ""},
		{`[1]`, "not a JSON object"},
		{`null`, "not a JSON object"},
		{`{"a":1} {}`, "data after"},
		{`{"a":1}x`, "data after"},
		{`{"a":`, "not valid JSON"},
		{``, "not valid JSON"},
		{`{"a.b":1}`, "contains '.'"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			m, err := ParsePatch([]byte(tt.in))
			if tt.msg == "" {
				if err != nil || m == nil {
					t.Fatalf("ParsePatch = %v, %v", m, err)
				}
				return
			}
			var e *status.Error
			if !errors.As(err, &e) || !strings.Contains(e.Message, tt.msg) {
				t.Fatalf("err = %v, want %q", err, tt.msg)
			}
		})
	}
}

func TestDiff(t *testing.T) {
	tests := []struct {
		name, old, new, want string
	}{
		{"same", `{"a":1,"b":{"c":[1,2]}}`, `{"a":1,"b":{"c":[1,2]}}`, `{}`},
		{"changed", `{"a":1}`, `{"a":2}`, `{"a":2}`},
		{"added", `{}`, `{"a":{"b":1}}`, `{"a":{"b":1}}`},
		{"removed", `{"a":1,"b":2}`, `{"b":2}`, `{"a":null}`},
		{"nested", `{"a":{"x":1,"y":2}}`, `{"a":{"x":1,"z":3}}`, `{"a":{"y":null,"z":3}}`},
		{"leaf to object", `{"a":1}`, `{"a":{"x":1}}`, `{"a":{"x":1}}`},
		{"object to leaf", `{"a":{"x":1}}`, `{"a":1}`, `{"a":1}`},
		{"array", `{"a":[1]}`, `{"a":[1,2]}`, `{"a":[1,2]}`},
		{"server keys ignored", `{"$version":3,"$metadata":{},"a":1}`, `{"$version":5,"a":1}`, `{}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			old, nw := obj(t, tt.old), obj(t, tt.new)
			d := Diff(old, nw)
			if !reflect.DeepEqual(d, obj(t, tt.want)) {
				t.Errorf("Diff = %v, want %s", d, tt.want)
			}
			Merge(old, d)
			if !Equal(content(old), content(nw)) {
				t.Errorf("Merge(old, Diff) = %v, want %v", old, nw)
			}
		})
	}
	if !Equal(json.Number("1.0"), 1.0) || !Equal(int64(3), json.Number("3")) || Equal("1", 1.0) || Equal(1.0, "1") {
		t.Error("Equal compares numbers wrongly")
	}
}

// randDoc builds a random document of at most depth levels, drawing keys
// from a small set so that two random documents overlap.
func randDoc(r *rand.Rand, depth int) map[string]any {
	keys := []string{"a", "b", "c", "d", "e"}
	m := map[string]any{}
	for _, k := range keys {
		if r.IntN(3) == 0 {
			continue
		}
		switch n := r.IntN(7); {
		case n == 0 && depth > 1:
			m[k] = randDoc(r, depth-1)
		case n == 1 && depth > 1:
			m[k] = randDoc(r, depth-1)
		case n == 2:
			m[k] = float64(r.IntN(4))
		case n == 3:
			m[k] = r.IntN(2) == 0
		case n == 4:
			m[k] = []any{float64(r.IntN(2)), "s"}
		default:
			m[k] = string(rune('p' + r.IntN(3)))
		}
	}
	return m
}

// TestDiffProperty checks, over random documents, that a diff applied
// with Merge reproduces the new document, is valid as a patch, and that
// merging a patch twice changes nothing more (merge patches are
// idempotent).
func TestDiffProperty(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for i := range 2000 {
		old, nw := randDoc(r, 5), randDoc(r, 5)
		d := Diff(old, nw)
		if err := ValidatePatch(d); err != nil {
			t.Fatalf("case %d: Diff is not a valid patch: %v", i, err)
		}
		got := cloneMap(old)
		Merge(got, d)
		if !reflect.DeepEqual(got, nw) {
			t.Fatalf("case %d: Merge(old, Diff(old, new)) != new\nold  %v\nnew  %v\ndiff %v\ngot  %v", i, old, nw, d, got)
		}
		Merge(got, d)
		if !reflect.DeepEqual(got, nw) {
			t.Fatalf("case %d: merging the diff twice changed the result", i)
		}
		if len(Diff(nw, got)) != 0 {
			t.Fatalf("case %d: Diff of equal documents is not empty", i)
		}
		// The same through a twin, as the edge does it.
		tw := New("d", "", t0)
		if _, err := tw.ReplaceDesired(old, t1); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.PatchDesired(Diff(tw.Properties.Desired, nw), t2); err != nil {
			t.Fatalf("case %d: %v", i, err)
		}
		if !reflect.DeepEqual(tw.Desired(), nw) {
			t.Fatalf("case %d: twin desired = %v, want %v", i, tw.Desired(), nw)
		}
	}
}

// TestCheckText: encoding/json turns invalid UTF-8 and lone surrogate
// escapes into U+FFFD without an error, so they are refused before
// decoding, in keys and values, wherever they are.
func TestCheckText(t *testing.T) {
	tests := []struct {
		name, in, msg string // msg empty: accepted
	}{
		{"ascii", `{"a":"b"}`, ""},
		{"unicode", `{"température":"23 °C","emoji":"😀"}`, ""},
		{"escaped pair", `{"a":"\ud83d\ude00"}`, ""},
		{"escaped BMP", `{"a":"\u00e9\uFFFD"}`, ""},
		{"literal U+FFFD", "{\"a\":\"\uFFFD\"}", ""},
		{"escaped backslash then u", `{"a":"\\ud800"}`, ""},
		{"bad byte in value", "{\"a\":\"x\xffy\"}", "not valid UTF-8 at byte 7"},
		{"bad byte in key", "{\"k\xc3\":1}", "not valid UTF-8 at byte 3"},
		{"overlong", "{\"a\":\"\xc0\xaf\"}", "not valid UTF-8"},
		{"encoded surrogate", "{\"a\":\"\xed\xa0\x80\"}", "not valid UTF-8"},
		{"truncated rune at end", "{\"a\":\"\xe2\x82", "not valid UTF-8"},
		{"lone high surrogate", `{"a":"\ud800"}`, `escape \ud800 at byte 6, a lone UTF-16 surrogate`},
		{"lone low surrogate", `{"a":"x\uDC00"}`, `escape \uDC00 at byte 7`},
		{"high then non-low", `{"a":"\ud800\u0041"}`, "lone UTF-16 surrogate"},
		{"two highs", `{"a":"\ud800\ud800"}`, "lone UTF-16 surrogate"},
		{"surrogate in key", `{"\udfff":1}`, "lone UTF-16 surrogate"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParsePatch([]byte(tt.in))
			if tt.msg == "" {
				if err != nil {
					t.Fatalf("ParsePatch(%q) = %v", tt.in, err)
				}
				return
			}
			wantErr(t, err, status.CodeArgumentInvalid, tt.msg)
			if !strings.HasPrefix(err.(*status.Error).Message, "patch ") {
				t.Errorf("message %q does not name the patch", err.(*status.Error).Message)
			}
		})
	}
	// A whole twin (a PUT body) is checked the same way.
	_, err := Decode([]byte("{\"properties\":{\"desired\":{\"a\":\"\xff\"}}}"))
	wantErr(t, err, status.CodeArgumentInvalid, "twin is not valid UTF-8")
	_, err = Decode([]byte(`{"tags":{"a":"\udc00"}}`))
	wantErr(t, err, status.CodeArgumentInvalid, "lone UTF-16 surrogate")
}

func FuzzPatch(f *testing.F) {
	for _, s := range []string{`{"a":1}`, `{"a":{"b":null,"c":[1,{"d":2}]}}`, `{"$version":3}`, `{"a.b":1}`, `[]`, `{"a":1e400}`,
		`{"x":-0,"y":"\u0000"}`, "{\"a\":\"\xff\"}", `{"a":"\ud800"}`, `{"a":"\ud83d\ude00"}`} {
		f.Add([]byte(`{"a":{"b":1},"z":"s"}`), []byte(s))
	}
	f.Fuzz(func(t *testing.T, base, body []byte) {
		p, err := ParsePatch(body)
		if err != nil {
			var e *status.Error
			if !errors.As(err, &e) || e.Status != 400 {
				t.Fatalf("error %v is not a 400 *status.Error", err)
			}
			return
		}
		tw := New("d", "", t0)
		if b, err := ParsePatch(base); err == nil {
			if _, err := tw.PatchDesired(b, t0); err != nil {
				return
			}
		}
		before := tw.Desired()
		v, err := tw.PatchDesired(p, t1)
		if err != nil {
			if !reflect.DeepEqual(tw.Desired(), before) {
				t.Fatal("refused patch changed the twin")
			}
			return
		}
		if v != tw.DesiredVersion() {
			t.Fatalf("returned version %d, twin has %d", v, tw.DesiredVersion())
		}
		after := tw.Desired()
		again := cloneMap(after)
		Merge(again, p)
		if !Equal(again, after) {
			t.Fatal("merge patch not idempotent")
		}
		back := cloneMap(before)
		Merge(back, Diff(before, after))
		if !Equal(back, after) {
			t.Fatalf("Diff round trip: got %v want %v", back, after)
		}
		var sections map[string]map[string]any
		if err := json.Unmarshal(tw.SectionsForDevice(), &sections); err != nil {
			t.Fatalf("SectionsForDevice is not JSON: %v", err)
		}
		if _, err := ParsePatch(DesiredPatchBody(p, v)); err == nil {
			t.Fatal("a desired body with $version passed as a client patch")
		}
	})
}

// FuzzReplace feeds a service PUT body through Decode and Replace, as the
// hub's API does, onto a twin a patch (base) has filled. A body is one
// JSON object or refused; a refused replace leaves the twin as it was and
// is explained by a validator; an accepted one gives exactly the body's
// tags and desired properties, with versions, reported properties, the
// JSON form and the devices' Diff all consistent.
func FuzzReplace(f *testing.F) {
	for _, s := range []string{
		`{"deviceId":"d","tags":{"site":"b"},"properties":{"desired":{"b":{"d":3},"e":null,"$version":77},"reported":{"hacked":true}}}`,
		`{"properties":{"desired":{"a":{"b":[1,{"c":null}]}}}}`,
		`{"tags":{"$bad":1}}`,
		`{"properties":{"desired":{"a.b":1}}}`,
		`{"properties":{"desired":{"n":1e400}}}`,
		`{"version":"x"}`,
		`{}`, `null`, `[]`, `{} {}`, `{"tags":{}} x`,
	} {
		f.Add([]byte(`{"a":{"b":1},"z":"s"}`), []byte(s))
	}
	f.Fuzz(func(t *testing.T, base, body []byte) {
		tw := New("d", "", t0)
		if p, err := ParsePatch(base); err == nil {
			_, _ = tw.Patch(p, p, t0)
		}
		n, err := Decode(body)
		if err != nil {
			var e *status.Error
			if !errors.As(err, &e) || e.Status != 400 {
				t.Fatalf("Decode error %v is not a 400 *status.Error", err)
			}
			return
		}
		if _, err := DecodeObject(body); err != nil {
			t.Fatalf("Decode accepted %.80q, which is not one JSON object: %v", body, err)
		}
		before := tw.Clone()
		tags, desired := map[string]any{}, map[string]any{}
		Merge(tags, n.Tags)
		Merge(desired, content(n.Properties.Desired))
		valid := ValidatePatch(tags) == nil && ValidateDocument(n.Properties.Desired) == nil &&
			Size(tags) <= MaxTagsSize && Size(desired) <= MaxSectionSize
		v, err := tw.Replace(n, t1)
		if err != nil {
			var e *status.Error
			if !errors.As(err, &e) || e.Status != 400 {
				t.Fatalf("Replace error %v is not a 400 *status.Error", err)
			}
			if !reflect.DeepEqual(tw, before) {
				t.Fatal("refused replace changed the twin")
			}
			if valid {
				t.Fatalf("Replace refused what the validators pass: %v", err)
			}
			return
		}
		if !valid {
			t.Fatal("Replace accepted what a validator refuses")
		}
		if v != before.DesiredVersion()+1 || tw.DesiredVersion() != v || tw.Version != before.Version+1 || tw.ETag != VersionETag(tw.Version) {
			t.Fatalf("versions: returned %d, desired %d (was %d), twin %d (was %d), etag %q",
				v, tw.DesiredVersion(), before.DesiredVersion(), tw.Version, before.Version, tw.ETag)
		}
		if !Equal(tw.Properties.Reported, before.Properties.Reported) {
			t.Fatal("replace changed reported properties")
		}
		if !Equal(tw.Tags, tags) || !Equal(tw.Desired(), desired) {
			t.Fatalf("after replace: tags %v desired %v; want %v %v", tw.Tags, tw.Desired(), tags, desired)
		}
		back := before.Desired()
		Merge(back, Diff(before.Desired(), tw.Desired()))
		if !Equal(back, tw.Desired()) {
			t.Fatal("the Diff devices get does not lead to the new desired properties")
		}
		b, err := json.Marshal(tw)
		if err != nil {
			t.Fatalf("replaced twin does not encode: %v", err)
		}
		again, err := Decode(b)
		if err != nil || again.Version != tw.Version || again.DesiredVersion() != v || !Equal(again.Tags, tw.Tags) ||
			!Equal(again.Properties.Desired, tw.Properties.Desired) || !Equal(again.Properties.Reported, tw.Properties.Reported) {
			t.Fatalf("stored form does not decode to the same twin: %v", err)
		}
		var sections struct{ Desired map[string]any }
		if err := json.Unmarshal(tw.SectionsForDevice(), &sections); err != nil || SectionVersion(sections.Desired) != v {
			t.Fatalf("SectionsForDevice: %v, desired $version %v", err, sections.Desired[keyVersion])
		}
	})
}

func TestParseVersionedPatch(t *testing.T) {
	for _, tc := range []struct {
		in      string
		version int64
		bad     string
	}{
		{in: `{"a":1,"$version":7}`, version: 7},
		{in: `{"a":1}`, version: 0},
		{in: `{"a":1,"$version":9007199254740991}`, version: MaxVersion},
		{in: `{"a":1,"$version":0}`, bad: "not an integer in [1,"},
		{in: `{"a":1,"$version":2.5}`, bad: "not an integer"},
		{in: `{"a":1,"$version":null}`, bad: "not an integer"},
		{in: `{"a":{"$version":3}}`, bad: `key "a.$version" starts with '$'`},
		{in: `{"a":1,"$metadata":{}}`, bad: "starts with '$'"},
	} {
		p, v, err := ParseVersionedPatch([]byte(tc.in))
		if tc.bad != "" {
			if err == nil || !strings.Contains(err.Error(), tc.bad) {
				t.Errorf("ParseVersionedPatch(%s) = %v, %d, %v; want an error saying %q", tc.in, p, v, err, tc.bad)
			}
			continue
		}
		if err != nil || v != tc.version || len(p) != 1 || p["a"] == nil {
			t.Errorf("ParseVersionedPatch(%s) = %v, %d, %v; want {a}, %d", tc.in, p, v, err, tc.version)
		}
	}
}

func TestPatchReportedAtLeast(t *testing.T) {
	now := time.Unix(0, 0)
	tw := New("d", "", now)
	for _, tc := range []struct{ atLeast, want int64 }{{0, 2}, {40, 40}, {10, 41}, {41, 42}} {
		v, err := tw.PatchReportedAtLeast(map[string]any{"k": tc.atLeast}, tc.atLeast, now)
		if err != nil || v != tc.want || tw.ReportedVersion() != tc.want {
			t.Errorf("PatchReportedAtLeast(%d) = %d, %v (twin at %d); want %d", tc.atLeast, v, err, tw.ReportedVersion(), tc.want)
		}
	}
}
