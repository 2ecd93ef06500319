package agent

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/keyroute/keyroute/ovsdb"
)

// capturePort is the internal port on the physical bridge that an OVS
// mirror copies the uplink's packets to while a capture runs, when the
// uplink is an AF_XDP port: XDP takes its frames before any packet tap,
// so tcpdump on the uplink itself would see nothing.
const capturePort = "kr-cap"

// captureMirror counts the captures using the mirror: it exists only while
// one runs (every mirrored packet costs ovs-vswitchd a write).
var captureMirror struct {
	sync.Mutex
	users int
}

// captureDev returns the device a capture of the uplink reads and the
// function to call when the capture ends.
func (a *Agent) captureDev(ctx context.Context) (string, func(), error) {
	info, err := a.db.Interface(ctx, a.cfg.Uplink)
	if err != nil {
		return "", nil, fmt.Errorf("read uplink %s: %w", a.cfg.Uplink, err)
	}
	if info.Type != ovsTypeAFXDP {
		return a.cfg.Uplink, func() {}, nil
	}
	captureMirror.Lock()
	defer captureMirror.Unlock()
	if captureMirror.users == 0 {
		if err := a.startCaptureMirror(ctx); err != nil {
			a.stopCaptureMirror()
			return "", nil, fmt.Errorf("mirror AF_XDP uplink %s to %s for the capture: %w", a.cfg.Uplink, capturePort, err)
		}
	}
	captureMirror.users++
	var once sync.Once
	return capturePort, func() {
		once.Do(func() {
			captureMirror.Lock()
			defer captureMirror.Unlock()
			if captureMirror.users--; captureMirror.users == 0 {
				a.stopCaptureMirror()
			}
		})
	}, nil
}

func (a *Agent) startCaptureMirror(ctx context.Context) error {
	br := a.cfg.Bridges.Physical
	if err := a.db.EnsurePort(ctx, br, ovsdb.PortSpec{Name: capturePort, Type: "internal"}); err != nil {
		return err
	}
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	_, err := a.db.WaitOFPort(wctx, capturePort)
	cancel()
	if err != nil {
		return err
	}
	// The copies must not reach the host stack (they would be delivered
	// twice); tcpdump sees them before the ingress hook drops them.
	if a.plan.IsolatePorts {
		if err := isolatePort(capturePort); err != nil {
			return err
		}
	}
	link, err := netlink.LinkByName(capturePort)
	if err != nil {
		return err
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("bring up %s: %w", capturePort, err)
	}
	return a.db.SetMirror(ctx, br, capturePort, a.cfg.Uplink, capturePort)
}

func (a *Agent) stopCaptureMirror() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	br := a.cfg.Bridges.Physical
	err := errors.Join(a.db.DeleteMirror(ctx, br, capturePort), a.db.DeletePort(ctx, br, capturePort))
	if err != nil && !errors.Is(err, ovsdb.ErrNotFound) {
		a.log.Warn("remove the capture mirror", "port", capturePort, "err", err)
	}
	releasePort(capturePort)
}
