package bench

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/keyroute/keyroute/simcluster"
	"github.com/keyroute/keyroute/simhost"
)

// Path O is OVN's Geneve overlay on the same kind of simulated hosts: NB
// and SB ovsdb-servers and ovn-northd outside the hosts, an ovn-controller
// per host on that host's private OVS (netdev br-int it creates, userspace
// Geneve), a br-phy holding the host IP as keyroute's agent does it, and
// one logical switch with a port per container.

// OVN binaries come from Debian's ovn-common/ovn-host/ovn-central, either
// installed or unpacked without their maintainer scripts (so no system
// daemons start):
//
//	apt-get download ovn-common ovn-host ovn-central
//	for f in ovn-*.deb; do dpkg -x "$f" DIR; done
//
// and run with --ovn-root DIR.

// ovnLayout says where the OVN programs and schemas are.
type ovnLayout struct{ bin, share string }

// findOVN looks under root (a dpkg -x tree), else in the installed places.
func findOVN(root string) (ovnLayout, error) {
	var tries []ovnLayout
	if root != "" {
		tries = append(tries, ovnLayout{filepath.Join(root, "usr", "bin"), filepath.Join(root, "usr", "share", "ovn")})
	}
	tries = append(tries, ovnLayout{"/usr/bin", "/usr/share/ovn"})
	for _, l := range tries {
		ok := true
		for _, f := range []string{filepath.Join(l.bin, "ovn-controller"), filepath.Join(l.bin, "ovn-northd"),
			filepath.Join(l.bin, "ovn-nbctl"), filepath.Join(l.share, "ovn-nb.ovsschema"), filepath.Join(l.share, "ovn-sb.ovsschema")} {
			if _, err := os.Stat(f); err != nil {
				ok = false
				break
			}
		}
		if ok {
			return l, nil
		}
	}
	var dirs []string
	for _, l := range tries {
		dirs = append(dirs, l.bin)
	}
	return ovnLayout{}, fmt.Errorf("OVN not found (looked for ovn-controller, ovn-northd and the schemas in %s)", strings.Join(dirs, ", "))
}

// ovnNet is path O's cluster.
type ovnNet struct {
	cl  *simcluster.Cluster
	l   ovnLayout
	dir string
	// pidfiles of the OVN daemons, stopped before the cluster goes.
	pidfiles map[string]string
	c1, c2   endpoint
}

const ovnMTU = "1442" // OVN's usual Geneve MTU on a 1500-byte underlay

func startOVN(ctx context.Context, root string, opts simcluster.Options) (o *ovnNet, err error) {
	l, err := findOVN(root)
	if err != nil {
		return nil, err
	}
	opts.Hosts, opts.NoAgents = 2, true
	cl, err := simcluster.NewCluster(ctx, opts)
	if err != nil {
		return nil, fmt.Errorf("start OVN hosts: %w", err)
	}
	o = &ovnNet{cl: cl, l: l, dir: filepath.Join(cl.Dir, "ovn"), pidfiles: map[string]string{}}
	defer func() {
		if err != nil {
			err = errors.Join(fmt.Errorf("start OVN: %w", err), o.close())
			o = nil
		}
	}()
	if err := os.MkdirAll(o.dir, 0o755); err != nil {
		return nil, err
	}
	run := func(env []string, argv ...string) error {
		_, err := simhost.RunEnv(env, argv[0], argv[1:]...)
		return err
	}
	env := []string{"OVN_RUNDIR=" + o.dir, "OVS_RUNDIR=" + o.dir}
	for _, db := range []string{"nb", "sb"} {
		file := filepath.Join(o.dir, db+".db")
		if err := run(env, "ovsdb-tool", "create", file, filepath.Join(l.share, "ovn-"+db+".ovsschema")); err != nil {
			return o, err
		}
		pf := filepath.Join(o.dir, db+".pid")
		if err := run(env, "ovsdb-server", file, "--remote=punix:"+filepath.Join(o.dir, db+".sock"), "--pidfile="+pf,
			"--unixctl="+filepath.Join(o.dir, db+".ctl"), "--log-file="+filepath.Join(o.dir, db+".log"), "--detach", "--no-chdir"); err != nil {
			return o, err
		}
		o.pidfiles[pf] = "ovsdb-server"
	}
	nbSock, sbSock := "unix:"+filepath.Join(o.dir, "nb.sock"), "unix:"+filepath.Join(o.dir, "sb.sock")
	pf := filepath.Join(o.dir, "northd.pid")
	if err := run(env, filepath.Join(l.bin, "ovn-northd"), "--ovnnb-db="+nbSock, "--ovnsb-db="+sbSock, "--pidfile="+pf,
		"--log-file="+filepath.Join(o.dir, "northd.log"), "--detach", "--no-chdir"); err != nil {
		return o, err
	}
	o.pidfiles[pf] = "ovn-northd"
	for _, h := range cl.Hosts() {
		ovs := h.OVS
		if _, err := ovs.Vsctl("set", "Open_vSwitch", ".", "external_ids:system-id="+h.Name, "external_ids:ovn-remote="+sbSock,
			"external_ids:ovn-encap-type=geneve", "external_ids:ovn-encap-ip="+h.IP.String(), "external_ids:ovn-bridge-datapath-type=netdev"); err != nil {
			return o, err
		}
		// Userspace tunnels need the host IP on an OVS bridge's LOCAL port.
		if _, err := ovs.Vsctl("add-br", "br-phy", "--", "set", "bridge", "br-phy", "datapath_type=netdev",
			"other_config:hwaddr="+h.MAC.String(), "--", "add-port", "br-phy", simcluster.Uplink); err != nil {
			return o, err
		}
		for _, c := range [][]string{{"ip", "addr", "flush", "dev", simcluster.Uplink}, {"ip", "link", "set", "br-phy", "up"},
			{"ip", "addr", "add", h.IP.String() + "/24", "dev", "br-phy"}} {
			if _, err := h.Exec(c...); err != nil {
				return o, err
			}
		}
		pf := filepath.Join(ovs.RunDir(), "ovn-controller.pid")
		cenv := append(ovs.Env(), "OVN_RUNDIR="+ovs.RunDir())
		if err := run(cenv, "ip", "netns", "exec", h.NS.Name, filepath.Join(l.bin, "ovn-controller"), "unix:"+ovs.DBSock(),
			"--pidfile="+pf, "--log-file="+filepath.Join(h.Dir, "ovn-controller.log"), "--detach", "--no-chdir"); err != nil {
			return o, err
		}
		o.pidfiles[pf] = "ovn-controller"
	}
	nb := func(args ...string) error {
		return run(env, append([]string{filepath.Join(l.bin, "ovn-nbctl"), "--db=" + nbSock}, args...)...)
	}
	if err := nb("ls-add", "ls0"); err != nil {
		return o, err
	}
	for _, h := range cl.Hosts() {
		i := strconv.Itoa(h.Index)
		ns, err := simhost.NewNetNS(cl.Prefix + "oc" + i)
		if err != nil {
			return o, err
		}
		mac, ip := "02:00:00:00:0a:0"+i, "198.19.50."+i
		port := "oveth" + i
		if err := simhost.AddVeth(port, h.NS.Name, "eth0", ns.Name); err != nil {
			return o, err
		}
		for _, c := range [][]string{{"ip", "link", "set", "eth0", "address", mac, "mtu", ovnMTU},
			{"ip", "addr", "add", ip + "/24", "dev", "eth0"}} {
			if _, err := ns.Exec(c...); err != nil {
				return o, err
			}
		}
		if err := nb("lsp-add", "ls0", "lsp"+i, "--", "lsp-set-addresses", "lsp"+i, mac+" "+ip); err != nil {
			return o, err
		}
		if err := simhost.WaitFor(20*time.Second, func() error {
			_, err := h.OVS.Vsctl("--may-exist", "add-port", "br-int", port, "--", "set", "interface", port, "external_ids:iface-id=lsp"+i)
			return err
		}); err != nil {
			return o, fmt.Errorf("%s: attach to the br-int ovn-controller creates: %w", h.Name, err)
		}
		ep := endpoint{ns.Name, netip.MustParseAddr(ip)}
		if h.Index == 1 {
			o.c1 = ep
		} else {
			o.c2 = ep
		}
	}
	for _, h := range cl.Hosts() {
		for _, p := range cl.Hosts() {
			if p != h {
				h.OVS.Appctl("tnl/arp/set", "br-phy", p.IP.String(), p.MAC.String())
			}
		}
	}
	err = simhost.WaitFor(30*time.Second, func() error {
		_, err := simhost.Run("ip", "netns", "exec", o.c1.ns, "ping", "-n", "-c", "1", "-W", "1", o.c2.ip.String())
		return err
	})
	if err != nil {
		return o, fmt.Errorf("OVN logical switch does not forward: %w", err)
	}
	return o, nil
}

func (o *ovnNet) path() *path {
	return &path{name: PathO, client: o.c1, server: o.c2, ovs: []*simhost.OVS{o.cl.Host(1).OVS, o.cl.Host(2).OVS}}
}

// extraPIDs are OVN daemons outside the host namespaces.
func (o *ovnNet) extraPIDs() []int {
	var pids []int
	for pf := range o.pidfiles {
		if b, err := os.ReadFile(pf); err == nil {
			if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
				pids = append(pids, pid)
			}
		}
	}
	return append(pids, ovsdbPIDs([]*simhost.OVS{o.cl.Host(1).OVS, o.cl.Host(2).OVS})...)
}

// close stops the OVN daemons by their pidfiles, then the cluster.
func (o *ovnNet) close() error {
	var errs []error
	for pf, name := range o.pidfiles {
		b, err := os.ReadFile(pf)
		if err != nil {
			continue
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil {
			continue
		}
		errs = append(errs, simhost.KillPID(pid, name, 5*time.Second))
	}
	return errors.Join(append(errs, o.cl.Close())...)
}

// ovnVersion is ovn-controller --version's first line.
func ovnVersion(l ovnLayout) string {
	out, err := exec.Command(filepath.Join(l.bin, "ovn-controller"), "--version").Output()
	if err != nil {
		return ""
	}
	first, _, _ := strings.Cut(string(out), "\n")
	return first
}
