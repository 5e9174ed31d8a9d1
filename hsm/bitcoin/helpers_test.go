package bitcoin_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"math/big"
	"testing"

	"github.com/btcsuite/btcd/btcec/v2"
	btcecdsa "github.com/btcsuite/btcd/btcec/v2/ecdsa"
	"github.com/btcsuite/btcd/btcutil"
	"github.com/btcsuite/btcd/btcutil/psbt"
	"github.com/btcsuite/btcd/chaincfg/chainhash"
	"github.com/btcsuite/btcd/wire"

	"github.com/opencustodynet/opencustody/hsm"
	"github.com/opencustodynet/opencustody/hsm/bitcoin"
	"github.com/opencustodynet/opencustody/hsm/softhsm/softhsmtest"
)

func TestMain(m *testing.M) { softhsmtest.Main(m) }

// softSigner is an in-memory hsm.Signer over fixed secp256k1 keys, for
// unit tests of the logic (the SoftHSM2 tests use the real HSM). Its
// signatures are RFC 6979, low S.
type softSigner map[string]*btcec.PrivateKey

func (s softSigner) Sign(_ context.Context, req hsm.SignRequest) (*hsm.Signature, error) {
	k, ok := s[req.Key]
	if !ok {
		return nil, fmt.Errorf("soft signer: key %q: %w", req.Key, hsm.ErrKeyNotFound)
	}
	if len(req.Digest) != 32 {
		return nil, fmt.Errorf("soft signer: digest of %d bytes", len(req.Digest))
	}
	der := btcecdsa.Sign(k, req.Digest).Serialize()
	// DER: 0x30 len 0x02 rlen r 0x02 slen s
	rLen := int(der[3])
	r := new(big.Int).SetBytes(der[4 : 4+rLen])
	sv := new(big.Int).SetBytes(der[6+rLen:])
	return &hsm.Signature{Algorithm: hsm.ECDSASecp256k1, R: r, S: sv}, nil
}

func (s softSigner) PublicKey(_ context.Context, key string) (*hsm.PublicKey, error) {
	k, ok := s[key]
	if !ok {
		return nil, fmt.Errorf("soft signer: key %q: %w", key, hsm.ErrKeyNotFound)
	}
	return &hsm.PublicKey{Algorithm: hsm.ECDSASecp256k1, Key: k.PubKey()}, nil
}

// testKey returns a fixed private key named by s.
func testKey(s string) *btcec.PrivateKey {
	d := sha256.Sum256([]byte("opencustody bitcoin test key " + s))
	k, _ := btcec.PrivKeyFromBytes(d[:])
	return k
}

// fixture is a wallet of fixed keys on simnet, with a signer for them.
type fixture struct {
	wallet *bitcoin.Wallet
	keys   []bitcoin.Key
	signer softSigner
}

func newFixture(t testing.TB, nKeys int) *fixture {
	t.Helper()
	f := &fixture{signer: softSigner{}}
	for i := range nKeys {
		ref := fmt.Sprintf("custody-%d", i)
		k := testKey(ref)
		f.signer[ref] = k
		f.keys = append(f.keys, bitcoin.Key{Ref: ref, PublicKey: k.PubKey().SerializeCompressed()})
	}
	w, err := bitcoin.NewWallet(bitcoin.WalletConfig{Network: bitcoin.Simnet, Keys: f.keys})
	if err != nil {
		t.Fatal(err)
	}
	f.wallet = w
	return f
}

// foreignScript is a P2WPKH script of a key that is not the wallet's.
func foreignScript(name string) []byte {
	return p2wpkh(testKey("foreign " + name).PubKey().SerializeCompressed())
}

func p2wpkh(pub []byte) []byte {
	return append([]byte{0x00, 0x14}, btcutil.Hash160(pub)...)
}

// coin is an output to spend: a made-up previous transaction paying
// amount to script at its output index.
type coin struct {
	prev  *wire.MsgTx
	index uint32
}

// newCoin makes a previous transaction (distinct per tag) whose output
// index pays amount to script; its other outputs pay elsewhere.
func newCoin(tag string, index uint32, amount int64, script []byte) coin {
	prev := wire.NewMsgTx(2)
	h := chainhash.HashH([]byte("funding " + tag))
	prev.AddTxIn(wire.NewTxIn(wire.NewOutPoint(&h, 0), nil, nil))
	for i := range index + 1 {
		if i == index {
			prev.AddTxOut(wire.NewTxOut(amount, script))
		} else {
			prev.AddTxOut(wire.NewTxOut(1000+int64(i), foreignScript("other")))
		}
	}
	return coin{prev: prev, index: index}
}

func (c coin) outPoint() *wire.OutPoint {
	h := c.prev.TxHash()
	return wire.NewOutPoint(&h, c.index)
}

// newPacket builds a PSBT spending coins (each with its witness UTXO and
// previous transaction) to outs.
func newPacket(t testing.TB, coins []coin, outs []*wire.TxOut) *psbt.Packet {
	t.Helper()
	ops := make([]*wire.OutPoint, len(coins))
	seqs := make([]uint32, len(coins))
	for i, c := range coins {
		ops[i] = c.outPoint()
		seqs[i] = wire.MaxTxInSequenceNum - 2
	}
	p, err := psbt.New(ops, outs, 2, 0, seqs)
	if err != nil {
		t.Fatal(err)
	}
	u, err := psbt.NewUpdater(p)
	if err != nil {
		t.Fatal(err)
	}
	for i, c := range coins {
		if err := u.AddInNonWitnessUtxo(c.prev, i); err != nil {
			t.Fatal(err)
		}
		if err := u.AddInWitnessUtxo(c.prev.TxOut[c.index], i); err != nil {
			t.Fatal(err)
		}
	}
	return p
}

// serialize returns the binary PSBT.
func serialize(t testing.TB, p *psbt.Packet) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := p.Serialize(&b); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// reparse returns a deep copy of p through Parse.
func reparse(t testing.TB, p *psbt.Packet) *psbt.Packet {
	t.Helper()
	c, err := bitcoin.Parse(serialize(t, p))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func canonical(t testing.TB, s *bitcoin.Summary) []byte {
	t.Helper()
	b, err := s.Canonical()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// standard returns the fixture's usual packet: two coins of keys 0 and 1
// (1 BTC and 0.5 BTC) paying 1.2 BTC to a foreign address and change to
// key 2, with a fee of 10,000 sat.
func (f *fixture) standard(t testing.TB) *psbt.Packet {
	return newPacket(t,
		[]coin{
			newCoin("a", 1, 100_000_000, f.keys[0].PkScript()),
			newCoin("b", 0, 50_000_000, f.keys[1].PkScript()),
		},
		[]*wire.TxOut{
			wire.NewTxOut(120_000_000, foreignScript("destination")),
			wire.NewTxOut(29_990_000, f.keys[2].PkScript()),
		})
}
