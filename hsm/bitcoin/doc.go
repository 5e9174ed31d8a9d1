// Package bitcoin is the trusted core's Bitcoin half: it takes a PSBT
// (BIP-174) from a hostile submitter, decides whether the wallet can sign
// it, derives what approvers are shown from the transaction itself, and,
// once they approved, signs the wallet's inputs in the HSM and returns the
// final transaction.
//
// # Using it
//
// The approval path calls, in order:
//
//	p, err := bitcoin.Parse(fileBytes)          // base64 or binary, ≤ MaxPSBTSize
//	sum, err := bitcoin.Analyse(p, wallet)      // refuses what the wallet must not sign
//	approved, err := sum.Canonical()            // the bytes the prompt covers
//	// … the approvers confirm the prompt built from sum …
//	signed, err := bitcoin.Sign(ctx, store, bitcoin.SignRequest{
//		Packet: p, Wallet: wallet, Approved: approved,
//	})
//	raw, err := signed.Bytes()                  // for sendrawtransaction
//
// Parse, Analyse, Canonical and [ParseSummary] do no I/O; [Sign] talks to
// the HSM through [hsm.Signer] only. None of them trusts anything the PSBT
// says about itself.
//
// A wallet is a set of custody keys on one network ([Network]):
//
//	key, err := bitcoin.NewKey(ctx, store, bitcoin.NewKeyRequest{Label: "treasury-7"}) // in the HSM
//	addr, err := key.Address(bitcoin.Mainnet)                                        // bc1q…
//	wallet, err := bitcoin.NewWallet(bitcoin.WalletConfig{Network: bitcoin.Mainnet, Keys: keys})
//
// [LoadKey] reads a key's public key back from the HSM by its reference.
// Each [Key] holds its coins in P2WPKH outputs (native segwit v0, one key
// each); P2TR and multisig across several HSMs would be other kinds of
// wallet keys, recognised by their own output scripts.
//
// # What Analyse refuses
//
// Every input must spend a P2WPKH output of one of the wallet's keys, as
// its witness UTXO says, and must carry its previous transaction, whose
// hash must be the outpoint's txid and whose output must be the witness
// UTXO, amount and script ([WalletConfig.AllowWitnessUTXOOnly] relaxes
// the previous transaction, with the risk it documents). A PSBT with
// anyone else's input is refused whole: the core does not take part in
// coinjoins or payjoins, and the fee is then computed from amounts the
// wallet can prove. Inputs are signed with SIGHASH_ALL only; a PSBT asking
// for another sighash type is refused, as is an input that already carries
// signatures or scripts, a duplicate input, an output without a standard
// address (OP_RETURN included, so no submitter text reaches a screen),
// amounts out of range, outputs worth more than the inputs, and a
// transaction too heavy to relay. [Analyse] lists every case; errors read
// "bitcoin: …" and name the input or output by index.
//
// # The summary
//
// [Summary] holds, in transaction order, each input (outpoint, amount,
// sequence, key) and each output (amount, script, address on the
// wallet's network, whether it is change, whether it is dust), the totals,
// the fee, an upper bound on the signed transaction's weight and virtual
// size, the fee rate, the lock time and version, and the transaction ID
// (which signing does not change, all inputs being segwit). An output is
// change only if its script is the P2WPKH script of one of the wallet's
// keys; derivation information in the PSBT is never enough, and an output
// whose derivation information names a wallet key it does not pay is
// refused. Dust and a fee rate of [HighFeeRate] or more are reported, not
// refused: that is policy's call.
//
// The virtual size is computed for the signed transaction: the stripped
// size times four, the segwit marker, and for each input a 108-byte
// witness (a 72-byte signature, the largest a low-S DER signature with
// its sighash byte can be, and the 33-byte key). A real signature is
// often a byte shorter, so the signed transaction is at most that heavy
// and its real fee rate at least the one shown; [Sign] checks this.
//
// [Summary.Canonical] is the summary's one encoding, domain-separated and
// versioned ([SummaryLabel]), described field by field on the method, with
// a committed vector (testdata/summary_v1.hex). [ParseSummary] reads it
// back.
//
// # Signing
//
// [Sign] analyses the packet again (a copy; the caller's is not touched)
// and signs only if the summary's encoding is the approved one. It checks
// that each key's public key in the HSM is the wallet's, signs each input's
// BIP-143 digest (the midstates computed once per transaction) with
// SIGHASH_ALL through [hsm.Signer], as low-S DER with the compressed key,
// finalizes the PSBT, extracts the transaction, and runs every input's
// script in btcd's script engine with the standard flags before returning
// it.
//
// # Tests
//
// Package [github.com/opencustodynet/opencustody/hsm/bitcoin/btcdtest]
// runs a real btcd node; this package's tests mine coins to custody keys
// in SoftHSM2, spend them through Parse, Analyse and Sign, and require the
// node to accept the transactions into its mempool and a block. The
// BIP-174 test vectors are in testdata/bip174.
package bitcoin
