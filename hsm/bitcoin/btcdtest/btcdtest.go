// Package btcdtest runs a real btcd node for tests: a private simnet or
// regtest chain on loopback, so that a test can claim a transaction is
// valid because a node accepted it, not because our own checks did.
//
//	node := btcdtest.Start(t, btcdtest.Options{Network: &chaincfg.SimNetParams, MiningAddr: addr})
//	node.Generate(t, btcdtest.SimnetSegwitHeight) // coins to addr; segwit active
//	txid, err := node.Send(signedTx)      // the node's verdict
//	node.RequireInMempool(t, txid)
//	node.RequireConfirmed(t, txid)        // mines a block and finds txid in it
//
// Each node has its own data and log directories under t.TempDir(),
// listens on free loopback ports, with RPC over plain HTTP (--notls) and
// the standard relay policy (--rejectnonstd); it is stopped (by its
// process, SIGINT then SIGKILL) when the test ends. The RPC client is
// btcd's own rpcclient.
//
// The btcd binary is looked up in PATH, then in the module's .bin
// directory, where `make setup` installs the pinned version. If it is not
// found, Start fails the test saying so; it never skips.
package btcdtest

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/btcsuite/btcd/btcjson"
	"github.com/btcsuite/btcd/btcutil"
	"github.com/btcsuite/btcd/chaincfg"
	"github.com/btcsuite/btcd/chaincfg/chainhash"
	"github.com/btcsuite/btcd/rpcclient"
	"github.com/btcsuite/btcd/wire"
)

// SimnetSegwitHeight is the height from which btcd's simnet accepts
// transactions with witnesses: segwit activates there by BIP-9 signalling
// (100-block windows). Below it, the node refuses them ("segwit isn't
// active yet"). Coinbase outputs mature after 100 blocks.
const SimnetSegwitHeight = 300

// Options configures a node.
type Options struct {
	// Network is &chaincfg.SimNetParams (the default) or
	// &chaincfg.RegressionNetParams.
	Network *chaincfg.Params
	// MiningAddr receives the coinbase of every block Generate mines.
	MiningAddr btcutil.Address
}

// Node is a running btcd.
type Node struct {
	// RPC is a client of the node's JSON-RPC server.
	RPC     *rpcclient.Client
	Network *chaincfg.Params
	// Log is the file the node's output goes to.
	Log string

	cmd    *exec.Cmd
	exited chan struct{} // closed when the process has exited
}

// startTimeout bounds how long Start waits for the node's RPC server; it is
// not a test assertion, only a limit on waiting for a node that will not
// come up.
const startTimeout = 60 * time.Second

// Start starts a node and returns it once it answers RPCs.
func Start(t testing.TB, o Options) *Node {
	t.Helper()
	bin, err := findBtcd()
	if err != nil {
		t.Fatalf("btcdtest: %v", err)
	}
	params := o.Network
	if params == nil {
		params = &chaincfg.SimNetParams
	}
	var netFlag string
	switch params.Name {
	case chaincfg.SimNetParams.Name:
		netFlag = "--simnet"
	case chaincfg.RegressionNetParams.Name:
		netFlag = "--regtest"
	default:
		t.Fatalf("btcdtest: network %s: only simnet and regtest run locally", params.Name)
	}
	if o.MiningAddr == nil || !o.MiningAddr.IsForNet(params) {
		t.Fatalf("btcdtest: a mining address for %s is required", params.Name)
	}

	dir := t.TempDir()
	conf := filepath.Join(dir, "btcd.conf")
	if err := os.WriteFile(conf, nil, 0o600); err != nil {
		t.Fatalf("btcdtest: %v", err)
	}
	rpcAddr, p2pAddr := freePort(t), freePort(t)
	const user, pass = "opencustody", "btcdtest"
	n := &Node{Network: params, Log: filepath.Join(dir, "btcd.out"), exited: make(chan struct{})}
	logFile, err := os.Create(n.Log)
	if err != nil {
		t.Fatalf("btcdtest: %v", err)
	}
	defer logFile.Close()
	n.cmd = exec.Command(bin,
		"--configfile="+conf,
		netFlag,
		"--datadir="+filepath.Join(dir, "data"),
		"--logdir="+filepath.Join(dir, "logs"),
		"--rpcuser="+user, "--rpcpass="+pass,
		"--rpclisten="+rpcAddr, "--listen="+p2pAddr, "--notls",
		"--miningaddr="+o.MiningAddr.EncodeAddress(),
		"--rejectnonstd", "--nodnsseed", "--utxocachemaxsize=16",
		"--debuglevel=info",
	)
	n.cmd.Stdout, n.cmd.Stderr = logFile, logFile
	if err := n.cmd.Start(); err != nil {
		t.Fatalf("btcdtest: start %s: %v", bin, err)
	}
	go func() {
		n.cmd.Wait()
		close(n.exited)
	}()
	t.Cleanup(n.stop)

	n.RPC, err = rpcclient.New(&rpcclient.ConnConfig{
		Host: rpcAddr, User: user, Pass: pass,
		HTTPPostMode: true, DisableTLS: true,
	}, nil)
	if err != nil {
		t.Fatalf("btcdtest: rpc client: %v", err)
	}
	t.Cleanup(n.RPC.Shutdown)

	deadline := time.Now().Add(startTimeout)
	for {
		_, err := n.RPC.GetBlockCount()
		if err == nil {
			return n
		}
		select {
		case <-n.exited:
			t.Fatalf("btcdtest: btcd exited before answering RPCs (%v); its output:\n%s", n.cmd.ProcessState, n.tail())
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("btcdtest: btcd did not answer RPCs within %v (last error: %v); its output:\n%s", startTimeout, err, n.tail())
		}
	}
}

// stop ends the node's process: SIGINT, then SIGKILL if it has not exited
// after a while.
func (n *Node) stop() {
	select {
	case <-n.exited:
		return
	default:
	}
	n.cmd.Process.Signal(os.Interrupt)
	select {
	case <-n.exited:
	case <-time.After(20 * time.Second):
		n.cmd.Process.Kill()
		<-n.exited
	}
}

// tail returns the end of the node's output, for failure messages.
func (n *Node) tail() string {
	b, _ := os.ReadFile(n.Log)
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}

// Generate mines count blocks (to Options.MiningAddr) and returns their
// hashes.
func (n *Node) Generate(t testing.TB, count uint32) []*chainhash.Hash {
	t.Helper()
	hashes, err := n.RPC.Generate(count)
	if err != nil {
		t.Fatalf("btcdtest: generate %d: %v", count, err)
	}
	if len(hashes) != int(count) {
		t.Fatalf("btcdtest: generate %d: got %d blocks", count, len(hashes))
	}
	return hashes
}

// Block returns a block by its hash.
func (n *Node) Block(t testing.TB, hash *chainhash.Hash) *wire.MsgBlock {
	t.Helper()
	b, err := n.RPC.GetBlock(hash)
	if err != nil {
		t.Fatalf("btcdtest: getblock %v: %v", hash, err)
	}
	return b
}

// Send submits a transaction (sendrawtransaction) and returns the ID the
// node gives it, or the node's reason for refusing it.
func (n *Node) Send(tx *wire.MsgTx) (*chainhash.Hash, error) {
	return n.RPC.SendRawTransaction(tx, false)
}

// MempoolEntry returns the node's mempool entry for txid (fee, size,
// virtual size, weight), or an error if the transaction is not in its
// mempool. (btcd does not implement getmempoolentry; this reads
// getrawmempool's verbose form.)
func (n *Node) MempoolEntry(txid *chainhash.Hash) (*btcjson.GetRawMempoolVerboseResult, error) {
	pool, err := n.RPC.GetRawMempoolVerbose()
	if err != nil {
		return nil, err
	}
	e, ok := pool[txid.String()]
	if !ok {
		return nil, fmt.Errorf("btcdtest: transaction %v is not in the mempool", txid)
	}
	return &e, nil
}

// RequireInMempool fails the test unless txid is in the node's mempool.
func (n *Node) RequireInMempool(t testing.TB, txid *chainhash.Hash) {
	t.Helper()
	pool, err := n.RPC.GetRawMempool()
	if err != nil {
		t.Fatalf("btcdtest: getrawmempool: %v", err)
	}
	for _, h := range pool {
		if *h == *txid {
			return
		}
	}
	t.Fatalf("btcdtest: transaction %v is not in the mempool (%d transactions there)", txid, len(pool))
}

// RequireConfirmed mines one block and fails the test unless it contains
// txid and the mempool no longer does. It returns the block.
func (n *Node) RequireConfirmed(t testing.TB, txid *chainhash.Hash) *wire.MsgBlock {
	t.Helper()
	hashes := n.Generate(t, 1)
	block := n.Block(t, hashes[0])
	found := false
	for _, tx := range block.Transactions {
		if tx.TxHash() == *txid {
			found = true
		}
	}
	if !found {
		t.Fatalf("btcdtest: block %v (%d transactions) does not contain %v", hashes[0], len(block.Transactions), txid)
	}
	if _, err := n.MempoolEntry(txid); err == nil {
		t.Fatalf("btcdtest: transaction %v is still in the mempool after block %v", txid, hashes[0])
	}
	return block
}

// findBtcd looks for btcd in PATH, then in .bin at the module's root.
func findBtcd() (string, error) {
	if p, err := exec.LookPath("btcd"); err == nil {
		return p, nil
	}
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			p := filepath.Join(dir, ".bin", "btcd")
			if _, err := os.Stat(p); err == nil {
				return p, nil
			}
			return "", fmt.Errorf("btcd is not installed (not in PATH, not at %s); run `make setup` to install the pinned version", p)
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("btcd is not installed (not in PATH, and no module root found); run `make setup` to install the pinned version")
		}
		dir = parent
	}
}

// freePort returns a loopback address with a port that was free a moment
// ago.
func freePort(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("btcdtest: %v", err)
	}
	defer l.Close()
	return "127.0.0.1:" + strconv.Itoa(l.Addr().(*net.TCPAddr).Port)
}
