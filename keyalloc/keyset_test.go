package keyalloc

import (
	"strings"
	"testing"
)

func TestParseKeySet(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"1-63", "1-63"},
		{"!46,!48-63", "1-45,47"},
		{" 1 - 3 , 7 ,!2", "1,3,7"},
		{"5", "5"},
		{"63", "63"},
		{"1-10,5-20,!1-4", "5-20"},
		{"!1", "2-63"},
		{"10-12,!11,11", "10-12"},
		{"1-1", "1"},
	} {
		s, err := ParseKeySet(tc.in)
		if err != nil {
			t.Errorf("ParseKeySet(%q): %v", tc.in, err)
			continue
		}
		if s.String() != tc.want {
			t.Errorf("ParseKeySet(%q) = %q, want %q", tc.in, s, tc.want)
		}
		// The canonical form parses back to the same set.
		if again, err := ParseKeySet(s.String()); err != nil || again != s {
			t.Errorf("round trip of %q: %v, %v", s, again, err)
		}
	}
	for _, tc := range []struct{ in, why string }{
		{"", "empty"},
		{"  ", "empty"},
		{"0", "1 to 63"},
		{"64", "1 to 63"},
		{"1-64", "1 to 63"},
		{"-1", "1 to 63"},
		{"256", "1 to 63"},
		{"5-3", "backwards"},
		{"1,,2", "empty term"},
		{"1,", "empty term"},
		{"!", "empty term"},
		{"a-b", "1 to 63"},
		{"1-2-3", "1 to 63"},
		{"!1-63", "no keys left"},
		{"3,!3", "no keys left"},
	} {
		_, err := ParseKeySet(tc.in)
		if err == nil || !strings.Contains(err.Error(), tc.why) {
			t.Errorf("ParseKeySet(%q) = %v, want error mentioning %q", tc.in, err, tc.why)
		}
	}
}

func TestKeySetMethods(t *testing.T) {
	a := AllKeys()
	if a.Len() != 63 || a.Contains(0) || !a.Contains(1) || !a.Contains(63) || a.Contains(64) || a.Contains(255) {
		t.Errorf("all keys wrong: len %d, %q", a.Len(), a)
	}
	d := DefaultKeySet()
	if d.String() != DefaultKeys || d.Len() != 37 {
		t.Errorf("default set = %q (%d keys), want %q", d, d.Len(), DefaultKeys)
	}
	// The code points fabrics treat specially are not keys.
	for _, k := range []uint8{1, 8, 40, 44, 46, 48, 56} {
		if d.Contains(k) {
			t.Errorf("default set contains %d", k)
		}
	}
	s, _ := ParseKeySet("!46,!48-63")
	keys := s.Keys()
	if len(keys) != 46 || keys[0] != 1 || keys[44] != 45 || keys[45] != 47 || s.Contains(46) {
		t.Errorf("keys of %q = %v", s, keys)
	}
	var u KeySet
	if err := u.UnmarshalText([]byte("3-4")); err != nil || u.String() != "3-4" {
		t.Errorf("UnmarshalText: %v, %v", u, err)
	}
	if err := u.UnmarshalText([]byte("99")); err == nil {
		t.Error("UnmarshalText(99) accepted")
	}
	if b, _ := u.MarshalText(); string(b) != "3-4" {
		t.Errorf("MarshalText = %q", b)
	}
	if (KeySet{}).String() != "" || (KeySet{}).Len() != 0 {
		t.Error("zero set not empty")
	}
}
