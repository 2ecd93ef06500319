package agent

import (
	"bytes"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strings"
)

// nftTable names the agent's two nftables tables: "ip keyroute" holds the
// masquerade rule, "netdev keyroute" one ingress chain per port OVS reads.
// Removing them removes exactly what the agent added.
const nftTable = "keyroute"

// isolatePort keeps the host's own stack from processing packets that
// arrive on a port OVS reads (the uplink, a container's veth). The netdev
// datapath reads ports through packet sockets, which see a frame before the
// ingress hook drops it, so OVS still gets everything. Without this the
// kernel answers ARP for the gateway on container veths and accepts (and,
// with forwarding on, re-routes) uplink traffic: every packet twice.
func isolatePort(dev string) error {
	return nft(fmt.Sprintf(`table netdev %[1]s {}
add chain netdev %[1]s port-%[2]s { type filter hook ingress device "%[2]s" priority 0; policy drop; }
`, nftTable, dev))
}

// releasePort removes a port's ingress chain; a chain already gone (with its
// device) is fine.
func releasePort(dev string) {
	nft(fmt.Sprintf("delete chain netdev %s port-%s\n", nftTable, dev))
}

// ensureMasquerade lets containers reach destinations outside the cluster
// CIDR: traffic leaving the cluster is masqueraded to the host IP. It also
// turns on IPv4 forwarding, which routing through the gateway port needs.
func ensureMasquerade(cluster netip.Prefix) error {
	if err := os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1"), 0o644); err != nil {
		return fmt.Errorf("enable IPv4 forwarding: %w", err)
	}
	script := fmt.Sprintf(`table ip %[1]s {}
delete table ip %[1]s
table ip %[1]s {
	chain postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		ip saddr %[2]s ip daddr != %[2]s masquerade
	}
}
`, nftTable, cluster)
	return nft(script)
}

// removeNftables deletes the agent's nftables tables.
func removeNftables() error {
	return nft(fmt.Sprintf("table ip %[1]s {}\ndelete table ip %[1]s\ntable netdev %[1]s {}\ndelete table netdev %[1]s\n", nftTable))
}

func nft(script string) error {
	cmd := exec.Command("nft", "-f", "-")
	cmd.Stdin = strings.NewReader(script)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("nft: %w: %s", err, strings.TrimSpace(stderr.String()))
	}
	return nil
}
