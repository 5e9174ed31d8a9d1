// Package hsmd is the custody core's daemon: the I/O shell around the
// trusted core (package core). It is the only process logged into the HSM.
//
// It serves hsmd's gRPC API (protocol/apipb) over TLS with a self-signed
// certificate that clients pin, and bearer tokens: the bridge token opens
// the Relay stream, the operator token the Operator API. Device traffic
// from bridges goes to the core's links; the core's answers go back to the
// bridges; everything a bridge carries is either public (Features) or
// Noise ciphertext it cannot read or forge.
//
// The core decides; this package only moves bytes, keeps per-device state
// for the core's links (one call at a time per link), retries channels
// that failed, and turns core events into operator answers, logs and
// metrics.
//
// # The approval path
//
// The Custody API creates wallets and addresses and takes requests
// (core.Core.Submit). hsmd hands each prompt to the link of its device,
// now if the device's channel is up, otherwise when it comes up
// (core.Core.PendingPrompts); a device busy with something else gets the
// prompt again a little later. Each answer a link receives goes to
// core.Core.Answer, which verifies it and signs once the quorum is met;
// the prompts the answer made moot are withdrawn from their devices. A
// ticker (Config.TickInterval) has the core store expiries and finish
// signings a crash interrupted. hsmd verifies nothing itself: the core
// does.
//
// # Several instances on one database
//
// hsmd instances sharing a PostgreSQL database and an HSM token each hold
// the database's lock (Config.Lock) around every call that changes the
// core's records, so that their cores take turns as the goroutines of one
// core do; every write is also a compare-and-swap of the version read. A
// request submitted to one instance reaches devices attached to another
// through that one's ticker. What one instance withdraws from its devices
// when a request closes, another's devices keep showing until they answer
// (and are refused) or reconnect.
//
// # Logins
//
// A call with a missing or wrong token is refused, counted in
// opencustody_hsmd_login_failures_total, and appended to the audit log
// within a token bucket (Config.LoginAuditBurst, Config.LoginAuditEvery),
// the failures held back summed up in the next entry. The token is never
// logged.
package hsmd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"

	"github.com/opencustodynet/opencustody/hsm/audit"
	"github.com/opencustodynet/opencustody/hsm/bitcoin"
	"github.com/opencustodynet/opencustody/hsm/core"
	"github.com/opencustodynet/opencustody/hsm/records"
	"github.com/opencustodynet/opencustody/protocol/apiclient"
	"github.com/opencustodynet/opencustody/protocol/apipb"
)

// DefaultAddress is where hsmd listens unless told otherwise: loopback only.
const DefaultAddress = "127.0.0.1:7420"

// maxMessageSize bounds a message hsmd receives: a PSBT of the largest
// size the core reads, and room for the rest of the request.
const maxMessageSize = bitcoin.MaxPSBTSize + 1<<20

// Config configures a [Server].
type Config struct {
	// Core is the trusted core.
	Core *core.Core
	// Dir holds the TLS certificate and key and the tokens; it is made
	// with mode 0700 if missing.
	Dir string
	// Hosts are extra names or addresses for the TLS certificate.
	Hosts []string
	// Version is reported by Status.
	Version string
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// Registerer receives the metrics; nil means a private registry.
	Registerer prometheus.Registerer
	// PairingTimeout bounds a pairing; zero means 5 minutes.
	PairingTimeout time.Duration
	// RetryDelay is the first delay before re-opening a failed channel;
	// it doubles up to a minute. Zero means one second. A device that was
	// busy gets its prompt again after RetryDelay.
	RetryDelay time.Duration
	// TickInterval is how often the core stores expired requests and
	// finishes interrupted signings; zero means 30 seconds.
	TickInterval time.Duration
	// Audit receives the security events (pairings, revocations,
	// requests, prompts, answers, signatures) and serves the audit API;
	// nil turns the audit log off. hsmd also checkpoints it every
	// TickInterval and when it stops, so that fewer entries are left
	// unsigned.
	Audit *audit.Log
	// Lock, if set, is held around every call that changes wallets,
	// requests, changes or device records (submit, answer, the ticker, new
	// wallets and addresses, revocation, admin changes and policy
	// proposals, prompts issued afresh), so that several hsmd instances
	// sharing one database take them one at a time, as one hsmd's core
	// does with its own mutex. It is the record backend (records.Locker).
	// A single hsmd on its own database needs none.
	Lock records.Locker
	// LoginAuditBurst and LoginAuditEvery limit the audit entries for
	// calls with a missing or wrong token: up to LoginAuditBurst at once,
	// then one per LoginAuditEvery, the rest counted and summed up in the
	// next entry. Zero means DefaultLoginAuditBurst and
	// DefaultLoginAuditEvery.
	LoginAuditBurst int
	LoginAuditEvery time.Duration
	// Records, if set, is the record store the core's stores use: hsmd
	// keeps the newest root manifest version it saw in Dir/records.pin
	// (PinFile), written every TickInterval and when it stops, and pins
	// the store to it at the next start, so that a database rolled back
	// while hsmd was down is refused.
	Records *records.Store
}

// Server is a running hsmd.
type Server struct {
	cfg      Config
	log      *slog.Logger
	grpc     *grpc.Server
	metrics  *metrics
	gatherer prometheus.Gatherer

	certFingerprint string
	bridgeToken     string
	operatorToken   string

	logins *loginLimiter

	// changeMu is held by exclusive around every change the core makes,
	// as the core's own mutex is, so that what the ticker reads before
	// and after its upkeep is not another call's state half-way. Lock
	// order: changeMu, then Config.Lock, then the core's.
	changeMu sync.Mutex

	pinMu  sync.Mutex // guards pinned; held while the pin file is written
	pinned uint64     // the version in the pin file

	stopping chan struct{} // closed by Stop: relay streams end at once
	stopOnce sync.Once

	// Background work (answers, prompt deliveries, the ticker) runs under
	// bgCtx, which Stop cancels before waiting for it.
	bgCtx     context.Context
	bgCancel  context.CancelFunc
	bgMu      sync.Mutex // guards bgStopped and the Add side of bgWork
	bgWork    sync.WaitGroup
	bgStopped bool

	mu      sync.Mutex // guards bridges, devices
	bridges map[*bridgeConn]struct{}
	devices map[string]*deviceConn // by claimed device id

	answersMu sync.Mutex               // guards answers
	answers   map[string][]core.Answer // per device, the answers waiting for the core, in arrival order
	// check is answer; tests of the queue replace it.
	check func(context.Context, core.Answer)

	// channelAudit bounds the audit entries of channel failures.
	channelAudit channelAudit
}

// New prepares a server: it loads or makes the TLS certificate and the
// tokens in cfg.Dir.
func New(cfg Config) (*Server, error) {
	if cfg.Core == nil || cfg.Dir == "" {
		return nil, errors.New("hsmd: Core and Dir are required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.PairingTimeout <= 0 {
		cfg.PairingTimeout = 5 * time.Minute
	}
	if cfg.RetryDelay <= 0 {
		cfg.RetryDelay = time.Second
	}
	if cfg.TickInterval <= 0 {
		cfg.TickInterval = 30 * time.Second
	}
	if cfg.LoginAuditBurst <= 0 {
		cfg.LoginAuditBurst = DefaultLoginAuditBurst
	}
	if cfg.LoginAuditEvery <= 0 {
		cfg.LoginAuditEvery = DefaultLoginAuditEvery
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("hsmd: %w", err)
	}
	cert, err := loadOrCreateTLS(cfg.Dir, cfg.Hosts)
	if err != nil {
		return nil, err
	}
	s := &Server{
		cfg: cfg, log: cfg.Logger,
		certFingerprint: apiclient.CertFingerprint(cert.Certificate[0]),
		bridges:         map[*bridgeConn]struct{}{},
		devices:         map[string]*deviceConn{},
		answers:         map[string][]core.Answer{},
		stopping:        make(chan struct{}),
		logins:          newLoginLimiter(cfg.LoginAuditBurst, cfg.LoginAuditEvery, time.Now),
	}
	s.bgCtx, s.bgCancel = context.WithCancel(context.Background())
	if err := s.loadPin(); err != nil {
		return nil, err
	}
	if s.bridgeToken, err = loadOrCreateToken(cfg.Dir, BridgeTokenFile); err != nil {
		return nil, err
	}
	if s.operatorToken, err = loadOrCreateToken(cfg.Dir, OperatorTokenFile); err != nil {
		return nil, err
	}
	reg := cfg.Registerer
	if reg == nil {
		r := prometheus.NewRegistry()
		reg, s.gatherer = r, r
	} else if g, ok := reg.(prometheus.Gatherer); ok {
		s.gatherer = g
	}
	s.metrics = newMetrics(reg)
	auth := &authorizer{failed: s.loginFailed, tokens: map[string]string{
		apipb.Relay_ServiceDesc.ServiceName:    s.bridgeToken,
		apipb.Operator_ServiceDesc.ServiceName: s.operatorToken,
		apipb.Custody_ServiceDesc.ServiceName:  s.operatorToken,
		apipb.Audit_ServiceDesc.ServiceName:    s.operatorToken,
	}}
	s.grpc = grpc.NewServer(
		grpc.Creds(credentials.NewServerTLSFromCert(&cert)),
		grpc.MaxRecvMsgSize(maxMessageSize),
		grpc.UnaryInterceptor(auth.unary),
		grpc.StreamInterceptor(auth.stream),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
	)
	s.check = s.answer
	apipb.RegisterRelayServer(s.grpc, &relayService{s: s})
	apipb.RegisterOperatorServer(s.grpc, &operatorService{s: s})
	apipb.RegisterCustodyServer(s.grpc, &custodyService{s: s})
	apipb.RegisterAuditServer(s.grpc, &auditService{s: s})
	return s, nil
}

// CertFingerprint is the fingerprint clients pin.
func (s *Server) CertFingerprint() string { return s.certFingerprint }

// TokenPaths are the files holding the bridge and operator tokens.
func (s *Server) TokenPaths() (bridge, operator string) {
	return filepath.Join(s.cfg.Dir, BridgeTokenFile), filepath.Join(s.cfg.Dir, OperatorTokenFile)
}

// Serve answers on l until ctx ends or Stop is called.
func (s *Server) Serve(ctx context.Context, l net.Listener) error {
	stop := context.AfterFunc(ctx, s.Stop)
	defer stop()
	s.log.Info("hsmd listening", "address", l.Addr().String(), "cert", s.certFingerprint, "hsm", s.cfg.Core.HSMFingerprint(), "ceremony", s.cfg.Core.Ceremony())
	s.background(s.tickLoop)
	if s.cfg.Audit != nil {
		s.background(s.checkpointLoop)
	}
	err := s.grpc.Serve(l)
	if s.cfg.Audit != nil {
		// Wait for the events still being written, then sign the tail.
		s.Stop()
		s.checkpoint(context.Background())
	}
	s.Stop()
	s.savePin()
	if errors.Is(err, grpc.ErrServerStopped) {
		return nil
	}
	return err
}

// Stop ends every stream and stops serving, waiting briefly for calls in
// progress. Relay streams end at once: bridges reconnect on their own.
func (s *Server) Stop() {
	s.stopOnce.Do(func() { close(s.stopping) })
	done := make(chan struct{})
	go func() { s.grpc.GracefulStop(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		s.grpc.Stop()
	}
	s.bgMu.Lock()
	s.bgStopped = true
	s.bgMu.Unlock()
	s.bgCancel()
	s.bgWork.Wait()
}

// background runs f in a goroutine that Stop cancels and waits for; after
// Stop it does nothing.
func (s *Server) background(f func(ctx context.Context)) {
	s.bgMu.Lock()
	defer s.bgMu.Unlock()
	if s.bgStopped {
		return
	}
	s.bgWork.Add(1)
	go func() {
		defer s.bgWork.Done()
		f(s.bgCtx)
	}()
}

// exclusive runs f holding changeMu and Config.Lock, if there is one:
// the core's changes then happen one at a time, in this process and across
// every hsmd on the database. The lock only orders them; each write is
// still a compare-and-swap of the version the core read, so an instance
// that lost the lock without knowing gets a conflict rather than
// overwriting another's change.
func (s *Server) exclusive(ctx context.Context, f func() error) error {
	s.changeMu.Lock()
	defer s.changeMu.Unlock()
	if s.cfg.Lock == nil {
		return f()
	}
	unlock, err := s.cfg.Lock.Lock(ctx)
	if err != nil {
		return fmt.Errorf("hsmd: take the lock shared with other hsmd instances: %w", err)
	}
	defer unlock()
	return f()
}

// MetricsHandler serves the Prometheus metrics.
func (s *Server) MetricsHandler() http.Handler {
	return promhttp.HandlerFor(s.gatherer, promhttp.HandlerOpts{})
}
