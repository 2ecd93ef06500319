package simcluster

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/keyroute/keyroute/simhost"
)

// CleanupStale tears down clusters left by runs that died without closing
// them: every namespace named <family><pid><letters>- (DefaultPrefix's
// form) whose owner PID no longer runs. family must start with "kre", so
// other users' namespaces are never touched; live runs are skipped.
func CleanupStale(family string) error {
	if !strings.HasPrefix(family, "kre") {
		return fmt.Errorf("cleanup stale: family %q: only kre* prefixes belong to this harness", family)
	}
	var errs []error
	for _, prefix := range stalePrefixes(family, simhost.ListNetNS(family), simhost.PIDAlive) {
		errs = append(errs, Teardown(prefix))
	}
	return errors.Join(errs...)
}

// stalePrefixes returns the cluster prefixes among names whose owner PID is
// not alive, sorted and without duplicates.
func stalePrefixes(family string, names []string, alive func(int) bool) []string {
	seen := map[string]bool{}
	var out []string
	for _, name := range names {
		rest := strings.TrimPrefix(name, family)
		digits := len(rest) - len(strings.TrimLeft(rest, "0123456789"))
		if digits == 0 {
			continue // not a PID-carrying prefix: someone chose it by hand
		}
		pid, err := strconv.Atoi(rest[:digits])
		end := strings.IndexByte(rest[digits:], '-')
		if err != nil || end < 0 || strings.Trim(rest[digits:digits+end], "abcdefghijklmnopqrstuvwxyz") != "" {
			continue
		}
		prefix := family + rest[:digits+end+1]
		if seen[prefix] || alive(pid) {
			continue
		}
		seen[prefix] = true
		out = append(out, prefix)
	}
	sort.Strings(out)
	return out
}

// Teardown removes a cluster that is not (or no longer) managed by a live
// Cluster value, e.g. one left up with KeepUp or by a crashed run: it stops
// every process inside its namespaces and the OVS daemons of its working
// directory (by the PIDs they wrote), deletes the namespaces and removes its
// working directory if it is in the system temp dir.
func Teardown(prefix string) error {
	if !prefixRE.MatchString(prefix) {
		return fmt.Errorf("teardown: prefix %q is not a cluster prefix", prefix)
	}
	var errs []error
	names := simhost.ListNetNS(prefix)
	for _, name := range names {
		if err := killInNetNS(name); err != nil {
			errs = append(errs, fmt.Errorf("teardown %s: %w", name, err))
		}
	}
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), prefix+"*"))
	for _, dir := range dirs {
		// ovsdb-server runs outside the host namespaces; its pidfile is
		// all that is left of it.
		pidfiles, _ := filepath.Glob(filepath.Join(dir, "h*", "ovs", "run", "*.pid"))
		for _, pf := range pidfiles {
			b, err := os.ReadFile(pf)
			if err != nil {
				continue
			}
			pid, err := strconv.Atoi(string(bytes.TrimSpace(b)))
			if err != nil {
				continue
			}
			// The daemon names its pidfile on its command line, which KillPID
			// checks, so a recycled PID is left alone.
			errs = append(errs, simhost.KillPID(pid, pf, 10*time.Second))
		}
	}
	for _, name := range names {
		if err := (&simhost.NetNS{Name: name}).Delete(); err != nil {
			errs = append(errs, fmt.Errorf("teardown: delete netns %s: %w", name, err))
		}
	}
	for _, dir := range dirs {
		errs = append(errs, os.RemoveAll(dir))
	}
	return errors.Join(errs...)
}
