package service

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"

	"outpost/internal/identity"
)

// Import modes of a bulk operation, as Azure spells them: those the hub
// serves (hub.bulk.go). Azure's import jobs also know createOrUpdate and
// updateTwin; the hub refuses them, so they are not offered here.
const (
	ImportCreate            = "create"
	ImportUpdate            = "update"
	ImportUpdateIfMatchETag = "updateIfMatchETag"
	ImportDelete            = "delete"
	ImportDeleteIfMatchETag = "deleteIfMatchETag"
)

// ImportModes lists every mode above, for a test that sends each to the
// hub.
var ImportModes = []string{ImportCreate, ImportUpdate, ImportUpdateIfMatchETag, ImportDelete, ImportDeleteIfMatchETag}

// MaxBulkOps is the most operations one bulk request may carry.
const MaxBulkOps = 100

// BulkOp is one entry of a bulk registry operation (Azure's
// ExportImportDevice).
type BulkOp struct {
	ID             string                   `json:"id"`
	ImportMode     string                   `json:"importMode"`
	ETag           string                   `json:"eTag,omitempty"`
	Status         string                   `json:"status,omitempty"`
	StatusReason   string                   `json:"statusReason,omitempty"`
	Authentication *identity.Authentication `json:"authentication,omitempty"`
	Capabilities   *identity.Capabilities   `json:"capabilities,omitempty"`
	DeviceScope    string                   `json:"deviceScope,omitempty"`
	ParentScopes   []string                 `json:"parentScopes,omitempty"`
	// Tags and Properties set the twin (import mode updateTwin).
	Tags       map[string]any  `json:"tags,omitempty"`
	Properties *BulkProperties `json:"properties,omitempty"`
}

// BulkProperties are the twin properties a bulk entry sets.
type BulkProperties struct {
	Desired map[string]any `json:"desired,omitempty"`
}

// BulkResult is the hub's answer to a bulk operation.
type BulkResult struct {
	IsSuccessful bool        `json:"isSuccessful"`
	Errors       []BulkError `json:"errors"`
	Warnings     []BulkError `json:"warnings"`
}

// BulkError reports one failed (or warned-about) entry.
type BulkError struct {
	DeviceID    string `json:"deviceId"`
	ErrorCode   string `json:"errorCode"`
	ErrorStatus string `json:"errorStatus"`
}

// Bulk applies up to MaxBulkOps registry operations in one request. A
// partial failure is not an error: the result lists the failed entries. As
// in Azure, the hub may answer a partial failure with 400 and a result
// body; that is decoded as a result too.
func (c *Client) Bulk(ctx context.Context, ops []BulkOp) (BulkResult, error) {
	if len(ops) == 0 {
		return BulkResult{IsSuccessful: true}, nil
	}
	if len(ops) > MaxBulkOps {
		return BulkResult{}, fmt.Errorf("bulk: %d operations; at most %d per request", len(ops), MaxBulkOps)
	}
	resp, err := c.send(ctx, http.MethodPost, Path("devices"), ops, nil)
	if err != nil {
		return BulkResult{}, err
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 200 && resp.StatusCode <= 299 {
		var res BulkResult
		if err := json.NewDecoder(resp.Body).Decode(&res); err != nil && !errors.Is(err, io.EOF) {
			return BulkResult{}, fmt.Errorf("bulk: decode response: %w", err)
		}
		return res, nil
	}
	if resp.StatusCode == http.StatusBadRequest {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
		var res BulkResult
		if json.Unmarshal(body, &res) == nil && len(res.Errors) > 0 {
			return res, nil
		}
		resp.Body = io.NopCloser(bytes.NewReader(body))
	}
	return BulkResult{}, decodeError(resp)
}
