package bitcoin

import (
	"bytes"
	"context"
	"errors"
	"fmt"

	"github.com/btcsuite/btcd/btcec/v2"
	btcecdsa "github.com/btcsuite/btcd/btcec/v2/ecdsa"
	"github.com/btcsuite/btcd/btcutil/psbt"
	"github.com/btcsuite/btcd/txscript"
	"github.com/btcsuite/btcd/wire"

	"github.com/opencustodynet/opencustody/hsm"
)

// SignRequest asks [Sign] to sign a PSBT.
type SignRequest struct {
	// Packet is the PSBT, as [Parse] returned it. Sign does not modify it.
	Packet *psbt.Packet
	// Wallet is the wallet whose keys sign.
	Wallet *Wallet
	// Approved is the [Summary.Canonical] encoding of the summary the
	// approvers confirmed. Sign refuses a packet whose summary encodes to
	// anything else.
	Approved []byte
}

// Signed is a signed transaction.
type Signed struct {
	// Summary is the transaction's summary (whose encoding is the approved
	// one).
	Summary *Summary
	// Packet is a finalized copy of the PSBT.
	Packet *psbt.Packet
	// Tx is the final transaction, ready to broadcast.
	Tx *wire.MsgTx
}

// Bytes returns the final transaction serialized for the network (with
// witnesses), as sendrawtransaction takes it in hex.
func (s *Signed) Bytes() ([]byte, error) {
	var b bytes.Buffer
	if err := s.Tx.Serialize(&b); err != nil {
		return nil, fmt.Errorf("bitcoin: serialize the signed transaction: %w", err)
	}
	return b.Bytes(), nil
}

// Sign signs every input of req.Packet with the wallet's keys in the HSM,
// finalizes the PSBT and extracts the transaction.
//
// It first runs [Analyse] again on a copy of the packet, and refuses if the
// analysis fails or if the summary's canonical encoding is not
// req.Approved: it signs only what was approved, and only the wallet's
// inputs (Analyse refuses a packet with any other). It checks that each
// key it signs with has, in the HSM, the public key the wallet has. Each
// input is signed with SIGHASH_ALL over its BIP-143 digest (the digests'
// shared midstate computed once for the transaction) as a low-S DER
// signature with the compressed public key. Before returning, it runs
// every input's script in btcd's script engine with the standard
// verification flags, and checks that the transaction's ID is the
// summary's and its weight at most the summary's.
//
// Errors from the HSM are wrapped, so errors.Is finds the [hsm] sentinels.
func Sign(ctx context.Context, signer hsm.Signer, req SignRequest) (*Signed, error) {
	if req.Packet == nil || req.Wallet == nil {
		return nil, errors.New("bitcoin: sign: no packet or no wallet")
	}
	if len(req.Approved) == 0 {
		return nil, errors.New("bitcoin: sign: no approved summary")
	}
	w := req.Wallet
	p, err := copyPacket(req.Packet)
	if err != nil {
		return nil, err
	}
	sum, err := Analyse(p, w)
	if err != nil {
		return nil, err
	}
	enc, err := sum.Canonical()
	if err != nil {
		return nil, err
	}
	if !bytes.Equal(enc, req.Approved) {
		return nil, errors.New("bitcoin: sign: the transaction is not the one approved (its summary differs)")
	}

	// The keys, each checked against the HSM once.
	tx := p.UnsignedTx
	keys := make([]int, len(tx.TxIn))
	checked := make(map[int]bool)
	prevOuts := make(map[wire.OutPoint]*wire.TxOut, len(tx.TxIn))
	for i, txIn := range tx.TxIn {
		utxo := p.Inputs[i].WitnessUtxo
		keys[i] = w.byScript[string(utxo.PkScript)]
		prevOuts[txIn.PreviousOutPoint] = utxo
		if k := keys[i]; !checked[k] {
			if err := checkHSMKey(ctx, signer, w.keys[k]); err != nil {
				return nil, err
			}
			checked[k] = true
		}
	}
	fetcher := txscript.NewMultiPrevOutFetcher(prevOuts)
	sigHashes := txscript.NewTxSigHashes(tx, fetcher)

	u, err := psbt.NewUpdater(p)
	if err != nil {
		return nil, fmt.Errorf("bitcoin: sign: %w", err)
	}
	for i := range tx.TxIn {
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("bitcoin: sign: %w", err)
		}
		key := w.keys[keys[i]]
		utxo := p.Inputs[i].WitnessUtxo
		digest, err := txscript.CalcWitnessSigHash(utxo.PkScript, sigHashes, txscript.SigHashAll, tx, i, utxo.Value)
		if err != nil {
			return nil, fmt.Errorf("bitcoin: sign: input %d: sighash: %w", i, err)
		}
		sig, err := hsmSign(ctx, signer, key, digest)
		if err != nil {
			return nil, fmt.Errorf("bitcoin: sign: input %d: %w", i, err)
		}
		outcome, err := u.Sign(i, append(sig, byte(txscript.SigHashAll)), key.PublicKey, nil, nil)
		if err != nil || outcome != psbt.SignSuccesful {
			return nil, fmt.Errorf("bitcoin: sign: input %d: the PSBT took no signature (outcome %d): %v", i, outcome, err)
		}
	}
	if err := psbt.MaybeFinalizeAll(p); err != nil {
		return nil, fmt.Errorf("bitcoin: sign: finalize: %w", err)
	}
	final, err := psbt.Extract(p)
	if err != nil {
		return nil, fmt.Errorf("bitcoin: sign: extract: %w", err)
	}

	for i, txIn := range final.TxIn {
		utxo := prevOuts[txIn.PreviousOutPoint]
		vm, err := txscript.NewEngine(utxo.PkScript, final, i, txscript.StandardVerifyFlags, nil, sigHashes, utxo.Value, fetcher)
		if err == nil {
			err = vm.Execute()
		}
		if err != nil {
			return nil, fmt.Errorf("bitcoin: sign: input %d does not verify: %w", i, err)
		}
	}
	if final.TxHash() != sum.TxID {
		return nil, fmt.Errorf("bitcoin: sign: the signed transaction's ID %v is not the summary's %v", final.TxHash(), sum.TxID)
	}
	if wt := txWeight(final); wt > sum.Weight {
		return nil, fmt.Errorf("bitcoin: sign: the signed transaction weighs %d, more than the %d estimated", wt, sum.Weight)
	}
	return &Signed{Summary: sum, Packet: p, Tx: final}, nil
}

// copyPacket returns a deep copy of p, through its serialization.
func copyPacket(p *psbt.Packet) (*psbt.Packet, error) {
	if p.UnsignedTx == nil {
		return nil, errors.New("bitcoin: no transaction in the PSBT")
	}
	var b bytes.Buffer
	if err := p.Serialize(&b); err != nil {
		return nil, fmt.Errorf("bitcoin: serialize the PSBT: %w", err)
	}
	c, err := psbt.NewFromRawBytes(&b, false)
	if err != nil {
		return nil, fmt.Errorf("bitcoin: malformed PSBT: %w", err)
	}
	return c, nil
}

// checkHSMKey checks that the HSM's key key.Ref has the public key the
// wallet holds for it.
func checkHSMKey(ctx context.Context, signer hsm.Signer, key Key) error {
	pub, err := signer.PublicKey(ctx, key.Ref)
	if err != nil {
		return fmt.Errorf("bitcoin: sign: custody key %q: %w", key.Ref, err)
	}
	if pub.Algorithm != hsm.ECDSASecp256k1 || !bytes.Equal(pub.Bytes(), key.PublicKey) {
		return fmt.Errorf("bitcoin: sign: the HSM's key %q is not the wallet's key %x", key.Ref, key.PublicKey)
	}
	return nil
}

// hsmSign has the HSM sign digest with key and returns the DER signature,
// checked against the key.
func hsmSign(ctx context.Context, signer hsm.Signer, key Key, digest []byte) ([]byte, error) {
	sig, err := signer.Sign(ctx, hsm.SignRequest{Key: key.Ref, Digest: digest})
	if err != nil {
		return nil, fmt.Errorf("custody key %q: %w", key.Ref, err)
	}
	der, err := sig.DER()
	if err != nil {
		return nil, fmt.Errorf("custody key %q: %w", key.Ref, err)
	}
	parsed, err := btcecdsa.ParseDERSignature(der)
	if err != nil {
		return nil, fmt.Errorf("custody key %q: the HSM's signature is not strict DER: %w", key.Ref, err)
	}
	pub, err := btcec.ParsePubKey(key.PublicKey)
	if err != nil {
		return nil, fmt.Errorf("custody key %q: %w", key.Ref, err)
	}
	if !parsed.Verify(digest, pub) {
		return nil, fmt.Errorf("custody key %q: the HSM's signature does not verify", key.Ref)
	}
	if len(der)+1 > maxSignatureSize {
		return nil, fmt.Errorf("custody key %q: the HSM's signature is %d bytes, more than a low-S signature can be", key.Ref, len(der))
	}
	return der, nil
}
