package flows

import "fmt"

// Category is the top byte of every keyroute cookie: what a flow is for.
// A person reading `ovs-ofctl dump-flows` sees it as the first two hex
// digits (cookie=0x03000000c6130102: endpoint 198.19.1.2).
type Category uint8

// Cookie categories. Their words are used in `keyroutectl flows`, metrics
// and docs alike.
const (
	CatPipeline Category = 0x01 // fixed plumbing: table misses, classification
	CatSubnet   Category = 0x02 // Forward entry for a remote host's pod subnet; id = subnet address
	CatEndpoint Category = 0x03 // SpoofGuard/Deliver entries of a local container; id = its IPv4
	CatARP      Category = 0x04 // ArpResponder entries
	CatGateway  Category = 0x05 // the internal gateway port's flows
	CatPeer     Category = 0x06 // per-peer-host flows (TunnelIn, br-phy admission); id = peer IPv4
	CatCache    Category = 0x07 // EgressCache rewrite entries; id = peer IPv4<<8 | key
	CatRestore  Category = 0x08 // Restore entries; id = peer IPv4<<8 | key
	CatRule     Category = 0x09 // EgressRules/IngressRules entries; id = rule number
	CatPunt     Category = 0x0a // cache-miss punts to the agent
	CatUnderlay Category = 0x0b // br-phy plumbing
	CatGuard    Category = 0x0c // SpoofGuard drops of container traffic to the control plane; id = dst IPv4<<24 | proto<<16 | port
)

var catNames = map[Category]string{
	CatPipeline: "pipeline", CatSubnet: "subnet", CatEndpoint: "endpoint", CatARP: "arp",
	CatGateway: "gateway", CatPeer: "peer", CatCache: "cache", CatRestore: "restore",
	CatRule: "rule", CatPunt: "punt", CatUnderlay: "underlay", CatGuard: "guard",
}

func (c Category) String() string {
	if n, ok := catNames[c]; ok {
		return n
	}
	return fmt.Sprintf("category-0x%02x", uint8(c))
}

// Cookie builds a cookie from a category and a 56-bit object id.
func Cookie(c Category, id uint64) uint64 { return uint64(c)<<56 | id&(1<<56-1) }

// CookieCategory returns the category of a cookie.
func CookieCategory(cookie uint64) Category { return Category(cookie >> 56) }

// CookieID returns the object id of a cookie.
func CookieID(cookie uint64) uint64 { return cookie & (1<<56 - 1) }

// CategoryMask matches the category byte of a cookie, for deletes by
// category (cookie=Cookie(c,0), cookie_mask=CategoryMask).
const CategoryMask uint64 = 0xff << 56

// Owned reports whether a cookie is one keyroute sets; anything else on our
// bridges was added by hand and is left alone by reconciliation.
func Owned(cookie uint64) bool {
	_, ok := catNames[CookieCategory(cookie)]
	return ok
}
