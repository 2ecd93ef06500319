package agent

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/keyroute/keyroute/api"
)

// remoteRoutes are the API routes served over TCP (api_listen): what
// keyroutectl trace and diagnose on another host need, all of them
// read-only for the cluster's state (probes and captures are bounded and
// change nothing). Attach, detach, rules, host removal and storing
// diagnoses stay on the local unix socket.
var remoteRoutes = []string{
	"GET " + api.PathStatus,
	"GET " + api.PathHosts,
	"GET " + api.PathEndpoints,
	"GET " + api.PathFlows,
	"GET " + api.PathKeys,
	"GET " + api.PathCache,
	"POST " + api.PathTrace,
	"POST " + api.PathProbe,
	"GET " + api.PathPorts,
	"POST " + api.PathCapture,
	"GET " + api.PathCapture,
	"GET " + api.PathDiagnoses,
}

// remoteAPIHandler lets through only remoteRoutes to full (the unix
// socket's handler); anything else is 404 or 405 before it reaches an
// agent method.
func remoteAPIHandler(full http.Handler) http.Handler {
	ro := http.NewServeMux()
	for _, p := range remoteRoutes {
		ro.Handle(p, full)
	}
	return ro
}

// listenRemoteAPI opens api_listen with the cluster's mutual TLS: the
// agent serves its etcd certificate and admits only clients with a
// certificate of the cluster CA. It fails, with the fix, when the
// certificate does not name the address peers will dial.
func (a *Agent) listenRemoteAPI() (net.Listener, error) {
	files := a.cfg.EtcdTLS()
	if files == nil {
		return nil, errors.New("api_listen needs etcd.ca, etcd.cert and etcd.key")
	}
	pair, err := tls.LoadX509KeyPair(files.Cert, files.Key)
	if err != nil {
		return nil, fmt.Errorf("API over TCP: load certificate %s and key %s: %w", files.Cert, files.Key, err)
	}
	leaf, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		return nil, fmt.Errorf("API over TCP: parse certificate %s: %w", files.Cert, err)
	}
	addr := a.cfg.APIAddr(a.host.IP)
	if err := leaf.VerifyHostname(addr.Addr().String()); err != nil {
		return nil, fmt.Errorf("API over TCP: certificate %s cannot serve %s (%w): issue it again with that address, e.g. keyroutectl pki issue %s --ip %s --force",
			files.Cert, addr, err, leaf.Subject.CommonName, addr.Addr())
	}
	caPEM, err := os.ReadFile(files.CA)
	if err != nil {
		return nil, fmt.Errorf("API over TCP: load CA: %w", err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("API over TCP: CA %s: no PEM certificate", files.CA)
	}
	ln, err := net.Listen("tcp4", a.cfg.APIListen)
	if err != nil {
		return nil, fmt.Errorf("API over TCP (api_listen %s): %w", a.cfg.APIListen, err)
	}
	return tls.NewListener(ln, &tls.Config{
		Certificates: []tls.Certificate{pair},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    roots,
		MinVersion:   tls.VersionTLS12,
	}), nil
}

// serveRemoteAPI serves remoteRoutes of full on ln until ctx ends.
func (a *Agent) serveRemoteAPI(ctx context.Context, ln net.Listener, full http.Handler) {
	ro := remoteAPIHandler(full)
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
				a.log.Debug("remote API request", "client", r.TLS.PeerCertificates[0].Subject.CommonName, "from", r.RemoteAddr, "method", r.Method, "path", r.URL.Path)
			}
			ro.ServeHTTP(w, r)
		}),
		ReadHeaderTimeout: 10 * time.Second,
	}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		srv.Shutdown(sctx)
	}()
	a.log.Info("serving the read-only API over TCP with mutual TLS", "listen", a.cfg.APIListen, "published", a.cfg.APIAddr(a.host.IP))
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		a.log.Error("API over TCP stopped", "err", err)
	}
}
