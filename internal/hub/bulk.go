package hub

import (
	"context"
	"encoding/json"
	"errors"
	"strings"

	"outpost/internal/identity"
	"outpost/internal/status"
)

// MaxBulkEntries is IoT Hub's limit on one bulk registry request.
const MaxBulkEntries = 100

// Bulk import modes, compared case-insensitively as the SDKs differ
// ("Update", "updateIfMatchETag"…).
const (
	ImportCreate            = "create"
	ImportUpdate            = "update"
	ImportUpdateIfMatchETag = "updateIfMatchETag"
	ImportDelete            = "delete"
	ImportDeleteIfMatchETag = "deleteIfMatchETag"
)

// BulkEntry is one device of a bulk registry request, in Azure's
// ExportImportDevice shape. The SDKs send the id as "id"; "deviceId" is
// accepted too, as are "eTag" and "etag".
type BulkEntry struct {
	ID           string                   `json:"id"`
	DeviceID     string                   `json:"deviceId,omitempty"`
	ETag         string                   `json:"eTag,omitempty"`
	ETagLower    string                   `json:"etag,omitempty"`
	ImportMode   string                   `json:"importMode"`
	Status       string                   `json:"status,omitempty"`
	StatusReason string                   `json:"statusReason,omitempty"`
	Auth         *identity.Authentication `json:"authentication,omitempty"`
	Capabilities *identity.Capabilities   `json:"capabilities,omitempty"`
	DeviceScope  string                   `json:"deviceScope,omitempty"`
	ParentScopes []string                 `json:"parentScopes,omitempty"`
	Tags         map[string]any           `json:"tags,omitempty"`
	Properties   *struct {
		Desired map[string]any `json:"desired,omitempty"`
	} `json:"properties,omitempty"`
}

// BulkError reports one failed entry.
type BulkError struct {
	DeviceID    string `json:"deviceId"`
	ErrorCode   string `json:"errorCode"`
	ErrorStatus string `json:"errorStatus"`
}

// BulkResult is Azure's BulkRegistryOperationResult.
type BulkResult struct {
	IsSuccessful bool        `json:"isSuccessful"`
	Errors       []BulkError `json:"errors"`
	Warnings     []BulkError `json:"warnings"`
}

func (e BulkEntry) id() string {
	if e.ID != "" {
		return e.ID
	}
	return e.DeviceID
}

func (e BulkEntry) etag() string {
	if e.ETag != "" {
		return e.ETag
	}
	return e.ETagLower
}

func (e BulkEntry) device() identity.Device {
	d := identity.Device{DeviceID: e.id(), Status: e.Status, StatusReason: e.StatusReason, DeviceScope: e.DeviceScope, ParentScopes: e.ParentScopes}
	if e.Auth != nil {
		d.Authentication = *e.Auth
	}
	if e.Capabilities != nil {
		d.Capabilities = *e.Capabilities
	}
	return d
}

// Bulk applies up to MaxBulkEntries registry operations in order. Each
// entry succeeds or fails on its own; failures are listed in the result.
// The error is for a request refused as a whole.
func (h *Hub) Bulk(ctx context.Context, entries []BulkEntry) (BulkResult, error) {
	if len(entries) == 0 {
		return BulkResult{}, status.BadRequest(status.CodeArgumentInvalid, "bulk request has no devices")
	}
	if len(entries) > MaxBulkEntries {
		return BulkResult{}, status.BadRequest("TooManyDevices",
			"bulk request has %d devices: the limit is %d", len(entries), MaxBulkEntries)
	}
	res := BulkResult{Errors: []BulkError{}, Warnings: []BulkError{}}
	for _, e := range entries {
		if err := h.bulkOne(ctx, e); err != nil {
			se, ok := status.As(err)
			if !ok {
				// A storage failure: report it and stop, since later
				// entries would most likely fail the same way.
				return BulkResult{}, err
			}
			res.Errors = append(res.Errors, BulkError{DeviceID: e.id(), ErrorCode: se.Code, ErrorStatus: se.Message})
		}
	}
	res.IsSuccessful = len(res.Errors) == 0
	return res, nil
}

func (h *Hub) bulkOne(ctx context.Context, e BulkEntry) error {
	id := e.id()
	if err := identity.ValidateDeviceID(id); err != nil {
		return err
	}
	mode := strings.ToLower(e.ImportMode)
	switch mode {
	case strings.ToLower(ImportCreate):
		if _, err := h.CreateOrUpdateDevice(ctx, e.device(), "", false); err != nil {
			return err
		}
		return h.bulkTwin(ctx, e)
	case strings.ToLower(ImportUpdate), strings.ToLower(ImportUpdateIfMatchETag):
		ifMatch := "*"
		if mode == strings.ToLower(ImportUpdateIfMatchETag) {
			ifMatch = e.etag()
			if ifMatch == "" {
				return status.BadRequest(status.CodeArgumentInvalid, "importMode %s needs an eTag", e.ImportMode)
			}
		}
		_, err := h.CreateOrUpdateDevice(ctx, e.device(), ifMatch, false)
		var ie *status.Error
		if errors.As(err, &ie) && ie.Code == status.CodeDeviceNotFound {
			// update modes register devices that do not exist yet.
			_, err = h.CreateOrUpdateDevice(ctx, e.device(), "", false)
		}
		if err != nil {
			return err
		}
		return h.bulkTwin(ctx, e)
	case strings.ToLower(ImportDelete):
		return h.DeleteDevice(ctx, id, "*")
	case strings.ToLower(ImportDeleteIfMatchETag):
		if e.etag() == "" {
			return status.BadRequest(status.CodeArgumentInvalid, "importMode %s needs an eTag", e.ImportMode)
		}
		return h.DeleteDevice(ctx, id, e.etag())
	}
	return status.BadRequest(status.CodeArgumentInvalid,
		"importMode %q is not one of create, update, updateIfMatchETag, delete, deleteIfMatchETag", e.ImportMode)
}

// bulkTwin applies an entry's tags and desired properties, if any.
func (h *Hub) bulkTwin(ctx context.Context, e BulkEntry) error {
	p := TwinPatch{Tags: e.Tags}
	if e.Properties != nil {
		p.Desired = e.Properties.Desired
	}
	if p.Tags == nil && p.Desired == nil {
		return nil
	}
	// Numbers must reach the twin as json.Number, as every other path
	// gives them, so the patch takes one more trip through the decoder.
	raw, err := json.Marshal(map[string]any{"tags": p.Tags, "properties": map[string]any{"desired": p.Desired}})
	if err != nil {
		return status.BadRequest(status.CodeArgumentInvalid, "bulk twin: %v", err)
	}
	if p, err = ParseTwinPatch(raw); err != nil {
		return err
	}
	_, err = h.PatchTwin(ctx, e.id(), "", p, "*")
	return err
}
