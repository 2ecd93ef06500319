// Package rules owns keyroute's network rules: wildcard ACLs and rate
// limits that apply cluster-wide. It defines the rule model, its JSON form
// (stored in etcd under <prefix>rules/<id>) and its validation; it has no
// dependencies beyond the standard library, so keyroutectl can validate
// before it sends. The etcd store lives in rules/store.
package rules

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"path"
	"regexp"
	"strconv"
	"strings"
)

// Direction says which traffic of the selected (local) containers a rule
// applies to.
type Direction string

// Directions.
const (
	Egress  Direction = "egress"  // sent by the local containers
	Ingress Direction = "ingress" // addressed to the local containers
)

// Protocol is the IP protocol a rule matches.
type Protocol string

// Protocols.
const (
	ProtoAny  Protocol = "any"
	ProtoTCP  Protocol = "tcp"
	ProtoUDP  Protocol = "udp"
	ProtoICMP Protocol = "icmp"
)

// Action is what a rule does with the packets it matches.
type Action string

// Actions. Traffic no rule matches is allowed.
const (
	Allow     Action = "allow"
	Deny      Action = "deny"
	RateLimit Action = "rate-limit"
)

// Priority bounds: a higher priority wins; at equal priority deny beats
// rate-limit beats allow.
const (
	MinPriority     = 1
	MaxPriority     = 20000
	DefaultPriority = 100
)

// Selector picks addresses: containers whose name matches a glob
// (path.Match syntax: *, ?, [a-z]), an IPv4 CIDR, or, when both are
// empty, anything.
type Selector struct {
	Name string `json:"name,omitempty"`
	CIDR string `json:"cidr,omitempty"`
}

// Any reports whether s selects every address.
func (s Selector) Any() bool { return s.Name == "" && s.CIDR == "" }

// Prefix returns the parsed CIDR (a bare address is a /32).
func (s Selector) Prefix() (netip.Prefix, error) { return parseCIDR(s.CIDR) }

// Matches reports whether a container name matches the selector's glob.
func (s Selector) Matches(name string) bool {
	ok, err := path.Match(s.Name, name)
	return err == nil && ok
}

func (s Selector) String() string {
	switch {
	case s.Name != "":
		return "name:" + s.Name
	case s.CIDR != "":
		return s.CIDR
	}
	return "any"
}

// ParseSelector reads the command-line form: "any" (or empty), "name:GLOB",
// "cidr:CIDR", or a bare CIDR/address (anything made of digits, dots and a
// slash); any other word is a name glob.
func ParseSelector(s string) (Selector, error) {
	var sel Selector
	switch {
	case s == "" || s == "any":
		return sel, nil
	case strings.HasPrefix(s, "name:"):
		sel.Name = strings.TrimPrefix(s, "name:")
	case strings.HasPrefix(s, "cidr:"):
		sel.CIDR = strings.TrimPrefix(s, "cidr:")
	case strings.Trim(s, "0123456789./") == "":
		sel.CIDR = s
	default:
		sel.Name = s
	}
	return sel, sel.validate()
}

func (s Selector) validate() error {
	if s.Name != "" && s.CIDR != "" {
		return errors.New("give a name glob or a CIDR, not both")
	}
	if s.Name != "" {
		// Container names are at most 253 bytes; a longer glob is junk.
		if len(s.Name) > 253 {
			return fmt.Errorf("name glob %.20q... longer than 253 bytes", s.Name)
		}
		if _, err := path.Match(s.Name, ""); err != nil {
			return fmt.Errorf("name glob %q: %w", s.Name, err)
		}
		if strings.ContainsAny(s.Name, "/ \t\n") {
			return fmt.Errorf("name glob %q: container names contain no '/' or spaces", s.Name)
		}
	}
	if s.CIDR != "" {
		if _, err := parseCIDR(s.CIDR); err != nil {
			return err
		}
	}
	return nil
}

func parseCIDR(s string) (netip.Prefix, error) {
	if !strings.Contains(s, "/") {
		a, err := netip.ParseAddr(s)
		if err != nil || !a.Is4() {
			return netip.Prefix{}, fmt.Errorf("invalid CIDR %q: not an IPv4 address or prefix", s)
		}
		return netip.PrefixFrom(a, 32), nil
	}
	p, err := netip.ParsePrefix(s)
	if err != nil || !p.Addr().Is4() {
		return netip.Prefix{}, fmt.Errorf("invalid CIDR %q: want an IPv4 prefix such as 198.19.0.0/16", s)
	}
	if p.Masked() != p {
		return netip.Prefix{}, fmt.Errorf("invalid CIDR %q: host bits set (did you mean %s?)", s, p.Masked())
	}
	return p, nil
}

// Rate is a rate limit: packets per second or kilobits per second, with a
// burst in the same unit (packets or kilobits); Burst 0 means half a
// second's worth, which lets TCP reach the rate (with a tenth of a second
// it gets about half of it).
type Rate struct {
	PPS   uint32 `json:"pps,omitempty"`
	Kbps  uint32 `json:"kbps,omitempty"`
	Burst uint32 `json:"burst,omitempty"`
}

// EffectiveBurst is the burst a meter gets.
func (r Rate) EffectiveBurst() uint32 {
	if r.Burst != 0 {
		return r.Burst
	}
	return max((r.PPS+r.Kbps)/2, 1)
}

func (r Rate) String() string {
	if r.PPS != 0 {
		return fmt.Sprintf("%d pkt/s burst %d", r.PPS, r.EffectiveBurst())
	}
	return fmt.Sprintf("%d kbit/s burst %d kbit", r.Kbps, r.EffectiveBurst())
}

// Rule is one network rule. Local selects the containers on each host the
// rule applies to, Remote the other end; Ports is the destination port or
// range ("80", "8000-8100") for tcp and udp; ICMPType narrows icmp.
type Rule struct {
	ID        string    `json:"id"`
	Priority  int       `json:"priority"`
	Direction Direction `json:"direction"`
	Local     Selector  `json:"local"`
	Remote    Selector  `json:"remote"`
	Protocol  Protocol  `json:"protocol"`
	Ports     string    `json:"ports,omitempty"`
	ICMPType  *uint8    `json:"icmp_type,omitempty"`
	Action    Action    `json:"action"`
	Rate      *Rate     `json:"rate,omitempty"`
}

var idRE = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9._-]{0,62}$`)

// ValidateID checks a rule id: 1-63 of letters, digits, '.', '_' and '-',
// starting with a letter or digit (it is one etcd key segment).
func ValidateID(id string) error {
	if !idRE.MatchString(id) {
		return fmt.Errorf("rule id %q: use 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit", id)
	}
	return nil
}

// Normalize fills defaults: priority DefaultPriority, protocol any.
func (r *Rule) Normalize() {
	if r.Priority == 0 {
		r.Priority = DefaultPriority
	}
	if r.Protocol == "" {
		r.Protocol = ProtoAny
	}
}

// Validate checks every field and says what is wrong with the first bad one.
func (r Rule) Validate() error {
	if err := ValidateID(r.ID); err != nil {
		return err
	}
	if err := r.validate(); err != nil {
		return fmt.Errorf("rule %s: %w", r.ID, err)
	}
	return nil
}

func (r Rule) validate() error {
	if r.Priority < MinPriority || r.Priority > MaxPriority {
		return fmt.Errorf("priority %d: want %d..%d", r.Priority, MinPriority, MaxPriority)
	}
	if r.Direction != Egress && r.Direction != Ingress {
		return fmt.Errorf("direction %q: want egress or ingress", r.Direction)
	}
	if err := r.Local.validate(); err != nil {
		return fmt.Errorf("local: %w", err)
	}
	if err := r.Remote.validate(); err != nil {
		return fmt.Errorf("remote: %w", err)
	}
	switch r.Protocol {
	case ProtoAny, ProtoTCP, ProtoUDP, ProtoICMP:
	default:
		return fmt.Errorf("protocol %q: want tcp, udp, icmp or any", r.Protocol)
	}
	if r.Ports != "" {
		if r.Protocol != ProtoTCP && r.Protocol != ProtoUDP {
			return fmt.Errorf("ports %q need protocol tcp or udp (protocol is %s)", r.Ports, r.Protocol)
		}
		if _, _, err := ParsePorts(r.Ports); err != nil {
			return err
		}
	}
	if r.ICMPType != nil && r.Protocol != ProtoICMP {
		return fmt.Errorf("icmp_type needs protocol icmp (protocol is %s)", r.Protocol)
	}
	switch r.Action {
	case Allow, Deny:
		if r.Rate != nil {
			return fmt.Errorf("rate is only for action rate-limit (action is %s)", r.Action)
		}
	case RateLimit:
		if r.Rate == nil || (r.Rate.PPS == 0) == (r.Rate.Kbps == 0) {
			return errors.New("action rate-limit needs a rate: exactly one of pps or kbps, > 0")
		}
	default:
		return fmt.Errorf("action %q: want allow, deny or rate-limit", r.Action)
	}
	return nil
}

// ParsePorts reads "N" or "LO-HI" (1..65535, LO <= HI).
func ParsePorts(s string) (lo, hi uint16, err error) {
	a, b, isRange := strings.Cut(s, "-")
	if !isRange {
		b = a
	}
	l, err1 := strconv.ParseUint(strings.TrimSpace(a), 10, 16)
	h, err2 := strconv.ParseUint(strings.TrimSpace(b), 10, 16)
	if err1 != nil || err2 != nil || l == 0 || h == 0 {
		return 0, 0, fmt.Errorf("port range %q: want a port 1..65535 or a range LO-HI", s)
	}
	if l > h {
		return 0, 0, fmt.Errorf("port range %q: start %d is above end %d", s, l, h)
	}
	return uint16(l), uint16(h), nil
}

// Parse decodes one rule from JSON strictly (an unknown field is an error),
// fills defaults and validates it.
func Parse(b []byte) (Rule, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var r Rule
	if err := dec.Decode(&r); err != nil {
		return Rule{}, fmt.Errorf("decode rule: %w", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return Rule{}, errors.New("decode rule: trailing data after the rule object")
	}
	r.Normalize()
	return r, r.Validate()
}

// Summary is a one-line description for listings.
func (r Rule) Summary() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s local=%s remote=%s %s", r.Direction, r.Action, r.Local, r.Remote, r.Protocol)
	if r.Ports != "" {
		b.WriteString(" ports " + r.Ports)
	}
	if r.ICMPType != nil {
		fmt.Fprintf(&b, " type %d", *r.ICMPType)
	}
	if r.Rate != nil {
		b.WriteString(" " + r.Rate.String())
	}
	return b.String()
}
