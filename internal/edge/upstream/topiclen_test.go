package upstream

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"outpost/internal/edge/store"
	"outpost/internal/message"
	"outpost/internal/mqttwire"
	"outpost/internal/topic"
)

// longProps fills a child's own telemetry topic to n bytes.
func longProps(device string, n int) map[string]string {
	return map[string]string{"p": strings.Repeat("x", n-len(topic.Telemetry(device, "", map[string]string{"p": ""})))}
}

// TestCheckForwardable: a message whose own topic is as long as MQTT
// allows cannot go upstream, where the replay key is added; one a replay
// key shorter can.
func TestCheckForwardable(t *testing.T) {
	const storeID = "0123456789abcdef0123456789abcdef"
	full := &message.Message{DeviceID: "child1", Properties: longProps("child1", topic.MaxNameLen)}
	if err := CheckForwardable(testEdge, storeID, full); !errors.Is(err, mqttwire.ErrTooLong) {
		t.Errorf("a full topic: %v, want ErrTooLong", err)
	}
	room := topic.MaxNameLen - 200 // a replay key takes about 130 bytes
	if err := CheckForwardable(testEdge, storeID, &message.Message{DeviceID: "child1", Properties: longProps("child1", room)}); err != nil {
		t.Errorf("a topic with room for the replay key: %v", err)
	}
	if err := CheckForwardable(testEdge, storeID, &message.Message{DeviceID: "child/1"}); err == nil {
		t.Error("an invalid device id passed")
	}
}

// TestDrainSkipsTopicTooLong: an entry no PUBLISH can carry (stored
// before intake checked) is dropped, never written with a wrapped
// length, and everything stored after it reaches the hub on the same
// connection.
func TestDrainSkipsTopicTooLong(t *testing.T) {
	e := newEnv(t, envOpts{keepAlive: 2 * time.Second})
	e.appendN(1, "child1", "", 8)
	_, err := e.store.AppendRecords(context.Background(), []store.Record{{Endpoint: Endpoint,
		Msg: &message.Message{DeviceID: "child1", Body: []byte("long"), Properties: longProps("child1", topic.MaxNameLen)}}})
	if err != nil {
		t.Fatal(err)
	}
	e.appendN(2, "child1", "", 8)
	e.start()
	checkFor(t, 20*time.Second, 10*time.Millisecond, func() error {
		if n := e.hub.count(); n < 3 {
			return fmt.Errorf("hub has %d of 3", n)
		}
		if q := e.queued(); q != 0 {
			return fmt.Errorf("store still holds %d", q)
		}
		return nil
	})
	for _, r := range e.hub.received() {
		if r.device != "child1" {
			t.Errorf("hub received %+v", r)
		}
	}
	if n := e.hub.count(); n != 3 {
		t.Errorf("hub received %d messages, want the 3 that fit", n)
	}
	if st := e.link.State(); st.OfflinePeriods != 0 {
		t.Errorf("the link went offline %d times (%s): the long entry broke it", st.OfflinePeriods, st.LastError)
	}
}
