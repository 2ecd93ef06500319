package openflow

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net"
)

// Port config and state bits (ofp_port_config, ofp_port_state).
const (
	PortConfigDown       uint32 = 1 << 0
	PortConfigNoRecv     uint32 = 1 << 2
	PortConfigNoFwd      uint32 = 1 << 5
	PortConfigNoPacketIn uint32 = 1 << 6
	PortStateLinkDown    uint32 = 1 << 0
	PortStateBlocked     uint32 = 1 << 1
	PortStateLive        uint32 = 1 << 2
)

// Port is an OpenFlow 1.3 ofp_port. Speeds are in kbps.
type Port struct {
	PortNo     uint32
	HWAddr     net.HardwareAddr
	Name       string
	Config     uint32
	State      uint32
	Curr       uint32
	Advertised uint32
	Supported  uint32
	Peer       uint32
	CurrSpeed  uint32
	MaxSpeed   uint32
}

const (
	portLen       = 64
	portNameLen   = 16
	portStatusLen = 8 + portLen
)

// AppendTo appends the 64-byte ofp_port encoding.
func (p *Port) AppendTo(b []byte) ([]byte, error) {
	if p.HWAddr != nil && len(p.HWAddr) != 6 {
		return b, fmt.Errorf("port %d: hardware address %v is not 6 bytes", p.PortNo, p.HWAddr)
	}
	if len(p.Name) >= portNameLen {
		return b, fmt.Errorf("port %d: name %q longer than %d bytes", p.PortNo, p.Name, portNameLen-1)
	}
	b = binary.BigEndian.AppendUint32(b, p.PortNo)
	b = append(b, 0, 0, 0, 0)
	hw := p.HWAddr
	if hw == nil {
		hw = make(net.HardwareAddr, 6)
	}
	b = append(b, hw...)
	b = append(b, 0, 0)
	var name [portNameLen]byte
	copy(name[:], p.Name)
	b = append(b, name[:]...)
	for _, v := range [...]uint32{p.Config, p.State, p.Curr, p.Advertised, p.Supported, p.Peer, p.CurrSpeed, p.MaxSpeed} {
		b = binary.BigEndian.AppendUint32(b, v)
	}
	return b, nil
}

// decodePort decodes an ofp_port at the start of b; off is b's offset in
// the message, for errors.
func decodePort(b []byte, off int) (Port, error) {
	if len(b) < portLen {
		return Port{}, truncated("port", off, portLen, len(b))
	}
	// The name is NUL-terminated within its 16 bytes; like OVS, read at
	// most 15 bytes of one that is not.
	name := b[16 : 16+portNameLen-1]
	if i := bytes.IndexByte(name, 0); i >= 0 {
		name = name[:i]
	}
	u := func(i int) uint32 { return binary.BigEndian.Uint32(b[32+4*i:]) }
	return Port{
		PortNo: binary.BigEndian.Uint32(b), HWAddr: net.HardwareAddr(bytes.Clone(b[8:14])), Name: string(name),
		Config: u(0), State: u(1), Curr: u(2), Advertised: u(3), Supported: u(4), Peer: u(5),
		CurrSpeed: u(6), MaxSpeed: u(7),
	}, nil
}

// DecodePortDesc decodes the reassembled body of an OFPMP_PORT_DESC reply.
func DecodePortDesc(body []byte) ([]Port, error) {
	if len(body)%portLen != 0 {
		return nil, &DecodeError{What: "port desc", Offset: 0, Err: fmt.Errorf("body of %d bytes is not a multiple of %d", len(body), portLen)}
	}
	ports := make([]Port, 0, len(body)/portLen)
	for off := 0; off < len(body); off += portLen {
		p, err := decodePort(body[off:], off)
		if err != nil {
			return nil, err
		}
		ports = append(ports, p)
	}
	return ports, nil
}

func (p *Port) String() string {
	return fmt.Sprintf("%s(%s) addr:%s config:0x%x state:0x%x speed:%d/%d Mbps",
		ovsPortString(p.PortNo), p.Name, p.HWAddr, p.Config, p.State, p.CurrSpeed/1000, p.MaxSpeed/1000)
}

// Port status reasons (ofp_port_reason).
const (
	PortAdded    uint8 = 0
	PortDeleted  uint8 = 1
	PortModified uint8 = 2
)

// PortStatus is OFPT_PORT_STATUS.
type PortStatus struct {
	Reason uint8
	Port   Port
}

func (*PortStatus) Type() MsgType { return TypePortStatus }

func (m *PortStatus) AppendBody(b []byte) ([]byte, error) {
	b = append(b, m.Reason, 0, 0, 0, 0, 0, 0, 0)
	return m.Port.AppendTo(b)
}

func (m *PortStatus) String() string {
	r := [...]string{"ADD", "DELETE", "MODIFY"}
	reason := fmt.Sprintf("reason_%d", m.Reason)
	if int(m.Reason) < len(r) {
		reason = r[m.Reason]
	}
	return fmt.Sprintf("PORT_STATUS %s: %s", reason, m.Port.String())
}

func decodePortStatus(body []byte) (Message, error) {
	if len(body) < portStatusLen {
		return nil, truncated("PORT_STATUS", HeaderLen, portStatusLen, len(body))
	}
	p, err := decodePort(body[8:], HeaderLen+8)
	if err != nil {
		return nil, err
	}
	return &PortStatus{Reason: body[0], Port: p}, nil
}

func init() { registerDecoder(TypePortStatus, decodePortStatus) }
