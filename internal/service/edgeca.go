package service

import (
	"context"
	"errors"
	"net/http"
)

// SignedEdgeCA is an edge CA certificate signed by the hub's root CA.
type SignedEdgeCA struct {
	// Certificate is the edge CA certificate, then any intermediates.
	Certificate string `json:"certificate"`
	// RootCA is the hub's root CA, which children trust.
	RootCA string `json:"rootCA"`
}

// SignEdgeCA asks the hub to sign an edge CA certificate request (PEM)
// for an IoT Edge device: the manual alternative to the edge fetching its
// CA over its upstream link at first sync. The CSR's common name must be
// the edge's device id. Served by internal/hub/dataplane at
// POST /outpost/edges/{id}/ca, an Outpost extension.
func (c *Client) SignEdgeCA(ctx context.Context, edgeID string, csrPEM []byte) (SignedEdgeCA, error) {
	var out SignedEdgeCA
	if edgeID == "" {
		return out, errors.New("sign edge CA: empty device id")
	}
	_, err := c.doJSON(ctx, http.MethodPost, Path("outpost", "edges", edgeID, "ca"), map[string]string{"csr": string(csrPEM)}, nil, &out)
	return out, err
}
