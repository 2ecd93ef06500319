package simcluster

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
)

// ModulePath is the module whose binaries the harness builds.
const ModulePath = "github.com/keyroute/keyroute"

// BuildBinaries builds keyroute-agent, keyroutectl and keyroute-cni into dir with
// `go build` from the module root. Tests that make several clusters call it
// once (e.g. in TestMain) and pass dir as Options.BinDir.
func BuildBinaries(ctx context.Context, dir string) error {
	root, err := ModuleRoot()
	if err != nil {
		return fmt.Errorf("build binaries: %w", err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("build binaries: %w", err)
	}
	cmd := exec.CommandContext(ctx, "go", "build", "-o", dir+string(filepath.Separator),
		"./cmd/keyroute-agent", "./cmd/keyroutectl", "./cmd/keyroute-cni")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("build binaries in %s: %w\n%s", root, err, out)
	}
	return nil
}

// ModuleRoot finds the keyroute source tree: the directory this file was
// compiled from, else the current directory's module (`go env GOMOD`).
func ModuleRoot() (string, error) {
	var tried []string
	if _, file, _, ok := runtime.Caller(0); ok {
		root := filepath.Dir(filepath.Dir(file))
		if isModuleRoot(root) {
			return root, nil
		}
		tried = append(tried, root)
	}
	if out, err := exec.Command("go", "env", "GOMOD").Output(); err == nil {
		if gomod := strings.TrimSpace(string(out)); gomod != "" && gomod != os.DevNull {
			root := filepath.Dir(gomod)
			if isModuleRoot(root) {
				return root, nil
			}
			tried = append(tried, root)
		}
	}
	return "", fmt.Errorf("no %s source tree found (tried %v); run from the repository or pass a directory with keyroute-agent and keyroutectl", ModulePath, tried)
}

// isModuleRoot reports whether dir/go.mod declares ModulePath.
func isModuleRoot(dir string) bool {
	f, err := os.Open(filepath.Join(dir, "go.mod"))
	if err != nil {
		return false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if fields := strings.Fields(sc.Text()); len(fields) == 2 && fields[0] == "module" {
			return fields[1] == ModulePath
		}
	}
	return false
}

// DefaultBinDir picks the directory of keyroute-agent and keyroutectl for a
// command: the flag's value if given, else the directory of the running
// program when both binaries sit next to it (make builds them together);
// empty lets the harness build them.
func DefaultBinDir(flagged string) string {
	if flagged != "" {
		if abs, err := filepath.Abs(flagged); err == nil {
			return abs
		}
		return flagged
	}
	exe, err := os.Executable()
	if err != nil {
		return ""
	}
	dir := filepath.Dir(exe)
	for _, b := range []string{"keyroute-agent", "keyroutectl"} {
		if _, err := os.Stat(filepath.Join(dir, b)); err != nil {
			return ""
		}
	}
	return dir
}
