package registry

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"sort"
	"strings"
	"sync/atomic"
	"syscall"

	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// EmbeddedConfig configures the etcd server run inside the agent: a
// single-node cluster, or one member of a cluster (Members).
type EmbeddedConfig struct {
	DataDir   string // required; survives restarts
	ClientURL string // default http://127.0.0.1:2379
	PeerURL   string // default http://127.0.0.1:2380
	Name      string // member name, default "keyroute"
	// Members, if set, is the whole cluster's membership at bootstrap,
	// member name to peer URL (etcd's --initial-cluster); it must name
	// Name with PeerURL. Without it the server is a cluster of one. It
	// is read only when DataDir holds no data yet: a member restarted
	// with its data dir rejoins with the membership it keeps there.
	Members map[string]string
	// TLS, if set, serves every https URL with TLS.Cert and requires
	// clients (and peers) to present a certificate signed by TLS.CA. An
	// https URL without TLS is an error.
	TLS *TLSFiles
	// Insecure allows an http URL on a non-loopback address. Without it
	// such a URL is refused: anyone who reaches it could read and rewrite
	// the cluster's state.
	Insecure bool
	// Logger receives etcd's warnings and errors (its info chatter is
	// dropped). Default slog.Default().
	Logger *slog.Logger
}

// Embedded is a running single-node etcd server.
type Embedded struct {
	etcd      *embed.Etcd
	endpoints []string
	stopping  *atomic.Bool
	// endStreams ends every client's watch and lease keep-alive stream.
	endStreams context.CancelFunc
}

// streamEnder ends long-lived gRPC streams when its context is cancelled.
// etcd's Close waits for open streams (other agents' watches and lease
// keep-alives) until its request timeout, 7 s with the default election
// timeout, before it drops them; ending them first lets Close return in
// well under a second. Clients see the stream end as etcd unavailable and
// retry another endpoint.
type streamEnder struct {
	ctx context.Context
}

func (s streamEnder) intercept(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	if s.ctx.Err() != nil {
		return status.Error(codes.Unavailable, "etcd server stopping")
	}
	ctx, cancel := context.WithCancel(ss.Context())
	defer cancel()
	stop := context.AfterFunc(s.ctx, cancel)
	defer stop()
	return handler(srv, &ctxStream{ServerStream: ss, ctx: ctx})
}

type ctxStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (c *ctxStream) Context() context.Context { return c.ctx }

// StartEmbedded starts a single-node etcd server and waits until it serves
// clients. It fails if a URL's port is taken, if ctx ends first, or if the
// server stops during start-up. History older than one hour is compacted
// automatically, so key churn does not grow the database without bound.
func StartEmbedded(ctx context.Context, cfg EmbeddedConfig) (*Embedded, error) {
	if cfg.DataDir == "" {
		return nil, errors.New("start embedded etcd: DataDir is required")
	}
	if cfg.ClientURL == "" {
		cfg.ClientURL = "http://127.0.0.1:2379"
	}
	if cfg.PeerURL == "" {
		cfg.PeerURL = "http://127.0.0.1:2380"
	}
	if cfg.Name == "" {
		cfg.Name = "keyroute"
	}
	curl, err := parseURL("client", cfg.ClientURL)
	if err != nil {
		return nil, err
	}
	purl, err := parseURL("peer", cfg.PeerURL)
	if err != nil {
		return nil, err
	}

	if err := checkEmbeddedTLS(cfg, curl.String(), purl.String()); err != nil {
		return nil, fmt.Errorf("start embedded etcd: %w", err)
	}

	ec := embed.NewConfig()
	ec.Name = cfg.Name
	ec.Dir = cfg.DataDir
	ec.ListenClientUrls = []url.URL{*curl}
	ec.AdvertiseClientUrls = []url.URL{*curl}
	ec.ListenPeerUrls = []url.URL{*purl}
	ec.AdvertisePeerUrls = []url.URL{*purl}
	ec.InitialCluster = ec.InitialClusterFromName(cfg.Name)
	if len(cfg.Members) > 0 {
		if ec.InitialCluster, err = initialCluster(cfg.Name, purl.String(), cfg.Members); err != nil {
			return nil, fmt.Errorf("start embedded etcd: %w", err)
		}
		// Members of different keyroute clusters never join each other
		// by mistake: etcd refuses a peer with another token.
		ec.InitialClusterToken = "keyroute"
	}
	ec.AutoCompactionMode = embed.CompactorModePeriodic
	ec.AutoCompactionRetention = "1h"
	if cfg.TLS != nil {
		// With client-cert-auth, the TLS handshake itself turns away
		// every client without a certificate of the cluster CA, before it
		// can send a request.
		if curl.Scheme == "https" {
			ec.ClientTLSInfo = cfg.TLS.info(true)
		}
		if purl.Scheme == "https" {
			ec.PeerTLSInfo = cfg.TLS.info(true)
		}
	}
	ec.LogLevel = "warn"
	core := &slogCore{log: orDefault(cfg.Logger), stopping: new(atomic.Bool)}
	ec.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.New(core).Named("etcd"))

	streamsCtx, endStreams := context.WithCancel(context.Background())
	ec.GRPCAdditionalServerOptions = append(ec.GRPCAdditionalServerOptions,
		grpc.ChainStreamInterceptor(streamEnder{streamsCtx}.intercept))

	e, err := embed.StartEtcd(ec)
	if err != nil {
		endStreams()
		core.stopping.Store(true)
		if errors.Is(err, syscall.EADDRINUSE) {
			return nil, fmt.Errorf("start embedded etcd (client %s, peer %s): port already in use: %w", cfg.ClientURL, cfg.PeerURL, err)
		}
		return nil, fmt.Errorf("start embedded etcd in %s: %w", cfg.DataDir, err)
	}
	if len(cfg.Members) > 0 {
		// Ready needs a quorum: at a cluster's first start, until enough
		// of the other members' agents have started too.
		orDefault(cfg.Logger).Info("embedded etcd member started; waiting for a quorum of members", "member", cfg.Name, "cluster", ec.InitialCluster)
	}
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		endStreams()
		core.stopping.Store(true)
		e.Close()
		return nil, fmt.Errorf("start embedded etcd: server failed: %w", err)
	case <-ctx.Done():
		endStreams()
		core.stopping.Store(true)
		e.Close()
		return nil, fmt.Errorf("start embedded etcd: %w", ctx.Err())
	}
	return &Embedded{etcd: e, endpoints: []string{curl.String()}, stopping: core.stopping, endStreams: endStreams}, nil
}

// initialCluster renders members as etcd's --initial-cluster
// ("a=https://…,b=https://…", sorted), after checking that it names this
// member with its own peer URL and every peer URL once.
func initialCluster(name, peerURL string, members map[string]string) (string, error) {
	if got, ok := members[name]; !ok {
		return "", fmt.Errorf("members %v do not name this member %q", members, name)
	} else if got != peerURL {
		return "", fmt.Errorf("members give member %q the peer URL %s, but it serves %s", name, got, peerURL)
	}
	seen := map[string]string{}
	parts := make([]string, 0, len(members))
	for n, u := range members {
		if _, err := parseURL("member "+n+" peer", u); err != nil {
			return "", err
		}
		if other, dup := seen[u]; dup {
			return "", fmt.Errorf("members %q and %q share the peer URL %s", other, n, u)
		}
		seen[u] = n
		parts = append(parts, n+"="+u)
	}
	sort.Strings(parts)
	return strings.Join(parts, ","), nil
}

func parseURL(what, s string) (*url.URL, error) {
	u, err := url.Parse(s)
	if err != nil {
		return nil, fmt.Errorf("embedded etcd %s URL %q: %w", what, s, err)
	}
	if u.Scheme != "http" && u.Scheme != "https" || u.Port() == "" {
		return nil, fmt.Errorf("embedded etcd %s URL %q: want https://host:port (or http://host:port)", what, s)
	}
	return u, nil
}

// checkEmbeddedTLS refuses plaintext on non-loopback URLs unless Insecure,
// https without certificates, and a certificate that does not name the
// addresses it would serve.
func checkEmbeddedTLS(cfg EmbeddedConfig, client, peer string) error {
	for _, u := range []struct{ what, url string }{{"client", client}, {"peer", peer}} {
		switch {
		case PlaintextURL(u.url) && !cfg.Insecure:
			return fmt.Errorf("%s URL %s is plaintext on a non-loopback address: anyone who reaches it could read and rewrite the cluster's state; serve https with a cluster certificate (keyroutectl pki), or allow plaintext explicitly (insecure)", u.what, u.url)
		case strings.HasPrefix(u.url, "https://") && cfg.TLS == nil:
			return fmt.Errorf("%s URL %s is https but no CA, certificate and key are given", u.what, u.url)
		}
	}
	if cfg.TLS == nil {
		return nil
	}
	cert, err := cfg.TLS.Check(true)
	if err != nil {
		return err
	}
	for _, u := range []struct{ what, url string }{{"client", client}, {"peer", peer}} {
		if strings.HasPrefix(u.url, "https://") {
			if err := checkServes(cert, cfg.TLS.Cert, u.what, u.url); err != nil {
				return err
			}
		}
	}
	return nil
}

// Endpoints returns the client URLs to pass to New.
func (e *Embedded) Endpoints() []string { return append([]string(nil), e.endpoints...) }

// Close ends the clients' streams, stops the server and waits until it has
// released its ports and data directory.
func (e *Embedded) Close() error {
	e.stopping.Store(true)
	e.endStreams()
	e.etcd.Close()
	return nil
}

// zapLogger returns a zap logger that forwards warnings and errors to l
// (slog.Default() when nil) and drops everything below, for etcd's server
// and client libraries, which log through zap.
func zapLogger(l *slog.Logger) *zap.Logger {
	return zap.New(&slogCore{log: orDefault(l)})
}

func orDefault(l *slog.Logger) *slog.Logger {
	if l == nil {
		return slog.Default()
	}
	return l
}

// benign lists etcd warnings that are expected with keyroute's settings
// (one port for HTTP and gRPC, auth disabled); they are logged at debug.
var benign = map[string]bool{
	"Running http and grpc server on single port. This is not recommended for production.": true,
	"simple token is not cryptographically signed":                                         true,
}

// slogCore is a zapcore.Core writing to slog at warn level and above.
type slogCore struct {
	log    *slog.Logger
	fields []zapcore.Field
	// stopping, if set, demotes everything to debug: a closing server
	// reports its closed listeners as errors.
	stopping *atomic.Bool
}

func (c *slogCore) Enabled(l zapcore.Level) bool { return l >= zapcore.WarnLevel }

func (c *slogCore) With(fs []zapcore.Field) zapcore.Core {
	return &slogCore{log: c.log, fields: append(append([]zapcore.Field(nil), c.fields...), fs...), stopping: c.stopping}
}

func (c *slogCore) Check(ent zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if c.Enabled(ent.Level) {
		return ce.AddCore(ent, c)
	}
	return ce
}

func (c *slogCore) Write(ent zapcore.Entry, fs []zapcore.Field) error {
	enc := zapcore.NewMapObjectEncoder()
	for _, f := range c.fields {
		f.AddTo(enc)
	}
	for _, f := range fs {
		f.AddTo(enc)
	}
	keys := make([]string, 0, len(enc.Fields))
	for k := range enc.Fields {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	attrs := make([]slog.Attr, 0, len(keys)+1)
	if ent.LoggerName != "" {
		attrs = append(attrs, slog.String("logger", ent.LoggerName))
	}
	for _, k := range keys {
		attrs = append(attrs, slog.Any(k, enc.Fields[k]))
	}
	level := slog.LevelWarn
	switch {
	case benign[ent.Message] || c.stopping != nil && c.stopping.Load():
		level = slog.LevelDebug
	case ent.Level > zapcore.WarnLevel:
		level = slog.LevelError
	}
	c.log.LogAttrs(context.Background(), level, ent.Message, attrs...)
	return nil
}

func (c *slogCore) Sync() error { return nil }
