package bench

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// clockTick is USER_HZ, the unit of /proc/stat and /proc/<pid>/stat times
// (100 on every Linux architecture Go supports here).
const clockTick = 100

// SystemCPU is the first line of /proc/stat, in ticks.
type SystemCPU struct{ Busy, Total uint64 }

// ParseProcStat reads the aggregate "cpu " line: busy is
// user+nice+system+irq+softirq+steal, total adds idle and iowait.
func ParseProcStat(b []byte) (SystemCPU, error) {
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 9 || f[0] != "cpu" {
			continue
		}
		var v [8]uint64
		for i := range v {
			n, err := strconv.ParseUint(f[i+1], 10, 64)
			if err != nil {
				return SystemCPU{}, fmt.Errorf("/proc/stat cpu line %q: %w", line, err)
			}
			v[i] = n
		}
		busy := v[0] + v[1] + v[2] + v[5] + v[6] + v[7]
		return SystemCPU{Busy: busy, Total: busy + v[3] + v[4]}, nil
	}
	return SystemCPU{}, fmt.Errorf("/proc/stat: no aggregate cpu line")
}

func readSystemCPU() (SystemCPU, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return SystemCPU{}, err
	}
	return ParseProcStat(b)
}

// ParsePIDStat returns utime+stime (ticks) from /proc/<pid>/stat content.
func ParsePIDStat(b []byte) (uint64, error) {
	// The command name may contain spaces; fields restart after its ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("pid stat %.80q: no command name", b)
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state): utime is field 14, stime 15.
	if len(f) < 13 {
		return 0, fmt.Errorf("pid stat %.80q: too few fields", b)
	}
	u, err1 := strconv.ParseUint(f[11], 10, 64)
	s, err2 := strconv.ParseUint(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("pid stat %.80q: bad utime/stime", b)
	}
	return u + s, nil
}

// pidTicks is utime+stime of pid; 0 if it is gone.
func pidTicks(pid int) uint64 {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0
	}
	t, _ := ParsePIDStat(b)
	return t
}

// vmRSSKiB reads VmRSS from /proc/<pid>/status.
func vmRSSKiB(pid int) (int64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
			return strconv.ParseInt(f[1], 10, 64)
		}
	}
	return 0, fmt.Errorf("pid %d: no VmRSS", pid)
}

// cpuWindow measures one sample: system busy time, and the CPU time of
// the processes this benchmark runs (daemons, servers, itself), so that
// what is left is other tenants' load on the shared machine.
type cpuWindow struct {
	sys0  SystemCPU
	pids  []int
	t0    map[int]uint64
	vsd   []int
	vsd0  uint64
	sirq  []int // ksoftirqd threads: shared, so counted apart
	sirq0 uint64
	extra float64 // CPU seconds of short-lived clients, reported by themselves
}

// ksoftirqds lists the per-CPU softirq threads.
func ksoftirqds() []int {
	var pids []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if b, err := os.ReadFile("/proc/" + e.Name() + "/comm"); err == nil && strings.HasPrefix(string(b), "ksoftirqd/") {
			pids = append(pids, pid)
		}
	}
	return pids
}

func startWindow(ours, vswitchds []int) (*cpuWindow, error) {
	w := &cpuWindow{pids: ours, t0: map[int]uint64{}, vsd: vswitchds}
	for _, p := range ours {
		w.t0[p] = pidTicks(p)
	}
	for _, p := range vswitchds {
		w.vsd0 += pidTicks(p)
	}
	w.sirq = ksoftirqds()
	for _, p := range w.sirq {
		w.sirq0 += pidTicks(p)
	}
	var err error
	w.sys0, err = readSystemCPU()
	return w, err
}

// addClient adds a finished client's self-reported CPU seconds.
func (w *cpuWindow) addClient(sec float64) { w.extra += sec }

// windowResult is a finished window.
type windowResult struct {
	// BusyPct is the whole machine's busy share, ForeignPct the part not
	// spent by our processes (both % of all CPUs). SoftirqdPct is the
	// ksoftirqd threads' share: packet work deferred there may be ours or
	// another tenant's; it is not subtracted from ForeignPct.
	BusyPct, ForeignPct, SoftirqdPct float64
	// VswitchdSec is the CPU time of the sample's ovs-vswitchds.
	VswitchdSec float64
}

func (w *cpuWindow) stop() (windowResult, error) {
	var ours uint64
	for _, p := range w.pids {
		if t := pidTicks(p); t >= w.t0[p] {
			ours += t - w.t0[p]
		}
	}
	var vsd uint64
	for _, p := range w.vsd {
		vsd += pidTicks(p)
	}
	var sirq uint64
	for _, p := range w.sirq {
		sirq += pidTicks(p)
	}
	sys1, err := readSystemCPU()
	if err != nil {
		return windowResult{}, err
	}
	busy := float64(sys1.Busy - w.sys0.Busy)
	total := float64(sys1.Total - w.sys0.Total)
	if total <= 0 {
		return windowResult{}, fmt.Errorf("cpu window: no time passed")
	}
	foreign := busy - float64(ours) - w.extra*clockTick
	if foreign < 0 {
		foreign = 0
	}
	res := windowResult{BusyPct: 100 * busy / total, ForeignPct: 100 * foreign / total}
	if sirq >= w.sirq0 {
		res.SoftirqdPct = 100 * float64(sirq-w.sirq0) / total
	}
	if vsd >= w.vsd0 { // a restarted vswitchd starts from zero
		res.VswitchdSec = float64(vsd-w.vsd0) / clockTick
	}
	return res, nil
}
