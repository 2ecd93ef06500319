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
	d := DefaultKeySet()
	if d.Len() != 63 || d.Contains(0) || !d.Contains(1) || !d.Contains(63) || d.Contains(64) || d.Contains(255) {
		t.Errorf("default set wrong: len %d, %q", d.Len(), d)
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
