package simcluster

import (
	"archive/tar"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// PodmanImage is the image Podman.ImportBusybox makes: Debian's
// busybox-static and its applets, nothing pulled from a registry.
const PodmanImage = "localhost/keyroute-busybox:local"

// CNINetwork is the network name in configs/10-keyroute.conflist.
const CNINetwork = "keyroute"

// Podman is a private podman installation for one simulated host: its own
// containers.conf, storage and CNI configuration directory, whose
// conflist names keyroute-cni with that host's agent socket. Nothing of
// the machine's own podman state is read or written.
type Podman struct {
	Host *Host
	// Dir holds the configuration, storage and run state.
	Dir string
	env []string
}

// busyboxApplets are linked to /bin/busybox in the image.
var busyboxApplets = []string{"sh", "ip", "ping", "sleep", "nc", "cat", "ls", "echo", "hostname", "wget", "ifconfig"}

// NewPodman writes h's private podman configuration under the cluster's
// directory. The CNI plugin directory is the cluster's BinDir, which
// holds keyroute-cni.
//
// The configuration works around what this kind of machine lacks and a
// normal host has: crun refuses the hybrid cgroup v1/v2 layout, so the
// runtime is runc (cgroupfs); raising RLIMIT_NPROC/NOFILE to
// podman's defaults is refused without CAP_SYS_RESOURCE, so the
// containers' limits are set lower.
func NewPodman(h *Host) (*Podman, error) {
	cl := h.cl
	dir := filepath.Join(cl.Dir, h.Name, "podman")
	p := &Podman{Host: h, Dir: dir}
	for _, d := range []string{"net.d", "root", "runroot", "tmp", "xdg"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o700); err != nil {
			return nil, fmt.Errorf("podman for %s: %w", h.Name, err)
		}
	}
	files := map[string]string{
		"containers.conf": fmt.Sprintf(`[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
pids_limit = 0
[network]
network_backend = "cni"
cni_plugin_dirs = [%q, "/usr/lib/cni"]
network_config_dir = %q
default_network = %q
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = %q
tmp_dir = %q
`, cl.BinDir, filepath.Join(dir, "net.d"), CNINetwork, filepath.Join(dir, "events.log"), filepath.Join(dir, "tmp")),
		"storage.conf": fmt.Sprintf("[storage]\ndriver = \"vfs\"\ngraphroot = %q\nrunroot = %q\n",
			filepath.Join(dir, "root"), filepath.Join(dir, "runroot")),
		"registries.conf": "unqualified-search-registries = []\n",
		// configs/10-keyroute.conflist with this host's socket.
		"net.d/10-keyroute.conflist": fmt.Sprintf(`{"cniVersion": "1.0.0", "name": %q, "plugins": [
  {"type": "keyroute-cni", "socket": %q, "capabilities": {"ips": true}}]}
`, CNINetwork, h.APISocket),
	}
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o600); err != nil {
			return nil, fmt.Errorf("podman for %s: %w", h.Name, err)
		}
	}
	p.env = append(os.Environ(),
		"CONTAINERS_CONF="+filepath.Join(dir, "containers.conf"),
		"CONTAINERS_STORAGE_CONF="+filepath.Join(dir, "storage.conf"),
		"CONTAINERS_REGISTRIES_CONF="+filepath.Join(dir, "registries.conf"),
		"XDG_RUNTIME_DIR="+filepath.Join(dir, "xdg"),
	)
	return p, nil
}

// Run runs podman with h's configuration in h's network namespace, as
// the runtime of a real host runs in the host's, and returns its stdout;
// an error carries stderr. It enters only the network namespace
// (nsenter --net), not `ip netns exec`'s private mount namespace: that
// one is a slave of the host's, so the bind mounts podman makes under
// /run/netns for its containers would stay invisible to the agent.
func (p *Podman) Run(timeout time.Duration, args ...string) (string, error) {
	cmd := exec.Command("nsenter", append([]string{"--net=/run/netns/" + p.Host.NS.Name, "podman"}, args...)...)
	cmd.Env = p.env
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Start(); err != nil {
		return "", fmt.Errorf("podman %s: %w", strings.Join(args, " "), err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			return out.String(), fmt.Errorf("podman %s on %s: %w: %s", strings.Join(args, " "), p.Host.Name, err, strings.TrimSpace(errb.String()))
		}
		return strings.TrimSpace(out.String()), nil
	case <-time.After(timeout):
		cmd.Process.Kill()
		<-done
		return "", fmt.Errorf("podman %s on %s: no answer in %v", strings.Join(args, " "), p.Host.Name, timeout)
	}
}

// ImportBusybox makes PodmanImage from /bin/busybox (Debian's
// busybox-static) with `podman import`.
func (p *Podman) ImportBusybox() error {
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		return fmt.Errorf("image from busybox-static: %w", err)
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	now := time.Now()
	hdrs := []*tar.Header{{Name: "bin/", Typeflag: tar.TypeDir, Mode: 0o755, ModTime: now},
		{Name: "tmp/", Typeflag: tar.TypeDir, Mode: 0o1777, ModTime: now}}
	for _, h := range hdrs {
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
	}
	if err := tw.WriteHeader(&tar.Header{Name: "bin/busybox", Typeflag: tar.TypeReg, Mode: 0o755, Size: int64(len(bb)), ModTime: now}); err != nil {
		return err
	}
	if _, err := tw.Write(bb); err != nil {
		return err
	}
	for _, a := range busyboxApplets {
		if err := tw.WriteHeader(&tar.Header{Name: "bin/" + a, Typeflag: tar.TypeSymlink, Linkname: "busybox", ModTime: now}); err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	tarPath := filepath.Join(p.Dir, "busybox.tar")
	if err := os.WriteFile(tarPath, buf.Bytes(), 0o600); err != nil {
		return err
	}
	_, err = p.Run(2*time.Minute, "import", "--change", "CMD=/bin/sh", tarPath, PodmanImage)
	return err
}

// Close removes every container of this podman, so the CNI DELs run and
// podman's cgroups and namespaces go; the storage goes with the
// cluster's directory.
func (p *Podman) Close() error {
	_, err := p.Run(2*time.Minute, "rm", "--all", "--force", "--time", "0")
	// podman leaves its parent cgroups behind (cgroupfs manager); rmdir
	// removes only empty ones, so another podman's are kept.
	dirs, _ := filepath.Glob("/sys/fs/cgroup/*/libpod_parent")
	for _, d := range dirs {
		os.Remove(filepath.Join(d, "conmon"))
		os.Remove(d)
	}
	return err
}
