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
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// metrics are the agent's Prometheus metrics. Names start keyroute_ and use
// the same words as the docs and keyroutectl.
type metrics struct {
	reg        *prometheus.Registry
	endpoints  prometheus.Gauge
	hosts      prometheus.Gauge
	badRecords prometheus.Counter
	etcdErrors *prometheus.CounterVec

	// rewrite mode
	punts          *prometheus.CounterVec
	bootstraps     prometheus.Counter
	expiries       *prometheus.CounterVec
	cacheEntries   *prometheus.GaugeVec
	cacheErrors    prometheus.Counter
	timeToFastPath prometheus.Histogram
	dscpChecks     *prometheus.CounterVec
}

func newMetrics() *metrics {
	m := &metrics{
		reg:        prometheus.NewRegistry(),
		endpoints:  prometheus.NewGauge(prometheus.GaugeOpts{Name: "keyroute_endpoints", Help: "Containers attached on this host."}),
		hosts:      prometheus.NewGauge(prometheus.GaugeOpts{Name: "keyroute_hosts", Help: "Cluster hosts known to this agent, itself included."}),
		badRecords: prometheus.NewCounter(prometheus.CounterOpts{Name: "keyroute_etcd_bad_records_total", Help: "etcd records skipped because they failed to decode."}),
	}
	m.etcdErrors = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "keyroute_etcd_errors_total",
		Help: "Failed etcd operations, by operation."}, []string{"op"})
	m.punts = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "keyroute_cache_misses_total",
		Help: "Cache-miss punts from br-int, by outcome (received, unknown, bad); see keyroute_cache_punts_ignored_total for those the key protocol ignored."}, []string{"outcome"})
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
	m.reg.MustRegister(m.dscpChecks, m.endpoints, m.hosts, m.badRecords, m.etcdErrors, m.punts, m.bootstraps, m.expiries,
		m.cacheEntries, m.cacheErrors, m.timeToFastPath)
	return m
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
		}{{BridgeInt, a.intSw, flows.IntTableNames()}, {BridgePhy, a.phySw, flows.PhyTableNames()}} {
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
		ch <- prometheus.MustNewConstMetric(reconn, prometheus.CounterValue, float64(st.Reconnects), BridgeInt)
		ch <- prometheus.MustNewConstMetric(reconn, prometheus.CounterValue, float64(a.phySw.Stats().Reconnects), BridgePhy)
	}})
	if a.cache != nil {
		a.metrics.reg.MustRegister(a.cache.collector())
	}
}

// collector exports cache hits and keys in use, read when scraped.
func (c *cache) collector() prometheus.Collector {
	hits := prometheus.NewDesc("keyroute_cache_hit_packets_total",
		"Packets that matched a cache entry, by side: egress (EgressCache entries in any state; pending and fallback ones send through VXLAN) "+
			"and restore. Flow counters of the entries installed now plus the final counts of the removed ones.", []string{"side"}, nil)
	keys := prometheus.NewDesc("keyroute_cache_keys_in_use", "Keys this host holds as sender, by peer host: pending and ready entries, and keys draining, quarantined or being released.", []string{"peer"}, nil)
	fallbackDesc := prometheus.NewDesc("keyroute_cache_fallbacks_total", "Pairs left on VXLAN without a key, by reason (keys_exhausted, etcd, no_next_hop, not_ready, key_conflict, dscp_path).", []string{"reason"}, nil)
	repairDesc := prometheus.NewDesc("keyroute_cache_repairs_total",
		"Differences between key records and flows found and repaired, by kind: at start-up (adopted, record_without_flow, flow_without_record), "+
			"by anti-entropy (egress_flow_lost, record_lost, orphan_record, restore_missing, restore_stale), and from punts (punt_after_install) and watches (record_deleted_elsewhere).", []string{"kind"}, nil)
	puntDropDesc := prometheus.NewDesc("keyroute_cache_punts_ignored_total", "Punts the key protocol ignored: before start-up finished (unsynced), while the pair's previous key is still held (busy), for an entry just installed (stale).", []string{"outcome"}, nil)
	releasedDesc := prometheus.NewDesc("keyroute_cache_keys_released_total", "Keys this host freed as sender, each after the confirmed removal of its flow and the quarantine.", nil, nil)
	return collectorFunc{descs: []*prometheus.Desc{hits, keys, fallbackDesc, repairDesc, puntDropDesc, releasedDesc}, collect: func(ch chan<- prometheus.Metric) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		for i, t := range []flows.Table{flows.EgressCache, flows.Restore} {
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
			if e.Key != 0 && e.State != cacheproto.StateFallback {
				perPeer[e.Peer]++
			}
		}
		for reason, n := range fallbacks {
			ch <- prometheus.MustNewConstMetric(fallbackDesc, prometheus.CounterValue, float64(n), reason)
		}
		for kind, n := range repairs {
			ch <- prometheus.MustNewConstMetric(repairDesc, prometheus.CounterValue, float64(n), kind)
		}
		for outcome, n := range map[string]uint64{"unsynced": count.PuntsUnsynced, "busy": count.PuntsBusy, "stale": count.PuntsStale} {
			ch <- prometheus.MustNewConstMetric(puntDropDesc, prometheus.CounterValue, float64(n), outcome)
		}
		ch <- prometheus.MustNewConstMetric(releasedDesc, prometheus.CounterValue, float64(count.Released))
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
	// The metrics address (loopback by default) also serves Go's profiler,
	// so a slow agent can be profiled where it runs: go tool pprof
	// http://<metrics_addr>/debug/pprof/profile.
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(a.metrics.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		srv.Close()
	}()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("metrics server: %w", err)
	}
	return nil
}
