package bitcoin

import (
	"context"
	"errors"
	"fmt"

	"github.com/btcsuite/btcd/btcec/v2"
	"github.com/btcsuite/btcd/btcec/v2/schnorr"
	"github.com/btcsuite/btcd/btcutil"

	"github.com/opencustodynet/opencustody/hsm"
)

// Key is a custody key of a wallet: a secp256k1 key pair in the HSM, whose
// coins are held in P2WPKH outputs (native segwit v0, one key each).
type Key struct {
	// Ref names the key in the HSM as [hsm.SignRequest.Key] takes it: a
	// label, or a pkcs11: URI (what [NewKey] returns, since it stays right
	// if labels repeat).
	Ref string
	// PublicKey is the 33-byte compressed public key.
	PublicKey []byte
}

// PkScript returns the P2WPKH output script that pays the key:
// OP_0 <HASH160(public key)>.
func (k Key) PkScript() []byte {
	return p2wpkhScript(btcutil.Hash160(k.PublicKey))
}

// Address returns the key's P2WPKH address on network n (bech32: bc1q… on
// mainnet, sb1q… on simnet).
func (k Key) Address(n Network) (*btcutil.AddressWitnessPubKeyHash, error) {
	params := n.Params()
	if params == nil {
		return nil, fmt.Errorf("bitcoin: unknown network %d", uint8(n))
	}
	if err := checkPublicKey(k.PublicKey); err != nil {
		return nil, fmt.Errorf("bitcoin: key %q: %w", k.Ref, err)
	}
	return btcutil.NewAddressWitnessPubKeyHash(btcutil.Hash160(k.PublicKey), params)
}

func p2wpkhScript(hash []byte) []byte {
	return append([]byte{0x00, 0x14}, hash...)
}

func checkPublicKey(pub []byte) error {
	if len(pub) != btcec.PubKeyBytesLenCompressed || (pub[0] != 0x02 && pub[0] != 0x03) {
		return fmt.Errorf("public key is not a 33-byte compressed secp256k1 point (%d bytes)", len(pub))
	}
	if _, err := btcec.ParsePubKey(pub); err != nil {
		return fmt.Errorf("public key is not on secp256k1: %w", err)
	}
	return nil
}

// NewKeyRequest describes a custody key to create in the HSM.
type NewKeyRequest struct {
	// Label names the key in the HSM; it must be new on the token.
	Label string
	// Backupable makes the key exportable wrapped under a trusted key, for
	// moving it to another HSM ([hsm.GenerateKeyRequest.Backupable]). It
	// is decided at birth.
	Backupable bool
}

// NewKey creates a custody key (ECDSA secp256k1) in the HSM and returns it
// with its public key as the HSM reports it. The key's address on a network
// is [Key.Address].
func NewKey(ctx context.Context, km hsm.KeyManager, req NewKeyRequest) (Key, error) {
	info, err := km.GenerateKey(ctx, hsm.GenerateKeyRequest{
		Label:      req.Label,
		Algorithm:  hsm.ECDSASecp256k1,
		Backupable: req.Backupable,
	})
	if err != nil {
		return Key{}, fmt.Errorf("bitcoin: new custody key %q: %w", req.Label, err)
	}
	if info.PublicKey == nil || info.PublicKey.Algorithm != hsm.ECDSASecp256k1 {
		return Key{}, fmt.Errorf("bitcoin: new custody key %q: the HSM returned no secp256k1 public key", req.Label)
	}
	ref := info.URI
	if ref == "" {
		ref = info.Label
	}
	k := Key{Ref: ref, PublicKey: info.PublicKey.Bytes()}
	if err := checkPublicKey(k.PublicKey); err != nil {
		return Key{}, fmt.Errorf("bitcoin: new custody key %q: %w", req.Label, err)
	}
	return k, nil
}

// LoadKey reads the public key of the custody key ref from the HSM.
func LoadKey(ctx context.Context, s hsm.Signer, ref string) (Key, error) {
	pub, err := s.PublicKey(ctx, ref)
	if err != nil {
		return Key{}, fmt.Errorf("bitcoin: custody key %q: %w", ref, err)
	}
	if pub.Algorithm != hsm.ECDSASecp256k1 {
		return Key{}, fmt.Errorf("bitcoin: key %q is %s, not a custody key (%s)", ref, pub.Algorithm, hsm.ECDSASecp256k1)
	}
	k := Key{Ref: ref, PublicKey: pub.Bytes()}
	if err := checkPublicKey(k.PublicKey); err != nil {
		return Key{}, fmt.Errorf("bitcoin: custody key %q: %w", ref, err)
	}
	return k, nil
}

// WalletConfig describes a wallet for [NewWallet].
type WalletConfig struct {
	// Network is the network the wallet's coins are on; destination
	// addresses are encoded for it.
	Network Network
	// Keys are the wallet's custody keys. Public keys must be distinct.
	Keys []Key
	// AllowWitnessUTXOOnly accepts inputs that carry only the witness UTXO
	// (the output spent), without the previous transaction. It is off by
	// default, because then nothing proves the input's amount: a signature
	// over a false amount is invalid, but two approved requests spending the
	// same coins with different false amounts can be combined into one valid
	// transaction with a fee nobody approved (CVE-2020-14199). Turn it on
	// only if something else guarantees the amounts, such as the core
	// never signing an outpoint twice.
	AllowWitnessUTXOOnly bool
}

// Wallet is a validated, immutable set of custody keys on one network, as
// [Analyse] and [Sign] take it. Make one with [NewWallet].
type Wallet struct {
	network              Network
	keys                 []Key
	allowWitnessUTXOOnly bool
	byScript             map[string]int // P2WPKH script → index in keys
	byPublicKey          map[string]int // compressed and x-only public key → index in keys
}

// NewWallet checks c and returns the wallet it describes: a known network,
// at least one key, every key a compressed secp256k1 public key with a
// reference, no key twice.
func NewWallet(c WalletConfig) (*Wallet, error) {
	if c.Network.Params() == nil {
		return nil, fmt.Errorf("bitcoin: wallet: unknown network %d", uint8(c.Network))
	}
	if len(c.Keys) == 0 {
		return nil, errors.New("bitcoin: wallet: no keys")
	}
	w := &Wallet{
		network:              c.Network,
		keys:                 make([]Key, len(c.Keys)),
		allowWitnessUTXOOnly: c.AllowWitnessUTXOOnly,
		byScript:             make(map[string]int, len(c.Keys)),
		byPublicKey:          make(map[string]int, 2*len(c.Keys)),
	}
	for i, k := range c.Keys {
		if k.Ref == "" {
			return nil, fmt.Errorf("bitcoin: wallet: key %d has no HSM reference", i)
		}
		if err := checkPublicKey(k.PublicKey); err != nil {
			return nil, fmt.Errorf("bitcoin: wallet: key %d (%q): %w", i, k.Ref, err)
		}
		pub := string(k.PublicKey)
		if j, dup := w.byPublicKey[pub]; dup {
			return nil, fmt.Errorf("bitcoin: wallet: keys %d and %d have the same public key", j, i)
		}
		k = Key{Ref: k.Ref, PublicKey: append([]byte(nil), k.PublicKey...)}
		w.keys[i] = k
		w.byPublicKey[pub] = i
		w.byPublicKey[pub[1:]] = i // x-only, as taproot derivations name keys
		w.byScript[string(k.PkScript())] = i
	}
	return w, nil
}

// Network returns the wallet's network.
func (w *Wallet) Network() Network { return w.network }

// Keys returns a copy of the wallet's keys.
func (w *Wallet) Keys() []Key {
	out := make([]Key, len(w.keys))
	for i, k := range w.keys {
		out[i] = Key{Ref: k.Ref, PublicKey: append([]byte(nil), k.PublicKey...)}
	}
	return out
}

// keyForPublicKey returns the index of the wallet key whose compressed
// (33-byte) or x-only (32-byte) public key is pub.
func (w *Wallet) keyForPublicKey(pub []byte) (int, bool) {
	if len(pub) != btcec.PubKeyBytesLenCompressed && len(pub) != schnorr.PubKeyBytesLen {
		return 0, false
	}
	i, ok := w.byPublicKey[string(pub)]
	return i, ok
}
