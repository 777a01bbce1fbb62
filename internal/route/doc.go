package route

import (
	"bytes"
	"encoding/json"

	"outpost/internal/message"
	"outpost/internal/query"
)

// enqueuedFormat has a fixed number of fractional digits, as Azure writes
// it, so that $enqueuedTime values compare correctly as strings.
const enqueuedFormat = "2006-01-02T15:04:05.0000000Z"

// MessageDoc presents msg to route conditions:
//
//   - a bare name is an application property, as a query.LooseString:
//     IoT Hub types every property as a string, but `temperature > 30`
//     should work on the property "35", so against a number a property is
//     read as a number when it parses as one (and is undefined when not);
//   - $contentType, $contentEncoding, $messageId, $correlationId,
//     $userId, $to, $outputName, $connectionDeviceId,
//     $connectionModuleId and $enqueuedTime are system properties, as
//     strings ($enqueuedTime as 2006-01-02T15:04:05.0000000Z in UTC);
//     an empty one is undefined. The connection ids fall back to the
//     message's DeviceID and ModuleID;
//   - $body and $body.x.y reach into the body when it is JSON. IoT Edge
//     requires contentType application/json and contentEncoding utf-8;
//     Outpost is lenient and uses any body that parses as JSON. The body
//     is decoded at most once, on first use.
//
// The doc is for one goroutine; make one per message.
func MessageDoc(msg *message.Message) query.Doc {
	return &msgDoc{msg: msg}
}

type msgDoc struct {
	msg     *message.Message
	decoded bool
	body    any
	bodyOK  bool
}

func (d *msgDoc) Lookup(path []string) (any, bool) {
	if len(path) == 0 {
		return nil, false // a message has no document form to project
	}
	name := path[0]
	if name == "$body" {
		b, ok := d.decodeBody()
		if !ok {
			return nil, false
		}
		return query.Walk(b, path[1:])
	}
	if len(path) != 1 {
		return nil, false
	}
	if name != "" && name[0] == '$' {
		return d.system(name)
	}
	v, ok := d.msg.Properties[name]
	if !ok {
		return nil, false
	}
	return query.LooseString(v), true
}

func (d *msgDoc) system(name string) (any, bool) {
	m := d.msg
	s := &m.System
	var v string
	switch name {
	case "$contentType":
		v = s.ContentType
	case "$contentEncoding":
		v = s.ContentEncoding
	case "$messageId":
		v = s.MessageID
	case "$correlationId":
		v = s.CorrelationID
	case "$userId":
		v = s.UserID
	case "$to":
		v = s.To
	case "$outputName":
		v = s.OutputName
	case "$expiryTimeUtc":
		v = s.Expiry
	case "$connectionDeviceId":
		v = s.ConnDeviceID
		if v == "" {
			v = m.DeviceID
		}
	case "$connectionModuleId":
		v = s.ConnModuleID
		if v == "" {
			v = m.ModuleID
		}
	case "$enqueuedTime":
		if !s.EnqueuedTime.IsZero() {
			v = s.EnqueuedTime.UTC().Format(enqueuedFormat)
		}
	}
	if v == "" {
		return nil, false
	}
	return v, true
}

var utf8BOM = []byte("\xef\xbb\xbf")

func (d *msgDoc) decodeBody() (any, bool) {
	if !d.decoded {
		d.decoded = true
		b := bytes.TrimPrefix(d.msg.Body, utf8BOM)
		if len(bytes.TrimSpace(b)) > 0 && json.Unmarshal(b, &d.body) == nil {
			d.bodyOK = true
		}
	}
	return d.body, d.bodyOK
}
