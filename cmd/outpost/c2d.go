package main

import (
	"context"
	"fmt"
	"strings"
	"time"

	"outpost/internal/service"
)

// runC2DMessage is `outpost c2d-message send`, shaped like
// `az iot device c2d-message send`. IoT Hub sends C2D over AMQP only;
// Outpost takes it over REST (POST /devices/{id}/messages/deviceBound).
func runC2DMessage(ctx context.Context, args []string) error {
	return dispatch(ctx, "c2d-message", map[string]subcommand{
		"send": {"queue a cloud-to-device message for a device", c2dSend},
	}, args)
}

func c2dSend(ctx context.Context, args []string) error {
	c := newHubCommand("c2d-message send",
		"--device-id D --data TEXT [--props k=v;k2=v2] [--message-id ID] [--correlation-id ID] [--content-type T] [--content-encoding E] [--expire-time-utc MS]")
	d := c.deviceID()
	data := c.String("data", "", "message body")
	props := c.String("props", "", "application properties: k=v;k2=v2")
	mid := c.String("message-id", "", "message id (default: made up by the hub)")
	cid := c.String("correlation-id", "", "correlation id")
	ct := c.String("content-type", "", "content type, e.g. application/json")
	ce := c.String("content-encoding", "", "content encoding, e.g. utf-8")
	exp := c.Int64("expire-time-utc", 0, "expiry, Unix epoch milliseconds (default: one hour from now; at most 48 hours)")
	var p map[string]string
	c.check(func() (err error) {
		p, err = parseProps(*props)
		return err
	})
	return c.run(args, func(s *service.Client) (any, error) {
		msg := service.C2DMessage{Body: []byte(*data), Properties: p, MessageID: *mid, CorrelationID: *cid, ContentType: *ct, ContentEncoding: *ce}
		if *exp != 0 {
			msg.Expiry = time.UnixMilli(*exp)
		}
		id, err := s.SendC2D(ctx, *d, msg)
		if err != nil {
			return nil, err
		}
		return map[string]string{"messageId": id}, nil
	})
}

// parseProps reads "k=v;k2=v2", as az's --props takes them.
func parseProps(s string) (map[string]string, error) {
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	out := map[string]string{}
	for _, kv := range strings.Split(s, ";") {
		if strings.TrimSpace(kv) == "" {
			continue
		}
		k, v, ok := strings.Cut(kv, "=")
		k = strings.TrimSpace(k)
		if !ok || k == "" {
			return nil, fmt.Errorf("--props: %q is not key=value", kv)
		}
		out[k] = v
	}
	return out, nil
}
