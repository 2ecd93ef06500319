#!/usr/bin/env bash
# install-deps.sh - install what keyroute's tests and demo need on a Debian 12
# or Ubuntu host, and check the Go toolchain. Idempotent: when everything is
# present it prints nothing and needs no root. Installing needs root.
#
# The OVS and etcd packages start system daemons on install. keyroute's tests
# run their own private ones, so this script keeps the packaged daemons from
# starting (a temporary policy-rc.d) and stops any the install started anyway
# - only those: daemons that were already running are left alone.
set -euo pipefail

export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
GO_MIN_MINOR=26 # Go 1.26
ROOT=$(cd "$(dirname "$0")/.." && pwd)

# package:what-shows-it-is-installed (a command, or an absolute path)
DEPS=(
	openvswitch-switch:ovs-vswitchd # also pulls openvswitch-common (ovs-vsctl, ovs-ofctl, ovs-appctl, ovsdb-tool)
	etcd-server:etcd
	iperf3:iperf3
	tcpdump:tcpdump
	ethtool:ethtool
	iproute2:ip
	iputils-ping:ping
	nftables:nft
	curl:curl      # the etcd TLS test and the demo try etcd's HTTP API without a certificate
	kmod:modprobe  # preflight tries `modprobe openvswitch`
	procps:sysctl  # test namespaces turn IPv6 off with sysctl
	make:make
	podman:podman          # the CNI e2e runs containers with podman's CNI network backend
	runc:runc              # podman's runtime there (crun refuses hybrid cgroup layouts)
	containernetworking-plugins:/usr/lib/cni/loopback
	busybox-static:/bin/busybox # the podman e2e's image is made from it, nothing is pulled
	ca-certificates:/etc/ssl/certs/ca-certificates.crt # Go module downloads
)
# Packaged daemons this script must not leave running.
UNITS=(openvswitch-switch.service ovsdb-server.service ovs-vswitchd.service etcd.service)
PIDFILES=(/var/run/openvswitch/ovsdb-server.pid /var/run/openvswitch/ovs-vswitchd.pid /var/run/etcd.pid)

die() { echo "install-deps: $*" >&2; exit 1; }
have() { case $1 in /*) [ -e "$1" ] ;; *) command -v "$1" >/dev/null 2>&1 ;; esac; }

check_go() {
	if ! command -v go >/dev/null 2>&1; then
		[ -x /usr/local/go/bin/go ] &&
			die "Go >= 1.$GO_MIN_MINOR is required: /usr/local/go/bin/go exists but is not in PATH (export PATH=\$PATH:/usr/local/go/bin)"
		die "Go >= 1.$GO_MIN_MINOR is required but 'go' is not in PATH; install it from https://go.dev/dl/"
	fi
	local v
	# Run inside the module so a GOTOOLCHAIN switch to go.mod's version counts.
	v=$(cd "$ROOT" && go env GOVERSION 2>&1) || die "'go env GOVERSION' failed: $v"
	[[ $v =~ ^go1\.([0-9]+) ]] || die "cannot parse Go version '$v'; Go >= 1.$GO_MIN_MINOR is required"
	((BASH_REMATCH[1] >= GO_MIN_MINOR)) ||
		die "Go >= 1.$GO_MIN_MINOR is required, found $v ($(command -v go)); install a newer one from https://go.dev/dl/"
	GO_VERSION=$v
}

active_units() {
	[ -d /run/systemd/system ] || return 0
	local u
	for u in "${UNITS[@]}"; do
		if systemctl is-active --quiet "$u"; then echo "$u"; fi
	done
}

live_pids() {
	local f p
	for f in "${PIDFILES[@]}"; do
		p=$(cat "$f" 2>/dev/null) || continue
		if [[ $p =~ ^[0-9]+$ ]] && kill -0 "$p" 2>/dev/null; then echo "$p"; fi
	done
}

# stop_new BEFORE_UNITS BEFORE_PIDS: stop what the install started.
stop_new() {
	local u p i
	for u in $(active_units); do
		if ! grep -qx "$u" <<<"$1"; then
			systemctl stop "$u" && STOPPED+=("$u")
		fi
	done
	for p in $(live_pids); do
		if ! grep -qx "$p" <<<"$2"; then
			kill "$p" 2>/dev/null || continue
			for ((i = 0; i < 50; i++)); do kill -0 "$p" 2>/dev/null || break; sleep 0.2; done
			STOPPED+=("pid $p")
		fi
	done
}

main() {
	check_go
	local missing=() d
	for d in "${DEPS[@]}"; do
		have "${d#*:}" || missing+=("${d%%:*}")
	done
	[ ${#missing[@]} -eq 0 ] && return 0

	[ "$(id -u)" -eq 0 ] || die "missing ${missing[*]}; run as root to install them"
	command -v apt-get >/dev/null || die "missing ${missing[*]} and no apt-get: install them by hand (Debian/Ubuntu package names)"

	local units_before pids_before log
	units_before=$(active_units)
	pids_before=$(live_pids)
	log=$(mktemp /tmp/install-deps.XXXXXX.log)
	if [ ! -e /usr/sbin/policy-rc.d ]; then
		# Deny service starts during the install; invoke-rc.d and
		# deb-systemd-invoke both honour this.
		printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
		chmod 755 /usr/sbin/policy-rc.d
		trap 'rm -f /usr/sbin/policy-rc.d' EXIT
	fi
	local apt=(apt-get -o DPkg::Lock::Timeout=300)
	if ! { "${apt[@]}" -q update &&
		DEBIAN_FRONTEND=noninteractive "${apt[@]}" install -y -q --no-install-recommends "${missing[@]}"; } \
		</dev/null >"$log" 2>&1; then
		tail -n 30 "$log" >&2
		die "apt-get failed installing ${missing[*]} (full log: $log)"
	fi
	rm -f "$log"
	STOPPED=()
	stop_new "$units_before" "$pids_before"
	for d in "${DEPS[@]}"; do
		have "${d#*:}" || die "${d%%:*} installed but ${d#*:} still not found"
	done
	local stopped=""
	[ ${#STOPPED[@]} -eq 0 ] || stopped="; stopped daemons the install started: ${STOPPED[*]}"
	echo "install-deps: installed ${missing[*]}$stopped; $GO_VERSION"
}

main "$@"
