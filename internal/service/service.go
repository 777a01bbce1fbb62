// Package service is a Go client for the hub's service REST API: the
// identity registry, parent/child relationships, twins, queries and bulk
// operations. The admin CLI, the demo and the tests all reach the hub
// through it, so it speaks the same wire as Azure's service SDKs (service
// SAS, api-version, quoted If-Match, `ErrorCode:X;…` error bodies).
package service

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	"outpost/internal/sas"
)

// APIVersion is the service API version sent with every request.
const APIVersion = "2021-04-12"

// Token lifetimes. A token is renewed once less than tokenRenewBefore of it
// is left, so a request never leaves with a token about to expire in flight.
const (
	tokenLifetime    = time.Hour
	tokenRenewBefore = 10 * time.Minute
)

// Config configures a Client.
type Config struct {
	// ConnectionString is the hub's service connection string:
	// HostName=…;SharedAccessKeyName=…;SharedAccessKey=…. HostName may
	// carry a port (localhost:18443); requests then go to that port.
	ConnectionString string
	// CAFile is a PEM file of roots to trust instead of the system roots.
	CAFile string
	// RootCAs, when set, is used instead of CAFile and the system roots.
	RootCAs *x509.CertPool
	// HTTPClient, when set, is used as-is; CAFile and RootCAs are then
	// ignored. Tests use it to reach an httptest server.
	HTTPClient *http.Client
	// Timeout bounds each request, from sending to the end of reading its
	// response. Zero means 30 s.
	Timeout time.Duration
	// Now is the clock used for token expiry. Nil means time.Now.
	Now func() time.Time
}

// Client talks to one hub's service REST API. It is safe for concurrent use.
type Client struct {
	host    string // HostName exactly as in the connection string
	keyName string
	key     string
	base    *url.URL
	http    *http.Client
	timeout time.Duration
	now     func() time.Time

	// mu guards the following fields.
	mu       sync.Mutex
	token    string
	tokenExp time.Time
}

// New checks cfg and returns a client. It does not contact the hub.
func New(cfg Config) (*Client, error) {
	cs, err := sas.ParseConnectionString(cfg.ConnectionString)
	if err != nil {
		return nil, fmt.Errorf("hub %w", err)
	}
	if cs.HostName == "" || cs.SharedAccessKeyName == "" || cs.SharedAccessKey == "" {
		return nil, errors.New("hub connection string: need HostName, SharedAccessKeyName and SharedAccessKey (a service connection string)")
	}
	base, err := url.Parse("https://" + cs.HostName)
	if err != nil || base.Host != cs.HostName || base.Hostname() == "" {
		return nil, fmt.Errorf("hub connection string: bad HostName %q", cs.HostName)
	}
	c := &Client{
		host:    cs.HostName,
		keyName: cs.SharedAccessKeyName,
		key:     cs.SharedAccessKey,
		base:    base,
		http:    cfg.HTTPClient,
		timeout: cfg.Timeout,
		now:     cfg.Now,
	}
	if c.timeout <= 0 {
		c.timeout = 30 * time.Second
	}
	if c.now == nil {
		c.now = time.Now
	}
	if c.http == nil {
		roots := cfg.RootCAs
		if roots == nil && cfg.CAFile != "" {
			if roots, err = LoadCA(cfg.CAFile); err != nil {
				return nil, err
			}
		}
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.TLSClientConfig = &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}
		c.http = &http.Client{Transport: tr}
	}
	// Make sure the key can sign before the first request needs it.
	if _, err := c.authorization(); err != nil {
		return nil, err
	}
	return c, nil
}

// LoadCA reads a PEM file of CA certificates into a pool.
func LoadCA(file string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("read CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("read CA: no PEM certificate in %s", file)
	}
	return pool, nil
}

// HostName returns the hub's HostName as the connection string gave it.
func (c *Client) HostName() string { return c.host }

// authorization returns a valid service SAS token, signing a new one when
// the cached one is close to expiry.
func (c *Client) authorization() (string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.now()
	if c.token != "" && now.Add(tokenRenewBefore).Before(c.tokenExp) {
		return c.token, nil
	}
	exp := now.Add(tokenLifetime)
	tok, err := sas.Sign(c.host, c.key, c.keyName, exp)
	if err != nil {
		return "", fmt.Errorf("sign service token: %w", err)
	}
	c.token, c.tokenExp = tok, exp
	return tok, nil
}

// Error is an error answered by the hub.
type Error struct {
	Status  int    // HTTP status
	Code    string // Azure error code, e.g. DeviceNotFound
	Message string // the hub's explanation
}

func (e *Error) Error() string {
	switch {
	case e.Code != "" && e.Message != "":
		return e.Code + ": " + e.Message
	case e.Code != "":
		return e.Code
	case e.Message != "":
		return e.Message
	}
	return fmt.Sprintf("hub answered %d %s", e.Status, http.StatusText(e.Status))
}

// IsNotFound reports whether err is a 404 from the hub.
func IsNotFound(err error) bool { return statusIs(err, http.StatusNotFound) }

// IsConflict reports whether err is a 409 (already exists) from the hub.
func IsConflict(err error) bool { return statusIs(err, http.StatusConflict) }

// IsPreconditionFailed reports whether err is a 412 (etag mismatch).
func IsPreconditionFailed(err error) bool { return statusIs(err, http.StatusPreconditionFailed) }

func statusIs(err error, status int) bool {
	var e *Error
	return errors.As(err, &e) && e.Status == status
}

// maxErrorBody bounds how much of an error response is read.
const maxErrorBody = 64 << 10

// decodeError builds an *Error from a non-2xx response. It understands
// Azure's two shapes, {"Message":"ErrorCode:X;text"} and
// {"errorCode":…,"message":…}, and falls back to the iothub-errorcode header
// and the status text.
func decodeError(resp *http.Response) *Error {
	body, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
	e := &Error{Status: resp.StatusCode}
	var doc struct {
		Message          string          `json:"Message"`
		ExceptionMessage string          `json:"ExceptionMessage"`
		ErrorCode        json.RawMessage `json:"errorCode"`
		LowerMessage     string          `json:"message"`
	}
	if json.Unmarshal(body, &doc) == nil {
		msg := doc.Message
		if msg == "" {
			msg = doc.LowerMessage
		}
		e.Code, e.Message = splitErrorMessage(msg)
		if e.Code == "" && len(doc.ErrorCode) > 0 {
			var s string
			if json.Unmarshal(doc.ErrorCode, &s) == nil {
				e.Code = s
			}
		}
		if e.Message == "" {
			e.Message = doc.ExceptionMessage
		}
	} else if t := strings.TrimSpace(string(body)); t != "" && !strings.HasPrefix(t, "<") {
		e.Message = t
	}
	if e.Code == "" {
		e.Code = resp.Header.Get("iothub-errorcode")
	}
	if e.Code == "" && e.Message == "" {
		e.Message = fmt.Sprintf("hub answered %d %s", resp.StatusCode, http.StatusText(resp.StatusCode))
	}
	return e
}

// splitErrorMessage parses "ErrorCode:DeviceNotFound;device 'x' not found".
func splitErrorMessage(s string) (code, msg string) {
	s = strings.TrimSpace(s)
	rest, ok := strings.CutPrefix(s, "ErrorCode:")
	if !ok {
		return "", s
	}
	code, msg, _ = strings.Cut(rest, ";")
	return strings.TrimSpace(code), strings.TrimSpace(msg)
}

// do sends one request to the hub and returns the response when its status
// is 2xx; any other status becomes an *Error. It is the one path every call
// takes, so a new endpoint is a few lines: see doJSON. The caller closes the
// response body; closing it also releases the request's timeout.
func (c *Client) do(ctx context.Context, method, path string, body any, header http.Header) (*http.Response, error) {
	resp, err := c.send(ctx, method, path, body, header)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		defer resp.Body.Close()
		return nil, decodeError(resp)
	}
	return resp, nil
}

// send is do without the status check. body, when not nil, is sent as JSON
// unless it is already a []byte or json.RawMessage. path is the escaped
// path, as Path builds it, with an optional query.
func (c *Client) send(ctx context.Context, method, path string, body any, header http.Header) (*http.Response, error) {
	var rd io.Reader
	if body != nil {
		switch b := body.(type) {
		case []byte:
			rd = bytes.NewReader(b)
		case json.RawMessage:
			rd = bytes.NewReader(b)
		default:
			buf, err := json.Marshal(body)
			if err != nil {
				return nil, fmt.Errorf("encode request: %w", err)
			}
			rd = bytes.NewReader(buf)
		}
	}
	u := *c.base
	p, q, _ := strings.Cut(path, "?")
	pp, err := url.PathUnescape(p)
	if err != nil {
		return nil, fmt.Errorf("bad path %q: %w", path, err)
	}
	u.Path, u.RawPath = pp, p
	vals, err := url.ParseQuery(q)
	if err != nil {
		return nil, fmt.Errorf("bad query in %q: %w", path, err)
	}
	vals.Set("api-version", APIVersion)
	u.RawQuery = vals.Encode()

	tok, err := c.authorization()
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	req, err := http.NewRequestWithContext(ctx, method, u.String(), rd)
	if err != nil {
		cancel()
		return nil, fmt.Errorf("build request: %w", err)
	}
	for k, vs := range header {
		req.Header[http.CanonicalHeaderKey(k)] = vs
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json; charset=utf-8")
	}
	req.Header.Set("Accept", "application/json")
	req.Header.Set("Authorization", tok)
	resp, err := c.http.Do(req)
	if err != nil {
		cancel()
		return nil, fmt.Errorf("%s %s: %w", method, p, err)
	}
	resp.Body = &cancelBody{ReadCloser: resp.Body, cancel: cancel}
	return resp, nil
}

// cancelBody releases the request's timeout when the body is closed.
type cancelBody struct {
	io.ReadCloser
	cancel context.CancelFunc
}

func (b *cancelBody) Close() error {
	err := b.ReadCloser.Close()
	b.cancel()
	return err
}

// doJSON sends a request and decodes a JSON response into out (when out is
// not nil), returning the response headers.
func (c *Client) doJSON(ctx context.Context, method, path string, body any, header http.Header, out any) (http.Header, error) {
	resp, err := c.do(ctx, method, path, body, header)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if out == nil {
		_, _ = io.Copy(io.Discard, resp.Body)
		return resp.Header, nil
	}
	if resp.StatusCode == http.StatusNoContent {
		return resp.Header, nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("%s %s: decode response: %w", method, path, err)
	}
	return resp.Header, nil
}

// Path joins segments into an escaped URL path: each id is escaped on its
// own, so ids holding '/', '?', '#' or '%' stay one segment.
func Path(segments ...string) string {
	var b strings.Builder
	for _, s := range segments {
		b.WriteByte('/')
		b.WriteString(url.PathEscape(s))
	}
	return b.String()
}

// ifMatch returns an If-Match header with etag quoted, as Azure's SDKs send
// it; an empty etag means no header, and "*" stays the wildcard.
func ifMatch(etag string) http.Header {
	if etag == "" {
		return nil
	}
	return http.Header{"If-Match": {quoteETag(etag)}}
}

func quoteETag(etag string) string {
	if strings.HasPrefix(etag, "W/") || (len(etag) >= 2 && etag[0] == '"' && etag[len(etag)-1] == '"') {
		return etag
	}
	return `"` + etag + `"`
}
