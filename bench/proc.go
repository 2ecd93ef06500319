package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/keyroute/keyroute/simhost"
)

// server is a long-running program in a namespace (iperf3 -s, the rr
// server), stopped by its PID.
type server struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}
	log  string
}

// startServer runs argv inside ns (`ip netns exec` execs it, so the PID is
// the program's), output to logPath.
func startServer(name, ns, logPath string, argv ...string) (*server, error) {
	f, err := os.Create(logPath)
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	defer f.Close()
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns}, argv...)...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s in %s: %w", name, ns, err)
	}
	s := &server{name: name, cmd: cmd, done: make(chan struct{}), log: logPath}
	go func() { cmd.Wait(); close(s.done) }()
	return s, nil
}

func (s *server) pid() int { return s.cmd.Process.Pid }

func (s *server) exited() bool {
	select {
	case <-s.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM, then SIGKILL after 3 s.
func (s *server) stop() error {
	if s.exited() {
		return nil
	}
	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
		return nil
	case <-time.After(3 * time.Second):
	}
	s.cmd.Process.Kill()
	select {
	case <-s.done:
		return nil
	case <-time.After(5 * time.Second):
		return fmt.Errorf("stop %s: pid %d did not exit", s.name, s.pid())
	}
}

// runIn runs argv inside ns with a timeout and returns stdout; an error
// carries stderr.
func runIn(ctx context.Context, timeout time.Duration, ns string, argv ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns}, argv...)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		if ctx.Err() != nil {
			err = errors.Join(err, ctx.Err())
		}
		return out.Bytes(), fmt.Errorf("%s in %s: %w: %s", strings.Join(argv, " "), ns, err, strings.TrimSpace(errb.String()))
	}
	return out.Bytes(), nil
}

// nsPIDs lists the processes inside the namespaces whose names start with
// any of prefixes.
func nsPIDs(prefixes ...string) []int {
	var pids []int
	for _, p := range prefixes {
		for _, ns := range simhost.ListNetNS(p) {
			out, err := simhost.Run("ip", "netns", "pids", ns)
			if err != nil {
				continue
			}
			for _, f := range strings.Fields(out) {
				if n, err := strconv.Atoi(f); err == nil {
					pids = append(pids, n)
				}
			}
		}
	}
	return pids
}

// waitListening polls ss inside ns until something listens on port
// (proto "t" or "u").
func waitListening(ns, proto string, port int, s *server) error {
	return simhost.WaitFor(10*time.Second, func() error {
		if s.exited() {
			b, _ := os.ReadFile(s.log)
			return fmt.Errorf("%s exited: %s", s.name, bytes.TrimSpace(b))
		}
		out, err := simhost.Run("ip", "netns", "exec", ns, "ss", "-Hl"+proto+"n", "sport", "=", ":"+strconv.Itoa(port))
		if err != nil || strings.TrimSpace(out) == "" {
			return fmt.Errorf("%s not listening on %d yet (%v)", s.name, port, err)
		}
		return nil
	})
}

// selfExe is this program, for running the rr subcommands in namespaces.
func selfExe() (string, error) {
	exe, err := os.Executable()
	if err != nil {
		return "", fmt.Errorf("find own executable: %w", err)
	}
	return filepath.EvalSymlinks(exe)
}
