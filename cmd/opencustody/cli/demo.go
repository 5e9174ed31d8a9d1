package cli

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/btcsuite/btcd/btcec/v2"
	"github.com/btcsuite/btcd/btcutil"
	"github.com/btcsuite/btcd/btcutil/psbt"
	"github.com/btcsuite/btcd/chaincfg"
	"github.com/btcsuite/btcd/rpcclient"
	"github.com/btcsuite/btcd/txscript"
	"github.com/btcsuite/btcd/wire"
	"github.com/spf13/cobra"
	"google.golang.org/grpc"

	"github.com/opencustodynet/opencustody/emulator"
	"github.com/opencustodynet/opencustody/emulator/debuglink"
	"github.com/opencustodynet/opencustody/hsm/core"
	"github.com/opencustodynet/opencustody/hsm/hsmd"
	"github.com/opencustodynet/opencustody/protocol/apiclient"
	"github.com/opencustodynet/opencustody/protocol/apipb"
	"github.com/opencustodynet/opencustody/protocol/pairing"
)

func init() { commands = append(commands, newDemoCommand) }

// demoDefaultDir is where the demo keeps its data unless --dir says
// otherwise; demoMarker marks a directory as the demo's own, so that the
// demo removes only what it made.
const (
	demoDefaultDir = "demo-data"
	demoMarker     = ".opencustody-demo"
)

// The demo's approvers, one emulator each; the first two approve.
var demoUsers = []string{"alice", "bob", "carol"}

func newDemoCommand(g *globals) *cobra.Command {
	var (
		dir     string
		timeout time.Duration
	)
	c := &cobra.Command{
		Use:   "demo",
		Short: "Run the whole approval path on this machine: HSM token, hsmd, three devices, a bridge, a btcd node",
		Long: `demo runs every part of OpenCustody as its own process on this machine and
walks a transfer through them, printing what happens:

  - a SoftHSM2 token ('opencustody hsm init --softhsm'),
  - hsmd in ceremony mode, three headless emulators (alice, bob and carol's
    approval devices) and a bridge between them,
  - a btcd node on a private simnet chain.

It pairs the three devices (the code hsmd computed and the one each device
shows are printed side by side), creates a wallet "treasury" that 2 of the 3
must approve, mines coins to it, submits a PSBT spending one of them, shows
each device's prompt, approves on alice's and bob's devices through their
debug links, prints the signed transaction, sends it to btcd, and mines a
block that confirms it. Then it stops every process it started.

Everything goes to --dir (default ./` + demoDefaultDir + `), which is removed and
made anew at the start; the processes' logs are in DIR/logs. btcd is looked up
in PATH, then in .bin ('make setup' installs it there).`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(c.Context(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			// A reader that goes away (demo | head) must not kill the
			// demo before it has stopped its processes.
			signal.Ignore(syscall.SIGPIPE)
			ctx, cancel := context.WithTimeout(ctx, timeout)
			defer cancel()
			abs, err := filepath.Abs(dir)
			if err != nil {
				return fmt.Errorf("demo: %w", err)
			}
			d := &demo{out: g.streams.Out, dir: abs}
			err = d.run(ctx)
			d.stopAll()
			if err != nil {
				if d.exe != "" {
					fmt.Fprintf(d.out, "\nThe demo failed. Its data and the processes' logs are in %s.\n", d.dir)
				}
				return err
			}
			fmt.Fprintf(d.out, "\nAll processes stopped. The demo's data is in %s:\n", d.dir)
			fmt.Fprintf(d.out, "  the SoftHSM2 token and its PINs (softhsm/, hsm-pin), hsmd's records and TLS certificate,\n")
			fmt.Fprintf(d.out, "  the emulators' states (emulator-*), btcd's chain (btcd/) and every process's log (logs/).\n")
			fmt.Fprintf(d.out, "The next 'opencustody demo' removes it and starts over.\n")
			return nil
		},
	}
	c.Flags().StringVar(&dir, "dir", demoDefaultDir, "directory for the demo's data; removed and made anew at the start")
	c.Flags().DurationVar(&timeout, "timeout", 5*time.Minute, "give up if the demo has not finished after this long")
	return c
}

// demo is one run of the demo: the processes it started and the clients it
// holds.
type demo struct {
	out   io.Writer
	dir   string
	exe   string
	procs []*demoProc // in start order; stopped in reverse

	hsmdAddr string
	conn     *grpc.ClientConn
	emus     []*demoEmu
	node     *rpcclient.Client
}

// demoEmu is one emulator the demo started.
type demoEmu struct {
	user string
	port int
	id   string // device id
	dl   *debuglink.Client
}

// demoStep runs one step of the demo: it says what it does, and names the
// step in the error if it fails.
func (d *demo) step(name, title string, fn func() error) error {
	fmt.Fprintf(d.out, "\n== %s\n", title)
	if err := fn(); err != nil {
		return fmt.Errorf("demo: %s: %w", name, err)
	}
	return nil
}

func (d *demo) run(ctx context.Context) error {
	var (
		addrs []*apipb.WalletAddress
		prev  *wire.MsgTx
		index uint32
		req   *apipb.Request
		done  *apipb.Request
		tx    wire.MsgTx
	)
	steps := []struct {
		name, title string
		fn          func() error
	}{
		{"prepare the data directory", "Preparing " + d.dir, d.prepare},
		{"create the SoftHSM2 token", "Creating a SoftHSM2 token (opencustody hsm init --softhsm)", func() error { return d.hsmInit(ctx) }},
		{"start hsmd, the emulators and the bridge", "Starting hsmd (ceremony mode), three emulators and a bridge", func() error { return d.startParts(ctx) }},
		{"pair the devices", "Pairing the devices with alice, bob and carol", func() error { return d.pairAll(ctx) }},
		{"create the wallet", "Creating wallet \"treasury\": 2 of alice, bob and carol must approve", func() (err error) {
			addrs, err = d.wallet(ctx)
			return err
		}},
		{"fund the wallet on btcd", "Starting btcd (simnet) and mining coins to the wallet", func() (err error) {
			prev, index, err = d.fund(ctx, addrs[0])
			return err
		}},
		{"submit the PSBT", "Submitting a PSBT that spends one of the wallet's coins", func() (err error) {
			req, err = d.submit(ctx, prev, index, addrs[1])
			return err
		}},
		{"show the prompts", "The devices show the prompt", func() error { return d.showPrompts(ctx, req.GetId()) }},
		{"approve on alice's and bob's devices", "Alice and bob approve on their devices", func() (err error) {
			done, err = d.approve(ctx, req.GetId())
			return err
		}},
		{"read the signed transaction", "The signed transaction", func() error { return d.printSigned(done, &tx) }},
		{"send the transaction to btcd", "Sending it to btcd", func() error { return d.broadcast(&tx) }},
	}
	for _, s := range steps {
		if err := d.step(s.name, s.title, s.fn); err != nil {
			return err
		}
	}
	return nil
}

// prepare removes the data directory of an earlier run and makes it anew.
// It refuses to remove a directory that is not empty and not the demo's.
func (d *demo) prepare() error {
	entries, err := os.ReadDir(d.dir)
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		return err
	case len(entries) > 0:
		if _, err := os.Stat(filepath.Join(d.dir, demoMarker)); err != nil {
			return fmt.Errorf("%s is not empty and was not made by the demo: not removing it; pass another --dir", d.dir)
		}
		fmt.Fprintf(d.out, "removing the data of the last run\n")
		if err := os.RemoveAll(d.dir); err != nil {
			return err
		}
	}
	if err := os.MkdirAll(filepath.Join(d.dir, "logs"), 0o700); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(d.dir, demoMarker), []byte("made by 'opencustody demo'; removed by its next run\n"), 0o600); err != nil {
		return err
	}
	d.exe, err = os.Executable()
	if err != nil {
		return fmt.Errorf("finding the opencustody binary: %w", err)
	}
	fmt.Fprintf(d.out, "data directory %s (removed and made anew on every run); logs in %s\n", d.dir, filepath.Join(d.dir, "logs"))
	return nil
}

func (d *demo) hsmInit(ctx context.Context) error {
	var out bytes.Buffer
	if err := d.runOnce(ctx, &out, "hsm", "init", "--softhsm", "--data", d.dir); err != nil {
		return err
	}
	for l := range strings.Lines(out.String()) {
		fmt.Fprintf(d.out, "  %s", l)
	}
	return nil
}

func (d *demo) startParts(ctx context.Context) error {
	port, err := freeTCPPort()
	if err != nil {
		return err
	}
	d.hsmdAddr = fmt.Sprintf("127.0.0.1:%d", port)
	if err := d.start("hsmd", "hsmd", "--ceremony", "--data", d.dir, "--listen", d.hsmdAddr); err != nil {
		return err
	}
	if err := d.dialHSMD(ctx); err != nil {
		return err
	}
	fmt.Fprintf(d.out, "hsmd listening on %s (logs/hsmd.log)\n", d.hsmdAddr)

	var ports []string
	for i, user := range demoUsers {
		p, err := freeEmulatorPort()
		if err != nil {
			return err
		}
		name := fmt.Sprintf("emulator-%d", i+1)
		if err := d.start(name, "emulator", "--headless", "--port", fmt.Sprint(p), "--state", filepath.Join(d.dir, name)); err != nil {
			return err
		}
		e := &demoEmu{user: user, port: p, dl: debuglink.New(fmt.Sprintf("127.0.0.1:%d", p+1))}
		s, err := waitScreen(ctx, e.dl, name+": debug link", func(s *debuglink.Screen) bool { return s.Kind == debuglink.KindHome })
		if err != nil {
			return err
		}
		e.id = s.Fields[emulator.FieldDeviceID]
		d.emus = append(d.emus, e)
		ports = append(ports, fmt.Sprint(p))
		fmt.Fprintf(d.out, "emulator %s (for %s): udp 127.0.0.1:%d, debug link 127.0.0.1:%d, device %s\n", name, user, p, p+1, e.id)
	}
	if err := d.start("bridge", "bridge", "--data", d.dir, "--hsmd", d.hsmdAddr, "--emulators", strings.Join(ports, ","), "--no-usb", "--status", "off"); err != nil {
		return err
	}
	fmt.Fprintf(d.out, "bridge relaying emulators %s to hsmd\n", strings.Join(ports, ", "))
	op := apipb.NewOperatorClient(d.conn)
	return d.until(ctx, "the devices to be attached to hsmd through the bridge", func() error {
		res, err := op.ListDevices(ctx, &apipb.ListDevicesRequest{})
		if err != nil {
			return err
		}
		attached := map[string]bool{}
		for _, dev := range res.GetDevices() {
			attached[dev.GetId()] = dev.GetConnected()
		}
		for _, e := range d.emus {
			if !attached[e.id] {
				return fmt.Errorf("device %s not attached", e.id)
			}
		}
		fmt.Fprintf(d.out, "hsmd sees the three devices, attached and unpaired\n")
		return nil
	})
}

// dialHSMD waits for hsmd's certificate and connects as the operator.
func (d *demo) dialHSMD(ctx context.Context) error {
	hdir := hsmdDir(d.dir)
	var cert string
	err := d.until(ctx, "hsmd to start", func() (err error) {
		cert, err = hsmd.CertFingerprintFromDir(hdir)
		if err != nil {
			return err
		}
		_, err = hsmd.ReadToken(filepath.Join(hdir, hsmd.OperatorTokenFile))
		return err
	})
	if err != nil {
		return err
	}
	token, err := hsmd.ReadToken(filepath.Join(hdir, hsmd.OperatorTokenFile))
	if err != nil {
		return err
	}
	d.conn, err = apiclient.Dial(apiclient.Options{Address: d.hsmdAddr, CertFingerprint: cert, Token: token})
	if err != nil {
		return err
	}
	op := apipb.NewOperatorClient(d.conn)
	return d.until(ctx, "hsmd to answer", func() error {
		_, err := op.Status(ctx, &apipb.StatusRequest{})
		return err
	})
}

func (d *demo) pairAll(ctx context.Context) error {
	for _, e := range d.emus {
		if err := d.pair(ctx, e); err != nil {
			return fmt.Errorf("%s's device %s: %w", e.user, e.id, err)
		}
	}
	return nil
}

// pair pairs e with its user as an admin at the key ceremony: the operator
// compares the code hsmd computed with the one on the device, the user
// confirms on the device, then the operator confirms.
func (d *demo) pair(ctx context.Context, e *demoEmu) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := apipb.NewOperatorClient(d.conn).Pair(ctx)
	if err != nil {
		return err
	}
	start := &apipb.PairStart{DeviceId: e.id, User: e.user, Role: apipb.Role_ROLE_ADMIN}
	if err := stream.Send(&apipb.PairClientMessage{Msg: &apipb.PairClientMessage_Start{Start: start}}); err != nil {
		return err
	}
	m, err := stream.Recv()
	if err != nil {
		return err
	}
	code := m.GetCode()
	if code == nil {
		return errors.New("hsmd did not send a pairing code")
	}
	s, err := waitScreen(ctx, e.dl, "the pairing screen", func(s *debuglink.Screen) bool {
		return s.Kind == debuglink.KindPrompt && s.Fields[emulator.FieldCode] != ""
	})
	if err != nil {
		return err
	}
	onDevice, fromHSMD := s.Fields[emulator.FieldCode], pairing.Display(code.GetCode())
	fmt.Fprintf(d.out, "%s: device shows code %s, hsmd computed %s; HSM fingerprint on the device %s\n", e.user, onDevice, fromHSMD, s.Fields[emulator.FieldHSMFingerprint])
	ok := onDevice == fromHSMD && s.Fields[emulator.FieldHSMFingerprint] == code.GetHsmFingerprint()
	if ok {
		if _, err := e.dl.ConfirmAll(ctx); err != nil {
			return fmt.Errorf("confirming on the device: %w", err)
		}
	}
	if err := stream.Send(&apipb.PairClientMessage{Msg: &apipb.PairClientMessage_Decision{Decision: &apipb.PairDecision{Confirmed: ok}}}); err != nil {
		return err
	}
	m, err = stream.Recv()
	if !ok {
		return fmt.Errorf("the device shows code %s and HSM fingerprint %s, hsmd says %s and %s", onDevice, s.Fields[emulator.FieldHSMFingerprint], fromHSMD, code.GetHsmFingerprint())
	}
	if err != nil {
		return err
	}
	if m.GetResult() == nil {
		return errors.New("hsmd did not send a pairing result")
	}
	fmt.Fprintf(d.out, "%s: both sides confirmed; device %s paired as %s's admin device\n", e.user, e.id, e.user)
	op := apipb.NewOperatorClient(d.conn)
	return d.until(ctx, "the secure channel to "+e.user+"'s device", func() error {
		res, err := op.ListDevices(ctx, &apipb.ListDevicesRequest{})
		if err != nil {
			return err
		}
		for _, dev := range res.GetDevices() {
			if dev.GetId() == e.id && dev.GetState() == apipb.DeviceState_DEVICE_STATE_PAIRED && dev.GetConnected() && dev.GetChannel() {
				return nil
			}
		}
		return errors.New("no channel yet")
	})
}

// wallet creates the wallet and two addresses: one to fund, one for change.
func (d *demo) wallet(ctx context.Context) ([]*apipb.WalletAddress, error) {
	cust := apipb.NewCustodyClient(d.conn)
	w, err := cust.CreateWallet(ctx, &apipb.CreateWalletRequest{Name: "treasury", Network: chaincfg.SimNetParams.Name, Approvers: demoUsers, Quorum: 2})
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(d.out, "wallet %s on %s: %d of %s\n", w.GetName(), w.GetNetwork(), w.GetQuorum(), strings.Join(w.GetApprovers(), ", "))
	var addrs []*apipb.WalletAddress
	for _, what := range []string{"to fund", "for change"} {
		a, err := cust.NewAddress(ctx, &apipb.NewAddressRequest{Wallet: "treasury"})
		if err != nil {
			return nil, err
		}
		fmt.Fprintf(d.out, "address %s %s (custody key %s in the HSM)\n", a.GetAddress().GetAddress(), what, a.GetAddress().GetKeyRef())
		addrs = append(addrs, a.GetAddress())
	}
	return addrs, nil
}

// demoSegwitHeight is the height from which btcd's simnet takes segwit
// transactions; coinbases mature after 100 blocks, so the first block's
// coinbase is spendable by then.
const demoSegwitHeight = 300

// fund starts btcd mining to a, mines past segwit activation and returns
// the first block's coinbase, which pays a.
func (d *demo) fund(ctx context.Context, a *apipb.WalletAddress) (*wire.MsgTx, uint32, error) {
	if err := d.startBtcd(ctx, a.GetAddress()); err != nil {
		return nil, 0, err
	}
	fmt.Fprintf(d.out, "mining %d blocks to %s (segwit activates at %d on simnet; coinbases mature after 100)\n", demoSegwitHeight, a.GetAddress(), demoSegwitHeight)
	hashes, err := d.node.Generate(demoSegwitHeight)
	if err != nil {
		return nil, 0, fmt.Errorf("generate: %w", err)
	}
	block, err := d.node.GetBlock(hashes[0])
	if err != nil {
		return nil, 0, fmt.Errorf("getblock: %w", err)
	}
	cb := block.Transactions[0]
	script := p2wpkhScript(a.GetPublicKey())
	for i, o := range cb.TxOut {
		if bytes.Equal(o.PkScript, script) {
			fmt.Fprintf(d.out, "block 1's coinbase %s pays the wallet %s\n", cb.TxHash(), core.FormatAmount(btcutil.Amount(o.Value)))
			return cb, uint32(i), nil
		}
	}
	return nil, 0, errors.New("block 1's coinbase does not pay the wallet")
}

func (d *demo) startBtcd(ctx context.Context, miningAddr string) error {
	bin, err := findDemoBtcd()
	if err != nil {
		return err
	}
	rpcPort, err := freeTCPPort()
	if err != nil {
		return err
	}
	p2pPort, err := freeTCPPort()
	if err != nil {
		return err
	}
	bdir := filepath.Join(d.dir, "btcd")
	if err := os.MkdirAll(bdir, 0o700); err != nil {
		return err
	}
	conf := filepath.Join(bdir, "btcd.conf")
	if err := os.WriteFile(conf, nil, 0o600); err != nil {
		return err
	}
	const user, pass = "opencustody", "demo"
	rpcAddr := fmt.Sprintf("127.0.0.1:%d", rpcPort)
	err = d.startCmd("btcd", bin, "--configfile="+conf, "--simnet",
		"--datadir="+filepath.Join(bdir, "data"), "--logdir="+filepath.Join(bdir, "logs"),
		"--rpcuser="+user, "--rpcpass="+pass,
		"--rpclisten="+rpcAddr, fmt.Sprintf("--listen=127.0.0.1:%d", p2pPort), "--notls",
		"--miningaddr="+miningAddr, "--rejectnonstd", "--nodnsseed", "--utxocachemaxsize=16")
	if err != nil {
		return err
	}
	d.node, err = rpcclient.New(&rpcclient.ConnConfig{Host: rpcAddr, User: user, Pass: pass, HTTPPostMode: true, DisableTLS: true}, nil)
	if err != nil {
		return err
	}
	if err := d.until(ctx, "btcd to answer RPCs", func() error { _, err := d.node.GetBlockCount(); return err }); err != nil {
		return err
	}
	fmt.Fprintf(d.out, "btcd %s on simnet, RPC %s (logs/btcd.log)\n", bin, rpcAddr)
	return nil
}

// findDemoBtcd looks for btcd in PATH, then in .bin next to the binary's
// directory (bin/opencustody, .bin/btcd) and in the working directory.
func findDemoBtcd() (string, error) {
	if p, err := lookPath("btcd"); err == nil {
		return p, nil
	}
	var tried []string
	if exe, err := os.Executable(); err == nil {
		tried = append(tried, filepath.Join(filepath.Dir(filepath.Dir(exe)), ".bin", "btcd"))
	}
	if wd, err := os.Getwd(); err == nil {
		tried = append(tried, filepath.Join(wd, ".bin", "btcd"))
	}
	for _, p := range tried {
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", errors.New("btcd is not installed (not in PATH, not in .bin): run 'make setup' to install the pinned version")
}

// demoDestination is the "external" address the demo pays: a key of
// nobody's, derived from a fixed string.
func demoDestination() (btcutil.Address, error) {
	seed := sha256.Sum256([]byte("opencustody demo destination"))
	_, pub := btcec.PrivKeyFromBytes(seed[:])
	return btcutil.NewAddressWitnessPubKeyHash(btcutil.Hash160(pub.SerializeCompressed()), &chaincfg.SimNetParams)
}

// Amounts of the demo's transfer.
const (
	demoSendSat = 12_5000_0000 // 12.5 BTC to the destination
	demoFeeSat  = 5_000
)

func (d *demo) submit(ctx context.Context, prev *wire.MsgTx, index uint32, change *apipb.WalletAddress) (*apipb.Request, error) {
	dest, err := demoDestination()
	if err != nil {
		return nil, err
	}
	destScript, err := txscript.PayToAddrScript(dest)
	if err != nil {
		return nil, err
	}
	h := prev.TxHash()
	value := prev.TxOut[index].Value
	p, err := psbt.New([]*wire.OutPoint{wire.NewOutPoint(&h, index)},
		[]*wire.TxOut{wire.NewTxOut(demoSendSat, destScript), wire.NewTxOut(value-demoSendSat-demoFeeSat, p2wpkhScript(change.GetPublicKey()))},
		2, 0, []uint32{wire.MaxTxInSequenceNum - 2})
	if err != nil {
		return nil, err
	}
	u, err := psbt.NewUpdater(p)
	if err != nil {
		return nil, err
	}
	if err := u.AddInNonWitnessUtxo(prev, 0); err != nil {
		return nil, err
	}
	if err := u.AddInWitnessUtxo(prev.TxOut[index], 0); err != nil {
		return nil, err
	}
	b64, err := p.B64Encode()
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(d.out, "PSBT spending %s:%d (%s; with the previous transaction and the witness UTXO):\n  %s to %s\n  %s change to %s\n  fee %s\n",
		h, index, btcutil.Amount(value), btcutil.Amount(demoSendSat), dest.EncodeAddress(),
		btcutil.Amount(value-demoSendSat-demoFeeSat), change.GetAddress(), btcutil.Amount(demoFeeSat))
	r, err := apipb.NewCustodyClient(d.conn).Submit(ctx, &apipb.SubmitRequest{Wallet: "treasury", Initiator: "operator", Psbt: []byte(b64)})
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(d.out, "request %s: %s, prompts sent to %d devices\n", r.GetId(), requestStates[r.GetState()], len(r.GetPrompts()))
	return r, nil
}

// showPrompts waits for each device to show the request's prompt and prints
// its screen, every page.
func (d *demo) showPrompts(ctx context.Context, id string) error {
	var first *debuglink.Screen
	for _, e := range d.emus {
		s, err := waitScreen(ctx, e.dl, e.user+"'s prompt", func(s *debuglink.Screen) bool {
			return s.Kind == debuglink.KindPrompt && s.Fields[emulator.FieldRequestID] == id
		})
		if err != nil {
			return err
		}
		if first != nil && s.Text == first.Text {
			fmt.Fprintf(d.out, "%s's device (%s) shows the same %d pages\n", e.user, e.id, s.Pages)
			continue
		}
		first = s
		fmt.Fprintf(d.out, "%s's device (%s) shows %q, %d pages:\n", e.user, e.id, s.Title, s.Pages)
		for l := range strings.Lines(strings.TrimRight(s.Text, "\n")) {
			fmt.Fprintf(d.out, "  | %s\n", strings.TrimSuffix(l, "\n"))
		}
	}
	return nil
}

// approve pages through the prompt on alice's and bob's devices and
// confirms it, then waits for hsmd to sign.
func (d *demo) approve(ctx context.Context, id string) (*apipb.Request, error) {
	cust := apipb.NewCustodyClient(d.conn)
	for _, e := range d.emus[:2] {
		s, err := e.dl.Screen(ctx)
		if err != nil {
			return nil, err
		}
		pages := s.Pages
		if _, err := e.dl.ConfirmAll(ctx); err != nil {
			return nil, fmt.Errorf("%s's device: %w", e.user, err)
		}
		fmt.Fprintf(d.out, "%s read %d pages and pressed confirm\n", e.user, pages)
	}
	var r *apipb.Request
	err := d.until(ctx, "request "+id+" to be signed", func() (err error) {
		r, err = cust.GetRequest(ctx, &apipb.GetRequestRequest{Id: id})
		if err != nil {
			return err
		}
		switch r.GetState() {
		case apipb.RequestState_REQUEST_STATE_SIGNED:
			return nil
		case apipb.RequestState_REQUEST_STATE_REJECTED, apipb.RequestState_REQUEST_STATE_FAILED, apipb.RequestState_REQUEST_STATE_EXPIRED:
			return errStop{fmt.Errorf("request %s: %s", id, newRequestJSON(r).progress())}
		}
		return errors.New(newRequestJSON(r).progress())
	})
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(d.out, "request %s: %s\n", id, newRequestJSON(r).progress())
	carol := d.emus[2]
	if _, err := waitScreen(ctx, carol.dl, "carol's prompt to be withdrawn", func(s *debuglink.Screen) bool { return s.Kind == debuglink.KindHome }); err != nil {
		return nil, err
	}
	fmt.Fprintf(d.out, "carol's prompt was withdrawn: the quorum was reached without her\n")
	return r, nil
}

func (d *demo) printSigned(r *apipb.Request, tx *wire.MsgTx) error {
	if err := tx.Deserialize(bytes.NewReader(r.GetSignedTx())); err != nil {
		return err
	}
	if got := tx.TxHash().String(); got != r.GetSummary().GetTxid() {
		return fmt.Errorf("the signed transaction is %s, the request says %s", got, r.GetSummary().GetTxid())
	}
	fmt.Fprintf(d.out, "txid %s\n%s\n", tx.TxHash(), hex.EncodeToString(r.GetSignedTx()))
	return nil
}

func (d *demo) broadcast(tx *wire.MsgTx) error {
	txid, err := d.node.SendRawTransaction(tx, false)
	if err != nil {
		return fmt.Errorf("btcd refused the transaction: %w", err)
	}
	fmt.Fprintf(d.out, "btcd accepted %s (sendrawtransaction)\n", txid)
	pool, err := d.node.GetRawMempoolVerbose()
	if err != nil {
		return err
	}
	e, ok := pool[txid.String()]
	if !ok {
		return fmt.Errorf("%s is not in btcd's mempool", txid)
	}
	fmt.Fprintf(d.out, "in the mempool: %d vbytes, fee %.8f BTC\n", e.Vsize, e.Fee)
	hashes, err := d.node.Generate(1)
	if err != nil {
		return fmt.Errorf("generate: %w", err)
	}
	block, err := d.node.GetBlockVerbose(hashes[0])
	if err != nil {
		return err
	}
	for _, id := range block.Tx {
		if id == txid.String() {
			fmt.Fprintf(d.out, "mined block %d (%s): %s confirmed\n", block.Height, block.Hash, txid)
			return nil
		}
	}
	return fmt.Errorf("block %s does not contain %s", block.Hash, txid)
}

func p2wpkhScript(pub []byte) []byte { return append([]byte{0x00, 0x14}, btcutil.Hash160(pub)...) }
