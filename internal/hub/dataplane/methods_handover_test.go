package dataplane

import (
	"context"
	"errors"
	"net/http"
	"sync"
	"testing"
	"time"

	"outpost/internal/gateway"
	"outpost/internal/message"
	"outpost/internal/status"
)

// answeringSession is a session that answers every method at once, for
// tests that drive the plane's presence directly.
type answeringSession struct{ id gateway.Identity }

func (s *answeringSession) Identity() gateway.Identity      { return s.id }
func (s *answeringSession) SendDesired(int64, []byte) error { return nil }
func (s *answeringSession) Disconnect(string)               {}
func (s *answeringSession) SendC2D(*message.Message) <-chan error {
	return failed(gateway.ErrNotSubscribed)
}
func (s *answeringSession) SendInput(string, *message.Message) <-chan error {
	return failed(gateway.ErrNotSubscribed)
}
func (s *answeringSession) InvokeMethod(ctx context.Context, _ string, p []byte) (int, []byte, error) {
	return 200, p, nil
}

func failed(err error) <-chan error {
	ch := make(chan error, 1)
	ch <- err
	return ch
}

// A call made while the session that serves it is replaced or ends (an
// edge's link coming back, a device reconnecting) gets an answer within
// its response timeout: the answer, or DeviceNotOnline. None waits for
// the hop's slack as if the request had vanished.
func TestMethodDuringSessionHandover(t *testing.T) {
	e := newEnv(t)
	e.device("hand-dev", false)
	id := gateway.Identity{DeviceID: "hand-dev", AuthMethod: gateway.AuthSAS}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // sessions replaced, and ended, again and again
		defer wg.Done()
		prev := gateway.Session(&answeringSession{id: id})
		e.p.Connected(prev)
		pace := time.NewTicker(time.Millisecond) // leave the CPU to the calls
		defer pace.Stop()
		for i := 0; ; i++ {
			select {
			case <-stop:
				e.p.Disconnected(prev)
				return
			case <-pace.C:
			}
			next := &answeringSession{id: id}
			e.p.Connected(next)
			if i%2 == 0 {
				e.p.Disconnected(prev) // takeover: the old one ends after
			} else {
				e.p.Disconnected(next) // gone for a moment
				e.p.Connected(next)
			}
			prev = next
		}
	}()
	defer func() { close(stop); wg.Wait() }()

	const respT = 1
	ctx := ctxT(t)
	var calls, answered, notOnline int
	var slowest time.Duration
	for deadline := time.Now().Add(3 * time.Second); time.Now().Before(deadline); calls++ {
		start := time.Now()
		res, err := e.p.InvokeMethod(ctx, "hand-dev", "", gateway.MethodCall{MethodName: "m", ResponseTimeoutInSeconds: respT})
		d := time.Since(start)
		slowest = max(slowest, d)
		if d > respT*time.Second+time.Second {
			t.Fatalf("call %d ended after %v (response timeout %d s): %+v %v", calls, d, respT, res, err)
		}
		var se *status.Error
		switch {
		case err == nil && res.Status == 200:
			answered++
		case errors.As(err, &se) && se.Status == http.StatusNotFound:
			notOnline++
		default:
			t.Fatalf("call %d: %+v %v, want 200 or 404 DeviceNotOnline", calls, res, err)
		}
	}
	t.Logf("%d calls during handovers: %d answered, %d DeviceNotOnline, slowest %v", calls, answered, notOnline, slowest)
}
