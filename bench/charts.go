package bench

import (
	"errors"
	"fmt"
	"image/color"
	"math"
	"path/filepath"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
)

// Chart file names.
const (
	ChartThroughput = "throughput.png"
	ChartLatency    = "latency.png"
	ChartCPU        = "cpu_per_gb.png"
	ChartTTFP       = "time_to_fast_path_cdf.png"
	ChartKeySpace   = "key_space.png"
)

// series is one set of medians with min–max ranges, one point per path.
type series struct {
	name string
	sums []Summary
}

// rangePoints implements plotter.XYer and YErrorer for medians with
// min–max error bars; x is the path index plus a per-series offset.
type rangePoints struct {
	off float64
	s   []Summary
	idx []int
}

func (r rangePoints) Len() int { return len(r.idx) }
func (r rangePoints) XY(i int) (float64, float64) {
	return float64(r.idx[i]) + r.off, r.s[r.idx[i]].Median
}
func (r rangePoints) YError(i int) (float64, float64) {
	s := r.s[r.idx[i]]
	return s.Median - s.Min, s.Max - s.Median
}

// dotPlot draws medians with min–max bars per path, on a log Y axis so the
// OVS paths and the kernel's are readable in one picture.
func dotPlot(file, title, ylabel string, paths []Path, ss []series) error {
	p := plot.New()
	p.Title.Text = title
	p.Y.Label.Text = ylabel
	p.Y.Scale = plot.LogScale{}
	p.Y.Tick.Marker = plot.LogTicks{Prec: -1}
	p.Legend.Top = true
	n := len(ss)
	any := false
	for k, s := range ss {
		var idx []int
		for i, sum := range s.sums {
			if sum.N > 0 && sum.Min > 0 {
				idx = append(idx, i)
			}
		}
		if len(idx) == 0 {
			continue
		}
		any = true
		pts := rangePoints{off: 0.25 * (float64(k) - float64(n-1)/2), s: s.sums, idx: idx}
		sc, err := plotter.NewScatter(pts)
		if err != nil {
			return err
		}
		sc.GlyphStyle.Color = plotutil.Color(k)
		sc.GlyphStyle.Shape = plotutil.Shape(k)
		sc.GlyphStyle.Radius = vg.Points(4)
		eb, err := plotter.NewYErrorBars(pts)
		if err != nil {
			return err
		}
		eb.LineStyle.Color = plotutil.Color(k)
		p.Add(sc, eb)
		p.Legend.Add(s.name, sc)
	}
	if !any {
		return fmt.Errorf("%s: no data", file)
	}
	// Whole decades, so the log axis has labelled ticks at both ends.
	lo, hi := math.Inf(1), math.Inf(-1)
	for _, s := range ss {
		for _, sum := range s.sums {
			if sum.N > 0 && sum.Min > 0 {
				lo, hi = math.Min(lo, sum.Min), math.Max(hi, sum.Max)
			}
		}
	}
	p.Y.Min, p.Y.Max = math.Pow(10, math.Floor(math.Log10(lo))), math.Pow(10, math.Ceil(math.Log10(hi)))
	p.NominalX(pathStrings(paths)...)
	p.X.Min, p.X.Max = -0.6, float64(len(paths))-0.4
	p.Add(plotter.NewGrid())
	return p.Save(16*vg.Centimeter, 10*vg.Centimeter, file)
}

// barPlot draws grouped bars of medians per path (the report's tables
// carry the ranges).
func barPlot(file, title, ylabel string, paths []Path, ss []series) error {
	p := plot.New()
	p.Title.Text = title
	p.Y.Label.Text = ylabel
	p.Legend.Top = true
	w := vg.Points(18)
	any := false
	for k, s := range ss {
		vals := make(plotter.Values, len(paths))
		have := false
		for i, sum := range s.sums {
			if sum.N > 0 {
				vals[i], have = sum.Median, true
			}
		}
		if !have {
			continue
		}
		any = true
		bc, err := plotter.NewBarChart(vals, w)
		if err != nil {
			return err
		}
		bc.Color = plotutil.Color(k)
		bc.LineStyle.Width = 0
		bc.Offset = w * vg.Length(float64(k)-float64(len(ss)-1)/2)
		p.Add(bc)
		p.Legend.Add(s.name, bc)
	}
	if !any {
		return fmt.Errorf("%s: no data", file)
	}
	// Head room for the legend above the bars.
	top := 0.0
	for _, s := range ss {
		for _, sum := range s.sums {
			if sum.N > 0 {
				top = math.Max(top, sum.Median)
			}
		}
	}
	p.Y.Min, p.Y.Max = 0, 1.4*top
	p.NominalX(pathStrings(paths)...)
	p.Add(plotter.NewGrid())
	return p.Save(16*vg.Centimeter, 10*vg.Centimeter, file)
}

// cdf is one named cumulative histogram.
type cdf struct {
	name string
	bs   []Bucket
}

// cdfPlot draws time-to-fast-path CDFs from cumulative buckets.
func cdfPlot(file string, curves []cdf) error {
	p := plot.New()
	p.Title.Text = "Time to fast path (agent histogram buckets)"
	p.X.Label.Text = "ms (log scale)"
	p.Y.Label.Text = "fraction of pairs ≤ x"
	p.X.Scale = plot.LogScale{}
	p.X.Tick.Marker = plot.LogTicks{Prec: -1}
	p.Y.Min, p.Y.Max = 0, 1
	drawn := 0
	for k, c := range curves {
		if len(c.bs) == 0 || c.bs[len(c.bs)-1].Count == 0 {
			continue
		}
		total := c.bs[len(c.bs)-1].Count
		var pts plotter.XYs
		for _, b := range c.bs {
			if !math.IsInf(b.LE, 1) {
				pts = append(pts, plotter.XY{X: b.LE * 1e3, Y: b.Count / total})
			}
		}
		l, sc, err := plotter.NewLinePoints(pts)
		if err != nil {
			return err
		}
		l.Color, sc.Color, sc.Shape = plotutil.Color(k), plotutil.Color(k), plotutil.Shape(k)
		p.Add(l, sc)
		p.Legend.Add(fmt.Sprintf("%s (%.0f pairs)", c.name, total), l, sc)
		drawn++
	}
	if drawn == 0 {
		return fmt.Errorf("%s: no observations", file)
	}
	p.Add(plotter.NewGrid())
	for _, t := range []struct {
		ms   float64
		name string
	}{{5, "p50 target 5 ms"}, {50, "p99 target 50 ms"}} {
		vl, err := plotter.NewLine(plotter.XYs{{X: t.ms, Y: 0}, {X: t.ms, Y: 1}})
		if err != nil {
			return err
		}
		vl.Color = color.RGBA{R: 120, G: 120, B: 120, A: 255}
		vl.Dashes = []vg.Length{vg.Points(4), vg.Points(3)}
		p.Add(vl)
		p.Legend.Add(t.name, vl)
	}
	p.Legend.Top = false
	p.Legend.YOffs = vg.Points(10)
	return p.Save(16*vg.Centimeter, 10*vg.Centimeter, file)
}

// WriteCharts writes the PNGs into dir and returns the names written.
func WriteCharts(dir string, res *Result) ([]string, error) {
	s := res.Samples
	sums := func(test, variant string, m metric, paths []Path) []Summary {
		out := make([]Summary, len(paths))
		for i, p := range paths {
			out[i] = summarize(s, p, test, variant, m)
		}
		return out
	}
	var written []string
	var errs []error
	add := func(name string, err error) {
		if err != nil {
			errs = append(errs, fmt.Errorf("chart %s: %w", name, err))
			return
		}
		written = append(written, name)
	}
	if len(res.Paths) > 0 {
		dataPlaneCharts(dir, res, sums, add)
	}
	if cp := res.ControlPlane; cp != nil && (len(cp.Buckets) > 0 || len(cp.BurstBuckets) > 0) {
		add(ChartTTFP, cdfPlot(filepath.Join(dir, ChartTTFP), []cdf{
			{fmt.Sprintf("paced, %d new pairs/s", cp.PacePerSec), cp.Buckets}, {"burst, one agent", cp.BurstBuckets}}))
	}
	if ks := res.KeySpace; ks != nil {
		add(ChartKeySpace, keySpacePlot(filepath.Join(dir, ChartKeySpace), ks))
	}
	return written, errors.Join(errs...)
}

func dataPlaneCharts(dir string, res *Result, sums func(test, variant string, m metric, paths []Path) []Summary, add func(string, error)) {
	throughput := []series{{"1 stream", sums(TestTCP1, "", mGbps, res.Paths)}, {"4 streams", sums(TestTCP4, "", mGbps, res.Paths)}}
	if res.Config.afxdp() {
		throughput = append(throughput, series{"1 stream, AF_XDP ports", sums(TestTCP1, VariantAFXDP, mGbps, res.Paths)})
	}
	add(ChartThroughput, dotPlot(filepath.Join(dir, ChartThroughput), "TCP throughput per path (median, min–max)", "Gb/s (log scale)", res.Paths,
		throughput))
	add(ChartLatency, dotPlot(filepath.Join(dir, ChartLatency), "UDP request/response latency (64 B; median, min–max)", "µs (log scale)", res.Paths,
		[]series{{"p50", sums(TestRR, "", mP50, res.Paths)}, {"p99", sums(TestRR, "", mP99, res.Paths)}}))
	var ovsPaths []Path
	for _, p := range res.Paths {
		if ovsPath(p) {
			ovsPaths = append(ovsPaths, p)
		}
	}
	cpu := []series{{"1 stream", sums(TestTCP1, "", mCPUGB, ovsPaths)}, {"4 streams", sums(TestTCP4, "", mCPUGB, ovsPaths)}}
	if res.Config.TSO {
		cpu = append(cpu, series{"1 stream, userspace TSO", sums(TestTCP1, "tso", mCPUGB, ovsPaths)})
	}
	if res.Config.afxdp() {
		cpu = append(cpu, series{"1 stream, AF_XDP ports", sums(TestTCP1, VariantAFXDP, mCPUGB, ovsPaths)})
	}
	add(ChartCPU, barPlot(filepath.Join(dir, ChartCPU), "ovs-vswitchd CPU per GB (both hosts; median)", "CPU seconds / GB", ovsPaths, cpu))
}

// keySpacePlot draws each eviction policy's share of bytes on the fast
// path against the goal.
func keySpacePlot(file string, ks *KeySpace) error {
	p := plot.New()
	p.Title.Text = fmt.Sprintf("Bytes on the fast path, %d pairs sharing %d keys (Zipf traffic)", ksPairs(ks), ks.Keys)
	p.Y.Label.Text = "% of the containers' bytes"
	p.Y.Min, p.Y.Max = 0, 100
	var names []string
	var vals plotter.Values
	for _, r := range ks.Runs {
		if v := ks.share(r.Eviction); !math.IsNaN(v) {
			names, vals = append(names, "eviction: "+r.Eviction), append(vals, 100*v)
		}
	}
	if len(vals) == 0 {
		return fmt.Errorf("%s: no data", file)
	}
	bc, err := plotter.NewBarChart(vals, vg.Points(40))
	if err != nil {
		return err
	}
	bc.Color = plotutil.Color(0)
	bc.LineStyle.Width = 0
	p.Add(bc)
	goal, err := plotter.NewLine(plotter.XYs{{X: -0.5, Y: 100 * KeySpaceGoal}, {X: float64(len(vals)) - 0.5, Y: 100 * KeySpaceGoal}})
	if err != nil {
		return err
	}
	goal.Color = color.RGBA{R: 120, G: 120, B: 120, A: 255}
	goal.Dashes = []vg.Length{vg.Points(4), vg.Points(3)}
	p.Add(goal)
	p.Legend.Add(fmt.Sprintf("target ≥ %.0f%% (eviction: traffic)", 100*KeySpaceGoal), goal)
	p.Legend.Top = false
	p.NominalX(names...)
	p.Add(plotter.NewGrid())
	return p.Save(12*vg.Centimeter, 9*vg.Centimeter, file)
}
