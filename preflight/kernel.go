package preflight

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path"
	"strings"
)

// moduleState is what the kernel's files say about one module.
type moduleState int

const (
	modMissing  moduleState = iota // no evidence the module exists
	modLoadable                    // listed in modules.dep, not loaded
	modLoaded                      // loaded, or present in /sys/module
	modBuiltin                     // compiled into the kernel
)

// configSymbol maps the modules preflight probes to their Kconfig symbols,
// for kernels that ship their config but no module lists.
var configSymbol = map[string]string{
	"openvswitch": "CONFIG_OPENVSWITCH",
	"vxlan":       "CONFIG_VXLAN",
	"tun":         "CONFIG_TUN",
	"veth":        "CONFIG_VETH",
}

// kernelFacts is one reading of the module lists and kernel config.
type kernelFacts struct {
	env        Env
	release    string
	loaded     map[string]bool // /proc/modules
	loadedErr  error
	builtin    map[string]string // name -> path in modules.builtin
	builtinErr error
	dep        map[string]string // name -> path in modules.dep
	depErr     error
	config     map[string]string // CONFIG_X -> y|m|n
	configSrc  string
}

func gatherKernel(env Env) *kernelFacts {
	k := &kernelFacts{env: env}
	if b, err := env.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		k.release = strings.TrimSpace(string(b))
	}
	var b []byte
	if b, k.loadedErr = env.ReadFile("/proc/modules"); k.loadedErr == nil {
		k.loaded = map[string]bool{}
		for _, line := range lines(b) {
			if f := strings.Fields(line); len(f) > 0 {
				k.loaded[f[0]] = true
			}
		}
	}
	k.builtin, k.builtinErr = k.moduleList("modules.builtin")
	k.dep, k.depErr = k.moduleList("modules.dep")
	k.config, k.configSrc = readConfig(env, k.release)
	return k
}

// moduleList reads /lib/modules/<release>/<file> into module name -> path.
func (k *kernelFacts) moduleList(file string) (map[string]string, error) {
	if k.release == "" {
		return nil, errors.New("kernel release unknown")
	}
	b, err := k.env.ReadFile(k.libModules(file))
	if err != nil {
		return nil, err
	}
	m := map[string]string{}
	for _, line := range lines(b) {
		p, _, _ := strings.Cut(line, ":") // modules.dep: "<path>: <deps>"
		if p = strings.TrimSpace(p); p != "" {
			m[moduleName(p)] = p
		}
	}
	return m, nil
}

func (k *kernelFacts) libModules(file string) string {
	return "/lib/modules/" + k.release + "/" + file
}

// moduleName turns "kernel/net/openvswitch/openvswitch.ko.zst" into
// "openvswitch"; the kernel treats - and _ in module names alike.
func moduleName(p string) string {
	base := path.Base(p)
	if i := strings.Index(base, ".ko"); i >= 0 {
		base = base[:i]
	}
	return strings.ReplaceAll(base, "-", "_")
}

// readConfig parses /proc/config.gz or /boot/config-<release>.
func readConfig(env Env, release string) (map[string]string, string) {
	if b, err := env.ReadFile("/proc/config.gz"); err == nil {
		if zr, err := gzip.NewReader(bytes.NewReader(b)); err == nil {
			if plain, err := io.ReadAll(zr); err == nil {
				return parseConfig(plain), "/proc/config.gz"
			}
		}
	}
	if release != "" {
		src := "/boot/config-" + release
		if b, err := env.ReadFile(src); err == nil {
			return parseConfig(b), src
		}
	}
	return nil, ""
}

func parseConfig(b []byte) map[string]string {
	m := map[string]string{}
	for _, line := range lines(b) {
		if sym, ok := strings.CutPrefix(line, "# "); ok {
			if sym, ok = strings.CutSuffix(sym, " is not set"); ok {
				m[sym] = "n"
			}
			continue
		}
		if sym, val, ok := strings.Cut(line, "="); ok {
			m[sym] = val
		}
	}
	return m
}

func lines(b []byte) []string {
	var out []string
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 0, 64*1024), 1<<20)
	for sc.Scan() {
		out = append(out, sc.Text())
	}
	return out
}

// moduleInfo is the verdict on one module with the evidence behind it.
type moduleInfo struct {
	name   string
	state  moduleState
	detail string
}

// module decides the state of module name, most direct evidence first.
func (k *kernelFacts) module(name string) moduleInfo {
	mi := moduleInfo{name: name}
	sym := configSymbol[name]
	sysfs := "/sys/module/" + name
	sysErr := k.env.Stat(sysfs)
	switch {
	case k.loaded[name]:
		mi.state, mi.detail = modLoaded, "loaded (/proc/modules)"
	case k.builtin[name] != "":
		mi.state, mi.detail = modBuiltin, "built into the kernel ("+k.libModules("modules.builtin")+")"
	case sym != "" && k.config[sym] == "y":
		mi.state, mi.detail = modBuiltin, fmt.Sprintf("built into the kernel (%s=y in %s)", sym, k.configSrc)
	case sysErr == nil:
		// Built-in modules with parameters show up here too.
		mi.state, mi.detail = modLoaded, "present ("+sysfs+")"
	case k.dep[name] != "":
		mi.state, mi.detail = modLoadable, "not loaded, loadable ("+k.dep[name]+" in "+k.libModules("modules.dep")+")"
	default:
		mi.detail = k.absence(name, sysfs, sysErr)
	}
	return mi
}

// absence lists every place that was checked for a missing module.
func (k *kernelFacts) absence(name, sysfs string, sysErr error) string {
	var ev []string
	if errors.Is(sysErr, fs.ErrNotExist) {
		ev = append(ev, sysfs+" missing")
	} else {
		ev = append(ev, sysfs+": "+sysErr.Error())
	}
	switch {
	case k.loadedErr == nil:
		ev = append(ev, "not in /proc/modules")
	case errors.Is(k.loadedErr, fs.ErrNotExist):
		ev = append(ev, "no /proc/modules (kernel without loadable modules)")
	default:
		ev = append(ev, "/proc/modules: "+k.loadedErr.Error())
	}
	switch {
	case k.release == "":
		ev = append(ev, "kernel release unknown, /lib/modules not checked")
	case errors.Is(k.builtinErr, fs.ErrNotExist) && errors.Is(k.depErr, fs.ErrNotExist):
		ev = append(ev, "no "+k.libModules("modules.builtin")+" or modules.dep")
	default:
		for _, l := range []struct {
			file string
			err  error
		}{{"modules.builtin", k.builtinErr}, {"modules.dep", k.depErr}} {
			if l.err == nil {
				ev = append(ev, "not in "+k.libModules(l.file))
			} else {
				ev = append(ev, l.err.Error())
			}
		}
	}
	if sym := configSymbol[name]; sym != "" && k.config != nil {
		switch v := k.config[sym]; v {
		case "", "n":
			ev = append(ev, sym+" is not set ("+k.configSrc+")")
		default:
			ev = append(ev, sym+"="+v+" ("+k.configSrc+")")
		}
	}
	return strings.Join(ev, ", ")
}

// present: usable now without loading anything.
func (m moduleInfo) present() bool { return m.state == modLoaded || m.state == modBuiltin }

// usable: present, or the kernel can load it on demand.
func (m moduleInfo) usable() bool { return m.state != modMissing }

func (m moduleInfo) short() string {
	return [...]string{modMissing: "not present", modLoadable: "not loaded", modLoaded: "loaded", modBuiltin: "built in"}[m.state]
}

// check: OK when the module is usable (loaded, built in or loadable).
func (m moduleInfo) check() Check {
	return Check{Name: "module " + m.name, OK: m.usable(), Detail: m.detail}
}
