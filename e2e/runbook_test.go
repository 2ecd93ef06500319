package e2e

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/keyroute/keyroute/internal/testenv"
	"github.com/keyroute/keyroute/simcluster"
	"github.com/keyroute/keyroute/simhost"
)

// The README's real-host runbook, followed word for word on four
// simulated hosts: h1-h3 etcd members, h4 not. Every block the README
// marks <!-- runbook:NAME [PATH] --> runs as written inside the hosts'
// machines (network namespace plus a mount namespace with their own /etc,
// /var/lib, /run, /usr/local and the host's OVS at the default socket:
// simcluster.Machine), with only the documented <…> placeholders
// replaced. What the test does itself is only what the README leaves to
// the operator: copying bin/ and the certificate files between machines,
// making the container namespaces, and stopping agents with SIGTERM.
func TestRunbook(t *testing.T) {
	steps := readRunbook(t)
	testenv.Require(t, "nsenter", "unshare", "mount", "install")
	cl := testCluster(t, simcluster.Options{Hosts: 4, NoAgents: true})
	hosts := cl.Hosts()
	machines := make([]*simcluster.Machine, len(hosts))
	vars := map[string]string{"<uplink>": simcluster.Uplink}
	for i, h := range hosts {
		m, err := h.NewMachine()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if err := m.Close(); err != nil {
				t.Error(err)
			}
		})
		machines[i] = m
		vars["<"+h.Name+"'s IP>"] = h.IP.String()
	}
	// Each host's working directory: where bin/ and its certificate files
	// were copied to.
	homes := make([]string, len(hosts))
	for i, h := range hosts {
		homes[i] = filepath.Join(h.Dir, "home")
		mkdir(t, homes[i])
		if err := os.Symlink(cl.BinDir, filepath.Join(homes[i], "bin")); err != nil {
			t.Fatal(err)
		}
	}
	forHost := func(i int, extra ...string) map[string]string {
		v := map[string]string{"<node>": hosts[i].Name}
		for k, x := range vars {
			v[k] = x
		}
		for j := 0; j+1 < len(extra); j += 2 {
			v[extra[j]] = extra[j+1]
		}
		return v
	}
	run := func(i int, step string, v map[string]string) string {
		t.Helper()
		script := steps.text(t, step, v)
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		out, err := machines[i].Shell(ctx, homes[i], script)
		if err != nil {
			t.Fatalf("runbook step %s on %s: %v", step, hosts[i].Name, err)
		}
		t.Logf("%s $ %s\n%s", hosts[i].Name, strings.ReplaceAll(strings.TrimSpace(script), "\n", "\n   $ "), out)
		return out
	}

	// 1. Install the binaries.
	for i := range hosts {
		run(i, "install", forHost(i))
	}
	// 6. The PKI on h1; the files go to each host by the operator's means.
	admin := filepath.Join(cl.Dir, "admin")
	mkdir(t, admin)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if out, err := machines[0].Shell(ctx, admin, steps.text(t, "pki", forHost(0))); err != nil {
		t.Fatalf("runbook step pki: %v", err)
	} else {
		t.Logf("h1 (admin) pki:\n%s", out)
	}
	for i, h := range hosts {
		for _, f := range []string{"ca.crt", h.Name + ".crt", h.Name + ".key"} {
			b, err := os.ReadFile(filepath.Join(admin, "pki", f))
			if err != nil {
				t.Fatalf("copy %s to %s: %v", f, h.Name, err)
			}
			if err := os.WriteFile(filepath.Join(homes[i], f), b, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		run(i, "certs", forHost(i))
		cfg := "config-member"
		if i >= 3 {
			cfg = "config-other"
		}
		steps.writeFile(t, machines[i], cfg, forHost(i))
		run(i, "check-config", forHost(i))
		if _, err := os.Stat(machines[i].Path("/etc/keyroute/pki/" + h.Name + ".key")); err != nil {
			t.Errorf("%s: the key is not in the machine's /etc/keyroute/pki: %v", h.Name, err)
		}
	}

	// 7. Start h1-h3 together, then h4.
	start := func(i int) {
		t.Helper()
		cmd := steps.text(t, "start", forHost(i))
		if _, err := machines[i].Start(hosts[i].LogPath, cmd); err != nil {
			t.Fatal(err)
		}
		t.Logf("%s $ %s &", hosts[i].Name, strings.TrimSpace(cmd))
	}
	ready := func(i int) {
		t.Helper()
		_, err := machines[i].WaitShell(homes[i], "keyroutectl status", simcluster.ReadyTimeout, func(string) error {
			if pid := hosts[i].AgentPID(); pid == 0 {
				return fmt.Errorf("agent exited:\n%s", simcluster.LogTail(hosts[i].LogPath, 30))
			}
			return nil
		})
		if err != nil {
			t.Fatalf("%s agent not ready: %v", hosts[i].Name, err)
		}
	}
	for i := range 3 {
		start(i)
	}
	for i := range 3 {
		ready(i)
	}
	start(3)
	ready(3)

	// Check, as step 7 says, on every host: datapath, etcd healthy, the
	// DSCP path to every peer verified, every host up.
	check := steps.text(t, "check", forHost(0))
	for i, h := range hosts {
		out, err := machines[i].WaitShell(homes[i], check, 90*time.Second, func(out string) error {
			var want []string
			// datapath: auto, so whichever this machine offers.
			want = append(want, `(?m)^datapath:\s+(netdev|system): `)
			kind := "embedded"
			if i >= 3 {
				kind = "external"
			}
			want = append(want, `(?m)^etcd:\s+`+kind+` https://\S+, healthy$`)
			for _, p := range hosts {
				if p != h {
					want = append(want, `(?m)^dscp path to `+p.Name+`:\s+verified: .*\(keys in use\)$`,
						`(?m)^`+p.Name+`\s+`+regexp.QuoteMeta(p.IP.String())+`\s.*\sup\s`)
				}
			}
			for _, w := range want {
				if !regexp.MustCompile(w).MatchString(out) {
					return fmt.Errorf("output does not match %s:\n%s", w, out)
				}
			}
			return nil
		})
		if err != nil {
			t.Fatalf("runbook step check on %s: %v", h.Name, err)
		}
		t.Logf("%s $ %s\n%s", h.Name, strings.ReplaceAll(check, "\n", "; "), out)
	}

	// 8. Attach web1 on h1 and web2 on h4; web1 pings web2.
	web := map[string]*simhost.NetNS{}
	webIP := map[string]string{}
	for _, a := range []struct {
		host int
		name string
	}{{0, "web1"}, {3, "web2"}} {
		ns, err := simhost.NewNetNS(cl.Prefix + a.name)
		if err != nil {
			t.Fatal(err)
		}
		web[a.name] = ns
		out := run(a.host, "attach", forHost(a.host, "<netns>", ns.Name, "<name>", a.name))
		m := regexp.MustCompile(`attached ` + a.name + `: ip (\S+),`).FindStringSubmatch(out)
		if m == nil {
			t.Fatalf("attach %s printed %q, want \"attached %s: ip …\"", a.name, out, a.name)
		}
		webIP[a.name] = m[1]
	}
	out := run(0, "ping", forHost(0, "<netns>", web["web1"].Name, "<web2's IP>", webIP["web2"]))
	if !strings.Contains(out, " 0% packet loss") {
		t.Errorf("ping web1 -> web2: %s", out)
	}

	// 9. Tear down: h4 (not a member: leaves by itself), h3 (a member:
	// hosts remove on h1), then h1 and h2, and forget everything.
	teardown := func(i int, containers ...string) {
		t.Helper()
		for _, c := range containers {
			run(i, "detach", forHost(i, "<name>", c))
		}
		if err := hosts[i].StopAgent(); err != nil {
			t.Fatal(err)
		}
		run(i, "uninstall", forHost(i))
		h := hosts[i]
		if addrs, err := h.Exec("ip", "-4", "-o", "addr", "show", "dev", simcluster.Uplink); err != nil || !strings.Contains(addrs, h.IP.String()+"/24") {
			t.Errorf("%s after uninstall: uplink addresses %q (%v), want %s back", h.Name, addrs, err, h.IP)
		}
		if brs, err := h.OVS.Vsctl("list-br"); err != nil || brs != "" {
			t.Errorf("%s after uninstall: bridges %q (%v), want none", h.Name, brs, err)
		}
	}
	hostsOn := func(i int, want ...string) {
		t.Helper()
		_, err := machines[i].WaitShell(homes[i], "keyroutectl hosts", 30*time.Second, func(out string) error {
			var got []string
			sc := bufio.NewScanner(strings.NewReader(out))
			for sc.Scan() {
				if f := strings.Fields(sc.Text()); len(f) > 0 && f[0] != "NAME" {
					got = append(got, f[0])
				}
			}
			if strings.Join(got, " ") != strings.Join(want, " ") {
				return fmt.Errorf("hosts %v, want %v:\n%s", got, want, out)
			}
			return nil
		})
		if err != nil {
			t.Errorf("keyroutectl hosts on %s: %v", hosts[i].Name, err)
		}
	}
	teardown(3, "web2")
	hostsOn(0, "h1", "h2", "h3")
	teardown(2)
	hostsOn(0, "h1", "h2", "h3") // a member's record stays
	run(0, "hosts-remove", forHost(0, "<node>", "h3"))
	hostsOn(0, "h1", "h2")
	// Two of the three members still make a store.
	if out := run(0, "check", forHost(0)); !regexp.MustCompile(`(?m)^etcd:\s+embedded \S+, healthy$`).MatchString(out) {
		t.Errorf("h1 with h3 gone: etcd not healthy:\n%s", out)
	}
	teardown(0, "web1")
	teardown(1)
	for i, h := range hosts {
		run(i, "forget", forHost(i))
		for _, p := range []string{"/var/lib/keyroute", "/etc/keyroute"} {
			if _, err := os.Stat(machines[i].Path(p)); err == nil {
				t.Errorf("%s: %s still there after the forget step", h.Name, p)
			}
		}
	}
}

func mkdir(t *testing.T, dir string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
}

// runbookStep is one marked block of the README's runbook.
type runbookStep struct {
	lang, path, text string
}

type runbookSteps map[string]runbookStep

// runbookSection is the README section that holds the runbook.
const runbookSection = "## Running keyroute on real hosts"

var (
	runbookMarker = regexp.MustCompile(`^<!-- runbook:([a-z-]+)(?: (\S+))? -->$`)
	placeholder   = regexp.MustCompile(`<[^<>\n]+>`)
)

// readRunbook reads the marked blocks of the README's runbook section: a
// marker line, then a fenced block (```sh or ```yaml) right after it.
func readRunbook(t *testing.T) runbookSteps {
	t.Helper()
	root, err := simcluster.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(root, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	steps, err := parseRunbook(string(b))
	if err != nil {
		t.Fatalf("README.md: %v", err)
	}
	for _, name := range []string{"install", "pki", "certs", "config-member", "config-other", "check-config",
		"start", "check", "attach", "ping", "detach", "uninstall", "hosts-remove", "forget"} {
		if _, ok := steps[name]; !ok {
			t.Fatalf("README.md %q: no <!-- runbook:%s --> block", runbookSection, name)
		}
	}
	return steps
}

func parseRunbook(readme string) (runbookSteps, error) {
	_, sec, ok := strings.Cut(readme, "\n"+runbookSection+"\n")
	if !ok {
		return nil, fmt.Errorf("no section %q", runbookSection)
	}
	if end := strings.Index(sec, "\n## "); end >= 0 {
		sec = sec[:end]
	}
	lines := strings.Split(sec, "\n")
	steps := runbookSteps{}
	for i := 0; i < len(lines); i++ {
		m := runbookMarker.FindStringSubmatch(lines[i])
		if m == nil {
			if strings.HasPrefix(strings.TrimSpace(lines[i]), "<!-- runbook:") {
				return nil, fmt.Errorf("malformed runbook marker %q", lines[i])
			}
			continue
		}
		name := m[1]
		if _, dup := steps[name]; dup {
			return nil, fmt.Errorf("runbook step %s marked twice", name)
		}
		if i+1 >= len(lines) || !strings.HasPrefix(lines[i+1], "```") {
			return nil, fmt.Errorf("runbook step %s: the marker is not followed by a fenced block", name)
		}
		st := runbookStep{lang: strings.TrimPrefix(lines[i+1], "```"), path: m[2]}
		var body []string
		j := i + 2
		for ; j < len(lines) && lines[j] != "```"; j++ {
			body = append(body, lines[j])
		}
		if j == len(lines) {
			return nil, fmt.Errorf("runbook step %s: unterminated block", name)
		}
		st.text = strings.Join(body, "\n") + "\n"
		switch {
		case st.lang == "sh" && st.path == "":
		case st.lang == "yaml" && strings.HasPrefix(st.path, "/"):
		default:
			return nil, fmt.Errorf("runbook step %s: want ```sh without a path or ```yaml with the file's path, got %q %q", name, st.lang, st.path)
		}
		steps[name] = st
		i = j
	}
	return steps, nil
}

// text is step's block with vars' placeholders replaced; a placeholder
// left over fails the test.
func (s runbookSteps) text(t *testing.T, step string, vars map[string]string) string {
	t.Helper()
	st, ok := s[step]
	if !ok {
		t.Fatalf("no runbook step %s", step)
	}
	text := placeholder.ReplaceAllStringFunc(st.text, func(p string) string {
		if v, ok := vars[p]; ok {
			return v
		}
		return p
	})
	if left := placeholder.FindAllString(text, -1); len(left) > 0 {
		t.Fatalf("runbook step %s: placeholders %v have no value here", step, left)
	}
	return text
}

// writeFile writes a yaml step to the path its marker names, on m, as an
// operator's editor would.
func (s runbookSteps) writeFile(t *testing.T, m *simcluster.Machine, step string, vars map[string]string) {
	t.Helper()
	text := s.text(t, step, vars)
	path := s[step].path
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// Through the machine's own shell, so the file lands in its /etc.
	script := "mkdir -p " + filepath.Dir(path) + "\ncat > " + path + " <<'RUNBOOK_EOF'\n" + text + "RUNBOOK_EOF\n"
	if _, err := m.Shell(ctx, "/", script); err != nil {
		t.Fatalf("write %s (runbook step %s): %v", path, step, err)
	}
	t.Logf("%s: wrote %s:\n%s", m.Host.Name, path, text)
}

// The runbook reader refuses a README whose marks it cannot follow, so a
// broken mark fails TestRunbook instead of skipping a step.
func TestParseRunbook(t *testing.T) {
	sec := "# x\n\n" + runbookSection + "\n"
	good := sec + "<!-- runbook:a -->\n```sh\necho <x>\n```\n\n<!-- runbook:b /etc/f -->\n```yaml\nk: v\n```\n## Next\n<!-- runbook:c -->\n```sh\nno\n```\n"
	steps, err := parseRunbook(good)
	if err != nil {
		t.Fatal(err)
	}
	if len(steps) != 2 || steps["a"].text != "echo <x>\n" || steps["b"].path != "/etc/f" || steps["b"].text != "k: v\n" {
		t.Errorf("steps %+v, want a and b of this section only", steps)
	}
	for name, bad := range map[string]string{
		"no section":   "# x\n<!-- runbook:a -->\n```sh\ntrue\n```\n",
		"no block":     sec + "<!-- runbook:a -->\ntext\n",
		"unterminated": sec + "<!-- runbook:a -->\n```sh\ntrue\n",
		"twice":        sec + "<!-- runbook:a -->\n```sh\ntrue\n```\n<!-- runbook:a -->\n```sh\ntrue\n```\n",
		"yaml no path": sec + "<!-- runbook:a -->\n```yaml\nk: v\n```\n",
		"malformed":    sec + "<!-- runbook: a -->\n```sh\ntrue\n```\n",
	} {
		if _, err := parseRunbook(bad); err == nil {
			t.Errorf("%s: parsed, want an error", name)
		}
	}
}
