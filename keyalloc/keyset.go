package keyalloc

import (
	"errors"
	"fmt"
	"math/bits"
	"strconv"
	"strings"
)

// MaxKey is the largest cache key: IPv4 DSCP has 6 bits, and 0 means "no key".
const MaxKey = 63

// KeySet is a set of usable cache keys, a subset of 1..MaxKey. The zero
// value is empty; New treats it as DefaultKeySet.
type KeySet struct{ bits uint64 } // bit k set: key k usable

// AllKeys returns every key, 1-63.
func AllKeys() KeySet { return KeySet{bits: ^uint64(0) &^ 1} }

// DefaultKeys is the default key set's text: the DSCPs that fabrics treat
// specially are left out (DESIGN.md "Key space"):
//   - 40-63, class selectors 5-7 and everything in their classes: CS5, VA
//     (44), EF (46), CS6 and CS7 go to priority or network-control queues,
//     are policed by control-plane protection and are often re-marked at a
//     trust boundary; a switch that queues by IP precedence does the same
//     with every other DSCP of those classes;
//   - 1 (LE, RFC 8622) and 8 (CS1): scavenger classes, served after best
//     effort.
//
// The AF classes and CS2-CS4 stay: they select weighted queues, not
// priority ones, and a fabric that re-marks them is caught by the agents'
// DSCP path check, which keeps that host pair on VXLAN.
const DefaultKeys = "2-7,9-39"

// DefaultKeySet returns the default key set, DefaultKeys (37 keys).
func DefaultKeySet() KeySet {
	s, err := ParseKeySet(DefaultKeys)
	if err != nil {
		panic(err)
	}
	return s
}

// ParseKeySet parses a comma-separated list of terms applied left to right:
// "a" or "a-b" adds keys, "!a" or "!a-b" removes them. A list that starts
// with a removal starts from all keys (AllKeys, not the default set), so
// "!46,!48-63" keeps 1-45 and 47. Keys are 1..63;
// the result must not be empty.
func ParseKeySet(s string) (KeySet, error) {
	if strings.TrimSpace(s) == "" {
		return KeySet{}, errors.New("parse key set: empty")
	}
	var set KeySet
	for i, term := range strings.Split(s, ",") {
		term = strings.TrimSpace(term)
		remove := strings.HasPrefix(term, "!")
		if remove {
			term = strings.TrimSpace(term[1:])
			if i == 0 {
				set = AllKeys()
			}
		}
		lo, hi, err := parseRange(term)
		if err != nil {
			return KeySet{}, fmt.Errorf("parse key set %q: term %d: %w", s, i+1, err)
		}
		r := (^uint64(0) >> (63 - hi)) &^ (1<<lo - 1) // bits lo..hi
		if remove {
			set.bits &^= r
		} else {
			set.bits |= r
		}
	}
	if set.bits == 0 {
		return KeySet{}, fmt.Errorf("parse key set %q: no keys left", s)
	}
	return set, nil
}

func parseRange(term string) (lo, hi uint, err error) {
	if term == "" {
		return 0, 0, errors.New("empty term")
	}
	a, b, isRange := strings.Cut(term, "-")
	if lo, err = parseKey(a); err != nil {
		return 0, 0, err
	}
	hi = lo
	if isRange {
		if hi, err = parseKey(b); err != nil {
			return 0, 0, err
		}
		if hi < lo {
			return 0, 0, fmt.Errorf("range %q runs backwards", term)
		}
	}
	return lo, hi, nil
}

func parseKey(s string) (uint, error) {
	s = strings.TrimSpace(s)
	n, err := strconv.ParseUint(s, 10, 8)
	if err != nil || n < 1 || n > MaxKey {
		return 0, fmt.Errorf("key %q is not a number from 1 to %d", s, MaxKey)
	}
	return uint(n), nil
}

// Contains reports whether k is in the set.
func (s KeySet) Contains(k uint8) bool { return k >= 1 && k <= MaxKey && s.bits&(1<<k) != 0 }

// Len returns the number of keys.
func (s KeySet) Len() int { return bits.OnesCount64(s.bits) }

// Keys returns the keys in ascending order.
func (s KeySet) Keys() []uint8 {
	keys := make([]uint8, 0, s.Len())
	for k := uint8(1); k <= MaxKey; k++ {
		if s.Contains(k) {
			keys = append(keys, k)
		}
	}
	return keys
}

// String returns the canonical form, e.g. "1-45,47"; "" when empty.
func (s KeySet) String() string {
	var parts []string
	keys := s.Keys()
	for i := 0; i < len(keys); {
		j := i
		for j+1 < len(keys) && keys[j+1] == keys[j]+1 {
			j++
		}
		if i == j {
			parts = append(parts, strconv.Itoa(int(keys[i])))
		} else {
			parts = append(parts, fmt.Sprintf("%d-%d", keys[i], keys[j]))
		}
		i = j + 1
	}
	return strings.Join(parts, ",")
}

// MarshalText writes String(), so a KeySet can sit in a config file.
func (s KeySet) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// UnmarshalText parses like ParseKeySet.
func (s *KeySet) UnmarshalText(b []byte) error {
	set, err := ParseKeySet(string(b))
	if err != nil {
		return err
	}
	*s = set
	return nil
}
