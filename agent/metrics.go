package agent

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/http"
	"net/http/pprof"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/keyroute/keyroute/cacheproto"
	"github.com/keyroute/keyroute/controller"
	"github.com/keyroute/keyroute/flows"
	"github.com/keyroute/keyroute/openflow"
	"github.com/keyroute/keyroute/registry"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// metrics are the agent's Prometheus metrics. Names start keyroute_ and use
// the same words as the docs and keyroutectl.
type metrics struct {
	reg        *prometheus.Registry
	endpoints  prometheus.Gauge
	hosts      prometheus.Gauge
	badRecords *prometheus.CounterVec
	etcdErrors *prometheus.CounterVec
	// portFallbacks counts AF_XDP ports re-created as system ports.
	portFallbacks *prometheus.CounterVec

	// rewrite mode
	punts          *prometheus.CounterVec
	fragNeeded     *prometheus.CounterVec
	bootstraps     prometheus.Counter
	expiries       *prometheus.CounterVec
	cacheEntries   *prometheus.GaugeVec
	cacheErrors    prometheus.Counter
	timeToFastPath prometheus.Histogram
	dscpChecks     *prometheus.CounterVec
}

func newMetrics() *metrics {
	m := &metrics{
		reg:       prometheus.NewRegistry(),
		endpoints: prometheus.NewGauge(prometheus.GaugeOpts{Name: "keyroute_endpoints", Help: "Containers attached on this host."}),
		hosts:     prometheus.NewGauge(prometheus.GaugeOpts{Name: "keyroute_hosts", Help: "Cluster hosts known to this agent, itself included."}),
		badRecords: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "keyroute_etcd_bad_records_total",
			Help: "etcd records skipped because they failed validation, by kind (host, alive, subnet, endpoint, roaming, key, pair, rule); every skip counts, each version of a bad record is logged once."},
			[]string{"kind"}),
	}
	// Every kind shows from the start, so a rate or an alert has a zero
	// to start from.
	for _, k := range registry.RecordKinds {
		m.badRecords.WithLabelValues(k)
	}
	skipped := prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "keyroute_flows_skipped_inputs_total",
		Help: "Endpoints, peers and roaming addresses left out of the flows because an address was not IPv4; records are validated when read, so it stays 0."},
		func() float64 { return float64(flows.SkippedInputs()) })
	m.portFallbacks = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "keyroute_port_fallbacks_total",
		Help: "AF_XDP ports that did not come up and were created again as system ports, by kind (uplink, container); keyroutectl status names each with OVS's error."}, []string{"kind"})
	for _, k := range []string{"uplink", "container"} {
		m.portFallbacks.WithLabelValues(k)
	}
	m.etcdErrors = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "keyroute_etcd_errors_total",
		Help: "Failed etcd operations, by operation."}, []string{"op"})
	m.punts = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "keyroute_cache_misses_total",
		Help: "Cache-miss punts from br-int, by outcome (received, unknown, bad); see keyroute_cache_punts_ignored_total for those the key protocol ignored."}, []string{"outcome"})
	m.fragNeeded = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "keyroute_frag_needed_total",
		Help: "Packets too big for the VXLAN path (the punt meter of TunnelOut let through), by outcome: sent (ICMP fragmentation needed sent, DF was set), sent_no_df (sent all the same, DF was clear), not_answered (an ICMP error or a non-first fragment, RFC 1122), bad (failed validation), failed (packet-out error). Every such packet is dropped."}, []string{"outcome"})
	for _, o := range fragOutcomes {
		m.fragNeeded.WithLabelValues(o)
	}
	m.bootstraps = prometheus.NewCounter(prometheus.CounterOpts{Name: "keyroute_cache_bootstraps_total", Help: "Key allocations started for new pairs."})
	m.expiries = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "keyroute_cache_expiries_total",
		Help: "Cache entries that idled out, by side (egress, restore)."}, []string{"side"})
	m.cacheEntries = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "keyroute_cache_entries",
		Help: "Cache entries installed, by side (egress, restore)."}, []string{"side"})
	m.cacheErrors = prometheus.NewCounter(prometheus.CounterOpts{Name: "keyroute_cache_install_errors_total", Help: "Failed cache flow installs."})
	m.timeToFastPath = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "keyroute_cache_time_to_fast_path_seconds",
		Help: "From a pair's first punt to its rewrite entry installed.", Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16)})
	m.dscpChecks = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "keyroute_dscp_path_checks_total",
		Help: "DSCP path checks towards peers, by peer and result (verified, remarked, lost: some keys unanswered, no_answer: the peer's agent did not answer)."}, []string{"peer", "result"})
	m.reg.MustRegister(m.portFallbacks, m.dscpChecks, m.endpoints, m.hosts, m.badRecords, skipped, m.etcdErrors, m.punts, m.fragNeeded, m.bootstraps, m.expiries,
		m.cacheEntries, m.cacheErrors, m.timeToFastPath)
	return m
}

// badRecord counts a record skipped by a registry, key or rule read; err is
// a *registry.RecordError, which the reader has logged (once).
func (m *metrics) badRecord(_ string, err error) {
	kind := registry.RecordKind(err)
	if kind == "" {
		kind = "unknown"
	}
	m.badRecords.WithLabelValues(kind).Inc()
}

func (m *metrics) setCounts(endpoints, peers int) {
	m.endpoints.Set(float64(endpoints))
	m.hosts.Set(float64(peers + 1))
}

// registerSwitchMetrics exports the OpenFlow connections' counters and the
// flow counts per table, read when scraped.
func (a *Agent) registerSwitchMetrics() {
	pin := prometheus.NewDesc("keyroute_packet_ins_total", "Packet-ins from br-int by outcome.", []string{"outcome"}, nil)
	flowsDesc := prometheus.NewDesc("keyroute_flows", "Flows the agent keeps installed, by bridge and table.", []string{"bridge", "table"}, nil)
	reconn := prometheus.NewDesc("keyroute_openflow_reconnects_total", "OpenFlow reconnects, by bridge.", []string{"bridge"}, nil)
	a.metrics.reg.MustRegister(collectorFunc{descs: []*prometheus.Desc{pin, flowsDesc, reconn}, collect: func(ch chan<- prometheus.Metric) {
		st := a.intSw.Stats()
		ch <- prometheus.MustNewConstMetric(pin, prometheus.CounterValue, float64(st.PacketIns), "received")
		ch <- prometheus.MustNewConstMetric(pin, prometheus.CounterValue, float64(st.PacketInsDropped), "dropped")
		for _, b := range []struct {
			name  string
			sw    *controller.Switch
			names map[uint8]string
		}{{a.cfg.Bridges.Integration, a.intSw, flows.IntTableNames()}, {a.cfg.Bridges.Physical, a.phySw, flows.PhyTableNames()}} {
			perTable := map[uint8]int{}
			for _, owner := range flowOwners {
				for _, f := range b.sw.Desired(owner) {
					perTable[f.Table]++
				}
			}
			for t, name := range b.names {
				ch <- prometheus.MustNewConstMetric(flowsDesc, prometheus.GaugeValue, float64(perTable[t]), b.name, name)
			}
		}
		ch <- prometheus.MustNewConstMetric(reconn, prometheus.CounterValue, float64(st.Reconnects), a.cfg.Bridges.Integration)
		ch <- prometheus.MustNewConstMetric(reconn, prometheus.CounterValue, float64(a.phySw.Stats().Reconnects), a.cfg.Bridges.Physical)
	}})
	if a.cache != nil {
		a.metrics.reg.MustRegister(a.cache.collector())
	}
	a.metrics.reg.MustRegister(a.guardCollector())
}

// guardCollector exports the packets the SpoofGuard drops of container
// traffic to the control plane (flows.GuardFlows) have dropped, by
// protocol and port, from the flows' packet counts, read when scraped.
func (a *Agent) guardCollector() prometheus.Collector {
	drops := prometheus.NewDesc("keyroute_control_plane_drops_total",
		"Packets from containers to the control plane dropped in SpoofGuard, by protocol and port: TCP to this host's own addresses on "+
			"etcd's and the agent's ports, UDP to any cluster host's VXLAN port. Counts of the flows installed now.", []string{"proto", "port"}, nil)
	return collectorFunc{descs: []*prometheus.Desc{drops}, collect: func(ch chan<- prometheus.Metric) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		stats, err := a.intSw.FlowStats(ctx, &openflow.FlowStatsRequest{Table: uint8(flows.SpoofGuard), OutPort: openflow.PortAny, OutGroup: openflow.GroupAny,
			Cookie: flows.Cookie(flows.CatGuard, 0), CookieMask: flows.CategoryMask})
		if err != nil {
			return // no figure rather than a wrong one
		}
		type key struct {
			proto string
			port  uint16
		}
		n := map[key]uint64{}
		for _, p := range a.host.ProtectedTCPPorts {
			n[key{"tcp", p}] += 0
		}
		if a.host.TunnelUDPPort != 0 {
			n[key{"udp", a.host.TunnelUDPPort}] += 0
		}
		for _, st := range stats {
			if flows.CookieCategory(st.Cookie) != flows.CatGuard {
				continue
			}
			_, proto, port := flows.GuardTarget(st.Cookie)
			name := "tcp"
			if proto == 17 {
				name = "udp"
			}
			n[key{name, port}] += st.PacketCount
		}
		for k, v := range n {
			ch <- prometheus.MustNewConstMetric(drops, prometheus.CounterValue, float64(v), k.proto, fmt.Sprint(k.port))
		}
	}}
}

// servePprof serves Go's profiler on its own opt-in listener (pprof_addr),
// never on the metrics address: go tool pprof http://<pprof_addr>/debug/pprof/profile.
func (a *Agent) servePprof(ctx context.Context) error {
	ln, err := net.Listen("tcp", a.cfg.PprofAddr)
	if err != nil {
		return fmt.Errorf("pprof listener on %s: %w", a.cfg.PprofAddr, err)
	}
	a.log.Info("serving pprof", "addr", ln.Addr().String())
	srv := &http.Server{Handler: pprofMux(), ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		srv.Close()
	}()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("pprof server: %w", err)
	}
	return nil
}

// metricsMux serves /metrics only; the profiler has its own listener.
func metricsMux(reg *prometheus.Registry) *http.ServeMux {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	return mux
}

func pprofMux() *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return mux
}

// collector exports cache hits and keys in use, read when scraped.
func (c *cache) collector() prometheus.Collector {
	hits := prometheus.NewDesc("keyroute_cache_hit_packets_total",
		"Packets that matched a cache entry, by side: egress (EgressCache entries in any state; pending and fallback ones send through VXLAN) "+
			"and restore. Flow counters of the entries installed now plus the final counts of the removed ones.", []string{"side"}, nil)
	keys := prometheus.NewDesc("keyroute_cache_keys_in_use", "Keys this host holds as sender, by peer host: pending and ready entries, and keys draining, quarantined or being released.", []string{"peer"}, nil)
	fallbackDesc := prometheus.NewDesc("keyroute_cache_fallbacks_total", "Pairs left on VXLAN without a key, by reason (keys_exhausted, evicted, etcd, no_next_hop, not_ready, key_conflict, address_gone, dscp_path).", []string{"reason"}, nil)
	repairDesc := prometheus.NewDesc("keyroute_cache_repairs_total",
		"Differences between key records and flows found and repaired, by kind: at start-up (adopted, record_without_flow, flow_without_record), "+
			"by anti-entropy (egress_flow_lost, record_lost, orphan_record, restore_missing, restore_stale, exhausted_key_free), and from punts (punt_after_install) and watches (record_deleted_elsewhere).", []string{"kind"}, nil)
	puntDropDesc := prometheus.NewDesc("keyroute_cache_punts_ignored_total", "Punts the key protocol ignored: before start-up finished (unsynced), while the pair's previous key is still held (busy), for an entry just installed (stale); and those whose allocation waited out the first quarantine after start-up (deferred).", []string{"outcome"}, nil)
	releasedDesc := prometheus.NewDesc("keyroute_cache_keys_released_total", "Keys this host freed as sender, each after the confirmed removal of its flow and the quarantine.", nil, nil)
	retriedDesc := prometheus.NewDesc("keyroute_cache_fallback_retries_total", "Fallback entries of pairs out of keys dropped so that the pair bootstraps again, because a key towards its peer was freed.", nil, nil)
	swapsDesc := prometheus.NewDesc("keyroute_cache_key_swaps_total", "Keyed pairs that gave their key to a pair carrying more traffic (cache.eviction: traffic); each loser went to VXLAN and its key was freed through the quarantine.", nil, nil)
	return collectorFunc{descs: []*prometheus.Desc{hits, keys, fallbackDesc, repairDesc, puntDropDesc, releasedDesc, retriedDesc, swapsDesc}, collect: func(ch chan<- prometheus.Metric) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		for i, t := range []flows.IntTable{flows.EgressCache, flows.Restore} {
			stats, err := c.a.intSw.FlowStats(ctx, &openflow.FlowStatsRequest{Table: uint8(t), OutPort: openflow.PortAny, OutGroup: openflow.GroupAny})
			if err != nil {
				continue // no figure rather than a wrong one
			}
			n := c.retired[i].Load()
			for _, st := range stats {
				if cat := flows.CookieCategory(st.Cookie); cat == flows.CatCache || cat == flows.CatRestore {
					n += st.PacketCount
				}
			}
			ch <- prometheus.MustNewConstMetric(hits, prometheus.CounterValue, float64(n), [2]string{"egress", "restore"}[i])
		}
		perPeer := map[string]int{}
		c.mu.Lock()
		send, _ := c.m.Entries()
		count := c.m.Count
		fallbacks, repairs := maps.Clone(count.Fallbacks), maps.Clone(count.Repairs)
		c.mu.Unlock()
		for _, e := range send {
			if !e.Key.IsZero() && e.State != cacheproto.StateFallback {
				perPeer[e.Peer]++
			}
		}
		for reason, n := range fallbacks {
			ch <- prometheus.MustNewConstMetric(fallbackDesc, prometheus.CounterValue, float64(n), reason)
		}
		for kind, n := range repairs {
			ch <- prometheus.MustNewConstMetric(repairDesc, prometheus.CounterValue, float64(n), kind)
		}
		for outcome, n := range map[string]uint64{"unsynced": count.PuntsUnsynced, "busy": count.PuntsBusy, "stale": count.PuntsStale, "deferred": count.PuntsDeferred} {
			ch <- prometheus.MustNewConstMetric(puntDropDesc, prometheus.CounterValue, float64(n), outcome)
		}
		ch <- prometheus.MustNewConstMetric(releasedDesc, prometheus.CounterValue, float64(count.Released))
		ch <- prometheus.MustNewConstMetric(retriedDesc, prometheus.CounterValue, float64(count.Retried))
		ch <- prometheus.MustNewConstMetric(swapsDesc, prometheus.CounterValue, float64(count.Swaps))
		for peer, n := range perPeer {
			ch <- prometheus.MustNewConstMetric(keys, prometheus.GaugeValue, float64(n), peer)
		}
	}}
}

type collectorFunc struct {
	descs   []*prometheus.Desc
	collect func(chan<- prometheus.Metric)
}

func (c collectorFunc) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range c.descs {
		ch <- d
	}
}
func (c collectorFunc) Collect(ch chan<- prometheus.Metric) { c.collect(ch) }

func (a *Agent) serveMetrics(ctx context.Context) error {
	a.registerSwitchMetrics()
	ln, err := net.Listen("tcp", a.cfg.MetricsAddr)
	if err != nil {
		return fmt.Errorf("metrics listener on %s: %w", a.cfg.MetricsAddr, err)
	}
	srv := &http.Server{Handler: metricsMux(a.metrics.reg), ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		srv.Close()
	}()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("metrics server: %w", err)
	}
	return nil
}
