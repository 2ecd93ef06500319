#!/usr/bin/env bash
# Builds keyroute's .deb with dpkg-deb (part of dpkg; nothing fetched).
#   scripts/build-deb.sh BIN_DIR OUT_DIR VERSION
# BIN_DIR holds keyroute-agent and keyroutectl (and keyroute-cni, included
# when present); the .deb is written to OUT_DIR and its path printed.
set -euo pipefail

bin=${1:?usage: build-deb.sh BIN_DIR OUT_DIR VERSION}
out=${2:?usage: build-deb.sh BIN_DIR OUT_DIR VERSION}
version=${3:-}
root=$(cd "$(dirname "$0")/.." && pwd)
src=$root/packaging/deb

command -v dpkg-deb >/dev/null || { echo "build-deb: dpkg-deb not found (Debian's dpkg package)" >&2; exit 1; }
for b in keyroute-agent keyroutectl; do
	[ -x "$bin/$b" ] || { echo "build-deb: $bin/$b missing (make package builds it)" >&2; exit 1; }
done

# A Debian version starts with a digit and has no '-' (no Debian revision
# here): v1.2.3-4-gabc -> 1.2.3+4+gabc; a bare commit -> 0.0.0+g<commit>.
v=${version#v}
[[ $v =~ ^[0-9] ]] || v=0.0.0+g${v:-unknown}
v=${v//-/+}

arch=$(dpkg --print-architecture)
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
pkg=$stage/keyroute
install -d "$pkg/DEBIAN" "$pkg/usr/bin" "$pkg/lib/systemd/system" "$pkg/etc/keyroute" "$pkg/usr/share/doc/keyroute"
install -m 755 "$bin/keyroute-agent" "$bin/keyroutectl" "$pkg/usr/bin/"
if [ -x "$bin/keyroute-cni" ]; then
	# Debian's CNI plugins live in /usr/lib/cni (containernetworking-plugins).
	install -d "$pkg/usr/lib/cni"
	install -m 755 "$bin/keyroute-cni" "$pkg/usr/lib/cni/"
	# The network configuration is an example, not installed into
	# /etc/cni/net.d: a runtime would make it its default network.
	install -m 644 "$root/configs/10-keyroute.conflist" "$pkg/usr/share/doc/keyroute/"
fi
install -m 644 "$src/keyroute-agent.service" "$pkg/lib/systemd/system/"
install -m 644 "$root/configs/agent.yaml" "$pkg/etc/keyroute/agent.yaml"
install -m 644 "$root/README.md" "$pkg/usr/share/doc/keyroute/"
install -m 755 "$src/postinst" "$src/prerm" "$src/postrm" "$pkg/DEBIAN/"
echo /etc/keyroute/agent.yaml >"$pkg/DEBIAN/conffiles"
size=$(du -sk --exclude=DEBIAN "$pkg" | cut -f1)
cat >"$pkg/DEBIAN/control" <<CONTROL
Package: keyroute
Version: $v
Architecture: $arch
Maintainer: keyroute developers <keyroute@localhost>
Installed-Size: $size
Depends: openvswitch-switch, nftables, iproute2
Section: net
Priority: optional
Homepage: https://github.com/keyroute/keyroute
Description: container overlay for Open vSwitch hosts without encapsulation
 keyroute's host agent (keyroute-agent, a systemd service) and its CLI
 (keyroutectl): containers on Open vSwitch hosts reach each other through
 VXLAN first, then through in-place rewritten packets keyed in IP DSCP.
CONTROL

mkdir -p "$out"
deb=$out/keyroute_${v}_${arch}.deb
dpkg-deb --root-owner-group --build "$pkg" "$deb" >/dev/null
echo "$deb"
