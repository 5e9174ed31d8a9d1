package bitcoin

import (
	"github.com/btcsuite/btcd/txscript"
	"github.com/btcsuite/btcd/wire"
)

// Sizes of the signed transaction, for the fee rate.
//
// A P2WPKH input's witness is serialized as: the item count (1 byte), the
// signature's length (1) and the signature (DER plus the sighash byte), the
// public key's length (1) and the 33-byte compressed key. A DER signature
// with low S is at most 71 bytes (r up to 33 bytes with its sign-padding
// byte, s at most 32), so the signature with its sighash byte is at most
// [maxSignatureSize] = 72 bytes, and the witness at most 108 bytes. It is
// one byte shorter about half the time (r below 2^255) and rarely shorter
// still, so the estimate is an upper bound, never below the real size.
const (
	maxSignatureSize    = 72
	p2wpkhWitnessWeight = 1 + 1 + maxSignatureSize + 1 + 33 // witness bytes weigh 1 each
	// segwitMarkerWeight is the marker and flag bytes of a transaction
	// with witnesses.
	segwitMarkerWeight = 2
	// MaxStandardWeight is the largest transaction weight nodes relay
	// (Bitcoin Core's and btcd's MAX_STANDARD_TX_WEIGHT). [Analyse]
	// refuses transactions that could weigh more once signed.
	MaxStandardWeight = 400_000
)

// signedWeight returns an upper bound on the weight of tx once each of its
// inputs (all P2WPKH) carries its witness: the stripped size counts four
// times, the witness data once (BIP-141).
func signedWeight(tx *wire.MsgTx) int64 {
	return int64(tx.SerializeSizeStripped())*4 + segwitMarkerWeight + int64(len(tx.TxIn))*p2wpkhWitnessWeight
}

// txWeight returns the weight of a transaction as it is (BIP-141).
func txWeight(tx *wire.MsgTx) int64 {
	return int64(tx.SerializeSizeStripped())*3 + int64(tx.SerializeSize())
}

// dustRelayFeeRate is Bitcoin Core's default dust relay fee, 3,000 sat/kvB.
const dustRelayFeeRate = 3

// dustThreshold returns the smallest amount an output with script pkScript
// may carry without being dust by Bitcoin Core's rule (policy.cpp
// GetDustThreshold): the fee, at the dust relay fee rate, of the output and
// of an input spending it. It is 294 sat for P2WPKH, 330 for P2WSH and P2TR,
// 540 for P2SH and 546 for P2PKH.
func dustThreshold(pkScript []byte) int64 {
	size := int64(8 + wire.VarIntSerializeSize(uint64(len(pkScript))) + len(pkScript))
	if txscript.IsWitnessProgram(pkScript) {
		size += 32 + 4 + 1 + 107/4 + 4 // the witness is discounted
	} else {
		size += 32 + 4 + 1 + 107 + 4
	}
	return size * dustRelayFeeRate
}
