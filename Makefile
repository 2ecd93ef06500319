# keyroute: build, test, lint, bench, fuzz and demo. See README.md.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := build

GO           ?= go
BIN          := $(CURDIR)/bin
TEST_TIMEOUT ?= 25m
# An execution count (Nx), not a duration: Go before 1.27 can fail a
# duration-bounded fuzz run with a bare "context deadline exceeded" when the
# deadline races a busy worker (golang/go#75804); a count has no deadline.
# 200000x is about 10 s per target on 2 cores.
FUZZTIME     ?= 200000x
# Packages for test, test-unit, lint, bench and fuzz, e.g. PKGS=./openflow/...
PKGS         ?= ./...
# Extra flags for go test, e.g. make test GOTESTFLAGS='-run TestX -v'
GOTESTFLAGS  ?=
# staticcheck 2026.2.2; the first release line that knows Go 1.26.
STATICCHECK_VERSION := v0.8.2

# The version every binary reports (keyroute-agent --version, keyroutectl
# version, host records): git describe, else the Go default (dev-<commit>).
VERSION      ?= $(shell git describe --tags --always --dirty 2>/dev/null)
LDFLAGS      := $(if $(VERSION),-X github.com/keyroute/keyroute/internal/version.Version=$(VERSION))

.PHONY: build deps test test-unit lint bench bench-quick bench-go fuzz demo demo-runtime package clean install-cni

build:
	$(GO) build -ldflags '$(LDFLAGS)' -o $(BIN)/ ./cmd/...

# A .deb (dpkg-deb) of keyroute-agent, keyroutectl, keyroute-cni when
# cmd/keyroute-cni exists, the systemd unit and /etc/keyroute/agent.yaml;
# into PKG_DIR. Static binaries (CGO off), so they run on any Debian.
PKG_DIR      ?= $(CURDIR)/dist
package:
	CGO_ENABLED=0 $(GO) build -ldflags '$(LDFLAGS)' -o $(BIN)/ ./cmd/keyroute-agent ./cmd/keyroutectl $(addprefix ./,$(wildcard cmd/keyroute-cni))
	@scripts/build-deb.sh $(BIN) $(PKG_DIR) '$(VERSION)'

# The CNI plugin into the CNI bin directory and its network configuration
# into the CNI config directory, where container runtimes look for them.
CNI_BIN_DIR  ?= /opt/cni/bin
CNI_CONF_DIR ?= /etc/cni/net.d
install-cni:
	$(GO) build -o $(BIN)/ ./cmd/keyroute-cni
	install -d $(CNI_BIN_DIR) $(CNI_CONF_DIR)
	install -m 0755 $(BIN)/keyroute-cni $(CNI_BIN_DIR)/keyroute-cni
	install -m 0644 configs/10-keyroute.conflist $(CNI_CONF_DIR)/10-keyroute.conflist

deps:
	@scripts/install-deps.sh

# The full suite as root. KEYROUTE_REQUIRE_INTEGRATION=1 turns a missing
# binary or a missing root into a failure instead of a skip (internal/testenv).
# -count=1: integration results depend on the host, never reuse cached ones.
# The key protocol's simulator (100,000 schedules by default, SCHEDULES to
# change) runs first and alone: it takes both cores for about a minute and
# would slow the timing-sensitive end-to-end tests beside it.
SCHEDULES    ?= 100000
test: deps
	@if [ "$$(id -u)" -ne 0 ]; then echo "make test runs the integration tests and needs root; without root use make test-unit" >&2; exit 1; fi
	$(GO) test -count=1 -timeout $(TEST_TIMEOUT) -run '^TestSimulate$$' ./cacheproto/ -schedules $(SCHEDULES) -v | grep -E '^(--- |ok|FAIL|PASS)|schedules|seed'
	KEYROUTE_REQUIRE_INTEGRATION=1 $(GO) test -count=1 -timeout $(TEST_TIMEOUT) -skip '^TestSimulate$$' $(PKGS) $(GOTESTFLAGS)

# Unit tests only: -short makes tests that need root or OVS daemons skip.
test-unit:
	$(GO) test -short -timeout $(TEST_TIMEOUT) $(PKGS) $(GOTESTFLAGS)

# Both linters run even when the first one complains.
lint:
	@if ! $(BIN)/staticcheck -version 2>/dev/null | grep -qF '($(STATICCHECK_VERSION:v%=%))'; then \
		echo "installing staticcheck $(STATICCHECK_VERSION) into bin/"; \
		GOBIN=$(BIN) $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION); \
	fi
	@rc=0; \
	echo "$(GO) vet $(PKGS)"; $(GO) vet $(PKGS) || rc=1; \
	echo "staticcheck $(PKGS)"; $(BIN)/staticcheck $(PKGS) || rc=1; \
	exit $$rc

# keyroute against the host path, kernel VXLAN and a veth, side by side on
# simulated hosts (cmd/keyroute-bench; needs root): results, report.md and
# charts in bench/results/<timestamp>/. BENCHFLAGS adds flags, e.g.
# BENCHFLAGS='--reps 3 --tso=false'. bench-quick is the ≤ 2 minute CI run.
BENCHFLAGS ?=
bench: build
	$(BIN)/keyroute-bench $(BENCHFLAGS)

bench-quick: build
	$(BIN)/keyroute-bench --quick $(BENCHFLAGS)

# The Go benchmarks (go test -bench) of PKGS.
bench-go:
	$(GO) test -run='^$$' -bench=. -benchmem -timeout $(TEST_TIMEOUT) $(PKGS)

# Runs every Fuzz target in PKGS for FUZZTIME each. `go test -list`
# prints a package's matching names, then its "ok <pkg>" line.
fuzz:
	@targets=$$($(GO) test -list '^Fuzz' $(PKGS) | awk '/^Fuzz/ { f[n++] = $$1; next } /^ok/ { for (i = 0; i < n; i++) print $$2, f[i] } { n = 0 }'); \
	if [ -z "$$targets" ]; then echo "no fuzz targets"; exit 0; fi; \
	while read -r pkg fn; do \
		echo "fuzz $$fn ($$pkg) for $(FUZZTIME)"; \
		$(GO) test -run='^$$' -fuzz="^$$fn\$$" -fuzztime=$(FUZZTIME) "$$pkg"; \
	done <<<"$$targets"

demo: deps build
	@if [ -x $(BIN)/keyroute-demo ]; then \
		$(BIN)/keyroute-demo; \
	else \
		echo "make demo arrives with the overlay (no cmd/keyroute-demo yet)"; \
	fi

# The same with containers started by podman through keyroute-cni.
demo-runtime: deps build
	$(BIN)/keyroute-demo --runtime

clean:
	rm -rf $(BIN) $(CURDIR)/dist
