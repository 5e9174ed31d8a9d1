package bitcoin

import (
	"bytes"
	"errors"
	"fmt"

	"github.com/btcsuite/btcd/btcutil"
	"github.com/btcsuite/btcd/btcutil/psbt"
	"github.com/btcsuite/btcd/chaincfg"
	"github.com/btcsuite/btcd/chaincfg/chainhash"
	"github.com/btcsuite/btcd/txscript"
	"github.com/btcsuite/btcd/wire"
)

// Summary is what a PSBT does, derived by [Analyse] from the transaction
// and the wallet alone. It is what approvers are shown and what they
// approve: [Summary.Canonical] encodes it, and [Sign] signs only a PSBT
// whose summary encodes the same.
type Summary struct {
	Network Network
	// TxID is the transaction's ID. All inputs are segwit, so signing does
	// not change it: it is the ID the signed transaction has on the chain.
	TxID     chainhash.Hash
	Version  int32
	LockTime uint32
	Inputs   []Input
	Outputs  []Output

	InputTotal  btcutil.Amount // sum of the inputs' amounts
	SentTotal   btcutil.Amount // sum of the outputs that are not change
	ChangeTotal btcutil.Amount // sum of the change outputs
	Fee         btcutil.Amount // InputTotal − SentTotal − ChangeTotal

	// Weight is an upper bound on the signed transaction's weight (BIP-141),
	// reckoning each signature at its largest, 72 bytes with the sighash
	// byte; the signed transaction weighs this or a few units less. VSize
	// is the virtual size it gives, Weight/4 rounded up.
	Weight int64
	VSize  int64
	// FeeRate is Fee / VSize, rounded down. As VSize is an upper bound, the
	// real fee rate is at least this.
	FeeRate FeeRate
	// HighFee is set if FeeRate is at least [HighFeeRate]. It is reported,
	// not refused: policy decides.
	HighFee bool
}

// Input is one input of a summarised transaction: a coin of the wallet.
type Input struct {
	OutPoint wire.OutPoint
	Amount   btcutil.Amount
	Sequence uint32
	// PublicKey is the 33-byte compressed public key of the wallet key
	// that owns the coin.
	PublicKey []byte
}

// Output is one output of a summarised transaction.
type Output struct {
	Amount btcutil.Amount
	// Script is the output script, Address its address on the summary's
	// network, derived from the script (never taken from the PSBT).
	Script  []byte
	Address string
	// Change is set if the output pays one of the wallet's keys (its
	// script is that key's P2WPKH script); PublicKey is then that key's
	// public key, and nil otherwise.
	Change    bool
	PublicKey []byte
	// Dust is set if Amount is below the output's dust threshold under
	// Bitcoin Core's default relay policy (294 sat for P2WPKH, 546 for
	// P2PKH); nodes will not relay such a transaction. Reported, not
	// refused.
	Dust bool
}

// FeeRate is a fee rate in thousandths of a satoshi per virtual byte
// (satoshis per 1,000 vbytes).
type FeeRate int64

// String writes the rate in sat/vB with three decimals: "12.345 sat/vB".
func (r FeeRate) String() string {
	sign := ""
	v := int64(r)
	if v < 0 {
		sign, v = "-", -v
	}
	return fmt.Sprintf("%s%d.%03d sat/vB", sign, v/1000, v%1000)
}

// HighFeeRate is the fee rate from which a summary is marked
// [Summary.HighFee]: 1,000 sat/vB, far above what blocks have needed.
const HighFeeRate FeeRate = 1000 * 1000

// SignalsRBF says whether the transaction signals replaceability (BIP-125):
// an input's sequence is below 0xfffffffe.
func (s *Summary) SignalsRBF() bool {
	for _, in := range s.Inputs {
		if in.Sequence < wire.MaxTxInSequenceNum-1 {
			return true
		}
	}
	return false
}

// Analyse checks that p is a transaction the wallet w can sign, and
// derives its [Summary] from the transaction itself and w, never from the
// PSBT's claims. It refuses, with an error naming the input or output:
//
//   - a packet whose input or output maps do not match its transaction, or
//     a transaction with no inputs or no outputs;
//   - an input spending the same outpoint as another;
//   - an input that is not a P2WPKH output of one of w's keys (by its
//     witness UTXO's script), or that has no witness UTXO;
//   - an input without its previous transaction (the non-witness UTXO),
//     unless w allows it ([WalletConfig.AllowWitnessUTXOOnly]); and a
//     previous transaction whose hash is not the outpoint's txid, or whose
//     output differs from the witness UTXO in amount or script;
//   - an input asking for a sighash type other than SIGHASH_ALL, or
//     carrying signatures, final scripts, or a redeem or witness script;
//   - an amount below zero or above 21 million bitcoin, alone or summed;
//   - an output whose script has no standard address (P2PKH, P2SH,
//     P2WPKH, P2WSH, P2TR), including OP_RETURN data;
//   - an output whose PSBT derivation information names one of w's keys
//     while its script does not pay that key (a "change" claim that is not
//     true);
//   - outputs worth more than the inputs;
//   - a transaction that could weigh more than [MaxStandardWeight] once
//     signed.
//
// Analyse does not modify p, does no I/O, and gives the same summary for
// the same p and w.
func Analyse(p *psbt.Packet, w *Wallet) (*Summary, error) {
	if w == nil {
		return nil, errors.New("bitcoin: no wallet")
	}
	if p == nil || p.UnsignedTx == nil {
		return nil, errors.New("bitcoin: no transaction in the PSBT")
	}
	tx := p.UnsignedTx
	if len(p.Inputs) != len(tx.TxIn) {
		return nil, fmt.Errorf("bitcoin: the PSBT has %d input maps for %d inputs", len(p.Inputs), len(tx.TxIn))
	}
	if len(p.Outputs) != len(tx.TxOut) {
		return nil, fmt.Errorf("bitcoin: the PSBT has %d output maps for %d outputs", len(p.Outputs), len(tx.TxOut))
	}
	if len(tx.TxIn) == 0 {
		return nil, errors.New("bitcoin: the transaction has no inputs")
	}
	if len(tx.TxOut) == 0 {
		return nil, errors.New("bitcoin: the transaction has no outputs")
	}
	params := w.network.Params()
	s := &Summary{
		Network:  w.network,
		TxID:     tx.TxHash(),
		Version:  tx.Version,
		LockTime: tx.LockTime,
		Inputs:   make([]Input, len(tx.TxIn)),
		Outputs:  make([]Output, len(tx.TxOut)),
	}

	spent := make(map[wire.OutPoint]int, len(tx.TxIn))
	for i, txIn := range tx.TxIn {
		if j, dup := spent[txIn.PreviousOutPoint]; dup {
			return nil, fmt.Errorf("bitcoin: input %d spends %v, which input %d spends too", i, txIn.PreviousOutPoint, j)
		}
		spent[txIn.PreviousOutPoint] = i
		in, err := w.input(i, txIn, &p.Inputs[i])
		if err != nil {
			return nil, err
		}
		s.Inputs[i] = in
		s.InputTotal += in.Amount
		if s.InputTotal > btcutil.MaxSatoshi {
			return nil, fmt.Errorf("bitcoin: the inputs up to input %d add up to more than 21 million bitcoin", i)
		}
	}

	for j, txOut := range tx.TxOut {
		out, err := w.output(j, txOut, &p.Outputs[j], params)
		if err != nil {
			return nil, err
		}
		s.Outputs[j] = out
		if out.Change {
			s.ChangeTotal += out.Amount
		} else {
			s.SentTotal += out.Amount
		}
		if s.SentTotal+s.ChangeTotal > btcutil.MaxSatoshi {
			return nil, fmt.Errorf("bitcoin: the outputs up to output %d add up to more than 21 million bitcoin", j)
		}
	}

	s.Fee = s.InputTotal - s.SentTotal - s.ChangeTotal
	if s.Fee < 0 {
		return nil, fmt.Errorf("bitcoin: the outputs (%d sat) spend more than the inputs (%d sat)", int64(s.SentTotal+s.ChangeTotal), int64(s.InputTotal))
	}
	s.Weight = signedWeight(tx)
	if s.Weight > MaxStandardWeight {
		return nil, fmt.Errorf("bitcoin: the signed transaction could weigh %d, more than nodes relay (%d)", s.Weight, MaxStandardWeight)
	}
	s.VSize = (s.Weight + 3) / 4
	s.FeeRate = FeeRate(int64(s.Fee) * 1000 / s.VSize)
	s.HighFee = s.FeeRate >= HighFeeRate
	return s, nil
}

// input checks input i and returns its summary.
func (w *Wallet) input(i int, txIn *wire.TxIn, pin *psbt.PInput) (Input, error) {
	if len(txIn.SignatureScript) != 0 || len(txIn.Witness) != 0 {
		return Input{}, fmt.Errorf("bitcoin: input %d is already signed in the unsigned transaction", i)
	}
	op := txIn.PreviousOutPoint
	utxo := pin.WitnessUtxo
	if utxo == nil {
		return Input{}, fmt.Errorf("bitcoin: input %d (spending %v) has no witness UTXO: the PSBT must give the amount and script of the output it spends", i, op)
	}
	if utxo.Value < 0 || utxo.Value > btcutil.MaxSatoshi {
		return Input{}, fmt.Errorf("bitcoin: input %d: amount %d sat is out of range", i, utxo.Value)
	}
	k, ours := w.byScript[string(utxo.PkScript)]
	if !ours {
		return Input{}, fmt.Errorf("bitcoin: input %d spends %v, which is not a P2WPKH output of this wallet's keys", i, op)
	}

	switch prev := pin.NonWitnessUtxo; {
	case prev == nil && !w.allowWitnessUTXOOnly:
		return Input{}, fmt.Errorf("bitcoin: input %d (spending %v) has no previous transaction (non-witness UTXO): without it its amount is unproven", i, op)
	case prev != nil:
		if h := prev.TxHash(); h != op.Hash {
			return Input{}, fmt.Errorf("bitcoin: input %d: its previous transaction hashes to %v, not to the txid it spends (%v)", i, h, op.Hash)
		}
		if uint64(op.Index) >= uint64(len(prev.TxOut)) {
			return Input{}, fmt.Errorf("bitcoin: input %d spends output %d of a transaction with %d outputs", i, op.Index, len(prev.TxOut))
		}
		if actual := prev.TxOut[op.Index]; actual.Value != utxo.Value || !bytes.Equal(actual.PkScript, utxo.PkScript) {
			return Input{}, fmt.Errorf("bitcoin: input %d: the witness UTXO (%d sat) is not the output its previous transaction has (%d sat, script %x)", i, utxo.Value, actual.Value, actual.PkScript)
		}
	}

	if pin.SighashType != 0 && pin.SighashType != txscript.SigHashAll {
		return Input{}, fmt.Errorf("bitcoin: input %d asks for sighash type %s; only SIGHASH_ALL is signed", i, sighashName(pin.SighashType))
	}
	switch {
	case len(pin.PartialSigs) != 0 || pin.FinalScriptSig != nil || pin.FinalScriptWitness != nil ||
		pin.TaprootKeySpendSig != nil || len(pin.TaprootScriptSpendSig) != 0:
		return Input{}, fmt.Errorf("bitcoin: input %d already carries signatures or final scripts", i)
	case pin.RedeemScript != nil || pin.WitnessScript != nil:
		return Input{}, fmt.Errorf("bitcoin: input %d has a redeem or witness script, which a P2WPKH input does not take", i)
	}
	return Input{
		OutPoint:  op,
		Amount:    btcutil.Amount(utxo.Value),
		Sequence:  txIn.Sequence,
		PublicKey: bytes.Clone(w.keys[k].PublicKey),
	}, nil
}

// output checks output j and returns its summary.
func (w *Wallet) output(j int, txOut *wire.TxOut, pout *psbt.POutput, params *chaincfg.Params) (Output, error) {
	if txOut.Value < 0 || txOut.Value > btcutil.MaxSatoshi {
		return Output{}, fmt.Errorf("bitcoin: output %d: amount %d sat is out of range", j, txOut.Value)
	}
	addr, err := outputAddress(txOut.PkScript, params)
	if err != nil {
		return Output{}, fmt.Errorf("bitcoin: output %d: %w", j, err)
	}
	out := Output{
		Amount:  btcutil.Amount(txOut.Value),
		Script:  bytes.Clone(txOut.PkScript),
		Address: addr,
		Dust:    txOut.Value < dustThreshold(txOut.PkScript),
	}
	change, ours := w.byScript[string(txOut.PkScript)]
	if ours {
		out.Change, out.PublicKey = true, bytes.Clone(w.keys[change].PublicKey)
	}
	// The PSBT may say which keys an output pays (for a wallet to
	// recognise its change). That is a claim, and the script decides; but
	// a claim that names one of our keys for an output that does not pay
	// it is either a bug or an attempt to pass a payment off as change.
	claims := make([][]byte, 0, len(pout.Bip32Derivation)+len(pout.TaprootBip32Derivation)+1)
	for _, d := range pout.Bip32Derivation {
		claims = append(claims, d.PubKey)
	}
	for _, d := range pout.TaprootBip32Derivation {
		claims = append(claims, d.XOnlyPubKey)
	}
	if pout.TaprootInternalKey != nil {
		claims = append(claims, pout.TaprootInternalKey)
	}
	for _, pub := range claims {
		if k, named := w.keyForPublicKey(pub); named && (!ours || k != change) {
			return Output{}, fmt.Errorf("bitcoin: output %d claims to pay wallet key %d (%x), but its script pays %s", j, k, w.keys[k].PublicKey, addr)
		}
	}
	return out, nil
}

// outputAddress returns the address that pkScript pays on the network, if
// it is one of the standard kinds with an address.
func outputAddress(pkScript []byte, params *chaincfg.Params) (string, error) {
	class := txscript.GetScriptClass(pkScript)
	switch class {
	case txscript.PubKeyHashTy, txscript.ScriptHashTy, txscript.WitnessV0PubKeyHashTy,
		txscript.WitnessV0ScriptHashTy, txscript.WitnessV1TaprootTy:
	case txscript.NullDataTy:
		return "", errors.New("OP_RETURN data outputs are not accepted")
	default:
		return "", fmt.Errorf("its script (%s) has no standard address; only P2PKH, P2SH, P2WPKH, P2WSH and P2TR outputs are accepted", class)
	}
	_, addrs, _, err := txscript.ExtractPkScriptAddrs(pkScript, params)
	if err != nil || len(addrs) != 1 {
		return "", fmt.Errorf("no address for its %s script", class)
	}
	// The address must give back exactly this script.
	back, err := txscript.PayToAddrScript(addrs[0])
	if err != nil || !bytes.Equal(back, pkScript) {
		return "", fmt.Errorf("its %s script is not in its standard form", class)
	}
	return addrs[0].EncodeAddress(), nil
}

// sighashName names a sighash type for error messages.
func sighashName(t txscript.SigHashType) string {
	base := map[txscript.SigHashType]string{
		txscript.SigHashAll:    "SIGHASH_ALL",
		txscript.SigHashNone:   "SIGHASH_NONE",
		txscript.SigHashSingle: "SIGHASH_SINGLE",
	}[t&^txscript.SigHashAnyOneCanPay]
	switch {
	case base == "":
		return fmt.Sprintf("0x%x", uint32(t))
	case t&txscript.SigHashAnyOneCanPay != 0 && t&^(txscript.SigHashAnyOneCanPay|3) == 0:
		return fmt.Sprintf("%s|SIGHASH_ANYONECANPAY (0x%x)", base, uint32(t))
	case t&^3 == 0:
		return fmt.Sprintf("%s (0x%x)", base, uint32(t))
	}
	return fmt.Sprintf("0x%x", uint32(t))
}
