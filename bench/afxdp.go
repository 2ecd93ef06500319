package bench

import (
	"fmt"
	"strings"
)

// afxdpRatio is AF_XDP over system ports for one path, test and figure,
// repetition by repetition.
func afxdpRatio(samples []Sample, p Path, test string, m metric) Summary {
	return Summarize(PairedRatios(values(samples, p, test, VariantAFXDP, m), values(samples, p, test, "", m)))
}

// afxdpTargets are the goal for AF_XDP ports: at least 1.25× the
// throughput of system ports on every OVS path.
func afxdpTargets(res *Result) []Target {
	if !res.Config.afxdp() {
		return nil
	}
	var ts []Target
	for _, p := range afxdpPaths {
		if !res.Config.measures(p) {
			continue
		}
		ts = append(ts, Target{What: fmt.Sprintf("%s AF_XDP / system ports throughput, 1 stream", p),
			Measured: afxdpRatio(res.Samples, p, TestTCP1, mGbps).Median, Goal: 1.25, Higher: true, Unit: "×",
			Limit: "an AF_XDP port saves the packet socket's system calls and copies, not the datapath's per-packet work; on ~2 shared cores the vswitchd main thread (which polls the non-PMD AF_XDP rings too) competes with iperf3 and the other side's vswitchd, and the foreign column shows how much of the machine was ours"})
	}
	return ts
}

// afxdpSection renders the AF_XDP against system ports comparison.
func afxdpSection(res *Result) string {
	c := res.Config
	var b strings.Builder
	w := func(format string, a ...any) { fmt.Fprintf(&b, format, a...) }
	w("## AF_XDP ports against system ports\n\n")
	if !c.afxdp() {
		types := strings.Join(c.PortTypes, ",")
		if types == "" {
			types = PortSystem // results of runs before port types were measured
		}
		w("Not run (`--port-types %s`). With `--port-types system,afxdp` (the default of a full run) A, B and C are measured again on two more clusters "+
			"built the same way whose agents have `ovs.port_type: afxdp`, interleaved with the system-port samples.\n\n", types)
		return b.String()
	}
	w("A, B and C again on two more clusters built the same way, whose agents run with `ovs.port_type: afxdp` (uplinks and container veths as " +
		"`afxdp-nonpmd` ports, `xdp-mode=generic`), up at the same time; each repetition measures a path's system-port and AF_XDP samples back to back, " +
		"and ratios are taken repetition by repetition (median, min–max). Retransmits are medians per run.\n\n")
	if res.PortTypeNote != "" {
		w("%s\n\n", mdEscape(res.PortTypeNote))
	}
	w("| path | TCP 1 stream Gb/s system / AF_XDP | AF_XDP/system, 1 stream | AF_XDP/system, 4 streams | vswitchd CPU s/GB system / AF_XDP | AF_XDP/system CPU/GB (1 stream) | retransmits 1 stream system / AF_XDP | retransmits 4 streams system / AF_XDP | RR p50 µs system / AF_XDP |\n")
	w("|---|---|---|---|---|---|---|---|---|\n")
	s := res.Samples
	for _, p := range afxdpPaths {
		if !c.measures(p) {
			continue
		}
		w("| %s | %s / %s | %s | %s | %s / %s | %s | %s / %s | %s / %s | %s / %s |\n", p,
			rangeStr(summarize(s, p, TestTCP1, "", mGbps), 3), rangeStr(summarize(s, p, TestTCP1, VariantAFXDP, mGbps), 3),
			rangeStr(afxdpRatio(s, p, TestTCP1, mGbps), 2), rangeStr(afxdpRatio(s, p, TestTCP4, mGbps), 2),
			rangeStr(summarize(s, p, TestTCP1, "", mCPUGB), 2), rangeStr(summarize(s, p, TestTCP1, VariantAFXDP, mCPUGB), 2),
			rangeStr(afxdpRatio(s, p, TestTCP1, mCPUGB), 2),
			f(summarize(s, p, TestTCP1, "", mRetr).Median, 0), f(summarize(s, p, TestTCP1, VariantAFXDP, mRetr).Median, 0),
			f(summarize(s, p, TestTCP4, "", mRetr).Median, 0), f(summarize(s, p, TestTCP4, VariantAFXDP, mRetr).Median, 0),
			rangeStr(summarize(s, p, TestRR, "", mP50), 1), rangeStr(summarize(s, p, TestRR, VariantAFXDP, mP50), 1))
		if e := firstErr(s, p, VariantAFXDP); e != "" {
			w("\n%s with AF_XDP ports failed at least once: %s\n\n", p, mdEscape(firstLine(e)))
		}
	}
	w("\nUserspace TSO does not combine with AF_XDP ports in OVS 3.1, so the TSO variant below runs on the system-port clusters only.\n\n")
	return b.String()
}
