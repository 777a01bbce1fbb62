package edgeproto

import (
	"fmt"
	"strconv"
	"strings"

	"outpost/internal/topic"
)

// Outpost's request/reply extension of the device protocol: a client
// subscribes to ResFilter, publishes RequestTopic(name, rid) with any
// payload, and gets the answer on ResponseTopic(status, rid): 200 with the
// reply, or an IoT Hub error body.
const (
	ReqPrefix = "$outpost/req/"
	ResPrefix = "$outpost/res/"
	ResFilter = "$outpost/res/#"
)

// ReqInvoke is the request of a local direct method call at an edge, made
// by its modules and children (the body is the edge's InvokeRequest).
const ReqInvoke = "invoke"

// RequestTopic is the topic of request name with request id rid.
func RequestTopic(name, rid string) string {
	return ReqPrefix + name + "/?$rid=" + escapeRID(rid)
}

// ResponseTopic is the topic of the answer to request rid.
func ResponseTopic(status int, rid string) string {
	return ResPrefix + strconv.Itoa(status) + "/?$rid=" + escapeRID(rid)
}

// ParseRequest reads a request topic. ok is false for a topic that is not
// one; err says what is wrong with one that is.
func ParseRequest(t string) (name, rid string, ok bool, err error) {
	rest, ok := strings.CutPrefix(t, ReqPrefix)
	if !ok {
		return "", "", false, nil
	}
	name, q, found := strings.Cut(rest, "/?")
	if !found || name == "" || strings.ContainsAny(name, "/+#") {
		return "", "", true, fmt.Errorf("request topic %.200q: want %s{name}/?$rid=", t, ReqPrefix)
	}
	if rid, err = ridOf(q); err != nil {
		return "", "", true, fmt.Errorf("request topic %.200q: %w", t, err)
	}
	return name, rid, true, nil
}

// ParseResponse reads a response topic, as ParseRequest does.
func ParseResponse(t string) (status int, rid string, ok bool, err error) {
	rest, ok := strings.CutPrefix(t, ResPrefix)
	if !ok {
		return 0, "", false, nil
	}
	st, q, _ := strings.Cut(rest, "/?")
	if status, err = strconv.Atoi(st); err != nil || status < 100 || status > 999 {
		return 0, "", true, fmt.Errorf("response topic %.200q: bad status", t)
	}
	if rid, err = ridOf(q); err != nil {
		return 0, "", true, fmt.Errorf("response topic %.200q: %w", t, err)
	}
	return status, rid, true, nil
}

func ridOf(query string) (string, error) {
	bag, err := topic.DecodeBag(query)
	if err != nil {
		return "", err
	}
	if bag["$rid"] == "" {
		return "", fmt.Errorf("no $rid")
	}
	return bag["$rid"], nil
}

// escapeRID escapes a request id as topic's builders do.
func escapeRID(rid string) string {
	return strings.TrimPrefix(topic.EncodeBag(map[string]string{"r": rid}), "r=")
}
