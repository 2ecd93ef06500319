// Package version holds keyroute's version: one variable, set at link time
// by the Makefile (-ldflags "-X github.com/keyroute/keyroute/internal/version.Version=$(git describe)").
package version

import "runtime/debug"

// Version is set by -ldflags -X. Empty (a plain go build or go test) falls
// back to the VCS revision Go stamps into the binary, else "dev".
var Version = ""

// String returns the version to show and to store in host records.
func String() string {
	if Version != "" {
		return Version
	}
	if bi, ok := debug.ReadBuildInfo(); ok {
		var rev, dirty string
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				rev = s.Value
			case "vcs.modified":
				if s.Value == "true" {
					dirty = "-dirty"
				}
			}
		}
		if len(rev) > 12 {
			rev = rev[:12]
		}
		if rev != "" {
			return "dev-" + rev + dirty
		}
	}
	return "dev"
}
