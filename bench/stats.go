package bench

import (
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"strconv"
)

// Summary is the median and range of one figure over the repetitions.
type Summary struct {
	N      int     `json:"n"`
	Median float64 `json:"median"`
	Min    float64 `json:"min"`
	Max    float64 `json:"max"`
}

// Summarize ignores NaNs; with no values N is 0 and the rest NaN.
func Summarize(xs []float64) Summary {
	var v []float64
	for _, x := range xs {
		if !math.IsNaN(x) && !math.IsInf(x, 0) {
			v = append(v, x)
		}
	}
	if len(v) == 0 {
		return Summary{Median: math.NaN(), Min: math.NaN(), Max: math.NaN()}
	}
	slices.Sort(v)
	return Summary{N: len(v), Median: median(v), Min: v[0], Max: v[len(v)-1]}
}

// median of sorted, non-empty v.
func median(v []float64) float64 {
	n := len(v)
	if n%2 == 1 {
		return v[n/2]
	}
	return (v[n/2-1] + v[n/2]) / 2
}

// Quantile returns the q-quantile (0..1) of xs by linear interpolation
// between closest ranks; NaN for no values.
func Quantile(xs []float64, q float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	v := slices.Clone(xs)
	slices.Sort(v)
	pos := q * float64(len(v)-1)
	lo := int(math.Floor(pos))
	hi := int(math.Ceil(pos))
	if lo == hi {
		return v[lo]
	}
	return v[lo] + (v[hi]-v[lo])*(pos-float64(lo))
}

// PairedRatios divides num by den repetition by repetition (both keyed by
// repetition number), skipping repetitions where either is missing, NaN or
// the denominator is zero, so slow phases of a noisy machine hit both
// sides of each ratio.
func PairedRatios(num, den map[int]float64) []float64 {
	var out []float64
	for rep, n := range num {
		d, ok := den[rep]
		if !ok || math.IsNaN(n) || math.IsNaN(d) || d == 0 {
			continue
		}
		out = append(out, n/d)
	}
	return out
}

// Bucket is one cumulative histogram bucket: Count observations ≤ LE.
type Bucket struct {
	LE    float64 `json:"le"`
	Count float64 `json:"count"`
}

// HistogramQuantile estimates the q-quantile from cumulative buckets
// sorted by LE (the last one +Inf), interpolating linearly inside the
// bucket as Prometheus' histogram_quantile does. A quantile in the +Inf
// bucket returns the last finite bound.
func HistogramQuantile(q float64, bs []Bucket) float64 {
	if len(bs) == 0 {
		return math.NaN()
	}
	total := bs[len(bs)-1].Count
	if total == 0 {
		return math.NaN()
	}
	rank := q * total
	prevLE, prevCount := 0.0, 0.0
	for _, b := range bs {
		if b.Count >= rank {
			if math.IsInf(b.LE, 1) {
				return prevLE
			}
			if b.Count == prevCount {
				return b.LE
			}
			return prevLE + (b.LE-prevLE)*(rank-prevCount)/(b.Count-prevCount)
		}
		prevLE, prevCount = b.LE, b.Count
	}
	return prevLE
}

// MarshalJSON writes the bound as a string for +Inf, which JSON numbers
// cannot hold.
func (b Bucket) MarshalJSON() ([]byte, error) {
	le := strconv.FormatFloat(b.LE, 'g', -1, 64)
	if math.IsInf(b.LE, 0) {
		le = strconv.Quote(le)
	}
	return []byte(`{"le":` + le + `,"count":` + strconv.FormatFloat(b.Count, 'g', -1, 64) + `}`), nil
}

// UnmarshalJSON reads what MarshalJSON writes.
func (b *Bucket) UnmarshalJSON(data []byte) error {
	var raw struct {
		LE    json.RawMessage `json:"le"`
		Count float64         `json:"count"`
	}
	if err := json.Unmarshal(data, &raw); err != nil {
		return err
	}
	s, err := strconv.Unquote(string(raw.LE))
	if err != nil {
		s = string(raw.LE)
	}
	le, err := strconv.ParseFloat(s, 64)
	if err != nil {
		return fmt.Errorf("bucket bound %s: %w", raw.LE, err)
	}
	b.LE, b.Count = le, raw.Count
	return nil
}

// SubBuckets returns after - before bucket by bucket (same bounds), for a
// histogram read twice.
func SubBuckets(after, before []Bucket) []Bucket {
	out := slices.Clone(after)
	for i := range out {
		for _, b := range before {
			if b.LE == out[i].LE {
				out[i].Count -= b.Count
			}
		}
	}
	return out
}

// AddBuckets sums histograms with the same bounds (several agents).
func AddBuckets(hs ...[]Bucket) []Bucket {
	var out []Bucket
	for _, h := range hs {
		if out == nil {
			out = slices.Clone(h)
			continue
		}
		for i := range out {
			for _, b := range h {
				if b.LE == out[i].LE {
					out[i].Count += b.Count
				}
			}
		}
	}
	return out
}
