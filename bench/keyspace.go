package bench

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"

	"github.com/keyroute/keyroute/keyalloc"
	"github.com/keyroute/keyroute/simcluster"
)

// KeySpaceGoal is the target: with cache.eviction: traffic, at
// least this share of the bytes is on the fast path.
const KeySpaceGoal = 0.95

// evictionPolicies are run in this order, one cluster each.
var evictionPolicies = []string{"traffic", "none"}

// KeySpace is what the key-space phase measured: the same experiment as
// e2e TestKeySpaceEviction (simcluster.RunKeySpace) under each eviction
// policy.
type KeySpace struct {
	// Keys is the default key set's size: keys per host pair direction.
	Keys int           `json:"keys"`
	Runs []KeySpaceRun `json:"runs"`
}

// KeySpaceRun is one policy's run.
type KeySpaceRun struct {
	Eviction string                    `json:"eviction"`
	Result   simcluster.KeySpaceResult `json:"result"`
	Err      string                    `json:"error,omitempty"`
}

// run returns the run under policy, or nil.
func (ks *KeySpace) run(policy string) *KeySpaceRun {
	if ks == nil {
		return nil
	}
	for i := range ks.Runs {
		if ks.Runs[i].Eviction == policy {
			return &ks.Runs[i]
		}
	}
	return nil
}

// share is policy's share of bytes on the fast path (NaN if not measured).
func (ks *KeySpace) share(policy string) float64 {
	if r := ks.run(policy); r != nil && r.Err == "" {
		return r.Result.FastShare
	}
	return math.NaN()
}

// runKeySpace runs the key-space experiment under every eviction policy,
// one two-host rewrite cluster after the other. The error names runs that
// failed or misdelivered.
func runKeySpace(ctx context.Context, log *slog.Logger, binDir string) (*KeySpace, error) {
	ks := &KeySpace{Keys: keyalloc.DefaultKeySet().Len()}
	var errs []error
	for _, policy := range evictionPolicies {
		if ctx.Err() != nil {
			return ks, ctx.Err()
		}
		log.Info("key space", "eviction", policy)
		run := KeySpaceRun{Eviction: policy}
		res, err := keySpaceOnce(ctx, log, binDir, policy)
		run.Result = res
		if err != nil {
			run.Err = err.Error()
			errs = append(errs, fmt.Errorf("key space, eviction %s: %w", policy, err))
		} else if n := res.Load.Misdeliveries; n > 0 {
			errs = append(errs, fmt.Errorf("key space, eviction %s: %d misdelivered datagrams", policy, n))
		}
		ks.Runs = append(ks.Runs, run)
	}
	return ks, errors.Join(errs...)
}

func keySpaceOnce(ctx context.Context, log *slog.Logger, binDir, policy string) (res simcluster.KeySpaceResult, err error) {
	cl, err := simcluster.NewCluster(ctx, simcluster.Options{Mode: "rewrite", BinDir: binDir, Logger: log,
		AgentConfig: func(_ int, cfg map[string]any) { cfg["cache"] = map[string]any{"eviction": policy} }})
	if err != nil {
		return res, fmt.Errorf("cluster: %w", err)
	}
	defer func() { err = errors.Join(err, cl.Close()) }()
	return simcluster.RunKeySpace(ctx, cl, simcluster.KeySpaceOptions{})
}

// ksPairs is the number of pairs the runs had (0 if none got so far).
func ksPairs(ks *KeySpace) int {
	n := 0
	for _, r := range ks.Runs {
		n = max(n, r.Result.Pairs)
	}
	return n
}

// writeKeySpace renders the report's key-space section.
func writeKeySpace(w func(string, ...any), res *Result) {
	w("\n## Key space: who gets the keys\n\n")
	ks := res.KeySpace
	if ks == nil {
		switch {
		case res.KeySpaceErr != "":
			w("Failed: %s\n", mdEscape(firstLine(res.KeySpaceErr)))
		case res.Config.Quick:
			w("Not run: `--quick` leaves it out (it takes about 2 minutes; CI runs it as e2e TestKeySpaceEviction).\n")
		default:
			w("Not run (`--no-key-space`).\n")
		}
		return
	}
	var o simcluster.KeySpaceOptions
	for _, r := range ks.Runs {
		if r.Result.Pairs > 0 {
			o = r.Result.Options
			break
		}
	}
	w("The experiment of e2e `TestKeySpaceEviction` (`simcluster.RunKeySpace`), once per `cache.eviction` policy, each on a fresh "+
		"two-host rewrite cluster: %d containers on h1 × %d on h2 = %d pairs h1→h2 sharing that direction's %d keys (the default key set). "+
		"Every pair first chats (64 B every 4 s) for %s, so the keys go to the pairs that ask first; then the pair of rank r sends "+
		"%.0f / r^%g bytes/s (ranks in a fixed random order unrelated to who asked first; UDP, tagged payloads checked at every receiver). "+
		"After %s of skewed traffic, the bytes h1 sends h2 are counted for %s by nftables counters on the fabric's bridge: packets with a "+
		"DSCP key (the fast path; the DSCP path check's probes left out) and VXLAN packets less their 50 bytes of encapsulation.\n\n",
		o.Senders, o.Receivers, ksPairs(ks), ks.Keys, o.Chat, o.TopRate, o.Exponent, o.Settle, o.Measure)
	w("| cache.eviction | bytes on the fast path | fast path / VXLAN (inner) bytes | key swaps (h1) | datagrams sent / delivered | misdeliveries |\n|---|---|---|---|---|---|\n")
	for _, r := range ks.Runs {
		x := r.Result
		if r.Err != "" {
			w("| %s | failed: %s | | | | %d |\n", r.Eviction, mdEscape(firstLine(r.Err)), x.Load.Misdeliveries)
			continue
		}
		mis := fmt.Sprint(x.Load.Misdeliveries)
		if x.Load.Misdeliveries > 0 {
			mis = "**" + mis + "**"
		}
		w("| %s | %s%% | %d / %d | %.0f | %d / %d | %s |\n", r.Eviction, f(100*x.FastShare, 1), x.Wire.FastBytes, x.Wire.TunnelBytes(),
			x.KeySwaps, x.Load.Sent, x.Load.Received, mis)
	}
	goal := fmt.Sprintf("%.0f%%", 100*KeySpaceGoal)
	switch got := ks.share("traffic"); {
	case math.IsNaN(got):
		w("\nTarget (≥ %s of the bytes on the fast path with eviction traffic): not measured.\n", goal)
	case got >= KeySpaceGoal:
		w("\nTarget (≥ %s of the bytes on the fast path with eviction traffic): **met** (%s%%).\n", goal, f(100*got, 1))
	default:
		w("\nTarget (≥ %s of the bytes on the fast path with eviction traffic): **missed** (%s%%).\n", goal, f(100*got, 1))
	}
	w("Misdeliveries must be 0: a datagram a receiver got that names another receiver, or that does not come from the sender it names. " +
		"Datagrams not delivered are UDP lost on the shared machine or while a pair changes path; the e2e test allows at most 0.1%%.\n")
	for _, r := range ks.Runs {
		for _, e := range r.Result.Load.Examples {
			w("\n- misdelivered (eviction %s): %s", r.Eviction, mdEscape(e))
		}
		for _, e := range r.Result.Load.LossyExamples {
			w("\n- not all delivered (eviction %s): %s", r.Eviction, mdEscape(e))
		}
		if len(r.Result.Load.Examples)+len(r.Result.Load.LossyExamples) > 0 {
			w("\n")
		}
	}
}
