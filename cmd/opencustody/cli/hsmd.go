package cli

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/opencustodynet/opencustody/hsm"
	"github.com/opencustodynet/opencustody/hsm/audit"
	"github.com/opencustodynet/opencustody/hsm/backup"
	"github.com/opencustodynet/opencustody/hsm/core"
	"github.com/opencustodynet/opencustody/hsm/hsmd"
	"github.com/opencustodynet/opencustody/hsm/records"
	"github.com/opencustodynet/opencustody/protocol/apipb"
	"github.com/opencustodynet/opencustody/protocol/signed"
)

func init() { commands = append(commands, newHSMDCommand) }

func newHSMDCommand(g *globals) *cobra.Command {
	var (
		hf          hsmFlags
		lf          logFlags
		listen      string
		metrics     string
		hosts       []string
		ceremony    bool
		adminQuorum int
		roots       []string
		storeDSN    string
	)
	c := &cobra.Command{
		Use:   "hsmd",
		Short: "Run the custody core: the only process logged into the HSM",
		Long: `hsmd runs the custody core next to the HSM. It logs into the token that
'opencustody hsm init' configured, keeps its records in the data directory
(SQLite, each record authenticated by the HSM record key), and serves the gRPC
API to bridges and operators over TLS.

--store postgres://USER@HOST/DB keeps the records in PostgreSQL instead, for
several hsmd instances on one database and one HSM token: they take turns for
every change (an advisory lock) and each write is a compare-and-swap, so no
approval is counted twice and no request is signed twice. Give the password
through ~/.pgpass or PGPASSFILE, or the whole URL through OPENCUSTODY_STORE,
rather than on the command line, where other users can read it.

hsmd remembers in DATA/hsmd/records.pin how far the record store has come, and
refuses a database older than that (restored from a copy, or rolled back,
while it was down). After restoring the database from a backup on purpose,
delete that file.

On first start it makes a self-signed TLS certificate and two tokens in
DATA/hsmd: bridge.token (for bridges) and operator.token (for the CLI). Clients
on this machine find them in the data directory; elsewhere, pass the
certificate fingerprint hsmd prints (--hsmd-cert) and copy the token file.

--ceremony allows pairing devices directly: use it only for the key ceremony at
the HSM's console that pairs the first admins. --admin-quorum N (with
--ceremony) sets how many admins must approve an admin change, such as a new
wallet policy, on their devices; it is kept in the governance record and can be
set again only at another ceremony.`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if adminQuorum != 0 && !ceremony {
				return withCode(ExitUsage, errors.New("--admin-quorum is set only at the key ceremony: add --ceremony"))
			}
			if adminQuorum < 0 {
				return withCode(ExitUsage, fmt.Errorf("--admin-quorum %d: want at least 1", adminQuorum))
			}
			log, err := newLogger(g.streams.Err, lf.format, lf.level)
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(c.Context(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			dir, err := hsmDataDir(g)
			if err != nil {
				return err
			}
			store, tc, err := openHSM(ctx, g, &hf)
			if err != nil {
				return err
			}
			defer store.Close()
			if tc == nil || tc.IdentityKey == "" || tc.RecordKey == "" {
				return errors.New("no identity or record key configured: run 'opencustody hsm init' first")
			}
			identity, err := hsm.NewIdentitySigner(ctx, store, tc.IdentityKey)
			if err != nil {
				return hsmExit(fmt.Errorf("identity key: %w", err))
			}
			db, err := openRecordStore(ctx, storeDSN, dir)
			if err != nil {
				return err
			}
			defer db.Close()
			var lock records.Locker
			if pg, ok := db.(*records.Postgres); ok {
				lock = pg
			}
			var attRoots []signed.Root
			for _, path := range roots {
				rs, err := signed.LoadRoots(path)
				if err != nil {
					return withCode(ExitUsage, fmt.Errorf("--attestation-roots: %w", err))
				}
				for _, r := range rs {
					if r.IsDevelopment() {
						log.Warn("the development attestation root is trusted: anyone can issue device certificates under it; never do this in production", "file", path)
					}
				}
				attRoots = append(attRoots, rs...)
			}
			rs := records.New(db, hsm.RecordAuthenticator{A: store, Key: tc.RecordKey})
			cr, err := core.New(core.Config{
				Identity:         identity,
				Devices:          hsmd.DeviceStore{Records: rs},
				Wallets:          hsmd.WalletStore{Records: rs},
				Requests:         hsmd.RequestStore{Records: rs},
				Changes:          hsmd.ChangeStore{Records: rs},
				ChangeHandlers:   hsmd.BackupChangeHandlers(&backup.Site{HSM: store, Identity: identity, Records: rs}),
				Custody:          store,
				Keys:             store,
				Ceremony:         ceremony,
				AttestationRoots: attRoots,
			})
			if err != nil {
				return err
			}
			al, err := audit.New(audit.Config{Records: rs, Rows: db, Identity: identity})
			if err != nil {
				return err
			}
			if adminQuorum > 0 {
				if _, err := cr.SetAdminQuorum(ctx, adminQuorum); err != nil {
					return err
				}
				log.Info("admin quorum set", "admin_quorum", adminQuorum)
				if _, err := al.Append(ctx, audit.Event{Kind: audit.KindChange, Subject: "governance", Detail: fmt.Sprintf("admin quorum set to %d at the key ceremony", adminQuorum)}); err != nil {
					log.Error("security event not written to the audit log", "kind", audit.KindChange, "err", err)
				}
			}
			srv, err := hsmd.New(hsmd.Config{Core: cr, Dir: hsmdDir(dir), Hosts: hosts, Version: Version, Logger: log, Audit: al, Lock: lock, Records: rs})
			if err != nil {
				return err
			}
			l, err := net.Listen("tcp", listen)
			if err != nil {
				return withCode(ExitUnavailable, fmt.Errorf("listen on %s: %w", listen, err))
			}
			if metrics != "" {
				ml, err := listenLoopback(metrics)
				if oe := (*net.OpError)(nil); errors.As(err, &oe) {
					return withCode(ExitUnavailable, fmt.Errorf("--metrics: %w", err))
				} else if err != nil {
					return withCode(ExitUsage, fmt.Errorf("--metrics: %w", err))
				}
				ms := &http.Server{Handler: srv.MetricsHandler(), ReadHeaderTimeout: 10 * time.Second}
				go func() { _ = ms.Serve(ml) }()
				defer ms.Close()
			}
			bt, ot := srv.TokenPaths()
			fmt.Fprintf(g.streams.Out, "hsmd listening on %s\n  HSM identity fingerprint: %s\n  TLS certificate:          %s\n  bridge token:             %s\n  operator token:           %s\n",
				l.Addr(), cr.HSMFingerprint(), srv.CertFingerprint(), bt, ot)
			if ceremony {
				fmt.Fprintln(g.streams.Out, "  ceremony mode: devices may be paired directly")
			}
			err = srv.Serve(ctx, l)
			log.Info("hsmd stopped")
			return err
		},
	}
	hf.register(c)
	addLogFlags(c, &lf)
	c.Flags().StringVar(&listen, "listen", hsmd.DefaultAddress, "address to serve the API on (loopback by default)")
	c.Flags().StringVar(&metrics, "metrics", "", "serve Prometheus metrics on this loopback address (e.g. 127.0.0.1:9420); off by default")
	c.Flags().StringSliceVar(&hosts, "tls-host", nil, "extra host names or addresses for the TLS certificate")
	c.Flags().BoolVar(&ceremony, "ceremony", false, "allow pairing devices directly (key ceremony at the HSM console)")
	c.Flags().IntVar(&adminQuorum, "admin-quorum", 0, "with --ceremony: how many admins must approve an admin change (stored in the governance record)")
	c.Flags().StringVar(&storeDSN, "store", os.Getenv("OPENCUSTODY_STORE"), "where the records are kept: empty for SQLite in the data directory, or a postgres:// URL (default $OPENCUSTODY_STORE)")
	c.Flags().StringSliceVar(&roots, "attestation-roots", nil, "JSON file of device attestation roots (firmware-spec/attestation.md); when given, only devices attested under them can pair")
	c.AddCommand(newHSMDStatusCommand(g))
	return c
}

// recordBackend is a record store backend hsmd can close.
type recordBackend interface {
	records.Backend
	Close() error
}

// openRecordStore opens the backend --store names: SQLite in dir when it is
// empty, PostgreSQL for a postgres:// URL.
func openRecordStore(ctx context.Context, store, dir string) (recordBackend, error) {
	switch {
	case store == "":
		return records.OpenSQLite(ctx, dir)
	case records.IsPostgresDSN(store):
		db, err := records.OpenPostgres(ctx, store)
		if err != nil {
			return nil, withCode(ExitUnavailable, err)
		}
		return db, nil
	default:
		return nil, withCode(ExitUsage, errors.New("--store: want a postgres:// URL, or nothing for SQLite in the data directory"))
	}
}

func newHSMDStatusCommand(g *globals) *cobra.Command {
	var f hsmdFlags
	c := &cobra.Command{
		Use:   "status",
		Short: "Show hsmd's HSM fingerprint and the bridges connected to it",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			var st *apipb.StatusResponse
			err := g.withOperator(c.Context(), &f, 30*time.Second, func(ctx context.Context, op apipb.OperatorClient) (err error) {
				st, err = op.Status(ctx, &apipb.StatusRequest{})
				return err
			})
			if err != nil {
				return err
			}
			type bridgeJSON struct {
				Name    string `json:"name"`
				Remote  string `json:"remote"`
				Devices int32  `json:"devices"`
			}
			out := struct {
				Version        string       `json:"version"`
				HSMFingerprint string       `json:"hsm_fingerprint"`
				Bridges        []bridgeJSON `json:"bridges"`
			}{Version: st.GetVersion(), HSMFingerprint: st.GetHsmFingerprint(), Bridges: []bridgeJSON{}}
			for _, b := range st.GetBridges() {
				out.Bridges = append(out.Bridges, bridgeJSON{b.GetName(), b.GetRemoteAddress(), b.GetDevices()})
			}
			if g.json {
				return writeJSON(g.streams.Out, out)
			}
			fmt.Fprintf(g.streams.Out, "hsmd %s\nHSM identity fingerprint: %s\nbridges: %d\n", out.Version, out.HSMFingerprint, len(out.Bridges))
			for _, b := range out.Bridges {
				fmt.Fprintf(g.streams.Out, "  %s (%s): %d devices\n", b.Name, b.Remote, b.Devices)
			}
			return nil
		},
	}
	addHSMDFlags(c, &f)
	addJSONFlag(c, g)
	return c
}
