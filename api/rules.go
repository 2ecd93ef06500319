package api

import (
	"context"
	"net/http"
	"net/url"

	"github.com/keyroute/keyroute/rules"
)

// Rule paths. Rules are cluster-wide: any agent reads and writes them in
// etcd; stats are this host's.
const (
	PathRules     = "/v1/rules"      // GET: list; POST: add (?replace=1 overwrites)
	PathRule      = "/v1/rules/{id}" // GET: show; DELETE: delete
	PathRuleStats = "/v1/rule-stats" // GET: this host's counters per rule
)

// RuleStats are one rule's counters on this host: packets and bytes its
// flows matched (OpenFlow flow stats) and, for a rate limit, what its
// meter saw and dropped (meter stats).
type RuleStats struct {
	ID        string `json:"id"`
	Direction string `json:"direction"`
	Action    string `json:"action"`
	// Flows is how many flows enforce the rule here (0: it selects no
	// local container, or could not be installed; see Note).
	Flows   int    `json:"flows"`
	Packets uint64 `json:"packets"`
	Bytes   uint64 `json:"bytes"`
	// Meter fields are set for rate-limit rules.
	Meter          uint32 `json:"meter,omitempty"`
	MeterPackets   uint64 `json:"meter_packets,omitempty"`
	MeterBytes     uint64 `json:"meter_bytes,omitempty"`
	DroppedPackets uint64 `json:"dropped_packets,omitempty"`
	DroppedBytes   uint64 `json:"dropped_bytes,omitempty"`
	Note           string `json:"note,omitempty"`
}

// Rules lists the cluster's rules.
func (c *Client) Rules(ctx context.Context) ([]rules.Rule, error) {
	var rs []rules.Rule
	return rs, c.do(ctx, http.MethodGet, PathRules, nil, nil, &rs)
}

// Rule returns one rule.
func (c *Client) Rule(ctx context.Context, id string) (rules.Rule, error) {
	var r rules.Rule
	return r, c.do(ctx, http.MethodGet, PathRules+"/"+url.PathEscape(id), nil, nil, &r)
}

// AddRule stores a rule (validated by the agent); replace overwrites an
// existing rule with the same id instead of failing.
func (c *Client) AddRule(ctx context.Context, r rules.Rule, replace bool) (rules.Rule, error) {
	q := url.Values{}
	if replace {
		q.Set("replace", "1")
	}
	var out rules.Rule
	return out, c.do(ctx, http.MethodPost, PathRules, q, r, &out)
}

// DeleteRule deletes a rule.
func (c *Client) DeleteRule(ctx context.Context, id string) error {
	return c.do(ctx, http.MethodDelete, PathRules+"/"+url.PathEscape(id), nil, nil, nil)
}

// RuleStats returns this host's counters per rule.
func (c *Client) RuleStats(ctx context.Context) ([]RuleStats, error) {
	var s []RuleStats
	return s, c.do(ctx, http.MethodGet, PathRuleStats, nil, nil, &s)
}
