package rules

import (
	"strings"
	"testing"
)

func TestParseValid(t *testing.T) {
	r, err := Parse([]byte(`{"id":"deny-ssh","direction":"egress","local":{"name":"web-*"},"remote":{"cidr":"198.19.0.0/16"},"protocol":"tcp","ports":"22","action":"deny"}`))
	if err != nil {
		t.Fatal(err)
	}
	if r.Priority != DefaultPriority || r.Local.Name != "web-*" || r.Remote.CIDR != "198.19.0.0/16" {
		t.Fatalf("parsed %+v", r)
	}
	if !r.Local.Matches("web-1") || r.Local.Matches("db-1") {
		t.Error("glob web-* must match web-1 and not db-1")
	}
	if got := r.Summary(); got != "egress deny local=name:web-* remote=198.19.0.0/16 tcp ports 22" {
		t.Errorf("summary %q", got)
	}
	r, err = Parse([]byte(`{"id":"rl","direction":"ingress","local":{},"remote":{},"action":"rate-limit","rate":{"kbps":10000}}`))
	if err != nil {
		t.Fatal(err)
	}
	if r.Protocol != ProtoAny || r.Rate.EffectiveBurst() != 5000 {
		t.Errorf("defaults: %+v burst %d", r, r.Rate.EffectiveBurst())
	}
}

// Every kind of bad input gets an error that names the problem.
func TestParseErrors(t *testing.T) {
	base := `"id":"x","direction":"egress","local":{},"remote":{},"action":"deny"`
	cases := map[string]string{
		`{` + base + `,"colour":"red"}`:                                      `unknown field "colour"`,
		`{` + base + `,"remote":{"cidr":"198.19.0.0/33"}}`:                   `invalid CIDR "198.19.0.0/33"`,
		`{` + base + `,"remote":{"cidr":"198.19.1.5/16"}}`:                   `host bits set (did you mean 198.19.0.0/16?)`,
		`{` + base + `,"remote":{"cidr":"fd00::/8"}}`:                        `invalid CIDR`,
		`{` + base + `,"local":{"name":"a","cidr":"1.2.3.4"}}`:               `not both`,
		`{` + base + `,"local":{"name":"[a-"}}`:                              `name glob "[a-"`,
		`{` + base + `,"local":{"name":"` + strings.Repeat("*", 254) + `"}}`: `longer than 253 bytes`,
		`{` + base + `,"protocol":"tcp","ports":"90-80"}`:                    `start 90 is above end 80`,
		`{` + base + `,"protocol":"tcp","ports":"0"}`:                        `port range "0"`,
		`{` + base + `,"protocol":"tcp","ports":"70000"}`:                    `port range "70000"`,
		`{` + base + `,"ports":"80"}`:                                        `need protocol tcp or udp`,
		`{` + base + `,"protocol":"sctp"}`:                                   `protocol "sctp"`,
		`{` + base + `,"icmp_type":8}`:                                       `icmp_type needs protocol icmp`,
		`{` + base + `,"priority":20001}`:                                    `priority 20001`,
		`{` + base + `,"rate":{"pps":5}}`:                                    `rate is only for action rate-limit`,
		`{` + strings.Replace(base, `"deny"`, `"rate-limit"`, 1) + `}`:       `exactly one of pps or kbps`,
		`{` + strings.Replace(base, `"deny"`, `"drop"`, 1) + `}`:             `action "drop"`,
		`{` + strings.Replace(base, `"egress"`, `"out"`, 1) + `}`:            `direction "out"`,
		`{` + strings.Replace(base, `"x"`, `"a/b"`, 1) + `}`:                 `rule id "a/b"`,
		`{` + base + `} {}`:                                                  `trailing data`,
		`not json`:                                                           `decode rule`,
	}
	for in, want := range cases {
		_, err := Parse([]byte(in))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Parse(%s): got %v, want an error containing %q", in, err, want)
		}
	}
}

func TestParseSelector(t *testing.T) {
	cases := map[string]Selector{
		"any": {}, "": {}, "web-*": {Name: "web-*"}, "name:10": {Name: "10"},
		"198.19.0.0/16": {CIDR: "198.19.0.0/16"}, "198.19.1.2": {CIDR: "198.19.1.2"}, "cidr:198.19.1.0/24": {CIDR: "198.19.1.0/24"},
	}
	for in, want := range cases {
		got, err := ParseSelector(in)
		if err != nil || got != want {
			t.Errorf("ParseSelector(%q) = %+v, %v; want %+v", in, got, err, want)
		}
	}
	for _, bad := range []string{"198.19.0.0/33", "198.19.300.1", "1.2.3.4/8"} {
		if _, err := ParseSelector(bad); err == nil || !strings.Contains(err.Error(), "invalid CIDR") {
			t.Errorf("ParseSelector(%q): %v, want invalid CIDR", bad, err)
		}
	}
	if p, err := (Selector{CIDR: "198.19.1.2"}).Prefix(); err != nil || p.Bits() != 32 {
		t.Errorf("bare address is a /32: %v %v", p, err)
	}
}
