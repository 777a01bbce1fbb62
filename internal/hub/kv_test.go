package hub

import (
	"reflect"
	"strings"
	"testing"
	"time"

	"outpost/internal/twin"
)

func TestKeyEncoding(t *testing.T) {
	ids := []string{"a", "dev-1", "x*y?z", "$edgeAgent", "a.b.c", "!()',:=@%_", strings.Repeat("Z", 128), "Ünï"}
	for _, d := range ids {
		for _, m := range []string{"", "mod", "$edgeHub", "m.o.d"} {
			t.Run(d+"/"+m, func(t *testing.T) {
				key := deviceKey(d)
				if m != "" {
					key = moduleKey(d, m)
				}
				if !validKVKey(key) {
					t.Fatalf("key %q is not a valid KV key", key)
				}
				gd, gm, err := splitKey(key)
				if err != nil || gd != d || gm != m {
					t.Fatalf("splitKey(%q) = %q, %q, %v; want %q, %q", key, gd, gm, err, d, m)
				}
			})
		}
	}
	if deviceKey("A") == deviceKey("a") {
		t.Fatal("device ids are case-sensitive; keys must differ")
	}
}

// validKVKey mirrors the key grammar JetStream KV enforces.
func validKVKey(k string) bool {
	if k == "" || k[0] == '.' || k[len(k)-1] == '.' {
		return false
	}
	for _, c := range k {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case c == '-', c == '_', c == '=', c == '.', c == '/':
		default:
			return false
		}
	}
	return true
}

func FuzzSplitKey(f *testing.F) {
	f.Add("x*y", "")
	f.Add("dev", "$edgeHub")
	f.Fuzz(func(t *testing.T, d, m string) {
		if d == "" {
			return
		}
		key := deviceKey(d)
		if m != "" {
			key = moduleKey(d, m)
		}
		if !validKVKey(key) {
			t.Fatalf("invalid key %q", key)
		}
		gd, gm, err := splitKey(key)
		if err != nil || gd != d || gm != m {
			t.Fatalf("splitKey(%q) = %q, %q, %v", key, gd, gm, err)
		}
	})
}

func TestTableOrdering(t *testing.T) {
	type step struct {
		del     bool
		rev     uint64
		watcher bool
	}
	tests := []struct {
		name    string
		steps   []step
		wantRev uint64 // 0: key absent
		dead    bool   // tombstone still held
	}{
		{"own put then stale watcher", []step{{false, 5, false}, {false, 3, true}}, 5, false},
		{"watcher then own", []step{{false, 3, true}, {false, 5, false}}, 5, false},
		{"own delete blocks older watcher put", []step{{false, 5, false}, {true, 9, false}, {false, 5, true}}, 0, true},
		{"watcher reaching the delete retires the tombstone", []step{{false, 5, false}, {true, 9, false}, {false, 5, true}, {true, 9, true}}, 0, false},
		{"recreate after delete", []step{{true, 9, false}, {false, 12, false}, {true, 9, true}}, 12, false},
		{"watcher delete of newer revision", []step{{false, 5, false}, {true, 7, true}}, 0, false},
		{"watcher put after own delete, newer", []step{{true, 9, false}, {false, 11, true}}, 11, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tb := newTable("t", func(string, uint64, []byte) (any, error) { return nil, nil })
			for _, s := range tc.steps {
				if s.del {
					tb.applyDelete("k", s.rev, s.watcher)
				} else {
					tb.applyPut("k", s.rev, nil, nil, s.watcher)
				}
			}
			r, ok := tb.get("k")
			switch {
			case tc.wantRev == 0 && ok:
				t.Fatalf("key present at %d; want absent", r.rev)
			case tc.wantRev != 0 && (!ok || r.rev != tc.wantRev):
				t.Fatalf("key = %v, %v; want revision %d", r, ok, tc.wantRev)
			}
			if _, dead := tb.dead["k"]; dead != tc.dead {
				t.Fatalf("tombstone held = %v; want %v", dead, tc.dead)
			}
		})
	}
}

func FuzzParseTwinPatch(f *testing.F) {
	f.Add([]byte(`{"tags":{"x":"v"},"properties":{"desired":{"t":1}}}`))
	f.Add([]byte(`{"properties":{"reported":{"a":1}}}`))
	f.Add([]byte(`{"tags":null}`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, body []byte) {
		p, err := ParseTwinPatch(body)
		if err != nil {
			if statusOf(err) != 400 {
				t.Fatalf("error %v is not a 400", err)
			}
			return
		}
		tw := twin.New("d", "", time.Unix(0, 0))
		before := tw.Clone()
		if _, err := tw.Patch(p.Tags, p.Desired, time.Unix(1, 0)); err != nil {
			if statusOf(err) != 400 {
				t.Fatalf("patch error %v is not a 400", err)
			}
			if !reflect.DeepEqual(tw, before) {
				t.Fatal("refused patch changed the twin")
			}
		}
	})
}
