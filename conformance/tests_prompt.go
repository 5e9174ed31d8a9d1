package conformance

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/opencustodynet/opencustody/emulator/debuglink"
	"github.com/opencustodynet/opencustody/protocol/pb"
	"github.com/opencustodynet/opencustody/protocol/signed"
)

// refusedPrompt sends the encoded prompt in a full session and checks
// that it is refused with Failure{FAILURE_DATA_ERROR} and nothing shown.
func refusedPrompt(t *T, what string, prompt []byte) error {
	return t.refusedInChannel(what, &pb.PromptRequest{Prompt: prompt}, pb.FailureCode_FAILURE_DATA_ERROR)
}

// askPrompt sends p in a full session, checks the ButtonRequest and sends
// ButtonAck: the device then shows p and waits for its user.
func askPrompt(t *T, p *signed.Prompt) error {
	if err := t.openChannel(t.cred); err != nil {
		return err
	}
	a, err := t.secure(&pb.PromptRequest{Prompt: p.Marshal()})
	if err != nil {
		return err
	}
	br, err := wantType[*pb.ButtonRequest]("a valid PromptRequest", a)
	if err != nil {
		return err
	}
	if br.GetCode() != pb.ButtonRequestCode_BUTTON_REQUEST_APPROVAL {
		return fmt.Errorf("PromptRequest got %s, want BUTTON_REQUEST_APPROVAL", messageText(br))
	}
	return t.sendSecure(&pb.ButtonAck{})
}

// answerPrompt has the user press button on p and checks the signed
// answer.
func answerPrompt(t *T, p *signed.Prompt, button string) error {
	if err := askPrompt(t, p); err != nil {
		return err
	}
	a, err := t.pressSecure(fmt.Sprintf("the prompt %q for request %s", p.Title, p.RequestID), button)
	if err != nil {
		return err
	}
	want := signed.Approve
	if button == Reject {
		want = signed.Reject
	}
	return t.checkApproval(a, p, want)
}

var promptTests = []Test{
	{ID: "prompt/approve", Section: "approval.md §3, §5", Title: "a valid prompt is shown; confirm answers an approval signed by the device over the prompt, with a new counter", Person: true,
		Needs: []string{"pairing/confirm"},
		run: func(t *T) error {
			p, err := t.newPrompt("Approve transfer", 3, nil)
			if err != nil {
				return err
			}
			if err := answerPrompt(t, p, Confirm); err != nil {
				return err
			}
			t.answered = p.Marshal()
			return nil
		}},
	{ID: "prompt/reject", Section: "approval.md §3, §5.3", Title: "reject answers a signed rejection with a new counter", Person: true,
		Needs: []string{"pairing/confirm"},
		run: func(t *T) error {
			p, err := t.newPrompt("Approve transfer", 2, nil)
			if err != nil {
				return err
			}
			return answerPrompt(t, p, Reject)
		}},
	{ID: "prompt/malformed", Section: "approval.md §2.2, §5.2 (malformed)", Title: "a prompt that does not parse is refused",
		Needs: []string{"pairing/confirm"},
		run: func(t *T) error {
			return refusedPrompt(t, "a malformed prompt", []byte("not a prompt"))
		}},
	{ID: "prompt/unsigned", Section: "approval.md §5.2 (bad_signature)", Title: "an unsigned prompt is refused",
		Needs: []string{"pairing/confirm"},
		run: func(t *T) error {
			p, err := t.newPrompt("Approve transfer", 1, nil)
			if err != nil {
				return err
			}
			p.Signature = nil
			return refusedPrompt(t, "an unsigned prompt", p.Marshal())
		}},
	{ID: "prompt/wrong-signer", Section: "approval.md §5.2 (bad_signature)", Title: "a prompt signed by another HSM is refused",
		Needs: []string{"pairing/confirm"},
		run: func(t *T) error {
			p, err := t.newPrompt("Approve transfer", 1, nil)
			if err != nil {
				return err
			}
			if err := p.Sign(t.other.key); err != nil {
				return err
			}
			return refusedPrompt(t, "a prompt signed by another HSM", p.Marshal())
		}},
	{ID: "prompt/altered", Section: "approval.md §5.2 (bad_signature)", Title: "a prompt altered after signing is refused",
		Needs: []string{"pairing/confirm"},
		run: func(t *T) error {
			p, err := t.newPrompt("Approve transfer", 2, nil)
			if err != nil {
				return err
			}
			p.Fields[1].Value = "an attacker's address"
			return refusedPrompt(t, "an altered prompt", p.Marshal())
		}},
	{ID: "prompt/wrong-device", Section: "approval.md §5.2 (wrong_device)", Title: "a prompt for another device is refused",
		Needs: []string{"pairing/confirm"},
		run: func(t *T) error {
			p, err := t.newPrompt("Approve transfer", 1, func(p *signed.Prompt) { p.DeviceID = "0123456789abcdef" })
			if err != nil {
				return err
			}
			return refusedPrompt(t, "a prompt for another device", p.Marshal())
		}},
	{ID: "prompt/not-showable", Section: "approval.md §4, §5.2 (not_showable)", Title: "a prompt whose title does not fit on the screen is refused",
		Needs: []string{"pairing/confirm"},
		run: func(t *T) error {
			p, err := t.newPrompt(strings.Repeat("T", 30), 1, nil)
			if err != nil {
				return err
			}
			return refusedPrompt(t, "a prompt with a 30-character title", p.Marshal())
		}},
	{ID: "prompt/expired", Section: "approval.md §5.2 (expired)", Title: "a prompt that expired before the newest credential was issued is refused",
		Needs: []string{"pairing/confirm"},
		run: func(t *T) error {
			p, err := t.newPrompt("Approve transfer", 1, func(p *signed.Prompt) { p.NotAfter = t.t0.Add(-2 * time.Hour) })
			if err != nil {
				return err
			}
			return refusedPrompt(t, "an expired prompt", p.Marshal())
		}},
	{ID: "prompt/replayed", Section: "approval.md §5.2 (replayed)", Title: "a prompt the device answered before is refused",
		Needs: []string{"prompt/approve"},
		run:   func(t *T) error { return refusedPrompt(t, "a prompt answered before", t.answered) }},
	{ID: "prompt/cancel", Section: "approval.md §5.1", Title: "Cancel while a prompt waits answers FAILURE_ACTION_CANCELLED and signs nothing",
		Needs: []string{"pairing/confirm"},
		run: func(t *T) error {
			p, err := t.newPrompt("Approve transfer", 1, nil)
			if err != nil {
				return err
			}
			if err := askPrompt(t, p); err != nil {
				return err
			}
			a, err := t.secure(&pb.Cancel{})
			if err != nil {
				return err
			}
			return wantFailure("Cancel of a prompt", a, pb.FailureCode_FAILURE_ACTION_CANCELLED)
		}},
	{ID: "prompt/confirm-last-page", Section: "device.md §7 (Buttons), approval.md §4", Title: "confirm acts only on the last page of a prompt", Screen: true,
		Needs: []string{"pairing/confirm"},
		run: func(t *T) error {
			p, err := t.newPrompt("Approve transfer", 12, nil)
			if err != nil {
				return err
			}
			if err := askPrompt(t, p); err != nil {
				return err
			}
			s, err := t.screen.Screen(t.ctx, func(s *debuglink.Screen) bool { return s.Kind == debuglink.KindPrompt })
			if err != nil {
				return err
			}
			if s.Pages < 2 {
				return fmt.Errorf("a prompt of 12 fields fits on %d page", s.Pages)
			}
			if s.Has(Confirm) {
				return fmt.Errorf("confirm acts on page %d of %d", s.Page, s.Pages)
			}
			var de *debuglink.Error
			if err := t.screen.PressNow(t.ctx, Confirm); !errors.As(err, &de) || de.Status != 409 {
				return fmt.Errorf("pressing confirm on page 1 of %d: %v, want it to do nothing", s.Pages, err)
			}
			if err := t.screen.PressNow(t.ctx, Reject); err != nil {
				return err
			}
			a, err := t.secureAnswer(t.cfg.AnswerTimeout)
			if err != nil {
				return err
			}
			return t.checkApproval(a, p, signed.Reject)
		}},
}

var stateTests = []Test{
	{ID: "state/power-cycle", Section: "device.md §3", Title: "after a power cycle the device keeps its identity, its pin and its counter", Person: true,
		Needs: []string{"prompt/approve"},
		run: func(t *T) error {
			if err := t.cfg.Operator.PowerCycle(t.ctx); err != nil {
				return err
			}
			t.link.close()
			if err := t.connect(t.ctx); err != nil {
				return err
			}
			f, err := t.getFeatures(t.cid, "GetFeatures")
			if err != nil {
				return err
			}
			if f.GetDeviceId() != t.features.GetDeviceId() {
				return fmt.Errorf("the device id changed from %s to %s", t.features.GetDeviceId(), f.GetDeviceId())
			}
			if err := t.openChannel(t.cred); err != nil {
				return fmt.Errorf("the pinned HSM after the power cycle: %w", err)
			}
			a, err := t.secure(&pb.Ping{Message: "still paired"})
			if err != nil {
				return err
			}
			if _, err := wantType[*pb.Success]("Ping to the pinned HSM after the power cycle (the pin must persist)", a); err != nil {
				return err
			}
			p, err := t.newPrompt("Approve transfer", 1, nil)
			if err != nil {
				return err
			}
			return answerPrompt(t, p, Confirm)
		}},
	{ID: "state/answered-persist", Section: "approval.md §5.2 (replayed), device.md §3", Title: "after a power cycle a prompt answered before is still refused",
		Needs: []string{"state/power-cycle", "prompt/replayed"},
		run:   func(t *T) error { return refusedPrompt(t, "a prompt answered before the power cycle", t.answered) }},
}
