package outposttest

import (
	"fmt"
	"outpost/internal/client"
	"outpost/internal/message"
	"testing"
	"time"
)

func TestZZDrainDebug(t *testing.T) {
	env := NewEnv(t)
	env.CreateEdge("edge1")
	var ids []string
	for i := 0; i < 10; i++ {
		id := fmt.Sprintf("c%d", i)
		env.CreateDevice(id)
		ids = append(ids, id)
	}
	env.AddChildren("edge1", ids...)
	node := env.StartEdge(t, "edge1")
	var cs []*client.Client
	for _, id := range ids {
		cs = append(cs, node.Child(t, id))
	}
	mon := env.Monitor(t)
	node.Cut()
	node.AwaitLink(t, false, time.Minute)
	b := &testing.B{}
	_ = b
	body := make([]byte, 256)
	var pend []<-chan error
	for i := 0; i < 100000; i++ {
		pend = append(pend, cs[i%10].SendAsync(msgOf(body)))
	}
	for _, ch := range pend {
		if err := <-ch; err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("queue %d", node.UpstreamQueue())
	node.Restore()
	for i := 0; i < 40; i++ {
		st := node.Edge().Status()
		t.Logf("t=%ds link=%v queue=%d hub=%d err=%v lastErr=%q", i, st.Link.Connected, st.Queues["$upstream"].Length, mon.Len(), mon.Err(), st.Link.LastError)
		time.Sleep(time.Second)
	}
}

func msgOf(body []byte) *message.Message { return &message.Message{Body: body} }
