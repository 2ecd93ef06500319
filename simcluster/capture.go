package simcluster

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"

	"github.com/keyroute/keyroute/simhost"
	"github.com/keyroute/keyroute/trace"
)

// Capture is a tcpdump writing a pcap file, started by StartCapture.
type Capture struct {
	// File is the pcap file; Iface and NS say where it listens.
	File  string
	Iface string
	NS    *simhost.NetNS

	cl    *Cluster
	count int
	proc  *Process
}

// StartCapture starts tcpdump on iface inside ns with a pcap filter
// ("udp port 4789 or icmp"; empty: everything) and returns once it is
// listening. With count > 0 tcpdump stops by itself after count packets.
// Cluster.Close stops it if the caller does not.
func (cl *Cluster) StartCapture(ns *simhost.NetNS, iface, filter string, count int) (*Capture, error) {
	base := filepath.Join(cl.Dir, "captures", fmt.Sprintf("%03d-%s-%s", cl.seq.Add(1), strings.TrimPrefix(ns.Name, cl.Prefix), iface))
	c := &Capture{File: base + ".pcap", Iface: iface, NS: ns, cl: cl, count: count}
	// -Z root: tcpdump would otherwise drop to its own user and fail to
	// write into our root-owned directory. --immediate-mode: a packet
	// reaches the file as soon as it is seen, not when a buffer fills.
	argv := []string{"ip", "netns", "exec", ns.Name, "tcpdump", "-i", iface, "-nn", "-U", "--immediate-mode", "-Z", "root", "-w", c.File}
	if count > 0 {
		argv = append(argv, "-c", strconv.Itoa(count))
	}
	if filter != "" {
		argv = append(argv, filter)
	}
	p, err := startProcess("tcpdump "+ns.Name+"/"+iface, base+".log", argv...)
	if err != nil {
		return nil, err
	}
	cl.procs.add(p)
	c.proc = p
	err = simhost.WaitFor(10*time.Second, func() error {
		if ended, err := p.Exited(); ended {
			return fmt.Errorf("tcpdump exited: %v: %s", err, p.LogTail(5))
		}
		if b, _ := os.ReadFile(p.LogPath); !strings.Contains(string(b), "listening on") {
			return errors.New("tcpdump not listening yet")
		}
		return nil
	})
	if err != nil {
		return nil, errors.Join(fmt.Errorf("capture on %s in %s: %w", iface, ns.Name, err), p.Stop(5*time.Second))
	}
	return c, nil
}

// Wait waits up to timeout for the count packets StartCapture asked for
// (count 0: captures for the whole timeout), then stops tcpdump and returns
// what it captured. Fewer packets than count is an error (the packets are
// still returned).
func (c *Capture) Wait(timeout time.Duration) ([]CapturedPacket, error) {
	select {
	case <-c.proc.Done():
	case <-time.After(timeout):
	}
	pkts, err := c.Stop()
	if err == nil && len(pkts) < c.count {
		err = fmt.Errorf("capture on %s in %s: %d of %d packets within %s", c.Iface, c.NS.Name, len(pkts), c.count, timeout)
	}
	return pkts, err
}

// Stop stops tcpdump once the file has stopped growing (so packets the
// traffic just produced are in it) and decodes the file.
func (c *Capture) Stop() ([]CapturedPacket, error) {
	if ended, _ := c.proc.Exited(); !ended {
		settle(c.File, 100*time.Millisecond, 2*time.Second)
	}
	if err := c.proc.Stop(5 * time.Second); err != nil {
		return nil, err
	}
	pkts, err := DecodePcapFile(c.File, c.cl.VXLANPort)
	if err != nil {
		return nil, fmt.Errorf("capture on %s in %s: %w (tcpdump: %s)", c.Iface, c.NS.Name, err, c.proc.LogTail(3))
	}
	return pkts, nil
}

// settle waits until path's size has not changed for quiet, at most max.
func settle(path string, quiet, max time.Duration) {
	size := int64(-1)
	stable := time.Now()
	for deadline := time.Now().Add(max); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		var n int64
		if fi, err := os.Stat(path); err == nil {
			n = fi.Size()
		}
		if n != size {
			size, stable = n, time.Now()
		} else if time.Since(stable) >= quiet {
			return
		}
	}
}

// Capture captures up to count packets on iface inside ns, for at most
// timeout, while traffic already runs or starts elsewhere; see
// StartCapture and Wait.
func (cl *Cluster) Capture(ns *simhost.NetNS, iface, filter string, count int, timeout time.Duration) ([]CapturedPacket, error) {
	c, err := cl.StartCapture(ns, iface, filter, count)
	if err != nil {
		return nil, err
	}
	return c.Wait(timeout)
}

// CaptureDuring captures on iface inside ns while traffic runs and returns
// the packets seen. traffic's error is returned too.
func (cl *Cluster) CaptureDuring(ns *simhost.NetNS, iface, filter string, traffic func() error) ([]CapturedPacket, error) {
	c, err := cl.StartCapture(ns, iface, filter, 0)
	if err != nil {
		return nil, err
	}
	terr := traffic()
	pkts, err := c.Stop()
	return pkts, errors.Join(terr, err)
}

// Header is one Ethernet + IPv4 + transport header stack.
type Header struct {
	SrcMAC, DstMAC net.HardwareAddr
	// EtherType is the frame's type (0x0800 IPv4, 0x0806 ARP).
	EtherType uint16
	// Src and Dst are the IPv4 addresses (invalid for non-IPv4 frames).
	Src, Dst netip.Addr
	// DSCP and ECN are the two parts of the IPv4 TOS byte.
	DSCP, ECN uint8
	TTL       uint8
	// Proto is the IP protocol number (1 ICMP, 6 TCP, 17 UDP).
	Proto uint8
	// Fragment is set for non-first fragments (no transport header).
	Fragment bool
	// SrcPort and DstPort are TCP or UDP ports.
	SrcPort, DstPort uint16
	// ICMPType, ICMPID and ICMPSeq describe ICMP packets (echo: type 8,
	// reply: 0).
	ICMPType        uint8
	ICMPID, ICMPSeq uint16
}

// IsIPv4 reports whether the header stack carries IPv4.
func (h Header) IsIPv4() bool { return h.Src.IsValid() }

// String prints the header like a terse tcpdump line.
func (h Header) String() string {
	if !h.IsIPv4() {
		return fmt.Sprintf("%s > %s ethertype 0x%04x", h.SrcMAC, h.DstMAC, h.EtherType)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s > %s", h.Src, h.Dst)
	switch {
	case h.Fragment:
		fmt.Fprintf(&b, " proto %d fragment", h.Proto)
	case h.Proto == uint8(layers.IPProtocolICMPv4):
		fmt.Fprintf(&b, " icmp type %d id %d seq %d", h.ICMPType, h.ICMPID, h.ICMPSeq)
	case h.Proto == uint8(layers.IPProtocolTCP):
		fmt.Fprintf(&b, " tcp %d > %d", h.SrcPort, h.DstPort)
	case h.Proto == uint8(layers.IPProtocolUDP):
		fmt.Fprintf(&b, " udp %d > %d", h.SrcPort, h.DstPort)
	default:
		fmt.Fprintf(&b, " proto %d", h.Proto)
	}
	if h.DSCP != 0 {
		fmt.Fprintf(&b, " dscp %d", h.DSCP)
	}
	return b.String()
}

// CapturedPacket is one decoded frame.
type CapturedPacket struct {
	Time time.Time
	// Length is the frame's length on the wire (it may have been captured
	// shorter).
	Length int
	// Header is the outer header stack.
	Header
	// VXLAN is set for UDP to the overlay's port; VNI is its 24-bit
	// network identifier and Inner the encapsulated frame.
	VXLAN bool
	VNI   uint32
	Inner *Header
	// DecodeErr says what could not be decoded (truncated or malformed).
	DecodeErr string
}

// Path names how a packet crossed the fabric, in the words `keyroutectl
// trace` uses for the header it predicts on the fabric (trace.WireKind),
// so a test can hold a trace against a capture.
type Path = trace.WireKind

// Paths.
const (
	// PathVXLAN is the overlay: UDP to the VXLAN port.
	PathVXLAN = trace.WireVXLAN
	// PathRewrite is a rewritten packet: plain IPv4 carrying a DSCP key.
	PathRewrite = trace.WireRewritten
	// PathPlain is IPv4 without encapsulation or key: a trace's host or
	// masqueraded header, which a capture cannot tell apart.
	PathPlain Path = "plain"
	// PathOther is anything that is not IPv4 (ARP, ...).
	PathOther Path = "other"
)

// Path classifies the packet.
func (p CapturedPacket) Path() Path {
	switch {
	case p.VXLAN:
		return PathVXLAN
	case !p.IsIPv4():
		return PathOther
	case p.DSCP != 0:
		return PathRewrite
	default:
		return PathPlain
	}
}

// String prints the packet on one line, the inner frame after a '|'.
func (p CapturedPacket) String() string {
	s := p.Header.String()
	if p.VXLAN {
		s += fmt.Sprintf(" vxlan vni %d", p.VNI)
		if p.Inner != nil {
			s += " | " + p.Inner.String()
		}
	}
	if p.DecodeErr != "" {
		s += " [" + p.DecodeErr + "]"
	}
	return s
}

// DecodePcapFile decodes a pcap file; see DecodePcap.
func DecodePcapFile(path string, vxlanPort uint16) ([]CapturedPacket, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("decode pcap: %w", err)
	}
	defer f.Close()
	pkts, err := DecodePcap(f, vxlanPort)
	if err != nil {
		return pkts, fmt.Errorf("decode %s: %w", path, err)
	}
	return pkts, nil
}

// DecodePcap decodes every frame of a pcap stream. UDP to vxlanPort is read
// as VXLAN (0 means 4789). A frame that does not decode fully still yields
// a packet, with DecodeErr set; only an unreadable file is an error.
func DecodePcap(r io.Reader, vxlanPort uint16) ([]CapturedPacket, error) {
	if vxlanPort == 0 {
		vxlanPort = 4789
	}
	pr, err := pcapgo.NewReader(r)
	if err != nil {
		return nil, fmt.Errorf("read pcap header: %w", err)
	}
	var out []CapturedPacket
	for {
		data, ci, err := pr.ReadPacketData()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return out, fmt.Errorf("read packet %d: %w", len(out)+1, err)
		}
		p := decodeFrame(data, pr.LinkType(), vxlanPort)
		p.Time, p.Length = ci.Timestamp, ci.Length
		out = append(out, p)
	}
}

func decodeFrame(data []byte, first gopacket.Decoder, vxlanPort uint16) CapturedPacket {
	var p CapturedPacket
	pkt := gopacket.NewPacket(data, first, gopacket.DecodeOptions{Lazy: true, NoCopy: true})
	udp := fillHeader(&p.Header, pkt.Layers())
	if udp != nil && udp.DstPort == layers.UDPPort(vxlanPort) {
		p.VXLAN = true
		inner := gopacket.NewPacket(udp.Payload, layers.LayerTypeVXLAN, gopacket.DecodeOptions{Lazy: true, NoCopy: true})
		if vx, ok := inner.Layer(layers.LayerTypeVXLAN).(*layers.VXLAN); ok {
			p.VNI = vx.VNI
			p.Inner = &Header{}
			fillHeader(p.Inner, inner.Layers()[1:])
		}
		if el := inner.ErrorLayer(); el != nil {
			p.DecodeErr = "inner: " + el.Error().Error()
		}
	}
	if el := pkt.ErrorLayer(); el != nil && p.DecodeErr == "" {
		p.DecodeErr = el.Error().Error()
	}
	return p
}

// fillHeader copies the first Ethernet/IPv4/transport layers into h,
// stopping at the transport layer (whatever gopacket decoded beyond it, such
// as its own VXLAN guess for port 4789, belongs to the payload). It returns
// the UDP layer, if any.
func fillHeader(h *Header, ls []gopacket.Layer) *layers.UDP {
	for _, l := range ls {
		switch l := l.(type) {
		case *layers.Ethernet:
			h.SrcMAC, h.DstMAC, h.EtherType = l.SrcMAC, l.DstMAC, uint16(l.EthernetType)
		case *layers.LinuxSLL:
			h.EtherType = uint16(l.EthernetType)
		case *layers.IPv4:
			h.Src, _ = netip.AddrFromSlice(l.SrcIP.To4())
			h.Dst, _ = netip.AddrFromSlice(l.DstIP.To4())
			h.DSCP, h.ECN, h.TTL, h.Proto = l.TOS>>2, l.TOS&3, l.TTL, uint8(l.Protocol)
			h.Fragment = l.FragOffset != 0
			if h.Fragment {
				return nil
			}
		case *layers.ICMPv4:
			h.ICMPType, h.ICMPID, h.ICMPSeq = l.TypeCode.Type(), l.Id, l.Seq
			return nil
		case *layers.TCP:
			h.SrcPort, h.DstPort = uint16(l.SrcPort), uint16(l.DstPort)
			return nil
		case *layers.UDP:
			h.SrcPort, h.DstPort = uint16(l.SrcPort), uint16(l.DstPort)
			return l
		}
	}
	return nil
}

// PathCounts tallies captured packets by the path they took.
type PathCounts struct {
	VXLAN, Rewrite, Plain, Other int
	// VNIs and Keys are the distinct VXLAN VNIs and DSCP keys seen, sorted.
	VNIs []uint32
	Keys []uint8
}

// CountPaths tallies pkts by Path.
func CountPaths(pkts []CapturedPacket) PathCounts {
	var pc PathCounts
	for _, p := range pkts {
		switch p.Path() {
		case PathVXLAN:
			pc.VXLAN++
			if !slices.Contains(pc.VNIs, p.VNI) {
				pc.VNIs = append(pc.VNIs, p.VNI)
			}
		case PathRewrite:
			pc.Rewrite++
			if !slices.Contains(pc.Keys, p.DSCP) {
				pc.Keys = append(pc.Keys, p.DSCP)
			}
		case PathPlain:
			pc.Plain++
		default:
			pc.Other++
		}
	}
	slices.Sort(pc.VNIs)
	slices.Sort(pc.Keys)
	return pc
}

// String reads like "VXLAN 2 (VNI 100), rewritten 8 (DSCP keys 10, 11)".
func (pc PathCounts) String() string {
	join := func(xs []string) string { return strings.Join(xs, ", ") }
	var parts, vnis, keys []string
	for _, v := range pc.VNIs {
		vnis = append(vnis, strconv.FormatUint(uint64(v), 10))
	}
	for _, k := range pc.Keys {
		keys = append(keys, strconv.Itoa(int(k)))
	}
	if pc.VXLAN > 0 {
		parts = append(parts, fmt.Sprintf("VXLAN %d (VNI %s)", pc.VXLAN, join(vnis)))
	}
	if pc.Rewrite > 0 {
		parts = append(parts, fmt.Sprintf("rewritten %d (DSCP keys %s)", pc.Rewrite, join(keys)))
	}
	if pc.Plain > 0 {
		parts = append(parts, fmt.Sprintf("plain %d", pc.Plain))
	}
	if pc.Other > 0 {
		parts = append(parts, fmt.Sprintf("other %d", pc.Other))
	}
	if len(parts) == 0 {
		return "nothing"
	}
	return join(parts)
}
