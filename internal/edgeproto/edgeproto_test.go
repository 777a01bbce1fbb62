package edgeproto

import (
	"encoding/json"
	"reflect"
	"testing"
)

const sid = "0123456789abcdef0123456789abcdef"

// What one end writes, the other reads back unchanged: a rename of either
// side's field or key breaks this test, not the link at run time.
func TestReplayKeyRoundTrip(t *testing.T) {
	k := ReplayKey{StoreID: sid, Seq: 1<<63 + 5, StoredAt: -42}
	bag := map[string]string{"app": "v"}
	k.Put(bag, "edge/1")
	got, eid, err := TakeReplayKey(bag)
	if err != nil || got != k || eid != "edge/1" {
		t.Fatalf("TakeReplayKey = %+v, %q, %v; want %+v, edge/1", got, eid, err, k)
	}
	if len(bag) != 1 || bag["app"] != "v" {
		t.Fatalf("bag after take %v; want only app=v", bag)
	}
	if k.MsgID("a") == k.MsgID("b") || k.MsgID("a") == (ReplayKey{StoreID: sid, Seq: k.Seq, StoredAt: 1}).MsgID("a") {
		t.Fatal("message ids of different keys or edges are equal")
	}
}

func TestTakeReplayKeyRefusals(t *testing.T) {
	full := func() map[string]string {
		b := map[string]string{}
		ReplayKey{StoreID: sid, Seq: 1, StoredAt: 1}.Put(b, "e")
		return b
	}
	if _, _, err := TakeReplayKey(map[string]string{"x": "y"}); err != ErrNoReplayKey {
		t.Errorf("no keys: %v; want ErrNoReplayKey", err)
	}
	for _, tc := range []struct{ key, val string }{
		{BagStoreID, "ABCDEF0123456789abcdef0123456789"}, {BagStoreID, "short"},
		{BagEdgeSeq, "0"}, {BagEdgeSeq, "-1"}, {BagEdgeSeq, "x"},
		{BagStoredAt, "1.5"}, {BagStoredAt, ""},
	} {
		b := full()
		b[tc.key] = tc.val
		if _, _, err := TakeReplayKey(b); err == nil {
			t.Errorf("%s=%q accepted", tc.key, tc.val)
		}
		if len(b) != 0 {
			t.Errorf("%s=%q: keys left in the bag %v", tc.key, tc.val, b)
		}
	}
	for _, k := range []string{BagEdgeID, BagStoreID, BagEdgeSeq, BagStoredAt} {
		b := full()
		delete(b, k)
		if _, _, err := TakeReplayKey(b); err == nil || err == ErrNoReplayKey {
			t.Errorf("without %s: %v; want an incomplete key error", k, err)
		}
	}
}

func TestTopicsRoundTrip(t *testing.T) {
	for _, rid := range []string{"1", "a b&c=d/é", "i42"} {
		name, got, ok, err := ParseRequest(RequestTopic(ReqStorePosition, rid))
		if !ok || err != nil || name != ReqStorePosition || got != rid {
			t.Errorf("request %q: %q %q %v %v", rid, name, got, ok, err)
		}
		status, got, ok, err := ParseResponse(ResponseTopic(404, rid))
		if !ok || err != nil || status != 404 || got != rid {
			t.Errorf("response %q: %d %q %v %v", rid, status, got, ok, err)
		}
	}
	if _, _, ok, _ := ParseRequest("devices/d/messages/events/"); ok {
		t.Error("a telemetry topic taken for a request")
	}
	for _, bad := range []string{ReqPrefix + "x", ReqPrefix + "/?$rid=1", ReqPrefix + "a/b/?$rid=1", ReqPrefix + "x/?a=1", ReqPrefix + "x/?$rid=%zz"} {
		if _, _, ok, err := ParseRequest(bad); !ok || err == nil {
			t.Errorf("ParseRequest(%q): ok %v, err %v; want a refusal", bad, ok, err)
		}
	}
	for _, bad := range []string{ResPrefix + "abc/?$rid=1", ResPrefix + "20/?$rid=1", ResPrefix + "200/?x=1"} {
		if _, _, ok, err := ParseResponse(bad); !ok || err == nil {
			t.Errorf("ParseResponse(%q): ok %v, err %v; want a refusal", bad, ok, err)
		}
	}
}

// Every request and reply body survives encode on one end and decode on
// the other.
func TestBodiesRoundTrip(t *testing.T) {
	for _, v := range []any{
		&StorePosition{StoreID: sid, Next: 7},
		&StorePositionReply{Next: 9},
		&SignedCA{Certificate: "c", RootCA: "r"},
		&PresenceReport{Full: true, Connected: []string{"a", "a/m"}, Disconnected: []string{"b"}},
		&PresenceReply{Refused: []string{"x"}},
	} {
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		back := reflect.New(reflect.TypeOf(v).Elem()).Interface()
		if err := json.Unmarshal(b, back); err != nil || !reflect.DeepEqual(back, v) {
			t.Errorf("%T: %s decoded to %+v, %v", v, b, back, err)
		}
	}
	if (StorePosition{StoreID: "x", Next: 1}).Check() == nil || (StorePosition{StoreID: sid}).Check() == nil {
		t.Error("StorePosition.Check accepted a bad id or next 0")
	}
}
