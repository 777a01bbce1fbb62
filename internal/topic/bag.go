package topic

import (
	"fmt"
	"net/url"
	"sort"
	"strings"

	"outpost/internal/message"
)

// DecodeBag decodes a property bag "k=v&k2=v2". Keys and values are
// URL-decoded, so "%24.mid" becomes "$.mid"; '+' decodes to a space, as
// the Node SDK's querystring does. A key without '=' gets the value "".
// Empty segments and empty keys are skipped; a repeated key keeps its
// last value.
func DecodeBag(s string) (map[string]string, error) {
	m := map[string]string{}
	for s != "" {
		var seg string
		seg, s, _ = strings.Cut(s, "&")
		if seg == "" {
			continue
		}
		k, v, _ := strings.Cut(seg, "=")
		dk, err := url.QueryUnescape(k)
		if err != nil {
			return nil, fmt.Errorf("property bag: bad key %q", clip(k))
		}
		dv, err := url.QueryUnescape(v)
		if err != nil {
			return nil, fmt.Errorf("property bag: bad value for %q", clip(dk))
		}
		if dk == "" {
			continue
		}
		m[dk] = dv
	}
	return m, nil
}

// EncodeBag encodes a property bag with keys in sorted order, so equal
// bags give equal topics. Keys and values get the strict encoding, which
// writes system keys as "%24.mid", as the SDKs do.
func EncodeBag(m map[string]string) string {
	if len(m) == 0 {
		return ""
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for i, k := range keys {
		if i > 0 {
			b.WriteByte('&')
		}
		b.WriteString(escape(k))
		b.WriteByte('=')
		b.WriteString(escape(m[k]))
	}
	return b.String()
}

// escape is JavaScript's encodeURIComponent that also escapes !'()*: only
// RFC 3986 unreserved characters stay. package sas has the same function;
// each leaf keeps its own copy rather than importing the other for it.
func escape(s string) string {
	const hex = "0123456789ABCDEF"
	var b []byte
	for i := 0; i < len(s); i++ {
		c := s[i]
		if 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_' || c == '.' || c == '~' {
			if b != nil {
				b = append(b, c)
			}
			continue
		}
		if b == nil {
			b = make([]byte, i, len(s)+16)
			copy(b, s[:i])
		}
		b = append(b, '%', hex[c>>4], hex[c&15])
	}
	if b == nil {
		return s
	}
	return string(b)
}

// systemKeys are the system properties carried in bags sent to devices,
// in the order FromMessage looks them up.
var systemKeys = []string{
	message.KeyMessageID, message.KeyCorrelationID, message.KeyUserID, message.KeyTo,
	message.KeyContentType, message.KeyContentEncoding, message.KeyExpiry, message.KeyOutputName,
	message.KeyConnDeviceID, message.KeyConnModuleID,
}

// ToMessage copies a bag a client published into msg: "$."-keys into the
// system properties, the rest into the application properties. The
// connection ids ($.cdid, $.cmid) are dropped, because the server stamps
// them from the authenticated identity; system keys message does not know
// ($.ifid …) are dropped too rather than passed off as application
// properties.
func ToMessage(bag map[string]string, msg *message.Message) {
	for k, v := range bag {
		if strings.HasPrefix(k, "$.") {
			if k != message.KeyConnDeviceID && k != message.KeyConnModuleID {
				msg.SystemSet(k, v)
			}
			continue
		}
		if msg.Properties == nil {
			msg.Properties = make(map[string]string, len(bag))
		}
		msg.Properties[k] = v
	}
}

// ServerToMessage copies a bag the server published (a C2D message, a
// module input) into msg. Unlike ToMessage it keeps the connection ids:
// the server stamped them, and they tell a module which device or module
// sent what reached its input.
func ServerToMessage(bag map[string]string, msg *message.Message) {
	ToMessage(bag, msg)
	msg.System.ConnDeviceID = bag[message.KeyConnDeviceID]
	msg.System.ConnModuleID = bag[message.KeyConnModuleID]
}

// FromMessage returns the bag to publish msg to a device or module: its
// application properties and its set system properties ($.mid, $.cid,
// $.ct, $.ce, $.cdid, $.cmid, $.on …). A system property wins over an
// application property of the same name.
func FromMessage(msg *message.Message) map[string]string {
	bag := make(map[string]string, len(msg.Properties)+4)
	for k, v := range msg.Properties {
		bag[k] = v
	}
	for _, k := range systemKeys {
		if v, ok := msg.SystemGet(k); ok {
			bag[k] = v
		}
	}
	return bag
}
