package core

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/btcsuite/btcd/btcutil"
	"github.com/btcsuite/btcd/btcutil/psbt"
	"github.com/btcsuite/btcd/chaincfg"
	"github.com/btcsuite/btcd/txscript"
	"github.com/btcsuite/btcd/wire"

	"github.com/opencustodynet/opencustody/emulator"
	"github.com/opencustodynet/opencustody/hsm/bitcoin"
	"github.com/opencustodynet/opencustody/protocol/signed"
)

// document is what a device shows for a prompt (firmware-spec/approval.md
// §4): the title, and one paragraph "label: value" per field.
func document(p *signed.Prompt) emulator.Document {
	lines := make([]string, len(p.Fields))
	for i, f := range p.Fields {
		lines[i] = f.Label + ": " + f.Value
	}
	return emulator.Document{Title: p.Title, Body: strings.Join(lines, "\n")}
}

func addressOf(t *testing.T, script []byte) string {
	t.Helper()
	_, addrs, _, err := txscript.ExtractPkScriptAddrs(script, &chaincfg.SimNetParams)
	if err != nil || len(addrs) != 1 {
		t.Fatalf("script %x: %v", script, err)
	}
	return addrs[0].EncodeAddress()
}

func TestTransferPromptFields(t *testing.T) {
	w := newWorld(t)
	sub := w.submit(w.transfer("f"))
	p := w.promptFor(sub, "bob")
	sum, err := sub.Request.ParsedSummary()
	if err != nil {
		t.Fatal(err)
	}
	change, _ := w.wallet.Keys[1].Address(bitcoin.Simnet)
	want := []signed.Field{
		{Label: "Wallet", Value: "treasury"},
		{Label: "Request", Value: sub.Request.ID},
		{Label: "Network", Value: "simnet"},
		{Label: "Send", Value: "1.20000000 BTC (120,000,000 sat)"},
		{Label: "To", Value: addressOf(t, foreignScript("destination"))},
		{Label: "Change", Value: "0.29990000 BTC (29,990,000 sat)"},
		{Label: "Change to", Value: change},
		{Label: "Fee", Value: "0.00010000 BTC (10,000 sat)"},
		{Label: "Fee rate", Value: sum.FeeRate.String()},
		{Label: "Expires", Value: "2026-03-01 12:30:00 UTC"},
	}
	if fmt.Sprint(p.Fields) != fmt.Sprint(want) {
		t.Fatalf("fields\n got %v\nwant %v", p.Fields, want)
	}
	if !regexp.MustCompile(`^[0-9]+\.[0-9]{3} sat/vB$`).MatchString(sum.FeeRate.String()) {
		t.Fatalf("fee rate %q", sum.FeeRate)
	}
	if p.Title != TransferTitle || p.Kind != signed.PromptTransaction || !bytes.Equal(p.Payload, sub.Request.Summary) ||
		!p.NotAfter.Equal(sub.Request.ExpiresAt) || p.RequestID != sub.Request.ID {
		t.Fatalf("prompt %+v", p)
	}
	// Each device's prompt is its own: same fields, another device id and
	// nonce, so another digest.
	q := w.promptFor(sub, "alice")
	if q.DeviceID == p.DeviceID || q.Nonce == p.Nonce || bytes.Equal(q.Digest(), p.Digest()) || fmt.Sprint(q.Fields) != fmt.Sprint(p.Fields) {
		t.Fatal("prompts of two devices are not distinct")
	}
	if err := p.Verify(w.identity.Algorithm(), w.identity.PublicKey()); err != nil {
		t.Fatalf("prompt not signed by the HSM identity key: %v", err)
	}
	pages, err := emulator.Layout(document(p))
	if err != nil || len(pages) < 2 {
		t.Fatalf("layout: %d pages, %v", len(pages), err)
	}
}

func TestFormatAmount(t *testing.T) {
	for sat, want := range map[int64]string{
		0:                     "0.00000000 BTC (0 sat)",
		1:                     "0.00000001 BTC (1 sat)",
		999:                   "0.00000999 BTC (999 sat)",
		1000:                  "0.00001000 BTC (1,000 sat)",
		123456789:             "1.23456789 BTC (123,456,789 sat)",
		2_100_000_000_000_000: "21000000.00000000 BTC (2,100,000,000,000,000 sat)",
		-150:                  "-0.00000150 BTC (-150 sat)",
	} {
		if got := FormatAmount(btcutil.Amount(sat)); got != want {
			t.Errorf("%d: %q, want %q", sat, got, want)
		}
	}
}

// A PSBT carries free text in places (proprietary and unknown fields); none
// of it may reach a screen. Every prompt value is one the core derives.
func TestNoSubmitterTextReachesTheScreen(t *testing.T) {
	w := newWorld(t)
	raw := w.transfer("t")
	p, err := psbt.NewFromRawBytes(bytes.NewReader(raw), false)
	if err != nil {
		t.Fatal(err)
	}
	const text = "PAY-THE-ATTACKER"
	p.Unknowns = append(p.Unknowns, &psbt.Unknown{Key: []byte{0xfc, 'x'}, Value: []byte(text)})
	p.Outputs[0].Unknowns = append(p.Outputs[0].Unknowns, &psbt.Unknown{Key: []byte{0xfc, 'y'}, Value: []byte(text)})
	var b bytes.Buffer
	if err := p.Serialize(&b); err != nil {
		t.Fatal(err)
	}
	sub := w.submit(b.Bytes())
	for _, pr := range sub.Prompts {
		for _, f := range pr.Fields {
			if strings.Contains(f.Value, text) || strings.Contains(f.Label, text) {
				t.Fatalf("submitter text on the screen: %v", f)
			}
		}
	}
}

func p2pkhScript(h []byte) []byte {
	return append(append([]byte{txscript.OP_DUP, txscript.OP_HASH160, 20}, h[:20]...), txscript.OP_EQUALVERIFY, txscript.OP_CHECKSIG)
}

func p2trScript(h []byte) []byte { return append([]byte{txscript.OP_1, 32}, h[:32]...) }

// The largest transaction a prompt can carry (its summary fills the
// payload) still lays out within a device's 64 pages and fits one channel
// message, with the longest addresses and amounts; one output more is
// refused at submission, not on the device.
func TestLargestPromptFitsTheScreen(t *testing.T) {
	for name, script := range map[string]func([]byte) []byte{"p2pkh": p2pkhScript, "p2tr": p2trScript} {
		t.Run(name, func(t *testing.T) {
			w := newWorld(t)
			in := coin("big", 2_000_000_000_000_000, bitcoin.Key{PublicKey: w.wallet.Keys[0].PublicKey}.PkScript())
			var largest *Submitted
			for n := 12; ; n++ {
				var outs []*wire.TxOut
				for i := range n {
					h := sha256.Sum256([]byte{byte(i)})
					outs = append(outs, wire.NewTxOut(1_999_999_999_999_999/int64(n), script(h[:])))
				}
				sub, err := w.core.Submit(context.Background(), SubmitRequest{Wallet: "treasury", Initiator: "operator", PSBT: packet(t, []*wire.MsgTx{in}, outs)})
				if errors.Is(err, ErrTransactionRefused) && strings.Contains(err.Error(), "more than a prompt carries") {
					break
				}
				if err != nil {
					t.Fatalf("%d outputs: %v", n, err)
				}
				largest = sub
			}
			if largest == nil || len(largest.Request.Summary) < signed.MaxPromptPayload-150 {
				t.Fatal("no transaction near the limit was accepted")
			}
			p := largest.Prompts[0]
			pages, err := emulator.Layout(document(p))
			if err != nil {
				t.Fatalf("%d outputs: %v", len(p.Fields), err)
			}
			t.Logf("%s: %d outputs, summary %d bytes, %d fields, %d pages, prompt %d bytes",
				name, (len(p.Fields)-7)/2, len(largest.Request.Summary), len(p.Fields), len(pages), len(p.Marshal()))
		})
	}
}

// The transfer prompts of firmware-spec/vectors/approval.json show what
// the core builds: the vectors' fields are TransferFields of their payload,
// which is hsm/bitcoin's summary vector.
func TestPromptVectorsShowWhatTheCoreBuilds(t *testing.T) {
	raw, err := os.ReadFile("../../firmware-spec/vectors/approval.json")
	if err != nil {
		t.Fatal(err)
	}
	var file struct {
		Prompts []struct {
			Name      string         `json:"name"`
			RequestID string         `json:"request_id"`
			NotAfter  int64          `json:"not_after"`
			Title     string         `json:"title"`
			Fields    []signed.Field `json:"fields"`
			Payload   string         `json:"payload"`
			Encoded   string         `json:"encoded"`
		} `json:"prompts"`
	}
	if err := json.Unmarshal(raw, &file); err != nil {
		t.Fatal(err)
	}
	summary, err := os.ReadFile("../bitcoin/testdata/summary_v1.hex")
	if err != nil {
		t.Fatal(err)
	}
	if len(file.Prompts) == 0 {
		t.Fatal("no prompt vectors")
	}
	for _, v := range file.Prompts {
		if v.Payload != strings.TrimSpace(string(summary)) {
			t.Fatalf("%s: payload is not hsm/bitcoin's summary vector", v.Name)
		}
		payload, _ := hex.DecodeString(v.Payload)
		sum, err := bitcoin.ParseSummary(payload)
		if err != nil {
			t.Fatal(err)
		}
		want := TransferFields("treasury", v.RequestID, sum, time.Unix(v.NotAfter, 0))
		if fmt.Sprint(v.Fields) != fmt.Sprint(want) || v.Title != TransferTitle {
			t.Fatalf("%s: fields\n got %v\nwant %v", v.Name, v.Fields, want)
		}
		enc, _ := hex.DecodeString(v.Encoded)
		p, err := signed.ParsePrompt(enc)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := emulator.Layout(document(p)); err != nil {
			t.Fatalf("%s: %v", v.Name, err)
		}
		if err := checkFitsChannel(enc); err != nil {
			t.Fatal(err)
		}
	}
}
