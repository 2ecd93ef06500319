package simcluster

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/keyroute/keyroute/simhost"
)

// Process is a long-running program the harness started (agent, etcd,
// tcpdump, iperf3 server), stopped by its PID.
type Process struct {
	// Name says what it is, for messages ("h1 agent", "tcpdump fab0").
	Name string
	// LogPath receives its stdout and stderr.
	LogPath string

	// daemon marks the cluster's infrastructure (agents, etcd), which
	// Close leaves running with KeepUp.
	daemon bool
	cmd    *exec.Cmd
	done   chan struct{}
	err    error // exit status, valid once done is closed
	stop   sync.Once
	serr   error
}

// startProcess runs argv in the background, output appended to logPath, in
// its own process group so a Ctrl-C on the terminal reaches the harness (which
// tears down in order) and not the children directly.
func startProcess(name, logPath string, argv ...string) (*Process, error) {
	if err := os.MkdirAll(filepath.Dir(logPath), 0o755); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	log, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	defer log.Close() // the child holds its own copy
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s (%s): %w", name, strings.Join(argv, " "), err)
	}
	p := &Process{Name: name, LogPath: logPath, cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// PID is the process ID. `ip netns exec` execs its command, so for programs
// started in a namespace this is the program itself.
func (p *Process) PID() int { return p.cmd.Process.Pid }

// Exited reports whether the process has ended, and how.
func (p *Process) Exited() (bool, error) {
	select {
	case <-p.done:
		return true, p.err
	default:
		return false, nil
	}
}

// Done is closed when the process has ended.
func (p *Process) Done() <-chan struct{} { return p.done }

// Wait waits up to timeout for the process to end by itself.
func (p *Process) Wait(timeout time.Duration) error {
	select {
	case <-p.done:
		return p.err
	case <-time.After(timeout):
		return fmt.Errorf("%s (pid %d) still running after %s", p.Name, p.PID(), timeout)
	}
}

// Stop sends SIGTERM, waits up to grace, then SIGKILLs. It returns an error
// only if the process would not die; calling it again is a no-op.
func (p *Process) Stop(grace time.Duration) error {
	p.stop.Do(func() {
		if ended, _ := p.Exited(); ended {
			return
		}
		p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
			return
		case <-time.After(grace):
		}
		p.cmd.Process.Kill()
		select {
		case <-p.done:
		case <-time.After(5 * time.Second):
			p.serr = fmt.Errorf("stop %s: pid %d did not exit after SIGKILL", p.Name, p.PID())
		}
	})
	return p.serr
}

// Kill sends SIGKILL at once, as in a crash (nothing of the process's own
// clean-up runs), and waits for it to end. After Kill, Stop is a no-op.
func (p *Process) Kill() error {
	p.stop.Do(func() {
		if ended, _ := p.Exited(); ended {
			return
		}
		p.cmd.Process.Kill()
		select {
		case <-p.done:
		case <-time.After(5 * time.Second):
			p.serr = fmt.Errorf("kill %s: pid %d did not exit after SIGKILL", p.Name, p.PID())
		}
	})
	return p.serr
}

// LogTail returns the last n lines of the process's log.
func (p *Process) LogTail(n int) string { return LogTail(p.LogPath, n) }

func LogTail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	lines := bytes.Split(bytes.TrimRight(b, "\n"), []byte("\n"))
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return string(bytes.Join(lines, []byte("\n")))
}

// procSet tracks what a cluster started so Close can stop it.
type procSet struct {
	mu    sync.Mutex
	procs []*Process
}

func (s *procSet) add(p *Process) {
	s.mu.Lock()
	s.procs = append(s.procs, p)
	s.mu.Unlock()
}

// stopAll stops the tracked processes that skip (if set) does not keep,
// newest first: a tcpdump before the agent whose traffic it watches.
func (s *procSet) stopAll(skip func(*Process) bool) error {
	s.mu.Lock()
	procs := slices.Clone(s.procs)
	s.mu.Unlock()
	var errs []error
	for i := len(procs) - 1; i >= 0; i-- {
		if skip == nil || !skip(procs[i]) {
			errs = append(errs, procs[i].Stop(10*time.Second))
		}
	}
	return errors.Join(errs...)
}

// killInNetNS stops every process inside a namespace (left by a crashed run).
func killInNetNS(ns string) error {
	out, err := simhost.Run("ip", "netns", "pids", ns)
	if err != nil {
		return err
	}
	var errs []error
	for _, f := range strings.Fields(out) {
		var pid int
		if _, err := fmt.Sscan(f, &pid); err == nil {
			errs = append(errs, simhost.KillPID(pid, "", 5*time.Second))
		}
	}
	return errors.Join(errs...)
}
