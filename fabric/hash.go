package fabric

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"net/netip"
	"strings"
)

// Tuple is a packet's header as the fabric sees it: for a rewritten packet
// the host addresses and the container's ports, for VXLAN the outer
// header. ICMP and other port-less protocols have zero ports.
type Tuple struct {
	Src   netip.Addr `json:"src"`
	Dst   netip.Addr `json:"dst"`
	Proto uint8      `json:"proto"`
	SPort uint16     `json:"sport"`
	DPort uint16     `json:"dport"`
}

func (t Tuple) String() string {
	return fmt.Sprintf("%s %s:%d > %s:%d", ProtoName(t.Proto), t.Src, t.SPort, t.Dst, t.DPort)
}

// IP protocol numbers.
const (
	ProtoICMP = 1
	ProtoTCP  = 6
	ProtoUDP  = 17
)

// ProtoName returns "tcp", "udp", "icmp" or the number.
func ProtoName(p uint8) string {
	switch p {
	case ProtoICMP:
		return "icmp"
	case ProtoTCP:
		return "tcp"
	case ProtoUDP:
		return "udp"
	}
	return fmt.Sprint(p)
}

// Hash functions.
const (
	// FuncCRC32 is CRC-32 (IEEE) over the fields' big-endian bytes in the
	// listed order: sip and dip 4 bytes, proto 1, sport and dport 2.
	FuncCRC32 = "crc32"
	// FuncXOR XORs the fields as 32-bit words, sport shifted left by 16:
	// with fields sip, dip, sport, dport it is
	// sip ^ dip ^ ((sport << 16) | dport).
	FuncXOR = "xor"
)

// Fields a hash may use.
var fieldNames = []string{"sip", "dip", "proto", "sport", "dport"}

func (h Hash) validate() error {
	switch h.Function {
	case FuncCRC32, FuncXOR:
	default:
		return fmt.Errorf("unknown hash function %q (use %s or %s)", h.Function, FuncCRC32, FuncXOR)
	}
	if len(h.Fields) == 0 {
		return fmt.Errorf("hash %s has no fields (use some of %s)", h.Function, strings.Join(fieldNames, ", "))
	}
	seen := map[string]bool{}
	for _, f := range h.Fields {
		known := false
		for _, n := range fieldNames {
			known = known || f == n
		}
		if !known {
			return fmt.Errorf("unknown hash field %q (use %s)", f, strings.Join(fieldNames, ", "))
		}
		if seen[f] {
			return fmt.Errorf("hash field %q listed twice", f)
		}
		seen[f] = true
	}
	return nil
}

// Sum computes the hash of t. It validates h first, so a model that
// skipped Validate still gets a clear error.
func (h Hash) Sum(t Tuple) (uint32, error) {
	if err := h.validate(); err != nil {
		return 0, err
	}
	if !t.Src.Is4() || !t.Dst.Is4() {
		return 0, fmt.Errorf("hash %s: addresses %v and %v must be IPv4", h.Function, t.Src, t.Dst)
	}
	switch h.Function {
	case FuncCRC32:
		var b []byte
		for _, f := range h.Fields {
			switch f {
			case "sip":
				a := t.Src.As4()
				b = append(b, a[:]...)
			case "dip":
				a := t.Dst.As4()
				b = append(b, a[:]...)
			case "proto":
				b = append(b, t.Proto)
			case "sport":
				b = binary.BigEndian.AppendUint16(b, t.SPort)
			case "dport":
				b = binary.BigEndian.AppendUint16(b, t.DPort)
			}
		}
		return crc32.ChecksumIEEE(b), nil
	default: // FuncXOR
		var x uint32
		for _, f := range h.Fields {
			x ^= xorWord(f, t)
		}
		return x, nil
	}
}

func xorWord(field string, t Tuple) uint32 {
	switch field {
	case "sip":
		return u32(t.Src)
	case "dip":
		return u32(t.Dst)
	case "proto":
		return uint32(t.Proto)
	case "sport":
		return uint32(t.SPort) << 16
	default: // dport
		return uint32(t.DPort)
	}
}

func u32(a netip.Addr) uint32 {
	b := a.As4()
	return binary.BigEndian.Uint32(b[:])
}

// Select returns the member index hash(t) mod n.
func (h Hash) Select(t Tuple, n int) (int, uint32, error) {
	if n < 1 {
		return 0, 0, fmt.Errorf("select among %d members", n)
	}
	s, err := h.Sum(t)
	if err != nil {
		return 0, 0, err
	}
	return int(s % uint32(n)), s, nil
}
