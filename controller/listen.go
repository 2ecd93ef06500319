package controller

import (
	"context"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/keyroute/keyroute/openflow"
)

// errReplaced ends a passive connection when its bridge connects again.
var errReplaced = fmt.Errorf("%w: the switch connected again", ErrConnectionLost)

// Listen accepts connections from bridges configured with
// `ovs-vsctl set-controller BR tcp:IP:PORT` (addr "tcp:127.0.0.1:6653") or
// a unix socket ("unix:/path"). Each datapath gets one Switch for its
// lifetime: when a bridge reconnects, its Switch takes the new connection
// and replays its desired flows. onSwitch is called once per datapath,
// after HELLO and FEATURES of its first connection and before
// OnConnected. Listen returns when ctx ends, after closing every
// connection and waiting for the handlers.
func Listen(ctx context.Context, addr string, opts Options, onSwitch func(*Switch)) error {
	network, address, err := parseAddr(addr)
	if err != nil {
		return err
	}
	ln, err := net.Listen(network, address)
	if err != nil {
		return fmt.Errorf("listen for switches on %s: %w", addr, err)
	}
	return serveListener(ctx, ln, opts, onSwitch)
}

func serveListener(ctx context.Context, ln net.Listener, opts Options, onSwitch func(*Switch)) error {
	opts = opts.withDefaults()
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		switches = map[uint64]*Switch{}
	)
	defer wg.Wait()
	for {
		nc, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				time.Sleep(10 * time.Millisecond)
				continue
			}
			ln.Close()
			return fmt.Errorf("accept switch connection on %s: %w", ln.Addr(), err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			log := opts.Logger.With("remote", nc.RemoteAddr().String())
			r := openflow.NewReader(nc)
			var xid atomic.Uint32
			feat, err := preHandshake(nc, r, opts.RequestTimeout, func() uint32 { return xid.Add(1) })
			if err != nil {
				nc.Close()
				log.Warn("switch handshake failed", "err", err)
				return
			}
			mu.Lock()
			sw, known := switches[feat.DatapathID]
			if !known {
				sw = New(nc.RemoteAddr().String(), opts)
				sw.passive = true
				switches[feat.DatapathID] = sw
				wait := sw.startWorkers(ctx)
				wg.Add(1)
				go func() {
					defer wg.Done()
					<-ctx.Done()
					wait()
				}()
			}
			mu.Unlock()
			if known {
				if c, err := sw.conn(); err == nil {
					c.close(errReplaced)
				}
			} else if onSwitch != nil {
				onSwitch(sw)
			}
			if _, err := sw.attach(ctx, nc, r, feat); err != nil && ctx.Err() == nil {
				sw.setLastErr(err)
				sw.log.Warn("switch connection down", "err", err)
			}
		}()
	}
}
