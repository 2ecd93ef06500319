// Package netnsutil runs code inside another network namespace.
//
// setns(2) switches only the calling OS thread, so the work runs on a
// goroutine locked to its thread. If the thread cannot switch back it is
// left locked: the goroutine then exits and the Go runtime terminates the
// thread instead of reusing it in the wrong namespace. Nothing panics; the
// caller gets an error.
package netnsutil

import (
	"fmt"
	"os"
	"runtime"
	"strings"

	"golang.org/x/sys/unix"
)

// Path resolves a namespace given by name (as `ip netns` names it, under
// /run/netns) or by path (anything with a slash, e.g. /proc/PID/ns/net).
func Path(ns string) string {
	if strings.Contains(ns, "/") {
		return ns
	}
	return "/run/netns/" + ns
}

// Do runs fn inside the namespace at path (see Path) and returns its error.
// Sockets fn creates belong to that namespace and stay there after Do
// returns.
func Do(path string, fn func() error) error {
	target, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("enter netns %s: %w", path, err)
	}
	defer target.Close()
	errc := make(chan error, 1)
	// A goroutine of its own: the thread it may leave locked dies with it.
	go func() {
		runtime.LockOSThread()
		orig, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("enter netns %s: open the current one: %w", path, err)
			return
		}
		defer orig.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("enter netns %s: %w", path, err)
			return
		}
		ferr := fn()
		if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
			// Stay locked: the runtime discards the thread on exit.
			if ferr == nil {
				ferr = fmt.Errorf("leave netns %s: %w", path, err)
			}
			errc <- ferr
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}
