package api

import (
	"context"
	"net/http"
)

// Paths of the CNI plugin's calls (cmd/keyroute-cni). Attachments made
// through them are named by the runtime's container ID and interface name.
const (
	PathCNIAdd    = "/v1/cni/add"
	PathCNIDel    = "/v1/cni/del"
	PathCNICheck  = "/v1/cni/check"
	PathCNIGC     = "/v1/cni/gc"
	PathCNIStatus = "/v1/cni/status"
)

// CNIAttachment names one CNI attachment.
type CNIAttachment struct {
	ContainerID string `json:"container_id"`
	IfName      string `json:"ifname"`
}

// CNIAddRequest asks the agent to attach a runtime's network namespace.
// ADD of an attachment that exists with the same namespace returns it.
type CNIAddRequest struct {
	CNIAttachment
	// NetNS is the namespace's path, as the runtime gave it.
	NetNS string `json:"netns"`
	// IP is a requested address (the ips capability); empty lets the
	// agent choose from this host's pod subnet.
	IP string `json:"ip,omitempty"`
}

// CNIAddResult is what the plugin turns into its CNI result.
type CNIAddResult struct {
	Endpoint Endpoint `json:"endpoint"`
	// Gateway is the container's default route's next hop (on link).
	Gateway string `json:"gateway"`
	// MTU is the container interface's MTU.
	MTU int `json:"mtu"`
	// PodSubnet is this host's pod subnet; ClusterCIDR all hosts' pods.
	PodSubnet   string `json:"pod_subnet"`
	ClusterCIDR string `json:"cluster_cidr"`
}

// CNICheckRequest asks whether an attachment is still as ADD made it.
type CNICheckRequest struct {
	CNIAttachment
	NetNS string `json:"netns"`
}

// CNIGCRequest lists the attachments the runtime still uses; the agent
// removes its other CNI attachments (keyroutectl's are left alone).
type CNIGCRequest struct {
	Valid []CNIAttachment `json:"valid"`
}

// CNIGCResult names the attachments GC removed.
type CNIGCResult struct {
	Removed []CNIAttachment `json:"removed"`
}

// CNIStatus says whether the agent can serve ADD now.
type CNIStatus struct {
	Ready bool `json:"ready"`
	// Reason says what is missing when not ready.
	Reason string `json:"reason,omitempty"`
}

// CNIAdd attaches a runtime's namespace.
func (c *Client) CNIAdd(ctx context.Context, r CNIAddRequest) (CNIAddResult, error) {
	var out CNIAddResult
	return out, c.do(ctx, http.MethodPost, PathCNIAdd, nil, r, &out)
}

// CNIDel removes an attachment; an unknown one is no error.
func (c *Client) CNIDel(ctx context.Context, r CNIAttachment) error {
	return c.do(ctx, http.MethodPost, PathCNIDel, nil, r, nil)
}

// CNICheck returns the attachment's endpoint, or an error saying what
// differs from what ADD made.
func (c *Client) CNICheck(ctx context.Context, r CNICheckRequest) (Endpoint, error) {
	var out Endpoint
	return out, c.do(ctx, http.MethodPost, PathCNICheck, nil, r, &out)
}

// CNIGC removes the CNI attachments not in r.Valid.
func (c *Client) CNIGC(ctx context.Context, r CNIGCRequest) (CNIGCResult, error) {
	var out CNIGCResult
	return out, c.do(ctx, http.MethodPost, PathCNIGC, nil, r, &out)
}

// CNIStatus reports whether the agent is ready for ADD.
func (c *Client) CNIStatus(ctx context.Context) (CNIStatus, error) {
	var out CNIStatus
	return out, c.do(ctx, http.MethodGet, PathCNIStatus, nil, nil, &out)
}
