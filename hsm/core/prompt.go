package core

import (
	"fmt"
	"strconv"
	"time"

	"github.com/btcsuite/btcd/btcutil"
	"github.com/btcsuite/btcd/txscript"

	"github.com/opencustodynet/opencustody/hsm/bitcoin"
	"github.com/opencustodynet/opencustody/protocol"
	"github.com/opencustodynet/opencustody/protocol/pb"
	"github.com/opencustodynet/opencustody/protocol/signed"
)

// TransferTitle is the title of a transfer prompt. Devices show it on the
// title row, which holds 21 characters.
const TransferTitle = "Approve transfer"

// TransferFields returns the fields a device shows for a transfer out of
// wallet, in order (firmware-spec/approval.md §4):
//
//	Wallet      the wallet's name
//	Request     the request id
//	Network     the network's name ("mainnet", "simnet", …)
//	Send, To    for each output that is not change: amount and address
//	Change, Change to   for each change output: amount and address
//	Total sent  the sum of the outputs that are not change, if several
//	Fee         the fee
//	Fee rate    the fee rate, at least what the signed transaction pays
//	Warning     if the fee rate is very high
//	Lock time   the lock time, if not zero: a block height or a UTC time
//	Expires     when the request expires, UTC
//
// Outputs come in transaction order. Amounts read "1.20000000 BTC
// (120,000,000 sat)": exact, never rounded; a dust output's amount ends
// with a warning. Every value is derived from the summary (which
// [bitcoin.Analyse] derived from the transaction and the wallet alone) and
// the wallet's own record: nothing a submitter wrote reaches the screen.
// Every character is printable ASCII.
func TransferFields(wallet, requestID string, s *bitcoin.Summary, expires time.Time) []signed.Field {
	f := []signed.Field{
		{Label: "Wallet", Value: wallet},
		{Label: "Request", Value: requestID},
		{Label: "Network", Value: s.Network.String()},
	}
	sent := 0
	for _, o := range s.Outputs {
		amount := FormatAmount(o.Amount)
		if o.Dust {
			amount += " - dust: nodes will not relay it"
		}
		if o.Change {
			f = append(f, signed.Field{Label: "Change", Value: amount}, signed.Field{Label: "Change to", Value: o.Address})
			continue
		}
		sent++
		f = append(f, signed.Field{Label: "Send", Value: amount}, signed.Field{Label: "To", Value: o.Address})
	}
	if sent > 1 {
		f = append(f, signed.Field{Label: "Total sent", Value: FormatAmount(s.SentTotal)})
	}
	f = append(f,
		signed.Field{Label: "Fee", Value: FormatAmount(s.Fee)},
		signed.Field{Label: "Fee rate", Value: s.FeeRate.String()})
	if s.HighFee {
		f = append(f, signed.Field{Label: "Warning", Value: "the fee rate is very high"})
	}
	if s.LockTime != 0 {
		f = append(f, signed.Field{Label: "Lock time", Value: formatLockTime(s.LockTime)})
	}
	return append(f, signed.Field{Label: "Expires", Value: expires.UTC().Format("2006-01-02 15:04:05 UTC")})
}

// FormatAmount writes an amount exactly, in bitcoin with eight decimals
// and in satoshis with thousands separators: "1.20000000 BTC (120,000,000
// sat)".
func FormatAmount(a btcutil.Amount) string {
	v, sign := int64(a), ""
	if v < 0 {
		v, sign = -v, "-"
	}
	return fmt.Sprintf("%s%d.%08d BTC (%s%s sat)", sign, v/btcutil.SatoshiPerBitcoin, v%btcutil.SatoshiPerBitcoin, sign, groupThousands(v))
}

func groupThousands(v int64) string {
	s := strconv.FormatInt(v, 10)
	out := make([]byte, 0, len(s)+len(s)/3)
	for i := range len(s) {
		if i > 0 && (len(s)-i)%3 == 0 {
			out = append(out, ',')
		}
		out = append(out, s[i])
	}
	return string(out)
}

// formatLockTime writes a lock time as consensus reads it: below
// 500,000,000 a block height, otherwise a Unix time.
func formatLockTime(lt uint32) string {
	if lt < txscript.LockTimeThreshold {
		return fmt.Sprintf("block %d", lt)
	}
	return time.Unix(int64(lt), 0).UTC().Format("2006-01-02 15:04:05 UTC")
}

// sealOverhead is what a prompt's envelope gains inside the channel: the
// Noise AEAD tag.
const sealOverhead = 16

// checkFitsChannel reports whether an encoded prompt fits one message of
// the secure channel (firmware-spec/framing.md: an envelope is at most
// protocol.MaxEnvelopeSize bytes, and the PromptRequest envelope travels
// encrypted inside a SecureMessage envelope).
func checkFitsChannel(prompt []byte) error {
	inner, err := protocol.EncodeEnvelope(&pb.PromptRequest{Prompt: prompt})
	if err != nil {
		return err
	}
	_, err = protocol.EncodeEnvelope(&pb.SecureMessage{Ciphertext: make([]byte, len(inner)+sealOverhead)})
	return err
}
