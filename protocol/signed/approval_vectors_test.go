package signed

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"flag"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/opencustodynet/opencustody/protocol/pb"
)

var updateApproval = flag.Bool("update-approval", false, "rewrite firmware-spec/vectors/approval.json from the definitions in approval_vectors_test.go")

const approvalVectorsPath = "../../firmware-spec/vectors/approval.json"

// The layout of firmware-spec/vectors/approval.json; see
// firmware-spec/approval.md, "Test vectors".
type approvalFile struct {
	Description  string              `json:"description"`
	Conventions  []string            `json:"conventions"`
	Prompts      []promptVector      `json:"prompts"`
	Approvals    []approvalVector    `json:"approvals"`
	DeviceChecks []deviceCheckVector `json:"device_checks"`
}

type keyVector struct {
	Algorithm  string   `json:"algorithm"`
	PrivateKey hexBytes `json:"private_key"`
	PublicKey  hexBytes `json:"public_key"`
}

type fieldVector struct {
	Label string `json:"label"`
	Value string `json:"value"`
}

type documentVector struct {
	Title string `json:"title"`
	Body  string `json:"body"`
}

type promptVector struct {
	Name           string         `json:"name"`
	HSMKey         keyVector      `json:"hsm_key"`
	HSMFingerprint string         `json:"hsm_fingerprint"`
	Kind           uint8          `json:"kind"`
	RequestID      string         `json:"request_id"`
	DeviceID       string         `json:"device_id"`
	Nonce          hexBytes       `json:"nonce"`
	NotAfter       int64          `json:"not_after"`
	Title          string         `json:"title"`
	Fields         []fieldVector  `json:"fields"`
	Payload        hexBytes       `json:"payload"`
	Statement      hexBytes       `json:"statement"`
	Digest         hexBytes       `json:"digest"`
	Signature      hexBytes       `json:"signature"`
	Deterministic  bool           `json:"deterministic"`
	Encoded        hexBytes       `json:"encoded"`
	Document       documentVector `json:"document"`
}

type approvalVector struct {
	Name          string    `json:"name"`
	Prompt        string    `json:"prompt"`
	DeviceKey     keyVector `json:"device_key"`
	DeviceID      string    `json:"device_id"`
	PromptDigest  hexBytes  `json:"prompt_digest"`
	Nonce         hexBytes  `json:"nonce"`
	Decision      uint8     `json:"decision"`
	Counter       uint64    `json:"counter"`
	Statement     hexBytes  `json:"statement"`
	Digest        hexBytes  `json:"digest"`
	Signature     hexBytes  `json:"signature"`
	Deterministic bool      `json:"deterministic"`
	Encoded       hexBytes  `json:"encoded"`
}

type deviceCheckVector struct {
	Name            string   `json:"name"`
	DeviceID        string   `json:"device_id"`
	PinnedAlgorithm string   `json:"pinned_hsm_algorithm"`
	PinnedKey       hexBytes `json:"pinned_hsm_key"`
	Prompt          hexBytes `json:"prompt"`
	Result          string   `json:"result"`
}

// Results of a device's checks of a received prompt
// (firmware-spec/approval.md §5).
const (
	checkShow         = "show"
	checkMalformed    = "malformed"
	checkBadSignature = "bad_signature"
	checkWrongDevice  = "wrong_device"
	checkNotShowable  = "not_showable"
)

// Vector keys: 32 bytes repeated, as the Ed25519 seed or the ECDSA scalar.
var (
	vectorHSMKeyByte   = byte(0x48) // 'H'
	vectorOtherHSMByte = byte(0x49)
	vectorDeviceByte   = byte(0x44) // 'D'
)

// vectorSummary is the payload of the transfer prompts: the canonical
// summary of hsm/bitcoin's test fixture (hsm/bitcoin/testdata/summary_v1.hex),
// two coins paying 1.2 BTC to a foreign address and 0.2999 BTC of change.
const vectorSummaryHex = "4f70656e437573746f647920626974636f696e2073756d6d6172792076310005" +
	"5fa00a9fa25fa4fdb75bd10e8b4979421b44ac774f09a1f38daff10904dffdb5" +
	"000000020000000000000002d7438774150462e2cb1eaf3a0185ddb8aa32fa17" +
	"c09a6e7da58b83ab4a02c6bb00000001fffffffd0000000005f5e10021035ff4" +
	"ca76c0182ee01e1570b90fcb1d901de2362809d5d70921839266992d339bebee" +
	"d019f2ea9081d58bf5d90a870e56cfb3590947b1a002ee9e28edefd6abed0000" +
	"0000fffffffd0000000002faf08021032ea911c3d3a9904ff1263494016bfdfe" +
	"9a01306f3164e2c0a0dfafda7ede1181000000020000000007270e0000160014" +
	"e8237f26a2b27c3322bd8822a1f185294adea9a92a7362317161713368376634" +
	"7a6b663772786734613371333272757639393939646132646668613566673600" +
	"000000000001c99c7000160014d426c6e4d0cd59e484aa43107bee0e3db3d0fb" +
	"e02a7362317136736e7664657873653476376670393267766738686d7377386b" +
	"656170376c716b7a7078686a0121026453847cdbfcaa84e6a64e2baab10878fd" +
	"78d3218251ce8cc65828150140f3160000000008f0d1800000000007270e0000" +
	"00000001c99c700000000000002710000000000000034200000000000000d100" +
	"0000000000bae600"

// vectorFields are the fields the core builds for that summary, wallet
// "treasury", request vectorRequestID and expiry vectorNotAfter
// (hsm/core.TransferFields; its tests check these against this file).
var vectorFields = []Field{
	{"Wallet", "treasury"},
	{"Request", vectorRequestID},
	{"Network", "simnet"},
	{"Send", "1.20000000 BTC (120,000,000 sat)"},
	{"To", "sb1qaq3h7f4zkf7rxg4a3q32ruv9999da2dfha5fg6"},
	{"Change", "0.29990000 BTC (29,990,000 sat)"},
	{"Change to", "sb1q6snvdexse4v7fp92gvg8hmsw8keap7lqkzpxhj"},
	{"Fee", "0.00010000 BTC (10,000 sat)"},
	{"Fee rate", "47.846 sat/vB"},
	{"Expires", "2027-01-15 08:00:00 UTC"},
}

const (
	vectorRequestID = "5f2d0c9a3e71b846"
	vectorNotAfter  = 1_800_000_000
)

func vectorKey(t *testing.T, alg pb.Algorithm, b byte) *SoftwareKey {
	t.Helper()
	k, err := SoftwareKeyFromBytes(alg, bytes.Repeat([]byte{b}, 32))
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func keyVectorOf(k *SoftwareKey) keyVector {
	return keyVector{Algorithm: k.Algorithm().String(), PrivateKey: k.Bytes(), PublicKey: k.PublicKey()}
}

func deterministic(alg pb.Algorithm) bool { return alg != pb.Algorithm_ALGORITHM_ECDSA_P256 }

// promptDocument is the screen document of a prompt
// (firmware-spec/approval.md §4).
func promptDocument(p *Prompt) documentVector {
	lines := make([]string, len(p.Fields))
	for i, f := range p.Fields {
		lines[i] = f.Label + ": " + f.Value
	}
	return documentVector{Title: p.Title, Body: strings.Join(lines, "\n")}
}

// deviceCheck is what a device does with a prompt it received, in the
// order of firmware-spec/approval.md §5 (the page count, which needs the
// layout of device.md §7, is the emulator's to check).
func deviceCheck(b []byte, deviceID string, pinnedAlg pb.Algorithm, pinned []byte) string {
	p, err := ParsePrompt(b)
	if err != nil {
		return checkMalformed
	}
	if p.Verify(pinnedAlg, pinned) != nil {
		return checkBadSignature
	}
	if p.DeviceID != deviceID {
		return checkWrongDevice
	}
	d := promptDocument(p)
	if len(d.Title) > 21 || !printableASCII(d.Title) || !printableASCII(strings.ReplaceAll(d.Body, "\n", "")) {
		return checkNotShowable
	}
	return checkShow
}

func printableASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] > 0x7e {
			return false
		}
	}
	return true
}

func buildApprovalVectors(t *testing.T, payload []byte, known map[string][]byte) *approvalFile {
	t.Helper()
	hsmEd := reusingSigner{vectorKey(t, pb.Algorithm_ALGORITHM_ED25519, vectorHSMKeyByte), known}
	hsmP256 := reusingSigner{vectorKey(t, pb.Algorithm_ALGORITHM_ECDSA_P256, vectorHSMKeyByte), known}
	otherHSM := vectorKey(t, pb.Algorithm_ALGORITHM_ED25519, vectorOtherHSMByte)
	devK1 := reusingSigner{vectorKey(t, pb.Algorithm_ALGORITHM_ECDSA_SECP256K1, vectorDeviceByte), known}
	devP256 := reusingSigner{vectorKey(t, pb.Algorithm_ALGORITHM_ECDSA_P256, vectorDeviceByte), known}
	devEd := reusingSigner{vectorKey(t, pb.Algorithm_ALGORITHM_ED25519, vectorDeviceByte), known}

	f := &approvalFile{
		Description: "Prompts and approvals (firmware-spec/approval.md): prompts the HSM identity key signs for one device, " +
			"the devices' signed answers, and what a device must do with prompts it receives. " +
			"The transfer prompts carry the canonical summary of hsm/bitcoin's test transaction and the fields the core builds for it.",
		Conventions: []string{
			"Byte strings are lowercase hex; integers in statements are big-endian.",
			"Private keys are 32 bytes (the Ed25519 seed or the ECDSA scalar): 0x48 repeated for the HSM keys, 0x44 repeated for the device keys, 0x49 repeated for the other HSM key of device_checks.",
			"Ed25519 and secp256k1 (RFC 6979) signatures are deterministic (deterministic: true) and must be reproduced exactly; P-256 signatures are randomized and must verify.",
			"prompts[].encoded is what PromptRequest.prompt carries: u16 length || statement || u16 length || signature. approvals[].encoded is what PromptAnswer.approval carries, in the same layout.",
			"prompts[].document is what the device lays out into pages (approval.md §4, device.md §7): the title, and one paragraph \"label: value\" per field.",
			"approvals[].prompt names the prompt answered; decision 1 is approve, 2 is reject.",
			"device_checks: a device whose id is device_id, in a channel with the core whose pinned HSM key is pinned_hsm_key, receives prompt in a PromptRequest. result \"show\": it answers ButtonRequest{BUTTON_REQUEST_APPROVAL} and shows the document; otherwise result names the check of approval.md §5 that failed, answered Failure{FAILURE_DATA_ERROR}.",
		},
	}

	mkPrompt := func(name string, hsm reusingSigner, dev Signer, nonceByte byte, fields []Field, title string) (*Prompt, promptVector) {
		p := &Prompt{Kind: PromptTransaction, RequestID: vectorRequestID, DeviceID: DeviceID(dev.PublicKey()),
			NotAfter: time.Unix(vectorNotAfter, 0), Title: title, Fields: fields, Payload: payload}
		copy(p.Nonce[:], bytes.Repeat([]byte{nonceByte}, NonceSize))
		if err := p.Sign(hsm); err != nil {
			t.Fatal(err)
		}
		v := promptVector{
			Name: name, HSMKey: keyVectorOf(hsm.SoftwareKey), HSMFingerprint: Fingerprint(hsm.Algorithm(), hsm.PublicKey()),
			Kind: uint8(p.Kind), RequestID: p.RequestID, DeviceID: p.DeviceID, Nonce: p.Nonce[:], NotAfter: vectorNotAfter,
			Title: p.Title, Payload: p.Payload, Statement: p.Statement(), Digest: p.Digest(), Signature: p.Signature,
			Deterministic: deterministic(hsm.Algorithm()), Encoded: p.Marshal(), Document: promptDocument(p),
		}
		for _, fl := range p.Fields {
			v.Fields = append(v.Fields, fieldVector(fl))
		}
		return p, v
	}
	p1, v1 := mkPrompt("transfer, HSM Ed25519, for the secp256k1 device", hsmEd, devK1, 0x6e, vectorFields, "Approve transfer")
	p2, v2 := mkPrompt("transfer, HSM ECDSA P-256, for the P-256 device", hsmP256, devP256, 0x6f, vectorFields, "Approve transfer")
	p3, v3 := mkPrompt("transfer, HSM Ed25519, for the Ed25519 device", hsmEd, devEd, 0x70, vectorFields, "Approve transfer")
	f.Prompts = []promptVector{v1, v2, v3}

	mkApproval := func(name string, pv promptVector, p *Prompt, dev reusingSigner, dec Decision, counter uint64) approvalVector {
		a := &Approval{Nonce: p.Nonce, Decision: dec, Counter: counter, DeviceID: DeviceID(dev.PublicKey())}
		copy(a.PromptDigest[:], p.Digest())
		if err := a.Sign(dev); err != nil {
			t.Fatal(err)
		}
		return approvalVector{
			Name: name, Prompt: pv.Name, DeviceKey: keyVectorOf(dev.SoftwareKey), DeviceID: a.DeviceID,
			PromptDigest: a.PromptDigest[:], Nonce: a.Nonce[:], Decision: uint8(dec), Counter: counter,
			Statement: a.Statement(), Digest: a.Digest(), Signature: a.Signature,
			Deterministic: deterministic(dev.Algorithm()), Encoded: a.Marshal(),
		}
	}
	f.Approvals = []approvalVector{
		mkApproval("approve, secp256k1 device, counter 1", v1, p1, devK1, Approve, 1),
		mkApproval("reject, secp256k1 device, counter 2", v1, p1, devK1, Reject, 2),
		mkApproval("approve, P-256 device, counter 7", v2, p2, devP256, Approve, 7),
		mkApproval("approve, Ed25519 device, counter 2^64-1", v3, p3, devEd, Approve, 1<<64-1),
	}

	// What the secp256k1 device, which pinned the Ed25519 HSM key, does
	// with prompts it receives.
	resign := func(mutate func(*Prompt), signer Signer) []byte {
		p, err := ParsePrompt(p1.Marshal())
		if err != nil {
			t.Fatal(err)
		}
		mutate(p)
		if err := p.Sign(signer); err != nil {
			t.Fatal(err)
		}
		return p.Marshal()
	}
	flipped := bytes.Clone(p1.Marshal())
	i := bytes.Index(flipped, []byte("1.20000000"))
	flipped[i] = '5' // "5.20000000 BTC", the signature unchanged
	checks := []struct {
		name   string
		prompt []byte
	}{
		{"valid", p1.Marshal()},
		{"signed by another HSM key", resign(func(*Prompt) {}, otherHSM)},
		{"an amount changed after signing", flipped},
		{"for another device", resign(func(p *Prompt) { p.DeviceID = DeviceID(devEd.PublicKey()) }, hsmEd)},
		{"another HSM's prompt for another device", p2.Marshal()},
		{"title longer than the screen's 21 columns", resign(func(p *Prompt) { p.Title = "Approve this transfer!" }, hsmEd)},
		{"a character outside printable ASCII", resign(func(p *Prompt) { p.Fields[0].Value = "tr\u00e9sor" }, hsmEd)},
		{"truncated", p1.Marshal()[:len(p1.Marshal())-1]},
		{"a byte after the signature", append(p1.Marshal(), 0)},
		{"an approval instead of a prompt", f.Approvals[0].Encoded},
	}
	for _, c := range checks {
		f.DeviceChecks = append(f.DeviceChecks, deviceCheckVector{
			Name: c.name, DeviceID: v1.DeviceID, PinnedAlgorithm: hsmEd.Algorithm().String(), PinnedKey: hsmEd.PublicKey(),
			Prompt: c.prompt, Result: deviceCheck(c.prompt, v1.DeviceID, hsmEd.Algorithm(), hsmEd.PublicKey()),
		})
	}
	return f
}

// knownApprovalSignatures collects the signatures in an existing vectors
// file, so that regenerating keeps the randomized P-256 ones.
func knownApprovalSignatures(f *approvalFile) map[string][]byte {
	known := map[string][]byte{}
	if f == nil {
		return known
	}
	for _, p := range f.Prompts {
		known[hex.EncodeToString(p.Digest)] = p.Signature
	}
	for _, a := range f.Approvals {
		known[hex.EncodeToString(a.Digest)] = a.Signature
	}
	return known
}

func readApprovalVectors(t *testing.T) *approvalFile {
	t.Helper()
	raw, err := os.ReadFile(approvalVectorsPath)
	if err != nil {
		t.Fatal(err)
	}
	var f approvalFile
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&f); err != nil {
		t.Fatal(err)
	}
	return &f
}

func vectorPayload(t *testing.T) []byte {
	t.Helper()
	b, err := hex.DecodeString(vectorSummaryHex)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestApprovalVectors checks firmware-spec/vectors/approval.json: the file
// must be what the definitions produce (so code and spec cannot drift),
// and every vector must hold on its own. With -update-approval it rewrites
// the file first.
func TestApprovalVectors(t *testing.T) {
	payload := vectorPayload(t)
	if *updateApproval {
		var old *approvalFile
		if _, err := os.Stat(approvalVectorsPath); err == nil {
			old = readApprovalVectors(t)
		}
		if err := os.WriteFile(approvalVectorsPath, marshalVectors(t, buildApprovalVectors(t, payload, knownApprovalSignatures(old))), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	f := readApprovalVectors(t)
	raw, _ := os.ReadFile(approvalVectorsPath)
	if want := marshalVectors(t, buildApprovalVectors(t, payload, knownApprovalSignatures(f))); !bytes.Equal(raw, want) {
		t.Errorf("%s differs from the definitions (run go test -run TestApprovalVectors -update-approval)", approvalVectorsPath)
	}

	prompts := map[string]promptVector{}
	for _, v := range f.Prompts {
		prompts[v.Name] = v
		t.Run("prompt/"+v.Name, func(t *testing.T) {
			alg := pb.Algorithm(pb.Algorithm_value[v.HSMKey.Algorithm])
			k, err := SoftwareKeyFromBytes(alg, v.HSMKey.PrivateKey)
			if err != nil || !bytes.Equal(k.PublicKey(), v.HSMKey.PublicKey) || Fingerprint(alg, v.HSMKey.PublicKey) != v.HSMFingerprint {
				t.Fatalf("HSM key: %v", err)
			}
			p := &Prompt{Kind: PromptKind(v.Kind), RequestID: v.RequestID, DeviceID: v.DeviceID, NotAfter: time.Unix(v.NotAfter, 0),
				Title: v.Title, Payload: v.Payload, Signature: v.Signature}
			copy(p.Nonce[:], v.Nonce)
			for _, fl := range v.Fields {
				p.Fields = append(p.Fields, Field(fl))
			}
			if !bytes.Equal(p.Statement(), v.Statement) || !bytes.Equal(p.Digest(), v.Digest) || !bytes.Equal(p.Marshal(), v.Encoded) {
				t.Fatal("statement, digest or encoding differs")
			}
			if !bytes.HasPrefix(v.Statement, []byte(PromptLabel)) || len(v.Nonce) != NonceSize {
				t.Fatal("label or nonce size")
			}
			if err := p.Verify(alg, v.HSMKey.PublicKey); err != nil {
				t.Fatal(err)
			}
			if v.Deterministic {
				if sig, _ := k.SignDigest(v.Digest); !bytes.Equal(sig, v.Signature) {
					t.Fatalf("signature not reproduced:\n got %x\nwant %x", sig, v.Signature)
				}
			}
			parsed, err := ParsePrompt(v.Encoded)
			if err != nil || !bytes.Equal(parsed.Marshal(), v.Encoded) {
				t.Fatalf("parse: %v", err)
			}
			if promptDocument(parsed) != v.Document {
				t.Fatalf("document %+v", v.Document)
			}
		})
	}
	for _, v := range f.Approvals {
		t.Run("approval/"+v.Name, func(t *testing.T) {
			pv, ok := prompts[v.Prompt]
			if !ok {
				t.Fatalf("no prompt %q", v.Prompt)
			}
			alg := pb.Algorithm(pb.Algorithm_value[v.DeviceKey.Algorithm])
			k, err := SoftwareKeyFromBytes(alg, v.DeviceKey.PrivateKey)
			if err != nil || !bytes.Equal(k.PublicKey(), v.DeviceKey.PublicKey) || DeviceID(v.DeviceKey.PublicKey) != v.DeviceID {
				t.Fatalf("device key: %v", err)
			}
			if v.DeviceID != pv.DeviceID || !bytes.Equal(v.PromptDigest, pv.Digest) || !bytes.Equal(v.Nonce, pv.Nonce) {
				t.Fatal("the approval does not answer its prompt")
			}
			a := &Approval{Decision: Decision(v.Decision), Counter: v.Counter, DeviceID: v.DeviceID, Signature: v.Signature}
			copy(a.PromptDigest[:], v.PromptDigest)
			copy(a.Nonce[:], v.Nonce)
			if !bytes.Equal(a.Statement(), v.Statement) || !bytes.Equal(a.Digest(), v.Digest) || !bytes.Equal(a.Marshal(), v.Encoded) {
				t.Fatal("statement, digest or encoding differs")
			}
			if err := a.Verify(alg, v.DeviceKey.PublicKey); err != nil {
				t.Fatal(err)
			}
			if v.Deterministic {
				if sig, _ := k.SignDigest(v.Digest); !bytes.Equal(sig, v.Signature) {
					t.Fatalf("signature not reproduced:\n got %x\nwant %x", sig, v.Signature)
				}
			}
			parsed, err := ParseApproval(v.Encoded)
			if err != nil || !bytes.Equal(parsed.Marshal(), v.Encoded) {
				t.Fatalf("parse: %v", err)
			}
		})
	}
	results := map[string]bool{}
	for _, v := range f.DeviceChecks {
		t.Run("device check/"+v.Name, func(t *testing.T) {
			if v.Result == checkBadSignature || v.Result == checkWrongDevice || v.Result == checkNotShowable {
				// So that only the check named, not parsing, refuses it.
				if _, err := ParsePrompt(v.Prompt); err != nil {
					t.Fatalf("the prompt does not parse: %v", err)
				}
			}
			got := deviceCheck(v.Prompt, v.DeviceID, pb.Algorithm(pb.Algorithm_value[v.PinnedAlgorithm]), v.PinnedKey)
			if got != v.Result {
				t.Fatalf("device check %q, vector says %q", got, v.Result)
			}
			results[got] = true
		})
	}
	for _, r := range []string{checkShow, checkMalformed, checkBadSignature, checkWrongDevice, checkNotShowable} {
		if !results[r] {
			t.Errorf("no device check has result %q", r)
		}
	}
}
