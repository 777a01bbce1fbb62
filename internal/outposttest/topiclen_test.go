package outposttest

import (
	"context"
	"strings"
	"testing"
	"time"

	"outpost/internal/message"
)

// A child's message whose properties fill its own topic to near MQTT's
// 65535-byte limit would not fit the edge's upstream topic, which adds
// the replay key. The edge refuses it at intake, unacknowledged, and
// everything acknowledged after it still reaches the hub: one child
// cannot jam the upstream queue of every other.
func TestTopicTooLongForUpstream(t *testing.T) {
	t.Parallel()
	s := newStory(t, []string{"child1", "child2"})
	c1 := s.node.Child(t, "child1")
	big := &message.Message{Body: []byte("big"), Properties: map[string]string{"p": strings.Repeat("x", 65400)}}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := c1.Send(ctx, big); err == nil {
		t.Error("the edge acknowledged a message it cannot forward")
	}
	p := newPublisher(s.node.Child(t, "child2"))
	p.sendN(t, 3)
	s.mon.AwaitDelivered(t, 30*time.Second, ackedBy(p))
}
