package twin

import (
	"encoding/json"
	"math"
	"reflect"
	"strconv"
)

// Merge applies patch to dst with JSON merge-patch semantics, as IoT Hub
// does for twins: objects merge key by key, null deletes a key, and
// anything else (arrays included) replaces. dst must not be nil; patch
// is not modified and shares no memory with dst afterwards.
func Merge(dst, patch map[string]any) {
	for k, v := range patch {
		if v == nil {
			delete(dst, k)
			continue
		}
		pm, ok := v.(map[string]any)
		if !ok {
			dst[k] = deepCopy(v)
			continue
		}
		cur, ok := dst[k].(map[string]any)
		if !ok {
			cur = map[string]any{}
			dst[k] = cur
		}
		Merge(cur, pm)
	}
}

// Diff returns the merge patch that turns old into new: changed and added
// keys with their new values, removed keys as null, nested objects
// diffed recursively. Merge(old, Diff(old, new)) equals new when new
// holds no nulls, as stored documents never do. Top-level $version and
// $metadata are ignored, so whole sections can be passed. The edge uses
// it to send a device one patch covering the desired changes made while
// it was away.
func Diff(oldDoc, newDoc map[string]any) map[string]any {
	return diff(oldDoc, newDoc, true)
}

func diff(oldDoc, newDoc map[string]any, top bool) map[string]any {
	skip := func(k string) bool { return top && (k == keyVersion || k == keyMetadata) }
	patch := map[string]any{}
	for k := range oldDoc {
		if _, ok := newDoc[k]; !ok && !skip(k) {
			patch[k] = nil
		}
	}
	for k, nv := range newDoc {
		if skip(k) {
			continue
		}
		ov, had := oldDoc[k]
		om, oIsMap := ov.(map[string]any)
		nm, nIsMap := nv.(map[string]any)
		switch {
		case had && oIsMap && nIsMap:
			if sub := diff(om, nm, false); len(sub) > 0 {
				patch[k] = sub
			}
		case !had || !Equal(ov, nv):
			patch[k] = deepCopy(nv)
		}
	}
	return patch
}

// Equal reports whether two JSON values are equal, numbers compared by
// value whatever their Go type (float64, json.Number, int64 …).
func Equal(a, b any) bool {
	switch x := a.(type) {
	case map[string]any:
		y, ok := b.(map[string]any)
		if !ok || len(x) != len(y) {
			return false
		}
		for k, xv := range x {
			yv, ok := y[k]
			if !ok || !Equal(xv, yv) {
				return false
			}
		}
		return true
	case []any:
		y, ok := b.([]any)
		if !ok || len(x) != len(y) {
			return false
		}
		for i := range x {
			if !Equal(x[i], y[i]) {
				return false
			}
		}
		return true
	}
	if an, ok := toNumber(a); ok {
		bn, ok := toNumber(b)
		return ok && an.equal(bn)
	}
	if _, ok := toNumber(b); ok {
		return false
	}
	return reflect.DeepEqual(a, b)
}

// number is a JSON number: exact when it is an integer that fits int64.
type number struct {
	isInt bool
	i     int64
	f     float64
}

func (n number) equal(o number) bool {
	if n.isInt && o.isInt {
		return n.i == o.i
	}
	return n.float() == o.float()
}

func (n number) float() float64 {
	if n.isInt {
		return float64(n.i)
	}
	return n.f
}

func toNumber(v any) (number, bool) {
	switch x := v.(type) {
	case json.Number:
		if i, err := strconv.ParseInt(string(x), 10, 64); err == nil {
			return number{isInt: true, i: i}, true
		}
		f, err := strconv.ParseFloat(string(x), 64)
		if err != nil && !isRangeErr(err) {
			return number{}, false
		}
		return floatNumber(f), true
	case float64:
		return floatNumber(x), true
	case float32:
		return floatNumber(float64(x)), true
	case int:
		return number{isInt: true, i: int64(x)}, true
	case int8:
		return number{isInt: true, i: int64(x)}, true
	case int16:
		return number{isInt: true, i: int64(x)}, true
	case int32:
		return number{isInt: true, i: int64(x)}, true
	case int64:
		return number{isInt: true, i: x}, true
	case uint:
		return uintNumber(uint64(x)), true
	case uint8:
		return uintNumber(uint64(x)), true
	case uint16:
		return uintNumber(uint64(x)), true
	case uint32:
		return uintNumber(uint64(x)), true
	case uint64:
		return uintNumber(x), true
	}
	return number{}, false
}

func isRangeErr(err error) bool {
	ne, ok := err.(*strconv.NumError)
	return ok && ne.Err == strconv.ErrRange
}

func floatNumber(f float64) number {
	if f == math.Trunc(f) && f >= math.MinInt64 && f < math.MaxInt64 {
		return number{isInt: true, i: int64(f)}
	}
	return number{f: f}
}

func uintNumber(u uint64) number {
	if u <= math.MaxInt64 {
		return number{isInt: true, i: int64(u)}
	}
	return number{f: float64(u)}
}

// toInt64 reads an integral JSON number.
func toInt64(v any) (int64, bool) {
	n, ok := toNumber(v)
	if !ok || !n.isInt {
		return 0, false
	}
	return n.i, true
}

func deepCopy(v any) any {
	switch x := v.(type) {
	case map[string]any:
		return cloneMap(x)
	case []any:
		c := make([]any, len(x))
		for i, e := range x {
			c[i] = deepCopy(e)
		}
		return c
	}
	return v
}

func cloneMap(m map[string]any) map[string]any {
	if m == nil {
		return nil
	}
	c := make(map[string]any, len(m))
	for k, v := range m {
		c[k] = deepCopy(v)
	}
	return c
}
