package simcluster

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/keyroute/keyroute/fabric"
	"github.com/keyroute/keyroute/simhost"
)

// OVSFabric replaces the fab0 Linux bridge with a routed fabric of Open
// vSwitch bridges, one per device of a fabric model (ToR, leaf, spine),
// joined by veth pairs, whose flows implement the model's routes and its
// ECMP as masked flows (fabric.Model.OVSFlows: xor over at most two
// members). Every bridge is a netdev bridge of one ovs-vswitchd running in
// the fabric namespace; the hosts' uplinks are the ToR ports named after
// them. fab0 still exists, down, so the hosts can be wired as usual: a
// port of a bridge that is down forwards nothing, while OVS reads the
// uplink's packets itself.
//
// The model's hosts must be h1..hN with IPs 198.18.0.1..N (the harness's
// numbering). Each device gets OVS access in the model, so
// `keyroutectl trace/diagnose --fabric <ModelPath>` can read its
// counters.
type OVSFabric struct {
	Model *fabric.Model

	ns        string
	dir       string
	modelPath string
	ports     map[string]map[string]int // device → port name → ofport
}

// ModelPath is the model as written for keyroutectl, with OVS access.
func (f *OVSFabric) ModelPath() string { return f.modelPath }

// RunDir is the fabric OVS's run directory.
func (f *OVSFabric) RunDir() string { return filepath.Join(f.dir, "run") }

func (f *OVSFabric) env() []string {
	return []string{"OVS_RUNDIR=" + f.RunDir(), "OVS_LOGDIR=" + filepath.Join(f.dir, "log"),
		"OVS_DBDIR=" + filepath.Join(f.dir, "db"), "OVS_SYSCONFDIR=" + filepath.Join(f.dir, "etc")}
}

func (f *OVSFabric) vsctl(args ...string) (string, error) {
	return simhost.RunEnv(f.env(), "ovs-vsctl", append([]string{"--db=unix:" + filepath.Join(f.RunDir(), "db.sock"), "--timeout=30"}, args...)...)
}

// Ofctl runs ovs-ofctl -O OpenFlow13 against the fabric's OVS.
func (f *OVSFabric) Ofctl(args ...string) (string, error) {
	return simhost.RunEnv(f.env(), "ovs-ofctl", append([]string{"-O", "OpenFlow13"}, args...)...)
}

// SetLink brings both ends of the link between devices a and b up or down.
func (f *OVSFabric) SetLink(a, b string, up bool) error {
	state := "down"
	if up {
		state = "up"
	}
	for _, l := range f.Model.Links {
		if (l.A == a && l.B == b) || (l.A == b && l.B == a) {
			pa, pb := l.Ports()
			for _, p := range []string{pa, pb} {
				if _, err := simhost.Run("ip", "netns", "exec", f.ns, "ip", "link", "set", p, state); err != nil {
					return fmt.Errorf("set link %s-%s %s: %w", a, b, state, err)
				}
			}
			return nil
		}
	}
	return fmt.Errorf("no link %s-%s in the fabric model", a, b)
}

// FlowPackets sums the packet counters of a device's flows whose text
// contains every one of the given substrings.
func (f *OVSFabric) FlowPackets(device string, contains ...string) (uint64, error) {
	out, err := f.Ofctl("dump-flows", device)
	if err != nil {
		return 0, err
	}
	var n uint64
	for _, line := range strings.Split(out, "\n") {
		ok := strings.Contains(line, "n_packets=")
		for _, c := range contains {
			ok = ok && strings.Contains(line, c)
		}
		if !ok {
			continue
		}
		i := strings.Index(line, "n_packets=") + len("n_packets=")
		j := strings.IndexByte(line[i:], ',')
		v, err := strconv.ParseUint(line[i:i+j], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("%s: %q: %w", device, line, err)
		}
		n += v
	}
	return n, nil
}

// OFPort is a device port's OpenFlow number.
func (f *OVSFabric) OFPort(device, port string) int { return f.ports[device][port] }

// startOVSFabric builds the fabric in the fabric namespace; the hosts'
// ports appear later, when startHost creates their veths, and OVS picks
// them up then.
func (cl *Cluster) startOVSFabric() error {
	f := cl.opts.OVSFabric
	if f.Model == nil {
		return fmt.Errorf("OVS fabric: no model")
	}
	if cl.opts.ExternalEtcd {
		return fmt.Errorf("OVS fabric: ExternalEtcd needs fab0 up; use the embedded etcd")
	}
	if err := f.Model.Validate(); err != nil {
		return fmt.Errorf("OVS fabric: %w", err)
	}
	for i, h := range f.Model.Hosts {
		want := fmt.Sprintf("h%d", i+1)
		if h.Name != want || h.IP.String() != fmt.Sprintf("198.18.0.%d", i+1) {
			return fmt.Errorf("OVS fabric: host %d is %s/%s; want %s/198.18.0.%d", i+1, h.Name, h.IP, want, i+1)
		}
	}
	if len(f.Model.Hosts) != cl.opts.Hosts {
		return fmt.Errorf("OVS fabric: model has %d hosts, cluster %d", len(f.Model.Hosts), cl.opts.Hosts)
	}
	f.ns, f.dir = cl.Fabric.Name, filepath.Join(cl.Dir, "fabric")
	if _, err := cl.Fabric.Exec("ip", "link", "add", FabricBridge, "type", "bridge"); err != nil {
		return fmt.Errorf("OVS fabric: %w", err)
	}
	for _, d := range []string{"run", "db", "log", "etc"} {
		if err := os.MkdirAll(filepath.Join(f.dir, d), 0o755); err != nil {
			return fmt.Errorf("OVS fabric: %w", err)
		}
	}
	db := filepath.Join(f.dir, "db", "conf.db")
	if _, err := simhost.RunEnv(f.env(), "ovsdb-tool", "create", db, simhost.SchemaPath); err != nil {
		return fmt.Errorf("OVS fabric: %w", err)
	}
	// Foreground daemons in the cluster's process set, so Close stops
	// them by PID.
	envArgs := append([]string{"env"}, f.env()...)
	dbsrv, err := startProcess("fabric ovsdb-server", filepath.Join(f.dir, "log", "ovsdb-server.out"), append(envArgs,
		"ip", "netns", "exec", f.ns, "ovsdb-server", db, "--remote=punix:"+filepath.Join(f.RunDir(), "db.sock"),
		"--pidfile="+filepath.Join(f.RunDir(), "ovsdb-server.pid"), "--unixctl="+filepath.Join(f.RunDir(), "ovsdb-server.ctl"),
		"--log-file="+filepath.Join(f.dir, "log", "ovsdb-server.log"), "--no-chdir")...)
	if err != nil {
		return err
	}
	dbsrv.daemon = true
	cl.procs.add(dbsrv)
	if err := simhost.WaitFor(10*time.Second, func() error {
		_, err := os.Stat(filepath.Join(f.RunDir(), "db.sock"))
		return err
	}); err != nil {
		return fmt.Errorf("OVS fabric: ovsdb-server: %w", err)
	}
	if _, err := f.vsctl("--no-wait", "init"); err != nil {
		return fmt.Errorf("OVS fabric: %w", err)
	}
	vsd, err := startProcess("fabric ovs-vswitchd", filepath.Join(f.dir, "log", "ovs-vswitchd.out"), append(envArgs,
		"ip", "netns", "exec", f.ns, "ovs-vswitchd", "unix:"+filepath.Join(f.RunDir(), "db.sock"),
		"--pidfile="+filepath.Join(f.RunDir(), "ovs-vswitchd.pid"), "--log-file="+filepath.Join(f.dir, "log", "ovs-vswitchd.log"),
		"-vconsole:off", "--no-chdir")...)
	if err != nil {
		return err
	}
	vsd.daemon = true
	cl.procs.add(vsd)
	for _, l := range f.Model.Links {
		a, b := l.Ports()
		if err := simhost.AddVeth(a, f.ns, b, f.ns); err != nil {
			return fmt.Errorf("OVS fabric: %w", err)
		}
	}
	f.ports = map[string]map[string]int{}
	for i := range f.Model.Devices {
		dev := &f.Model.Devices[i]
		dev.OVS = &fabric.OVSAccess{Bridge: dev.Name, RunDir: f.RunDir()}
		args := []string{"--may-exist", "add-br", dev.Name, "--", "set", "bridge", dev.Name, "datapath_type=netdev",
			"fail_mode=secure", "other-config:disable-in-band=true"}
		f.ports[dev.Name] = map[string]int{}
		for n, p := range f.Model.DevicePorts(dev.Name) {
			f.ports[dev.Name][p] = n + 1
			args = append(args, "--", "--may-exist", "add-port", dev.Name, p, "--", "set", "interface", p, fmt.Sprintf("ofport_request=%d", n+1))
		}
		// A host's port does not exist yet; ovs-vsctl would wait for it.
		if _, err := f.vsctl(append([]string{"--no-wait"}, args...)...); err != nil {
			return fmt.Errorf("OVS fabric: device %s: %w", dev.Name, err)
		}
		fs, err := f.Model.OVSFlows(dev.Name)
		if err != nil {
			return fmt.Errorf("OVS fabric: %w", err)
		}
		var lines []string
		for _, fl := range fs {
			fl.OutPort = strconv.Itoa(f.ports[dev.Name][fl.OutPort])
			lines = append(lines, fl.String())
		}
		flowFile := filepath.Join(f.dir, dev.Name+".flows")
		if err := os.WriteFile(flowFile, []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
			return fmt.Errorf("OVS fabric: %w", err)
		}
		// The bridge's mgmt socket appears once ovs-vswitchd has
		// created it.
		if err := simhost.WaitFor(20*time.Second, func() error {
			_, err := f.Ofctl("replace-flows", dev.Name, flowFile)
			return err
		}); err != nil {
			return fmt.Errorf("OVS fabric: flows of %s: %w", dev.Name, err)
		}
	}
	b, err := f.Model.Marshal()
	if err != nil {
		return fmt.Errorf("OVS fabric: %w", err)
	}
	f.modelPath = filepath.Join(cl.Dir, "fabric.yaml")
	if err := os.WriteFile(f.modelPath, b, 0o644); err != nil {
		return fmt.Errorf("OVS fabric: %w", err)
	}
	cl.log.Info("OVS fabric up", "devices", len(f.Model.Devices), "links", len(f.Model.Links), "model", f.modelPath)
	return nil
}
