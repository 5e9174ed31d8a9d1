package emulator

import (
	"encoding/hex"
	"fmt"
	"strings"

	"google.golang.org/protobuf/proto"

	"github.com/opencustodynet/opencustody/protocol/pb"
	"github.com/opencustodynet/opencustody/protocol/signed"
)

// PromptDocument is how a prompt is shown (firmware-spec/approval.md §4):
// its title on the title row, and one paragraph "label: value" per field,
// in the prompt's order.
func PromptDocument(p *signed.Prompt) Document {
	lines := make([]string, len(p.Fields))
	for i, f := range p.Fields {
		lines[i] = f.Label + ": " + f.Value
	}
	return Document{Title: p.Title, Body: strings.Join(lines, "\n")}
}

// handlePrompt answers a PromptRequest that came through the full channel
// sc (firmware-spec/approval.md §5): the prompt is checked and, if it
// passes, the device asks its user. A refused prompt is answered
// Failure{FAILURE_DATA_ERROR} and nothing is shown.
func (d *Device) handlePrompt(cid uint32, sc *secureChannel, m *pb.PromptRequest) {
	refuse := func(check, text string) {
		d.log.Info("device: prompt refused", "cid", fmt.Sprintf("%08x", cid), "check", check)
		d.answer(cid, sc, &pb.Failure{Code: pb.FailureCode_FAILURE_DATA_ERROR, Message: text})
	}
	p, err := signed.ParsePrompt(m.GetPrompt())
	if err != nil {
		refuse("malformed", "malformed prompt")
		return
	}
	pin := d.store.Pin()
	if pin == nil || (p.Verify(pin.Algorithm, pin.PublicKey) != nil && d.quirk != QuirkAcceptUnsigned) {
		refuse("bad_signature", "the prompt is not signed by the HSM this device is paired with")
		return
	}
	id := d.store.Identity()
	if p.DeviceID != id.DeviceID() && d.quirk != QuirkAcceptOtherDevice {
		refuse("wrong_device", "the prompt is for another device")
		return
	}
	pages, err := Layout(PromptDocument(p))
	if err != nil {
		refuse("not_showable", "the prompt cannot be shown: "+strings.TrimPrefix(err.Error(), "emulator: "))
		return
	}
	// Without a clock, a prompt that expired before the newest credential
	// of the HSM was issued has certainly expired.
	if newest := d.store.Newest(); p.NotAfter.Before(newest) && d.quirk != QuirkIgnoreExpiry {
		refuse("expired", "the prompt has expired")
		return
	}
	// A prompt is answered once: a relay that sends it again gets nothing
	// signed (approval.md §5.2, replayed).
	if d.store.Answered(p.Nonce) && d.quirk != QuirkAcceptReplayed {
		refuse("replayed", "this prompt was answered before")
		return
	}
	digest := [32]byte(p.Digest())
	d.op = &operation{
		cid: cid, state: opWaitAck, title: "prompt", pages: pages, secure: sc,
		fields: map[string]string{FieldRequestID: p.RequestID},
		decide: func(r opResult) proto.Message {
			dec := signed.Approve
			if r == opRejected {
				dec = signed.Reject
			}
			return d.signAnswer(digest, p.Nonce, dec)
		},
	}
	d.log.Info("device: waiting for the user", "cid", fmt.Sprintf("%08x", cid), "request", "prompt")
	d.answer(cid, sc, &pb.ButtonRequest{Code: pb.ButtonRequestCode_BUTTON_REQUEST_APPROVAL})
}

// signAnswer signs the user's decision on a prompt (approval.md §5.3): the
// counter is incremented and on disk before the answer that carries it is
// made.
func (d *Device) signAnswer(digest [32]byte, nonce [signed.NonceSize]byte, dec signed.Decision) proto.Message {
	increment := d.quirk != QuirkReuseCounter
	counter, err := d.store.nextCounter(hex.EncodeToString(nonce[:]), increment)
	if err != nil {
		d.log.Error("device: counter", "err", err)
		return &pb.Failure{Code: pb.FailureCode_FAILURE_PROCESS_ERROR, Message: "cannot write the counter; nothing was signed"}
	}
	id := d.store.Identity()
	a := &signed.Approval{PromptDigest: digest, Nonce: nonce, Decision: dec, Counter: counter, DeviceID: id.DeviceID()}
	if err := a.Sign(id.signer()); err != nil {
		d.log.Error("device: sign the answer", "err", err)
		return &pb.Failure{Code: pb.FailureCode_FAILURE_PROCESS_ERROR, Message: "cannot sign the answer"}
	}
	d.log.Info("device: prompt answered", "decision", dec.String(), "counter", counter)
	return &pb.PromptAnswer{Approval: a.Marshal()}
}
