package registry

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"
	"unicode"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// ErrNodeClaimed is wrapped by the *NodeClaimedError ClaimNode returns when
// another machine holds the node name.
var ErrNodeClaimed = errors.New("node name held by another machine")

// NodeIDLen is the length of a node ID: 128 random bits in lowercase hex.
const NodeIDLen = 32

// NewNodeID returns a random node ID (128 bits, lowercase hex).
func NewNodeID() (string, error) {
	var b [NodeIDLen / 2]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("new node ID: %w", err)
	}
	return hex.EncodeToString(b[:]), nil
}

// ValidateNodeID checks that id looks like NewNodeID's output.
func ValidateNodeID(id string) error {
	if len(id) != NodeIDLen {
		return fmt.Errorf("node ID %.40q is not %d hex digits", id, NodeIDLen)
	}
	for _, r := range id {
		if !('0' <= r && r <= '9' || 'a' <= r && r <= 'f') {
			return fmt.Errorf("node ID %q is not %d lowercase hex digits", id, NodeIDLen)
		}
	}
	return nil
}

// NodeClaim is nodes/<name>: the machine that holds a node name. It is
// created once, by the first agent that starts with the name, and goes only
// with RemoveHost; an agent with another ID is refused the name.
type NodeClaim struct {
	Name string `json:"name"`
	// ID is the machine's node ID, kept in the agent's state_dir.
	ID string `json:"id"`
	// HostIP and Hostname say which machine it was when it claimed.
	HostIP   netip.Addr `json:"hostIP"`
	Hostname string     `json:"hostname"`
	// Since is the time of the first claim.
	Since time.Time `json:"since"`
}

// Validate checks that n is complete and well-formed.
func (n NodeClaim) Validate() error {
	if err := ValidateName(n.Name); err != nil {
		return fmt.Errorf("node name: %w", err)
	}
	if err := ValidateNodeID(n.ID); err != nil {
		return fmt.Errorf("node %s: %w", n.Name, err)
	}
	if !n.HostIP.Is4() {
		return fmt.Errorf("node %s: host IP %q is not an IPv4 address", n.Name, n.HostIP)
	}
	if len(n.Hostname) > 253 {
		return fmt.Errorf("node %s: hostname longer than 253 bytes", n.Name)
	}
	for _, r := range n.Hostname {
		if unicode.IsSpace(r) || !unicode.IsPrint(r) {
			return fmt.Errorf("node %s: hostname %q contains %q", n.Name, n.Hostname, r)
		}
	}
	if n.Since.IsZero() {
		return fmt.Errorf("node %s: no claim time", n.Name)
	}
	return nil
}

// machine describes the machine of a claim for error messages.
func (n NodeClaim) machine() string {
	return fmt.Sprintf("node ID %s on host IP %s (hostname %q)", n.ID, n.HostIP, n.Hostname)
}

// String describes the claim for error messages.
func (n NodeClaim) String() string {
	return n.machine() + ", claimed " + n.Since.UTC().Format(time.RFC3339)
}

// NodeClaimedError says that another machine holds the node name.
type NodeClaimedError struct {
	Holder, Ours NodeClaim
}

func (e *NodeClaimedError) Error() string {
	return fmt.Sprintf("node name %q is held by another machine: %s; this machine is %s "+
		"(node ID from its state_dir). Give this machine another node name, or, if the old machine is gone for good, "+
		"release the name with: keyroutectl hosts remove %s",
		e.Holder.Name, e.Holder, e.Ours.machine(), e.Holder.Name)
}

func (e *NodeClaimedError) Unwrap() error { return ErrNodeClaimed }

// ClaimNode claims nodes/<n.Name> for n.ID if nobody holds it (n.Since is
// then the claim time), and returns the stored claim: n after a new claim,
// the first claim when n.ID already holds it. Another ID holding the name is
// a *NodeClaimedError (wrapping ErrNodeClaimed) naming both; a stored record
// that does not validate is counted and returned as an error wrapping
// ErrBadRecord. Cost: 1 transaction.
func (c *Client) ClaimNode(ctx context.Context, n NodeClaim) (NodeClaim, error) {
	if err := n.Validate(); err != nil {
		return NodeClaim{}, fmt.Errorf("claim node: %w", err)
	}
	val, err := json.Marshal(n)
	if err != nil {
		return NodeClaim{}, fmt.Errorf("claim node %s: %w", n.Name, err)
	}
	key := c.nodeKey(n.Name)
	resp, err := c.cli.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(clientv3.OpPut(key, string(val))).Else(clientv3.OpGet(key)).Commit()
	if err != nil {
		return NodeClaim{}, fmt.Errorf("claim node %s: %w", n.Name, err)
	}
	if resp.Succeeded {
		return n, nil
	}
	kvs := resp.Responses[0].GetResponseRange().Kvs
	if len(kvs) == 0 { // cannot happen: the Get runs in the failed transaction
		return NodeClaim{}, fmt.Errorf("claim node %s: claim vanished", n.Name)
	}
	held, err := c.decodeNode(kvs[0])
	if err != nil {
		c.badRecord(string(kvs[0].Key), err)
		return NodeClaim{}, fmt.Errorf("claim node %s: %w; if no other machine uses this node name, release it with: keyroutectl hosts remove %s", n.Name, err, n.Name)
	}
	if held.ID != n.ID {
		return NodeClaim{}, &NodeClaimedError{Holder: held, Ours: n}
	}
	return held, nil
}

// GetNode returns the claim of a node name; ErrNotFound if nobody holds it.
func (c *Client) GetNode(ctx context.Context, name string) (NodeClaim, error) {
	if err := ValidateName(name); err != nil {
		return NodeClaim{}, fmt.Errorf("get node: %w", err)
	}
	resp, err := c.cli.Get(ctx, c.nodeKey(name))
	if err != nil {
		return NodeClaim{}, fmt.Errorf("get node %s: %w", name, err)
	}
	if len(resp.Kvs) == 0 {
		return NodeClaim{}, fmt.Errorf("get node %s: %w", name, ErrNotFound)
	}
	return c.decodeNode(resp.Kvs[0])
}

func (c *Client) nodeKey(name string) string { return c.prefix + "nodes/" + name }

func (c *Client) decodeNode(kv *mvccpb.KeyValue) (NodeClaim, error) {
	key := string(kv.Key)
	if len(kv.Value) > MaxRecordSize {
		return NodeClaim{}, NewRecordError(KindNode, kv, fmt.Errorf("value is %d bytes, more than %d", len(kv.Value), MaxRecordSize))
	}
	var n NodeClaim
	if err := json.Unmarshal(kv.Value, &n); err != nil {
		return NodeClaim{}, NewRecordError(KindNode, kv, err)
	}
	if err := n.Validate(); err != nil {
		return NodeClaim{}, NewRecordError(KindNode, kv, err)
	}
	if want := strings.TrimPrefix(key, c.prefix+"nodes/"); n.Name != want {
		return NodeClaim{}, NewRecordError(KindNode, kv, fmt.Errorf("record names node %q", n.Name))
	}
	return n, nil
}
