package upstream

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/http"

	"outpost/internal/edgeproto"
	"outpost/internal/identity"
	"outpost/internal/message"
	"outpost/internal/status"
	"outpost/internal/topic"
)

// maxFiltersPerSubscribe keeps SUBSCRIBE packets small after a reconnect
// of an edge with many local clients.
const maxFiltersPerSubscribe = 32

// ensureSub subscribes those of filters not yet subscribed on this
// connection, and waits until all are.
func (s *session) ensureSub(ctx context.Context, filters []string, qos []byte) error {
	st := &subState{done: make(chan struct{})}
	var mine []string
	var mineQoS []byte
	var others []*subState
	s.mu.Lock()
	for i, f := range filters {
		if o := s.subs[f]; o != nil {
			others = append(others, o)
			continue
		}
		s.subs[f] = st
		mine = append(mine, f)
		mineQoS = append(mineQoS, qos[i])
	}
	s.mu.Unlock()
	if len(mine) > 0 {
		var err error
		for i := 0; i < len(mine) && err == nil; i += maxFiltersPerSubscribe {
			j := min(i+maxFiltersPerSubscribe, len(mine))
			err = s.c.subscribe(ctx, mine[i:j], mineQoS[i:j])
		}
		if err != nil {
			s.mu.Lock()
			for _, f := range mine {
				if s.subs[f] == st {
					delete(s.subs, f)
				}
			}
			s.mu.Unlock()
			err = fmt.Errorf("subscribe: %w", err)
		}
		st.err = err
		close(st.done)
		if err != nil {
			return err
		}
	}
	for _, o := range others {
		select {
		case <-o.done:
			if o.err != nil {
				return o.err
			}
		case <-ctx.Done():
			return ctx.Err()
		case <-s.c.done:
			return errConnClosed
		}
	}
	return nil
}

func (s *session) unsubscribe(ctx context.Context, filters []string) error {
	s.mu.Lock()
	for _, f := range filters {
		delete(s.subs, f)
	}
	s.mu.Unlock()
	for i := 0; i < len(filters); i += maxFiltersPerSubscribe {
		if err := s.c.unsubscribe(ctx, filters[i:min(i+maxFiltersPerSubscribe, len(filters))]); err != nil {
			return fmt.Errorf("unsubscribe: %w", err)
		}
	}
	return nil
}

// clientFilters are what the edge subscribes for a local client: C2D (a
// device), methods, desired patches and twin responses.
func clientFilters(a attachment) ([]string, []byte) {
	cid := message.ClientID(a.deviceID, a.moduleID)
	f := []string{topic.OBOMethodFilter(cid), topic.OBOTwinDesiredFilter(cid), topic.OBOTwinResponseFilter(cid)}
	q := []byte{0, 0, 0}
	if a.moduleID == "" {
		f = append(f, topic.C2DFilter(a.deviceID))
		q = append(q, 1)
	}
	return f, q
}

// reconcile makes the connection's subscriptions follow the attached
// clients, starting with the edge's own.
func (s *session) reconcile() {
	l := s.l
	eh := message.ClientID(l.cfg.DeviceID, edgeHubModule)
	own := []string{edgeproto.ResFilter, topic.OBOTwinDesiredFilter(eh), topic.OBOTwinResponseFilter(eh)}
	if err := s.ensureSub(s.ctx, own, []byte{0, 0, 0}); err != nil {
		if s.ctx.Err() != nil || s.c.Err() != nil {
			return
		}
		l.log.Warn("upstream subscribe refused", "error", err)
	}
	s.wg.Go(func() { s.fetchEdgeHubTwin() })
	have := map[string]attachment{}
	for {
		l.mu.Lock()
		want := maps.Clone(l.attached)
		l.mu.Unlock()
		var add, remove []string
		var addQoS []byte
		for cid, a := range want {
			if _, ok := have[cid]; !ok {
				f, q := clientFilters(a)
				add, addQoS = append(add, f...), append(addQoS, q...)
			}
		}
		for cid, a := range have {
			if _, ok := want[cid]; !ok {
				f, _ := clientFilters(a)
				remove = append(remove, f...)
			}
		}
		// A refusal is not retried on this connection: it would be
		// refused again. The next connection tries afresh.
		if len(add) > 0 {
			if err := s.ensureSub(s.ctx, add, addQoS); err != nil {
				if s.ctx.Err() != nil || s.c.Err() != nil {
					return
				}
				l.log.Warn("upstream subscribe for local clients refused", "error", err)
			}
		}
		if len(remove) > 0 {
			if err := s.unsubscribe(s.ctx, remove); err != nil {
				return // only a dead connection fails an unsubscribe
			}
		}
		have = want
		select {
		case <-l.subsChanged:
		case <-s.ctx.Done():
			return
		}
	}
}

// fetchEdgeHubTwin GETs the $edgeHub twin, as on every connect, and hands
// its desired document to the edge.
func (s *session) fetchEdgeHubTwin() {
	eh := message.ClientID(s.l.cfg.DeviceID, edgeHubModule)
	r, err := s.request(s.ctx, topic.OBOTwinResponseFilter(eh), func(rid string) string { return topic.OBOTwinGet(eh, rid) }, nil)
	if err == nil && r.status != http.StatusOK {
		err = status.FromMQTT(r.status, r.body)
	}
	var doc struct {
		Desired json.RawMessage `json:"desired"`
	}
	if err == nil {
		if err = json.Unmarshal(r.body, &doc); err == nil && len(doc.Desired) == 0 {
			err = errors.New("twin has no desired properties")
		}
	}
	if err != nil {
		if s.ctx.Err() == nil {
			s.l.log.Warn("get $edgeHub twin failed", "error", err)
		}
		return
	}
	s.event(func() { s.l.cfg.Local.EdgeHubDesired(doc.Desired) })
}

// resolve hands a reply to the request waiting for rid.
func (l *Link) resolve(rid string, r reply) {
	l.mu.Lock()
	ch := l.pending[rid]
	delete(l.pending, rid)
	l.mu.Unlock()
	if ch != nil {
		ch <- r
	}
}

// request publishes a request and waits for the reply with its $rid on
// resFilter, which it subscribes first if needed.
func (s *session) request(ctx context.Context, resFilter string, mkTopic func(rid string) string, payload []byte) (reply, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, requestTimeout)
		defer cancel()
	}
	if err := s.ensureSub(ctx, []string{resFilter}, []byte{0}); err != nil {
		return reply{}, s.offline(err)
	}
	rid := s.l.newRID()
	ch := make(chan reply, 1)
	s.l.mu.Lock()
	s.l.pending[rid] = ch
	s.l.mu.Unlock()
	defer func() {
		s.l.mu.Lock()
		delete(s.l.pending, rid)
		s.l.mu.Unlock()
	}()
	if err := s.c.publish0(mkTopic(rid), payload); err != nil {
		return reply{}, s.offline(err)
	}
	select {
	case r := <-ch:
		return r, nil
	case <-ctx.Done():
		return reply{}, s.offline(ctx.Err())
	case <-s.c.done:
		return reply{}, ErrOffline
	}
}

// offline says ErrOffline for an error caused by the connection ending.
func (s *session) offline(err error) error {
	if s.c.Err() != nil {
		return fmt.Errorf("%w: %v", ErrOffline, err)
	}
	return err
}

func (l *Link) request(ctx context.Context, what, resFilter string, mkTopic func(rid string) string, payload []byte) (reply, error) {
	s := l.current()
	if s == nil {
		return reply{}, fmt.Errorf("%s: %w", what, ErrOffline)
	}
	r, err := s.request(ctx, resFilter, mkTopic, payload)
	if err != nil {
		return reply{}, fmt.Errorf("%s: %w", what, err)
	}
	return r, nil
}

func extRequest(name string) func(rid string) string {
	return func(rid string) string { return edgeproto.RequestTopic(name, rid) }
}

// SyncIdentities fetches the identities in the edge's scope, with keys.
func (l *Link) SyncIdentities(ctx context.Context) (*identity.ScopeSnapshot, error) {
	r, err := l.request(ctx, "sync identities", edgeproto.ResFilter, extRequest(edgeproto.ReqSyncIdentities), []byte("{}"))
	if err != nil {
		return nil, err
	}
	if r.status != http.StatusOK {
		return nil, fmt.Errorf("sync identities: %w", status.FromMQTT(r.status, r.body))
	}
	var snap identity.ScopeSnapshot
	if err := json.Unmarshal(r.body, &snap); err != nil {
		return nil, fmt.Errorf("sync identities: %w", err)
	}
	return &snap, nil
}

// SignEdgeCA has the hub sign the edge CA's CSR (PEM, CN = edge id). It
// returns the edge CA certificate followed by its intermediates, and the
// hub's root.
func (l *Link) SignEdgeCA(ctx context.Context, csrPEM []byte) (chainPEM, rootPEM []byte, err error) {
	r, err := l.request(ctx, "sign edge ca", edgeproto.ResFilter, extRequest(edgeproto.ReqSignEdgeCA), csrPEM)
	if err != nil {
		return nil, nil, err
	}
	if r.status != http.StatusOK {
		return nil, nil, fmt.Errorf("sign edge ca: %w", status.FromMQTT(r.status, r.body))
	}
	var res edgeproto.SignedCA
	if err := json.Unmarshal(r.body, &res); err != nil {
		return nil, nil, fmt.Errorf("sign edge ca: %w", err)
	}
	if res.Certificate == "" {
		return nil, nil, errors.New("sign edge ca: no certificate in the reply")
	}
	return []byte(res.Certificate), []byte(res.RootCA), nil
}

func checkIDs(deviceID, moduleID string) error {
	if !topic.ValidID(deviceID) || (moduleID != "" && !topic.ValidID(moduleID)) {
		return fmt.Errorf("invalid identity %q", clip(message.ClientID(deviceID, moduleID)))
	}
	return nil
}

// TwinGet gets a local client's twin on its behalf. It fails fast with
// ErrOffline while the link is down.
func (l *Link) TwinGet(ctx context.Context, deviceID, moduleID string) ([]byte, error) {
	if err := checkIDs(deviceID, moduleID); err != nil {
		return nil, fmt.Errorf("twin get: %w", err)
	}
	cid := message.ClientID(deviceID, moduleID)
	r, err := l.request(ctx, "twin get", topic.OBOTwinResponseFilter(cid), func(rid string) string { return topic.OBOTwinGet(cid, rid) }, nil)
	if err != nil {
		return nil, err
	}
	if r.status != http.StatusOK {
		return nil, fmt.Errorf("twin get %s: %w", cid, status.FromMQTT(r.status, r.body))
	}
	return r.body, nil
}

// TwinReported sends a local client's reported-properties patch on its
// behalf and returns the new reported version.
func (l *Link) TwinReported(ctx context.Context, deviceID, moduleID string, patch []byte) (int64, error) {
	if err := checkIDs(deviceID, moduleID); err != nil {
		return 0, fmt.Errorf("twin reported: %w", err)
	}
	cid := message.ClientID(deviceID, moduleID)
	r, err := l.request(ctx, "twin reported", topic.OBOTwinResponseFilter(cid), func(rid string) string { return topic.OBOTwinReported(cid, rid) }, patch)
	if err != nil {
		return 0, err
	}
	if r.status/100 != 2 {
		return 0, fmt.Errorf("twin reported %s: %w", cid, status.FromMQTT(r.status, r.body))
	}
	return r.version, nil
}
