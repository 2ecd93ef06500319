// Package ovstext reads the text Open vSwitch tools print (ovs-appctl
// dpctl/dump-flows, ovs-ofctl): pieces that more than one package needs.
package ovstext

import "strings"

// SplitTop splits s at the commas outside parentheses, trimming each
// piece: a datapath flow's match or action list, whose fields nest, as
// in "eth(src=a,dst=b),ipv4(src=c),2" → "eth(src=a,dst=b)", "ipv4(src=c)", "2".
func SplitTop(s string) []string {
	var out []string
	depth, start := 0, 0
	for i, c := range s {
		switch c {
		case '(':
			depth++
		case ')':
			depth--
		case ',':
			if depth == 0 {
				out = append(out, strings.TrimSpace(s[start:i]))
				start = i + 1
			}
		}
	}
	return append(out, strings.TrimSpace(s[start:]))
}
