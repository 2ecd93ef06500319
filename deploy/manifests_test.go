// Package deploy holds the Kubernetes manifests and the image build; its
// test checks them, so CI catches a manifest Kubernetes would refuse.
package deploy

import (
	"bytes"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

// readDaemonSet decodes keyroute.yaml strictly: an unknown or misplaced
// field (a typo, a wrong indent) fails, as kubectl apply's server-side
// validation would.
func readDaemonSet(t *testing.T) *appsv1.DaemonSet {
	t.Helper()
	b, err := os.ReadFile("keyroute.yaml")
	if err != nil {
		t.Fatal(err)
	}
	docs := regexp.MustCompile(`(?m)^---\s*$`).Split(string(b), -1)
	var ds *appsv1.DaemonSet
	for i, doc := range docs {
		if strings.TrimSpace(doc) == "" {
			continue
		}
		var meta struct{ APIVersion, Kind string }
		if err := yaml.Unmarshal([]byte(doc), &meta); err != nil {
			t.Fatalf("document %d: %v", i, err)
		}
		switch meta.APIVersion + " " + meta.Kind {
		case "apps/v1 DaemonSet":
			ds = &appsv1.DaemonSet{}
			if err := yaml.UnmarshalStrict([]byte(doc), ds); err != nil {
				t.Fatalf("DaemonSet: %v", err)
			}
		default:
			t.Fatalf("document %d: %s %s: the test does not know this kind; add it", i, meta.APIVersion, meta.Kind)
		}
	}
	if ds == nil {
		t.Fatal("no DaemonSet in keyroute.yaml")
	}
	return ds
}

func TestDaemonSet(t *testing.T) {
	ds := readDaemonSet(t)
	spec := ds.Spec.Template.Spec
	for k, v := range ds.Spec.Selector.MatchLabels {
		if ds.Spec.Template.Labels[k] != v {
			t.Errorf("selector %s=%s does not match the pod template's labels %v", k, v, ds.Spec.Template.Labels)
		}
	}
	if !spec.HostNetwork {
		t.Error("the agent must run in the node's network namespace (hostNetwork: true)")
	}
	volumes := map[string]corev1.Volume{}
	for _, v := range spec.Volumes {
		volumes[v.Name] = v
	}
	// hostPaths each container must see, by mount path.
	want := map[string]map[string]string{
		"install-cni": {"/host/opt/cni/bin": "/opt/cni/bin", "/host/etc/cni/net.d": "/etc/cni/net.d"},
		"agent": {"/var/run/openvswitch": "/var/run/openvswitch", "/etc/keyroute": "/etc/keyroute",
			"/run/keyroute": "/run/keyroute", "/var/lib/keyroute": "/var/lib/keyroute", "/run/netns": "/run/netns"},
	}
	all := append(append([]corev1.Container{}, spec.InitContainers...), spec.Containers...)
	if len(spec.InitContainers) != 1 || len(spec.Containers) != 1 {
		t.Fatalf("want one init container (install-cni) and one container (agent), have %d and %d", len(spec.InitContainers), len(spec.Containers))
	}
	for _, c := range all {
		mounts := map[string]string{}
		for _, m := range c.VolumeMounts {
			v, ok := volumes[m.Name]
			if !ok {
				t.Errorf("%s mounts volume %q, which the pod does not define", c.Name, m.Name)
				continue
			}
			if v.HostPath != nil {
				mounts[m.MountPath] = v.HostPath.Path
			}
			if m.MountPath == "/run/netns" && (m.MountPropagation == nil || *m.MountPropagation != corev1.MountPropagationHostToContainer) {
				t.Errorf("%s: /run/netns needs mountPropagation HostToContainer, or pods' namespaces made later stay invisible", c.Name)
			}
		}
		for path, host := range want[c.Name] {
			if mounts[path] != host {
				t.Errorf("%s: %s should be hostPath %s, is %q", c.Name, path, host, mounts[path])
			}
		}
		if c.Image != spec.Containers[0].Image {
			t.Errorf("%s runs image %s, the agent %s: install-cni must install the plugin of the agent's version", c.Name, c.Image, spec.Containers[0].Image)
		}
	}
	agent := spec.Containers[0]
	if agent.SecurityContext == nil || agent.SecurityContext.Privileged == nil || !*agent.SecurityContext.Privileged {
		t.Error("the agent needs privileged: netlink in pod namespaces, OVS, nftables")
	}
	install := strings.Join(spec.InitContainers[0].Command, " ")
	for _, s := range []string{"/usr/local/bin/keyroute-cni", "/host/opt/cni/bin/keyroute-cni", "/usr/share/keyroute/10-keyroute.conflist", "/host/etc/cni/net.d/10-keyroute.conflist"} {
		if !strings.Contains(install, s) {
			t.Errorf("install-cni does not mention %s: %s", s, install)
		}
	}
	probe := strings.Join(agent.ReadinessProbe.Exec.Command, " ")
	conflist, err := os.ReadFile("../configs/10-keyroute.conflist")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(probe, "/run/keyroute/agent.sock") || !bytes.Contains(conflist, []byte(`"/run/keyroute/agent.sock"`)) {
		t.Errorf("the readiness probe (%s) and the conflist must use the agent's socket /run/keyroute/agent.sock", probe)
	}
}

// TestDockerfile: the image has what the DaemonSet runs.
func TestDockerfile(t *testing.T) {
	b, err := os.ReadFile("Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	df := string(b)
	for _, cmd := range []string{"keyroute-agent", "keyroutectl", "keyroute-cni"} {
		if _, err := os.Stat(filepath.Join("..", "cmd", cmd)); err != nil {
			t.Errorf("cmd/%s: %v", cmd, err)
		}
		if !strings.Contains(df, "./cmd/"+cmd) || !strings.Contains(df, "/out/"+cmd) {
			t.Errorf("the Dockerfile does not build and copy %s", cmd)
		}
	}
	if !strings.Contains(df, "COPY configs/10-keyroute.conflist /usr/share/keyroute/10-keyroute.conflist") {
		t.Error("the Dockerfile does not put the conflist where install-cni copies it from")
	}
}
