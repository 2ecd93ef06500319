package agent

import (
	"context"
	"fmt"
	"time"

	"github.com/keyroute/keyroute/cacheproto"
	"github.com/keyroute/keyroute/flows"
	"github.com/keyroute/keyroute/openflow"
)

// rateEvery is how often the agent reads its EgressCache counters for
// each pair's traffic (cacheproto.Machine.Rates: eviction, and the rate
// `keyroutectl keys` shows).
const rateEvery = 2 * time.Second

// flowBytes is one EgressCache entry's byte counter when last read.
type flowBytes struct {
	cookie uint64
	bytes  uint64
	age    time.Duration
}

// rateMeter turns successive reads of EgressCache counters into bytes/s
// per pair. An entry read for the first time (or replaced since: another
// cookie, or a younger flow) counts its bytes over its own age.
type rateMeter struct{ last map[cacheproto.Pair]flowBytes }

func (r *rateMeter) update(stats []openflow.FlowStats, dt time.Duration) map[cacheproto.Pair]float64 {
	next := make(map[cacheproto.Pair]flowBytes, len(stats))
	out := make(map[cacheproto.Pair]float64, len(stats))
	for _, st := range stats {
		if flows.CookieCategory(st.Cookie) != flows.CatCache {
			continue
		}
		p := cacheproto.Pair{Src: matchIPv4(st.Match, openflow.FieldIPv4Src), Dst: matchIPv4(st.Match, openflow.FieldIPv4Dst)}
		cur := flowBytes{cookie: st.Cookie, bytes: st.ByteCount,
			age: time.Duration(st.DurationSec)*time.Second + time.Duration(st.DurationNsec)}
		next[p] = cur
		prev, ok := r.last[p]
		switch {
		case ok && prev.cookie == cur.cookie && cur.age > prev.age && cur.bytes >= prev.bytes && dt > 0:
			out[p] = float64(cur.bytes-prev.bytes) / dt.Seconds()
		case cur.age > 0:
			out[p] = float64(cur.bytes) / cur.age.Seconds()
		}
	}
	r.last = next
	return out
}

// rateLoop feeds the machine each pair's traffic every rateEvery.
func (c *cache) rateLoop(ctx context.Context) {
	var meter rateMeter
	last := time.Now()
	every(ctx, rateEvery, func() {
		if err := c.readRates(ctx, &meter, time.Since(last)); err != nil {
			c.a.log.Debug("cache rates skipped", "err", err)
			return
		}
		last = time.Now()
	})
}

func (c *cache) readRates(ctx context.Context, meter *rateMeter, dt time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	stats, err := c.a.intSw.FlowStats(ctx, &openflow.FlowStatsRequest{Table: uint8(flows.EgressCache), OutPort: openflow.PortAny, OutGroup: openflow.GroupAny})
	if err != nil {
		return fmt.Errorf("dump %s: %w", flows.EgressCache.Name(), err)
	}
	rates := meter.update(stats, dt)
	c.do(func(now time.Time) []cacheproto.Effect { return c.m.Rates(now, rates) })
	return nil
}
