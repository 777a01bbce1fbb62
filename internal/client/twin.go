package client

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/eclipse/paho.mqtt.golang/packets"

	"outpost/internal/topic"
)

// TwinError is a twin request the server refused: a response whose body
// is JSON with an errorCode, or whose status is 400 or above.
type TwinError struct {
	Status  int
	Code    string // errorCode as sent (Azure sends numbers such as 400027)
	Message string
}

func (e *TwinError) Error() string {
	if e.Code != "" {
		return fmt.Sprintf("twin: status %d, error %s: %s", e.Status, e.Code, e.Message)
	}
	return fmt.Sprintf("twin: status %d: %s", e.Status, e.Message)
}

type twinResponse struct {
	status  int
	version int64
	body    []byte
}

// GetTwin returns the desired and reported properties of this device or
// module's twin. Each map carries its "$version" (a float64, as JSON
// numbers decode into any).
func (c *Client) GetTwin(ctx context.Context) (desired, reported map[string]any, err error) {
	res, err := c.twinRequest(ctx, topic.TwinGet, nil)
	if err != nil {
		return nil, nil, fmt.Errorf("get twin: %w", err)
	}
	var doc struct {
		Desired  map[string]any `json:"desired"`
		Reported map[string]any `json:"reported"`
	}
	if err := json.Unmarshal(res.body, &doc); err != nil {
		return nil, nil, fmt.Errorf("get twin: bad response: %w", err)
	}
	if doc.Desired == nil {
		doc.Desired = map[string]any{}
	}
	if doc.Reported == nil {
		doc.Reported = map[string]any{}
	}
	return doc.Desired, doc.Reported, nil
}

// UpdateReported applies patch to the reported properties (a null value
// removes a property) and returns the new reported version.
func (c *Client) UpdateReported(ctx context.Context, patch map[string]any) (version int64, err error) {
	if patch == nil {
		return 0, errors.New("update reported: nil patch")
	}
	body, err := json.Marshal(patch)
	if err != nil {
		return 0, fmt.Errorf("update reported: %w", err)
	}
	res, err := c.twinRequest(ctx, topic.TwinReported, body)
	if err != nil {
		return 0, fmt.Errorf("update reported: %w", err)
	}
	return res.version, nil
}

// OnDesired registers fn for desired-property patches. The patch includes
// "$version"; version is the same number. Patches arrive in order, one at
// a time; a client that was offline should call GetTwin after
// reconnecting, because patches sent meanwhile are not replayed.
func (c *Client) OnDesired(fn func(patch map[string]any, version int64)) {
	c.mu.Lock()
	c.onDesired = fn
	c.mu.Unlock()
	c.want(featDesired)
}

// twinRequest publishes a twin request and waits for the response with
// the same $rid. Twin traffic is QoS 0, as in the Azure SDKs: a response
// lost with the connection fails the call rather than hanging it.
func (c *Client) twinRequest(ctx context.Context, build func(rid string) string, body []byte) (twinResponse, error) {
	rid := strconv.FormatUint(c.rid.Add(1), 10)
	ch := make(chan twinResponse, 1)
	c.mu.Lock()
	c.twinWait[rid] = ch
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		delete(c.twinWait, rid)
		c.mu.Unlock()
	}()
	s, err := c.session(ctx)
	if err != nil {
		return twinResponse{}, err
	}
	if body == nil {
		body = []byte{}
	}
	if err := s.publish0(build(rid), body); err != nil {
		return twinResponse{}, err
	}
	var res twinResponse
	select {
	case res = <-ch:
	case <-s.done:
		return twinResponse{}, s.Err()
	case <-ctx.Done():
		return twinResponse{}, ctx.Err()
	}
	if err := twinFailure(res); err != nil {
		return twinResponse{}, err
	}
	return res, nil
}

// twinFailure applies the SDK's rule (a JSON body with errorCode fails the
// call) and also treats statuses of 400 and above as failures.
func twinFailure(res twinResponse) error {
	var e struct {
		ErrorCode json.RawMessage `json:"errorCode"`
		Message   string          `json:"message"`
		MessageUC string          `json:"Message"`
	}
	b := bytes.TrimSpace(res.body)
	if len(b) > 0 && b[0] == '{' && json.Unmarshal(b, &e) == nil && len(e.ErrorCode) > 0 {
		code := string(e.ErrorCode)
		if s, err := strconv.Unquote(code); err == nil {
			code = s
		}
		msg := e.Message
		if msg == "" {
			msg = e.MessageUC
		}
		return &TwinError{Status: res.status, Code: code, Message: msg}
	}
	if res.status >= 400 {
		return &TwinError{Status: res.status, Message: string(clipBytes(b, 200))}
	}
	return nil
}

func clipBytes(b []byte, n int) []byte {
	if len(b) > n {
		return b[:n]
	}
	return b
}

// twinResponse runs on the session's reader: it hands a twin response to
// its waiter without blocking, and reports whether p was one.
func (c *Client) twinResponse(p *packets.PublishPacket) bool {
	if !strings.HasPrefix(p.TopicName, "$iothub/twin/res/") || c.rawHandler(p.TopicName) != nil {
		return false
	}
	t, err := topic.Parse(p.TopicName)
	if err != nil || t.Kind != topic.KindTwinResponse || t.OnBehalfOf != "" {
		c.log.Warn("bad twin response topic", "topic", p.TopicName, "err", err)
		return true
	}
	c.mu.Lock()
	ch := c.twinWait[t.RID]
	delete(c.twinWait, t.RID)
	c.mu.Unlock()
	if ch != nil {
		ch <- twinResponse{status: t.Status, version: t.Version, body: p.Payload}
	}
	return true
}
