package openflow

// Reserved port numbers (ofp_port_no).
const (
	PortMax        uint32 = 0xffffff00
	PortInPort     uint32 = 0xfffffff8
	PortTable      uint32 = 0xfffffff9
	PortNormal     uint32 = 0xfffffffa
	PortFlood      uint32 = 0xfffffffb
	PortAll        uint32 = 0xfffffffc
	PortController uint32 = 0xfffffffd
	PortLocal      uint32 = 0xfffffffe
	PortAny        uint32 = 0xffffffff
)

// Other reserved values.
const (
	TableAll   uint8  = 0xff
	GroupAny   uint32 = 0xffffffff
	NoBuffer   uint32 = 0xffffffff
	MeterAll   uint32 = 0xffffffff
	CookieNone uint64 = 0
)
