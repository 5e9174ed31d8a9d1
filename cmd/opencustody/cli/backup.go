package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/opencustodynet/opencustody/hsm"
	"github.com/opencustodynet/opencustody/hsm/backup"
	"github.com/opencustodynet/opencustody/hsm/core"
	"github.com/opencustodynet/opencustody/hsm/hsmd"
	"github.com/opencustodynet/opencustody/hsm/records"
	"github.com/opencustodynet/opencustody/protocol/apipb"
)

func init() { commands = append(commands, newBackupCommand) }

func newBackupCommand(g *globals) *cobra.Command {
	f := &hsmFlags{}
	c := &cobra.Command{
		Use:   "backup",
		Short: "Move custody keys to a second HSM (a disaster-recovery site), wrapped end to end",
		Long: `backup moves the backup-able custody keys, with the wallets and pairings, from
this site's HSM to another HSM, without any key existing in plain form on a
host: the keys leave this HSM only wrapped under a key that the two HSMs agree
on by ECDH inside themselves, and only the target HSM can unwrap them.

The ceremony (README, "Backup to a second HSM"):

  target  opencustody backup enroll --out target.enroll
  source  opencustody backup register target.enroll            (the admins approve on their devices)
  source  opencustody backup export --to TARGET-FINGERPRINT --out bundle.ocb --so-pin-file FILE
                                                                  (the admins approve; the SO's PIN)
  target  opencustody backup import bundle.ocb --from SOURCE-FINGERPRINT

These commands use the HSM directly, like 'opencustody hsm', from the HSM's
console. Keys created without --backupable are listed and never leave.`,
		Args: cobra.NoArgs,
	}
	f.register(c)
	c.AddCommand(newBackupEnrollCommand(g, f), newBackupRegisterCommand(g, f), newBackupTargetsCommand(g, f),
		newBackupExportCommand(g, f), newBackupImportCommand(g, f))
	return c
}

// backupSite opens the token, the identity key and the records of the data
// directory as a backup site. close releases them.
func backupSite(ctx context.Context, g *globals, f *hsmFlags, gate *backupGate) (site *backup.Site, store *hsm.PKCS11Store, closeFn func(), err error) {
	dir, err := hsmDataDir(g)
	if err != nil {
		return nil, nil, nil, err
	}
	store, tc, err := openHSM(ctx, g, f)
	if err != nil {
		return nil, nil, nil, err
	}
	if tc == nil || tc.IdentityKey == "" || tc.RecordKey == "" {
		store.Close()
		return nil, nil, nil, errors.New("no identity or record key configured: run 'opencustody hsm init' first")
	}
	id, err := hsm.NewIdentitySigner(ctx, store, tc.IdentityKey)
	if err != nil {
		store.Close()
		return nil, nil, nil, hsmExit(fmt.Errorf("identity key: %w", err))
	}
	db, err := records.OpenSQLite(ctx, dir)
	if err != nil {
		store.Close()
		return nil, nil, nil, err
	}
	site = &backup.Site{HSM: store, Identity: id, Records: records.New(db, hsm.RecordAuthenticator{A: store, Key: tc.RecordKey})}
	if gate != nil {
		if site.Approver, err = gate.open(g, site.Records); err != nil {
			db.Close()
			store.Close()
			return nil, nil, nil, err
		}
	}
	return site, store, func() { db.Close(); store.Close() }, nil
}

// backupExit gives backup errors their exit codes.
func backupExit(err error) error {
	if st, ok := status.FromError(err); ok && st.Code() == codes.Unavailable {
		return withCode(ExitUnavailable, fmt.Errorf("cannot reach hsmd, which asks the admins: %w", err))
	}
	switch {
	case errors.Is(err, backup.ErrSignature), errors.Is(err, backup.ErrFormat), errors.Is(err, records.ErrIntegrity), errors.Is(err, hsm.ErrUnwrap):
		return withCode(ExitIntegrity, err)
	case errors.Is(err, backup.ErrNotApproved), errors.Is(err, backup.ErrWrongTarget), errors.Is(err, backup.ErrWrongSource),
		errors.Is(err, backup.ErrNotEnrolled), errors.Is(err, backup.ErrReplayed), errors.Is(err, backup.ErrConflict),
		errors.Is(err, backup.ErrUnknownTarget), errors.Is(err, hsm.ErrPINIncorrect):
		return withCode(ExitRefused, err)
	}
	return hsmExit(err)
}

// ceremonyApprover approves at the HSM's console, as the key ceremony
// that sets up a site pairs its first admins: only while the site has no
// admin quorum (no governance record, which the record key authenticates).
// It says so on standard error and never claims that admins approved.
type ceremonyApprover struct {
	changes hsmd.ChangeStore
	w       io.Writer
}

func (a ceremonyApprover) Approve(ctx context.Context, c backup.Change) error {
	gov, err := a.changes.GetGovernance(ctx)
	if err == nil {
		return fmt.Errorf("%w: %s: this site has an admin quorum (%d), so its admins approve this on their devices: run it without --ceremony, with hsmd running", backup.ErrNotApproved, c.Kind, gov.AdminQuorum)
	}
	if !errors.Is(err, core.ErrNoGovernance) {
		return err
	}
	fmt.Fprintf(a.w, "ceremony mode: %s approved at the HSM's console (this site has no admin quorum yet):\n", c.Kind)
	for _, f := range c.Fields() {
		fmt.Fprintf(a.w, "  %-12s %s\n", f.Label, f.Value)
	}
	return nil
}

// backupGate is how register and export get the admin quorum's approval:
// through hsmd (an admin change the admins approve on their devices), or
// with --ceremony at the console of a site that has no admin quorum yet.
type backupGate struct {
	ceremony  bool
	hsmd      hsmdFlags
	initiator string

	conn     io.Closer
	approver *hsmd.ChangeApprover
}

func (b *backupGate) register(c *cobra.Command) {
	addHSMDFlags(c, &b.hsmd)
	c.Flags().BoolVar(&b.ceremony, "ceremony", false, "approve at the HSM's console; only while this site has no admin quorum (key ceremony)")
	c.Flags().StringVar(&b.initiator, "initiator", "", "the user who proposes the change (default $OPENCUSTODY_USER, then the login name)")
}

// open returns the approver for a site whose records are rs.
func (b *backupGate) open(g *globals, rs *records.Store) (backup.Approver, error) {
	if b.ceremony {
		return ceremonyApprover{changes: hsmd.ChangeStore{Records: rs}, w: g.streams.Err}, nil
	}
	initiator := firstOf(b.initiator, defaultInitiator())
	if initiator == "" {
		return nil, withCode(ExitUsage, errors.New("name the user who proposes the change with --initiator"))
	}
	conn, err := g.dialHSMD(&b.hsmd, hsmd.OperatorTokenFile)
	if err != nil {
		return nil, err
	}
	b.conn = conn
	b.approver = &hsmd.ChangeApprover{Client: apipb.NewOperatorClient(conn), Initiator: initiator, Progress: g.streams.Err}
	return b.approver, nil
}

// complete reports the outcome of an approved change to hsmd, and closes
// the connection.
func (b *backupGate) complete(ctx context.Context, g *globals, result string, cause error) {
	if b.approver != nil {
		if err := b.approver.Complete(ctx, result, cause); err != nil {
			fmt.Fprintf(g.streams.Err, "opencustody: could not report the change's outcome to hsmd: %v\n", err)
		}
	}
	if b.conn != nil {
		b.conn.Close()
	}
}

func writeNewFile(path string, b []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

type enrollJSON struct {
	File        string `json:"file"`
	Identity    string `json:"identity_fingerprint"`
	BackupKey   string `json:"backup_key_fingerprint"`
	Token       string `json:"token"`
	KeyCreated  bool   `json:"backup_key_created"`
	KeyLabel    string `json:"backup_key_label"`
	CreatedUnix int64  `json:"created"`
}

func newBackupEnrollCommand(g *globals, f *hsmFlags) *cobra.Command {
	var out string
	c := &cobra.Command{
		Use:   "enroll --out FILE",
		Short: "Target site: make this HSM's backup key and write its enrollment, signed by the HSM",
		Long: `enroll makes, unless it exists, this HSM's backup key-agreement key (ECDH
P-256, generated inside the HSM, never extractable), and writes FILE: its public
half, signed by the HSM identity key. Take FILE to the source site, and tell the
source's admins the two fingerprints printed here by a channel they trust (in
person, by phone): their devices show them when they approve the registration.`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if out == "" {
				return withCode(ExitUsage, errors.New("--out FILE is required"))
			}
			site, _, done, err := backupSite(c.Context(), g, f, nil)
			if err != nil {
				return err
			}
			defer done()
			e, created, err := site.Enroll(c.Context())
			if err != nil {
				return backupExit(err)
			}
			b, err := e.Marshal()
			if err != nil {
				return err
			}
			if err := writeNewFile(out, b); err != nil {
				return err
			}
			j := enrollJSON{File: out, Identity: e.Identity.Fingerprint(), BackupKey: backup.BackupKeyFingerprint(e.BackupKey), Token: e.Token,
				KeyCreated: created, KeyLabel: hsm.BackupKeyLabel, CreatedUnix: e.CreatedAt.Unix()}
			if g.json {
				return writeJSON(g.streams.Out, j)
			}
			w := g.streams.Out
			if created {
				fmt.Fprintf(w, "Generated the backup key %q in the HSM (ECDH P-256, never extractable)\n", hsm.BackupKeyLabel)
			}
			fmt.Fprintf(w, "Wrote %s, signed by this HSM's identity key.\n\n", out)
			fmt.Fprintf(w, "Tell the source site's admins, by a channel they trust:\n  HSM identity  %s\n  backup key    %s\n", j.Identity, j.BackupKey)
			return nil
		},
	}
	c.Flags().StringVar(&out, "out", "", "write the enrollment to this new file")
	addJSONFlag(c, g)
	return c
}

func newBackupRegisterCommand(g *globals, f *hsmFlags) *cobra.Command {
	gate := &backupGate{}
	c := &cobra.Command{
		Use:   "register ENROLLMENT-FILE",
		Short: "Source site: accept an enrolled HSM as a backup target (admin-quorum change)",
		Long: `register checks the enrollment's signature and makes its HSM a backup target
of this site. It is a change the admin quorum approves; the approval shows the
target's HSM identity and backup key fingerprints, which the admins compare with
what the target site told them. register proposes the change through hsmd and
waits while the admins decide on their devices.

--ceremony approves at the HSM's console instead, and only while the site has
no admin quorum yet (the key ceremony that sets a site up).`,
		Args: cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			b, err := os.ReadFile(args[0])
			if err != nil {
				return withCode(ExitUsage, err)
			}
			e, err := backup.ParseEnrollment(b)
			if err != nil {
				return backupExit(fmt.Errorf("%s: %w", args[0], err))
			}
			site, _, done, err := backupSite(c.Context(), g, f, gate)
			if err != nil {
				return err
			}
			defer done()
			err = site.Register(c.Context(), e)
			gate.complete(c.Context(), g, "registered backup target "+e.Identity.Fingerprint(), err)
			if err != nil {
				return backupExit(err)
			}
			if g.json {
				return writeJSON(g.streams.Out, map[string]string{"target": e.Identity.Fingerprint(), "backup_key": backup.BackupKeyFingerprint(e.BackupKey), "token": e.Token})
			}
			fmt.Fprintf(g.streams.Out, "Registered backup target %s (token %q, backup key %s)\n", e.Identity.Fingerprint(), e.Token, backup.BackupKeyFingerprint(e.BackupKey))
			return nil
		},
	}
	gate.register(c)
	addJSONFlag(c, g)
	return c
}

func newBackupTargetsCommand(g *globals, f *hsmFlags) *cobra.Command {
	c := &cobra.Command{
		Use:   "targets",
		Short: "List the registered backup targets, and the keys an export would carry and keep",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			site, _, done, err := backupSite(c.Context(), g, f, nil)
			if err != nil {
				return err
			}
			defer done()
			ts, err := site.Targets(c.Context())
			if err != nil {
				return backupExit(err)
			}
			plan, err := site.Plan(c.Context())
			if err != nil {
				return err
			}
			type target struct {
				Identity  string `json:"identity_fingerprint"`
				BackupKey string `json:"backup_key_fingerprint"`
				Token     string `json:"token"`
			}
			j := struct {
				Targets []target `json:"targets"`
				Carried []string `json:"backupable_keys"`
				Kept    []string `json:"kept_keys"`
			}{Targets: []target{}, Carried: []string{}, Kept: []string{}}
			for _, t := range ts {
				j.Targets = append(j.Targets, target{t.Identity.Fingerprint(), backup.BackupKeyFingerprint(t.BackupKey), t.Token})
			}
			for _, k := range plan.Carried {
				j.Carried = append(j.Carried, k.Label)
			}
			for _, k := range plan.Kept {
				j.Kept = append(j.Kept, k.Label)
			}
			if g.json {
				return writeJSON(g.streams.Out, j)
			}
			w := g.streams.Out
			if len(j.Targets) == 0 {
				fmt.Fprintln(w, "no backup targets: register one with 'opencustody backup register'")
			}
			for _, t := range j.Targets {
				fmt.Fprintf(w, "target %s  token %q  backup key %s\n", t.Identity, t.Token, t.BackupKey)
			}
			printPlan(w, plan)
			return nil
		},
	}
	addJSONFlag(c, g)
	return c
}

func printPlan(w io.Writer, p *backup.Plan) {
	fmt.Fprintf(w, "custody keys an export carries (backup-able): %d\n", len(p.Carried))
	for _, k := range p.Carried {
		fmt.Fprintf(w, "  %s\n", k.Label)
	}
	fmt.Fprintf(w, "custody keys that never leave (created not backup-able): %d\n", len(p.Kept))
	for _, k := range p.Kept {
		fmt.Fprintf(w, "  %s\n", k.Label)
	}
}

func newBackupExportCommand(g *globals, f *hsmFlags) *cobra.Command {
	var (
		to, out, soPINFile string
		gate               = &backupGate{}
	)
	c := &cobra.Command{
		Use:   "export --to TARGET --out FILE --so-pin-file FILE",
		Short: "Source site: wrap the backup-able custody keys for a registered target (admin-quorum change)",
		Long: `export writes a backup bundle for the registered target whose HSM identity
fingerprint is TARGET: inside this HSM, every backup-able custody key is
wrapped (AES key wrap) under a transfer key that travels wrapped under the key
this HSM and the target's agree on by ECDH. Only the target HSM can unwrap
them. The bundle also carries the wallets and pairings, and is signed by this
HSM's identity key. Custody keys created not backup-able are listed and stay.

Backup-able keys can be wrapped only under a key the token's Security Officer
marks trusted, so export needs the SO PIN (--so-pin-file, or typed at the
terminal). It is a change the admin quorum approves: export proposes it through
hsmd (the admins' devices show the target's fingerprints and how many keys
leave and stay) and waits while they decide; --ceremony approves at the HSM's
console instead, only while the site has no admin quorum yet. It logs in to the
token in its own process (as the user, then briefly as the Security Officer,
then as the user again).`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if to == "" || out == "" {
				return withCode(ExitUsage, errors.New("export needs --to TARGET and --out FILE"))
			}
			soPIN, err := readSOPIN(g, soPINFile)
			if err != nil {
				return err
			}
			site, _, done, err := backupSite(c.Context(), g, f, gate)
			if err != nil {
				return err
			}
			defer done()
			b, err := site.Export(c.Context(), backup.ExportRequest{Target: to, SOPIN: soPIN})
			var file []byte
			if err == nil {
				file, err = b.Marshal()
			}
			if err == nil {
				err = writeNewFile(out, file)
			}
			if err != nil {
				gate.complete(c.Context(), g, "", err)
				return backupExit(err)
			}
			gate.complete(c.Context(), g, fmt.Sprintf("exported bundle %x: %d keys to %s", b.ID, len(b.Keys), b.Target.Fingerprint()), nil)
			j := bundleSummary(out, b)
			if g.json {
				return writeJSON(g.streams.Out, j)
			}
			w := g.streams.Out
			fmt.Fprintf(w, "Wrote %s for target %s\n", out, j.Target)
			fmt.Fprintf(w, "source (this HSM) %s\n", j.Source)
			fmt.Fprintf(w, "keys wrapped for the target: %s\n", listOrNone(j.Keys))
			fmt.Fprintf(w, "keys kept here (not backup-able, never leave): %s\n", listOrNone(j.Kept))
			fmt.Fprintf(w, "records: %d\n", j.Records)
			fmt.Fprintf(w, "The target imports it with: opencustody backup import %s --from '%s'\n", filepath.Base(out), j.Source)
			return nil
		},
	}
	c.Flags().StringVar(&to, "to", "", "the target's HSM identity fingerprint")
	c.Flags().StringVar(&out, "out", "", "write the bundle to this new file")
	c.Flags().StringVar(&soPINFile, "so-pin-file", "", "read the token's Security Officer PIN from the first line of this file (else it is asked for at the terminal)")
	gate.register(c)
	addJSONFlag(c, g)
	return c
}

type bundleJSON struct {
	File    string   `json:"file"`
	ID      string   `json:"id"`
	Source  string   `json:"source"`
	Target  string   `json:"target"`
	Keys    []string `json:"keys"`
	Kept    []string `json:"kept"`
	Records int      `json:"records"`
}

func bundleSummary(file string, b *backup.Bundle) bundleJSON {
	j := bundleJSON{File: file, ID: fmt.Sprintf("%x", b.ID), Source: b.Source.Fingerprint(), Target: b.Target.Fingerprint(), Keys: []string{}, Kept: []string{}, Records: len(b.Records)}
	for _, k := range b.Keys {
		j.Keys = append(j.Keys, k.Label)
	}
	for _, k := range b.Kept {
		j.Kept = append(j.Kept, k.Label)
	}
	return j
}

func listOrNone(s []string) string {
	if len(s) == 0 {
		return "none"
	}
	return strings.Join(s, ", ")
}

// readSOPIN reads the Security Officer PIN from path, or at the terminal.
func readSOPIN(g *globals, path string) (string, error) {
	if path != "" {
		b, err := os.ReadFile(path)
		if err != nil {
			return "", withCode(ExitUsage, fmt.Errorf("--so-pin-file: %w", err))
		}
		pin, _, _ := strings.Cut(string(b), "\n")
		pin = strings.TrimSuffix(pin, "\r")
		if pin == "" {
			return "", withCode(ExitUsage, fmt.Errorf("--so-pin-file %s is empty", path))
		}
		return pin, nil
	}
	prompt := hsmPINPrompt(g)
	if prompt == nil {
		return "", withCode(ExitUsage, errors.New("export needs the Security Officer PIN: give --so-pin-file, or run it at a terminal"))
	}
	return prompt(context.Background(), "Security Officer")
}

func newBackupImportCommand(g *globals, f *hsmFlags) *cobra.Command {
	var from string
	c := &cobra.Command{
		Use:   "import BUNDLE --from SOURCE",
		Short: "Target site: import a backup bundle into this HSM",
		Long: `import checks that BUNDLE is signed by the HSM whose identity fingerprint is
SOURCE (as the source site told you), that it was made for this HSM and the
backup key it enrolled, and that it was not imported before; then this HSM
unwraps the custody keys inside itself as sensitive, never-extractable keys,
and the wallets and pairings are stored under this HSM's record key. A bundle
that was altered, made for another HSM, or is replayed, is refused with the
reason, and nothing is stored.`,
		Args: cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			if from == "" {
				return withCode(ExitUsage, errors.New("import needs --from SOURCE: the source HSM's identity fingerprint, as its site gave it"))
			}
			b, err := os.ReadFile(args[0])
			if err != nil {
				return withCode(ExitUsage, err)
			}
			site, _, done, err := backupSite(c.Context(), g, f, nil)
			if err != nil {
				return err
			}
			defer done()
			res, err := site.Import(c.Context(), backup.ImportRequest{Bundle: b, Source: from})
			if err != nil {
				return backupExit(fmt.Errorf("%s: %w", args[0], err))
			}
			j := bundleSummary(args[0], res.Bundle)
			if g.json {
				return writeJSON(g.streams.Out, j)
			}
			w := g.streams.Out
			fmt.Fprintf(w, "Imported bundle %s from %s\n", j.ID, j.Source)
			fmt.Fprintf(w, "keys unwrapped in this HSM (sensitive, never extractable): %s\n", listOrNone(j.Keys))
			fmt.Fprintf(w, "keys the source kept (not backup-able, not here): %s\n", listOrNone(j.Kept))
			fmt.Fprintf(w, "records stored: %d\n", res.Records)
			return nil
		},
	}
	c.Flags().StringVar(&from, "from", "", "the source HSM's identity fingerprint")
	addJSONFlag(c, g)
	return c
}
