package service

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"outpost/internal/message"
)

// The data plane's calls: direct methods, cloud-to-device messages and the
// telemetry stream. Their routes are served by internal/hub/dataplane.

// MethodRequest is a direct method call, as IoT Hub's REST API takes it.
type MethodRequest struct {
	MethodName string `json:"methodName"`
	// Payload is JSON; nil sends null.
	Payload json.RawMessage `json:"payload,omitempty"`
	// ResponseTimeoutInSeconds: how long the device may take; 0 means the
	// hub's default (30 s).
	ResponseTimeoutInSeconds int `json:"responseTimeoutInSeconds,omitempty"`
	// ConnectTimeoutInSeconds: how long to wait for the device to
	// connect; 0 fails at once when it is offline.
	ConnectTimeoutInSeconds int `json:"connectTimeoutInSeconds,omitempty"`
}

// MethodResult is the device's answer.
type MethodResult struct {
	Status  int             `json:"status"`
	Payload json.RawMessage `json:"payload"`
}

// forever is the request timeout of calls that last as long as the caller
// wants (event streams); below time.Duration's limit.
const forever = 100 * 365 * 24 * time.Hour

// withTimeout returns a client for the same hub whose requests may last d.
// Signed tokens are not shared with c: signing one is cheap.
func (c *Client) withTimeout(d time.Duration) *Client {
	return &Client{host: c.host, keyName: c.keyName, key: c.key, base: c.base, http: c.http, timeout: d, now: c.now}
}

// InvokeMethod calls a direct method on a device (moduleID empty) or a
// module. A device that is not connected fails with a 404 *Error of code
// DeviceNotOnline; one that does not answer in time with a 504
// GatewayTimeout.
func (c *Client) InvokeMethod(ctx context.Context, deviceID, moduleID string, req MethodRequest) (MethodResult, error) {
	if deviceID == "" {
		return MethodResult{}, errors.New("invoke method: empty device id")
	}
	if req.MethodName == "" {
		return MethodResult{}, errors.New("invoke method: empty method name")
	}
	respT := req.ResponseTimeoutInSeconds
	if respT <= 0 {
		respT = 30
	}
	// The call lasts as long as the hub waits, plus the trip.
	cc := c.withTimeout(time.Duration(respT+req.ConnectTimeoutInSeconds)*time.Second + c.timeout)
	var out MethodResult
	_, err := cc.doJSON(ctx, http.MethodPost, twinPath(deviceID, moduleID)+"/methods", req, nil, &out)
	return out, err
}

// C2DMessage is a cloud-to-device message to queue.
type C2DMessage struct {
	Body            []byte
	Properties      map[string]string
	MessageID       string // the hub makes one up when empty
	CorrelationID   string
	UserID          string
	ContentType     string
	ContentEncoding string
	// Expiry is when the message is dropped if undelivered; zero means the
	// hub's default (one hour), at most 48 hours away.
	Expiry time.Time
}

// SendC2D queues a cloud-to-device message for a device and returns its
// message id. A full queue (50 messages) fails with a 403 *Error of code
// DeviceMaximumQueueDepthExceeded.
func (c *Client) SendC2D(ctx context.Context, deviceID string, m C2DMessage) (string, error) {
	if deviceID == "" {
		return "", errors.New("send c2d: empty device id")
	}
	h := http.Header{}
	for k, v := range m.Properties {
		if k == "" {
			return "", errors.New("send c2d: empty property name")
		}
		h.Set("iothub-app-"+k, v)
	}
	for name, v := range map[string]string{
		"iothub-messageid":       m.MessageID,
		"iothub-correlationid":   m.CorrelationID,
		"iothub-userid":          m.UserID,
		"iothub-contenttype":     m.ContentType,
		"iothub-contentencoding": m.ContentEncoding,
	} {
		if v != "" {
			h.Set(name, v)
		}
	}
	if !m.Expiry.IsZero() {
		h.Set("iothub-expiry", m.Expiry.UTC().Format(time.RFC3339Nano))
	}
	body := m.Body
	if body == nil {
		body = []byte{}
	}
	hdr, err := c.doJSON(ctx, http.MethodPost, Path("devices", deviceID, "messages", "deviceBound"), body, h, nil)
	if err != nil {
		return "", err
	}
	return hdr.Get("iothub-messageid"), nil
}

// Event is one telemetry message as the hub stored it.
type Event struct {
	message.Message
	SequenceNumber uint64 `json:"sequenceNumber"`
}

// EventsOptions selects the telemetry MonitorEvents reads.
type EventsOptions struct {
	DeviceID  string // one device and its modules; empty for all
	FromStart bool   // from the oldest retained message instead of now
	// ConsumerGroup names a durable reader that keeps its position
	// between calls; empty or $Default reads from now (or FromStart) with
	// a reader of its own.
	ConsumerGroup string
}

// MonitorEvents streams telemetry from the hub and calls fn for every
// message, in stored order, until ctx ends (it then returns nil), fn fails
// or the stream breaks. ready, when not nil, is called once the hub has
// its reader in place: every message stored after that is seen.
func (c *Client) MonitorEvents(ctx context.Context, opts EventsOptions, ready func(), fn func(Event) error) error {
	q := url.Values{}
	if opts.DeviceID != "" {
		q.Set("deviceId", opts.DeviceID)
	}
	if opts.FromStart {
		q.Set("fromStart", strconv.FormatBool(true))
	}
	if opts.ConsumerGroup != "" {
		q.Set("consumerGroup", opts.ConsumerGroup)
	}
	resp, err := c.withTimeout(forever).do(ctx, http.MethodGet, "/outpost/events?"+q.Encode(), nil, nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if ready != nil {
		ready()
	}
	dec := json.NewDecoder(resp.Body)
	for {
		var ev Event
		if err := dec.Decode(&ev); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, io.EOF) {
				return errors.New("monitor events: the hub ended the stream")
			}
			return fmt.Errorf("monitor events: %w", err)
		}
		if err := fn(ev); err != nil {
			return err
		}
	}
}
