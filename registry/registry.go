// Package registry owns keyroute's cluster state in etcd: hosts, pod
// subnets, endpoints (which double as IPAM), and the embedded etcd server
// (single-node, or one member of a cluster).
//
// Layout under the root prefix (default /keyroute/):
//
//	hosts/<name>      JSON Host: the host is a cluster member; no lease, it
//	                  outlives agent outages and goes only by RemoveHost
//	alive/<name>      JSON Alive: the host's agent runs; under the agent's lease
//	subnets/<cidr>    the name of the host holding the pod subnet
//	endpoints/<ip>    JSON Endpoint; the key's existence is the IP allocation
//	nodes/<name>      JSON NodeClaim: the machine (node ID) holding the node
//	                  name; created once, goes only by RemoveHost
//	cluster/settings  JSON ClusterSettings: the settings every agent must
//	                  agree on, written once by the first agent
//
// Every record read from etcd is validated in its kind's decoder, the one
// place all reads of that kind go through: a bad one is returned as a
// RecordError (wrapping ErrBadRecord) by single-key reads, and skipped,
// counted (Client.BadRecords, WithBadRecordHandler) and logged once by lists
// and watches, so no record anyone can write stops an agent. The datapath
// is IPv4 only, so every address in a record must be IPv4.
package registry

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"sync/atomic"
	"time"
	"unicode"
	"unicode/utf8"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/keyroute/keyroute/registry/kvwatch"
)

// DefaultPrefix is the root of keyroute's keys in etcd.
const DefaultPrefix = "/keyroute/"

// Errors returned wrapped, with context, by Client methods.
var (
	ErrNotFound         = errors.New("not found")
	ErrIPInUse          = errors.New("IP address in use")             // the error names the holder
	ErrNotOwner         = errors.New("held by another host")          // the error names the holder
	ErrSubnetsExhausted = errors.New("no free pod subnet")            // ClaimSubnet
	ErrAddrsExhausted   = errors.New("no free address in pod subnet") // AllocateEndpoint
	ErrBadRecord        = errors.New("bad record in etcd")            // invalid JSON or field
	ErrHostAlive        = errors.New("host's agent is running")       // RemoveHost without force
)

// EventType and its values classify watch events; see kvwatch.
type EventType = kvwatch.EventType

const (
	EventPut    = kvwatch.Put
	EventDelete = kvwatch.Delete
	EventSynced = kvwatch.Synced
)

// Client reads and writes keyroute's cluster state. It is safe for
// concurrent use.
type Client struct {
	cli     *clientv3.Client
	prefix  string
	log     *slog.Logger
	cluster Cluster
	onBad   func(key string, err error)
	bad     atomic.Uint64
	badLog  *BadRecordLog
}

type options struct {
	prefix      string
	log         *slog.Logger
	dialTimeout time.Duration
	cluster     Cluster
	onBad       func(key string, err error)
	tls         *TLSFiles
	autoSync    time.Duration
}

// Option configures New.
type Option func(*options)

// WithPrefix sets the root prefix (default DefaultPrefix); a missing
// trailing slash is added. Tests use it to isolate from each other.
func WithPrefix(p string) Option { return func(o *options) { o.prefix = p } }

// WithLogger sets the logger for the client and etcd's client library
// (warnings and errors only). Default slog.Default().
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.log = l } }

// WithDialTimeout bounds connection set-up (default 5s).
func WithDialTimeout(d time.Duration) Option { return func(o *options) { o.dialTimeout = d } }

// WithTLS connects over TLS: the server must chain to f.CA, and the client
// presents f.Cert (etcd's --cacert, --cert and --key). The endpoints must
// be https URLs.
func WithTLS(f *TLSFiles) Option { return func(o *options) { o.tls = f } }

// WithAutoSync makes the client learn the cluster's members' client URLs
// from etcd's membership every d (and once at New, best effort), so it
// fails over to any member, not only the endpoints it was given.
func WithAutoSync(d time.Duration) Option { return func(o *options) { o.autoSync = d } }

// WithBadRecordHandler is called for every record skipped because it failed
// validation, in addition to counting and logging it. err is a
// *RecordError; RecordKind(err) says which kind of record it was.
func WithBadRecordHandler(f func(key string, err error)) Option {
	return func(o *options) { o.onBad = f }
}

// WithCluster makes every read also check records against the cluster's
// addressing: a host's pod subnet must be a /subnetBits subnet of podCIDR,
// endpoint and roaming addresses must be in podCIDR. Without it a record is
// checked only on its own.
func WithCluster(podCIDR netip.Prefix, subnetBits int) Option {
	return func(o *options) { o.cluster = Cluster{PodCIDR: podCIDR, SubnetBits: subnetBits} }
}

// New connects to etcd at endpoints. It does not wait for a connection;
// the first request does.
func New(endpoints []string, opts ...Option) (*Client, error) {
	o := options{prefix: DefaultPrefix, log: slog.Default(), dialTimeout: 5 * time.Second}
	for _, f := range opts {
		f(&o)
	}
	if len(endpoints) == 0 {
		return nil, errors.New("connect to etcd: no endpoints")
	}
	if o.prefix == "" || o.prefix[0] != '/' {
		return nil, fmt.Errorf("connect to etcd: prefix %q must start with /", o.prefix)
	}
	if !strings.HasSuffix(o.prefix, "/") {
		o.prefix += "/"
	}
	if o.cluster != (Cluster{}) {
		if err := o.cluster.validate(); err != nil {
			return nil, fmt.Errorf("connect to etcd: cluster: %w", err)
		}
	}
	cc := clientv3.Config{
		Endpoints:        endpoints,
		DialTimeout:      o.dialTimeout,
		Logger:           zapLogger(o.log).Named("etcd-client"),
		AutoSyncInterval: o.autoSync,
	}
	if o.tls != nil {
		// The client takes its transport security from the first
		// endpoint's scheme: an http one would silently drop TLS.
		for _, ep := range endpoints {
			if !strings.HasPrefix(ep, "https://") {
				return nil, fmt.Errorf("connect to etcd: endpoint %q is not https, but TLS is configured", ep)
			}
		}
		var err error
		if cc.TLS, err = o.tls.ClientConfig(); err != nil {
			return nil, fmt.Errorf("connect to etcd %v: %w", endpoints, err)
		}
	}
	cli, err := clientv3.New(cc)
	if err != nil {
		return nil, fmt.Errorf("connect to etcd %v: %w", endpoints, err)
	}
	if o.autoSync > 0 {
		// Best effort: without it the client learns the members at the
		// first AutoSyncInterval.
		sctx, cancel := context.WithTimeout(context.Background(), o.dialTimeout)
		if err := cli.Sync(sctx); err != nil {
			o.log.Warn("etcd: could not learn the cluster's members yet; using the given endpoints", "endpoints", endpoints, "err", err)
		}
		cancel()
	}
	return &Client{cli: cli, prefix: o.prefix, log: o.log, cluster: o.cluster, onBad: o.onBad,
		badLog: NewBadRecordLog(o.log)}, nil
}

// Close closes the connection; watches end and leases stop being renewed.
func (c *Client) Close() error { return c.cli.Close() }

// Raw returns the underlying etcd client, e.g. for keyalloc.New.
func (c *Client) Raw() *clientv3.Client { return c.cli }

// Prefix returns the root prefix, ending in "/".
func (c *Client) Prefix() string { return c.prefix }

// BadRecords counts records skipped by lists and watches because they
// failed validation, since New: every skip, so a bad record read again is
// counted again (it is logged only once).
func (c *Client) BadRecords() uint64 { return c.bad.Load() }

func (c *Client) badRecord(key string, err error) {
	c.bad.Add(1)
	c.badLog.Log(err)
	if c.onBad != nil {
		c.onBad(key, err)
	}
}

// ValidateName checks that s can be used as one segment of an etcd key
// (host names): non-empty, at most 253 bytes of UTF-8, no '/', spaces or
// control characters.
func ValidateName(s string) error {
	if s == "" {
		return errors.New("empty name")
	}
	if len(s) > 253 {
		return fmt.Errorf("name %.20q... longer than 253 bytes", s)
	}
	if !utf8.ValidString(s) {
		return fmt.Errorf("name %q is not UTF-8", s)
	}
	for _, r := range s {
		if r == '/' || unicode.IsSpace(r) || !unicode.IsPrint(r) {
			return fmt.Errorf("name %q contains %q", s, r)
		}
	}
	return nil
}
