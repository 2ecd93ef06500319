package registry

import (
	"errors"
	"fmt"
	"hash/maphash"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"unicode"
	"unicode/utf8"

	"go.etcd.io/etcd/api/v3/mvccpb"
)

// Record kinds, one per etcd key layout keyroute reads. They label
// keyroute_etcd_bad_records_total, so they are part of what users see.
const (
	KindHost     = "host"     // hosts/<name>
	KindAlive    = "alive"    // alive/<name>
	KindSubnet   = "subnet"   // subnets/<cidr>
	KindEndpoint = "endpoint" // endpoints/<ip>
	KindRoaming  = "roaming"  // roaming/<ip>
	KindKey      = "key"      // keys/<src>/<dst>/<src-addr>/<dst-addr>/<dscp> (keyalloc)
	KindPair     = "pair"     // pairs/<dst>/<src>/<ips> (keyalloc)
	KindRule     = "rule"     // rules/<id> (rules/store)
	KindNode     = "node"     // nodes/<name>
	KindSettings = "settings" // cluster/settings
)

// RecordKinds lists every kind, e.g. to export a zero count for each.
var RecordKinds = []string{KindHost, KindAlive, KindSubnet, KindEndpoint, KindRoaming, KindKey, KindPair, KindRule, KindNode, KindSettings}

// MaxRecordSize bounds a record's value. keyroute's own records are well
// under 1 KiB; a larger value is rejected before it is decoded, so one huge
// write cannot make every agent spend memory and CPU on every read of it.
const MaxRecordSize = 64 << 10

// RecordError is a record read from etcd that failed validation. It wraps
// ErrBadRecord and the reason, which names the bad field.
type RecordError struct {
	Kind     string // one of RecordKinds
	Key      string
	Revision int64 // the record's mod revision
	Err      error
}

func (e *RecordError) Error() string {
	return fmt.Sprintf("bad %s record %s: %v", e.Kind, shortKey(e.Key), e.Err)
}

// Unwrap makes errors.Is(err, ErrBadRecord) and the reason's own sentinels
// work.
func (e *RecordError) Unwrap() []error { return []error{ErrBadRecord, e.Err} }

// NewRecordError returns err as the RecordError of kv, a record of kind.
func NewRecordError(kind string, kv *mvccpb.KeyValue, err error) error {
	return &RecordError{Kind: kind, Key: string(kv.Key), Revision: kv.ModRevision, Err: err}
}

// RecordKind returns the kind of a bad-record error, or "" if err is none.
func RecordKind(err error) string {
	var re *RecordError
	if errors.As(err, &re) {
		return re.Kind
	}
	return ""
}

// CheckSize rejects a value larger than MaxRecordSize; decoders call it
// before anything else.
func CheckSize(kv *mvccpb.KeyValue) error {
	if len(kv.Value) > MaxRecordSize {
		return fmt.Errorf("value of %d bytes exceeds the %d-byte limit", len(kv.Value), MaxRecordSize)
	}
	return nil
}

// shortKey keeps log lines and errors readable whatever was written as a
// key (etcd accepts keys of up to its request size).
func shortKey(k string) string {
	const max = 200
	if len(k) <= max {
		return k
	}
	return fmt.Sprintf("%s... (%d bytes)", k[:max], len(k))
}

// ValidateAddr checks that a is a unicast IPv4 address a container or host
// can have: the datapath is IPv4 only (flows match 4-byte addresses), and
// unspecified, loopback, multicast and broadcast addresses would send
// traffic nowhere or everywhere.
func ValidateAddr(a netip.Addr) error {
	switch {
	case !a.IsValid():
		return errors.New("missing")
	case !a.Is4():
		return fmt.Errorf("%s is not IPv4", a)
	case a.IsUnspecified(), a.IsLoopback(), a.IsMulticast(), a == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return fmt.Errorf("%s is not a unicast address", a)
	}
	return nil
}

// validateSubnet checks that p is an IPv4 network address with room for a
// network address, a gateway, a broadcast address and an endpoint.
func validateSubnet(p netip.Prefix) error {
	switch {
	case !p.IsValid():
		return errors.New("missing")
	case !p.Addr().Is4():
		return fmt.Errorf("%s is not IPv4", p)
	case p != p.Masked():
		return fmt.Errorf("%s is not a network address (%s)", p, p.Masked())
	case p.Bits() < 1 || p.Bits() > 30:
		return fmt.Errorf("%s: size /%d is not within /1../30", p, p.Bits())
	}
	return nil
}

// validateMAC checks for a 6-byte unicast Ethernet address: a multicast or
// zero MAC in a flow or a neighbour entry would misdirect every frame.
func validateMAC(m net.HardwareAddr) error {
	switch {
	case len(m) != 6:
		return fmt.Errorf("%q is not a 6-byte Ethernet address", m)
	case m[0]&1 != 0:
		return fmt.Errorf("%s is a multicast address", m)
	case m[0]|m[1]|m[2]|m[3]|m[4]|m[5] == 0:
		return fmt.Errorf("%s is the zero address", m)
	}
	return nil
}

// validateText checks a free-form string field: at most max bytes of
// printable UTF-8, so it can be shown and logged as it is.
func validateText(s string, max int) error {
	if len(s) > max {
		return fmt.Errorf("%.20q... longer than %d bytes", s, max)
	}
	if !utf8.ValidString(s) {
		return fmt.Errorf("%q is not UTF-8", s)
	}
	for _, r := range s {
		if !unicode.IsPrint(r) {
			return fmt.Errorf("%q contains %q", s, r)
		}
	}
	return nil
}

// Cluster is what a Client knows of the cluster's addressing (WithCluster),
// for the checks a record cannot make on its own.
type Cluster struct {
	PodCIDR    netip.Prefix
	SubnetBits int
}

func (cl Cluster) known() bool { return cl.PodCIDR.IsValid() }

// validate checks cl itself, like the agent's config does.
func (cl Cluster) validate() error {
	p := cl.PodCIDR
	if !p.IsValid() || !p.Addr().Is4() || p != p.Masked() {
		return fmt.Errorf("pod CIDR %q is not an IPv4 network address", p)
	}
	if cl.SubnetBits <= p.Bits() || cl.SubnetBits > 30 {
		return fmt.Errorf("subnet size /%d must be longer than the pod CIDR's /%d and at most /30", cl.SubnetBits, p.Bits())
	}
	return nil
}

// checkSubnet checks that p is one of the cluster's pod subnets.
func (cl Cluster) checkSubnet(p netip.Prefix) error {
	if !cl.known() {
		return nil
	}
	if p.Bits() != cl.SubnetBits || !cl.PodCIDR.Contains(p.Addr()) {
		return fmt.Errorf("%s is not a /%d subnet of the cluster's %s", p, cl.SubnetBits, cl.PodCIDR)
	}
	return nil
}

// checkAddr checks that a is in the cluster's pod CIDR.
func (cl Cluster) checkAddr(a netip.Addr) error {
	if cl.known() && !cl.PodCIDR.Contains(a) {
		return fmt.Errorf("%s is outside the cluster's %s", a, cl.PodCIDR)
	}
	return nil
}

// BadRecordLog logs bad records, each once per (key, mod revision): lists,
// re-lists and single reads meet the same bad record again and again, and
// one line per write of it says all there is to say. It remembers the last
// badLogSize records by hash, so its memory is bounded whatever is written
// to etcd. Safe for concurrent use.
type BadRecordLog struct {
	log  *slog.Logger
	seed maphash.Seed

	mu   sync.Mutex
	seen map[badLogEntry]struct{}
	ring []badLogEntry // insertion order, for eviction
	next int
}

type badLogEntry struct {
	key uint64 // hash of the etcd key
	rev int64
}

const badLogSize = 4096

// NewBadRecordLog returns a log writing to log (slog.Default() if nil).
func NewBadRecordLog(log *slog.Logger) *BadRecordLog {
	if log == nil {
		log = slog.Default()
	}
	return &BadRecordLog{log: log, seed: maphash.MakeSeed(), seen: map[badLogEntry]struct{}{}}
}

// Log logs err (a RecordError, else it is logged every time) unless this
// version of the record was logged already; it reports whether it logged.
func (l *BadRecordLog) Log(err error) bool {
	var re *RecordError
	if !errors.As(err, &re) {
		l.log.Warn("skipping bad record in etcd", "err", err)
		return true
	}
	e := badLogEntry{maphash.String(l.seed, re.Key), re.Revision}
	l.mu.Lock()
	if _, ok := l.seen[e]; ok {
		l.mu.Unlock()
		return false
	}
	if len(l.ring) < badLogSize {
		l.ring = append(l.ring, e)
	} else {
		delete(l.seen, l.ring[l.next])
		l.ring[l.next] = e
		l.next = (l.next + 1) % badLogSize
	}
	l.seen[e] = struct{}{}
	l.mu.Unlock()
	l.log.Warn("skipping bad record in etcd; logged once per version of the record", "kind", re.Kind,
		"key", shortKey(re.Key), "revision", re.Revision, "err", re.Err)
	return true
}
