// Package edgeproto is the contract between an edge's upstream link and
// its parent's data plane, beyond the IoT Hub device protocol: the names
// of the requests an edge makes over $outpost/req/{name}, their bodies,
// and the replay key each drained message carries. Both sides import it,
// so a name cannot change on one side only.
//
// Replay keys. A drained message names the store it came from and its
// place there: the store's id (random, made when the store was created),
// its sequence in that store, and when the store took it (Unix
// nanoseconds). The parent drops a message as a replay only when all
// three match one it already stored from the same edge. A wiped store
// has a new id; a store restored from a backup, or copied to a second
// machine, keeps its id and reuses sequences, but the messages it takes
// after the copy have other stored times. So a message is dropped as a
// duplicate only if that same stored message already arrived.
//
// Store position. When its link comes up, before it drains, the edge
// tells the parent its store's id and next sequence (StorePosition), and
// the parent answers the next sequence the store must not go below: past
// every sequence of that store it has stored. A restored or copied store
// then moves on past what the parent has seen, and both sides log it.
package edgeproto

import (
	"errors"
	"fmt"
	"strconv"
)

// Request names (the {name} of $outpost/req/{name}/?$rid=…).
const (
	ReqSyncIdentities = "sync-identities"
	ReqSignEdgeCA     = "sign-edge-ca"
	ReqPresence       = "presence"
	ReqStorePosition  = "store-position"
)

// The refusal capability and notice (see the package doc).
const (
	CapParam     = "outpost-caps"
	CapRefusals  = "refusals"
	TopicRefusal = "$outpost/res/refused/"
)

// Reasons of a Refusal: stable names, for counts and metric labels.
const (
	RefusedNotInScope = "not_in_scope" // the identity is not (or no longer) in the edge's scope
	RefusedTooLarge   = "too_large"    // larger than the parent's message size limit
	RefusedInvalid    = "invalid"      // a topic or property bag the parent cannot take
)

// Refusal is the body of a notice on TopicRefusal: the packet id of the
// QoS 1 PUBLISH refused for good, which the PUBACK after it completes,
// and why.
type Refusal struct {
	PacketID uint16 `json:"packetId"`
	Reason   string `json:"reason"`
	Message  string `json:"message,omitempty"`
}

// Property-bag keys of a drained message's replay key. The parent
// removes them before it stores the message.
const (
	BagEdgeID   = "$outpost-eid"
	BagEdgeSeq  = "$outpost-seq"
	BagStoreID  = "$outpost-sid"
	BagStoredAt = "$outpost-st"
)

// StoreIDLen is the length of a store id: 16 random bytes in hex.
const StoreIDLen = 32

// ReplayKey identifies one stored message of an edge.
type ReplayKey struct {
	StoreID  string
	Seq      uint64
	StoredAt int64 // Unix nanoseconds
}

// ValidStoreID reports whether s is a store id: lower-case hex of
// StoreIDLen characters.
func ValidStoreID(s string) bool {
	if len(s) != StoreIDLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// Put writes k and the edge's id into a property bag.
func (k ReplayKey) Put(bag map[string]string, edgeID string) {
	bag[BagEdgeID] = edgeID
	bag[BagStoreID] = k.StoreID
	bag[BagEdgeSeq] = strconv.FormatUint(k.Seq, 10)
	bag[BagStoredAt] = strconv.FormatInt(k.StoredAt, 10)
}

// ErrNoReplayKey is returned by TakeReplayKey for a message that carries
// none of the replay keys.
var ErrNoReplayKey = errors.New("no replay key")

// TakeReplayKey removes the replay keys from props and returns them, with
// the edge id the message names (which the parent must not trust: the
// connection says which edge it is). A message with some of the keys but
// not all, or with malformed ones, is an error; the keys are removed
// either way, so they are never stored as application properties.
func TakeReplayKey(props map[string]string) (k ReplayKey, edgeID string, err error) {
	eid, hasEID := props[BagEdgeID]
	sid, hasSID := props[BagStoreID]
	seq, hasSeq := props[BagEdgeSeq]
	at, hasAt := props[BagStoredAt]
	delete(props, BagEdgeID)
	delete(props, BagStoreID)
	delete(props, BagEdgeSeq)
	delete(props, BagStoredAt)
	if !hasEID && !hasSID && !hasSeq && !hasAt {
		return ReplayKey{}, "", ErrNoReplayKey
	}
	if !hasEID || !hasSID || !hasSeq || !hasAt {
		return ReplayKey{}, eid, errors.New("replay key incomplete: want " + BagEdgeID + ", " + BagStoreID + ", " + BagEdgeSeq + " and " + BagStoredAt)
	}
	if !ValidStoreID(sid) {
		return ReplayKey{}, eid, fmt.Errorf("replay key: bad store id %.40q", sid)
	}
	if k.Seq, err = strconv.ParseUint(seq, 10, 64); err != nil || k.Seq == 0 {
		return ReplayKey{}, eid, fmt.Errorf("replay key: bad sequence %.40q", seq)
	}
	if k.StoredAt, err = strconv.ParseInt(at, 10, 64); err != nil {
		return ReplayKey{}, eid, fmt.Errorf("replay key: bad stored time %.40q", at)
	}
	k.StoreID = sid
	return k, eid, nil
}

// MsgID is the id under which the parent de-duplicates the message of
// edge edgeID (the authenticated connection's id) with key k.
func (k ReplayKey) MsgID(edgeID string) string {
	return "e/" + edgeID + "/" + k.StoreID + "/" + strconv.FormatUint(k.Seq, 10) + "/" + strconv.FormatInt(k.StoredAt, 10)
}

// StorePosition is the body of a store-position request: the edge's
// store id and the next sequence it will assign.
type StorePosition struct {
	StoreID string `json:"storeId"`
	Next    uint64 `json:"next"`
}

// Check reports what is wrong with p, if anything.
func (p StorePosition) Check() error {
	if !ValidStoreID(p.StoreID) {
		return fmt.Errorf("store id %.40q is not %d hex digits", p.StoreID, StoreIDLen)
	}
	if p.Next == 0 {
		return errors.New("next sequence must be at least 1")
	}
	return nil
}

// StorePositionReply is the reply: the next sequence the edge's store
// must assign at least. It is never below the request's Next, and may be
// past it for a store that merely restarted (the parent's record runs
// ahead of what it stored). Behind says the parent has stored sequences
// at or past the request's Next from this store: a backup restored, or a
// copy.
type StorePositionReply struct {
	Next   uint64 `json:"next"`
	Behind bool   `json:"behind,omitempty"`
}

// SignedCA is the reply to sign-edge-ca, whose body is a CSR in PEM with
// the edge's device id as its common name.
type SignedCA struct {
	Certificate string `json:"certificate"` // edge CA, then intermediates
	RootCA      string `json:"rootCA"`
}

// PresenceReport is the body of a presence request: which identities are
// connected to the edge, or no longer are, since its last report on this
// link. Ids are deviceId or deviceId/moduleId. Full ends a report of the
// edge's whole set, made after every (re)connect of its link, possibly in
// several requests of which only the last is Full: the edge's identities
// that this link has not reported Connected are Disconnected then.
type PresenceReport struct {
	Full         bool     `json:"full,omitempty"`
	Connected    []string `json:"connected,omitempty"`
	Disconnected []string `json:"disconnected,omitempty"`
}

// PresenceReply is the reply to a presence request: the ids the hub
// ignored, because they are not in the edge's scope.
type PresenceReply struct {
	Refused []string `json:"refused,omitempty"`
}
