package conformance

import (
	"bytes"
	"errors"
	"fmt"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/opencustodynet/opencustody/emulator/debuglink"
	"github.com/opencustodynet/opencustody/protocol/pairing"
	"github.com/opencustodynet/opencustody/protocol/pb"
	"github.com/opencustodynet/opencustody/protocol/signed"
)

// refusedHandshake checks that a handshake is answered
// Failure{FAILURE_CHANNEL}, at its first or last message.
func refusedHandshake(t *T, what string, cred *credential, payload1, credBytes []byte) error {
	a, _, err := t.handshake(cred, payload1, credBytes)
	if err != nil {
		return err
	}
	return wantFailure(what, a, pb.FailureCode_FAILURE_CHANNEL)
}

var channelTests = []Test{
	{ID: "channel/no-channel", Section: "channel.md §5, device.md §5 (secure channel)", Title: "a SecureMessage with no channel gets FAILURE_CHANNEL",
		run: func(t *T) error {
			a, err := t.call(t.cid, &pb.SecureMessage{Ciphertext: bytes.Repeat([]byte{0x5a}, 40)})
			if err != nil {
				return err
			}
			return wantFailure("SecureMessage before a handshake", a, pb.FailureCode_FAILURE_CHANNEL)
		}},
	{ID: "channel/plain-refused", Section: "channel.md §5, approval.md §5.1", Title: "pairing messages and PromptRequest in plain get FAILURE_NOT_PAIRED",
		run: func(t *T) error {
			for _, m := range []proto.Message{
				&pb.PairingRequest{User: "alice", Role: pb.PairingRole_PAIRING_ROLE_ADMIN},
				&pb.PromptRequest{Prompt: []byte{0}},
			} {
				a, err := t.call(t.cid, m)
				if err != nil {
					return err
				}
				if err := wantFailure(messageText(m)+" in plain", a, pb.FailureCode_FAILURE_NOT_PAIRED); err != nil {
					return err
				}
			}
			return nil
		}},
	{ID: "channel/init-payload", Section: "channel.md §4", Title: "a HandshakeInit with a payload gets FAILURE_CHANNEL",
		run: func(t *T) error {
			return refusedHandshake(t, "HandshakeInit with a payload", t.cred, []byte("payload"), nil)
		}},
	{ID: "channel/finish-without-init", Section: "channel.md §4, device.md §5 (secure channel)", Title: "a HandshakeFinish with no handshake gets FAILURE_CHANNEL",
		run: func(t *T) error {
			a, err := t.call(t.cid, &pb.HandshakeFinish{Noise: bytes.Repeat([]byte{1}, 64)})
			if err != nil {
				return err
			}
			return wantFailure("HandshakeFinish with no handshake", a, pb.FailureCode_FAILURE_CHANNEL)
		}},
	{ID: "channel/handshake", Section: "channel.md §3, §4", Title: "a core with a valid credential completes the handshake; the device credential binds its channel key to its identity key",
		run: func(t *T) error {
			a, _, err := t.handshake(t.cred, nil, nil)
			if err != nil {
				return err
			}
			if f, ok := a.(*pb.Failure); ok && f.GetCode() == pb.FailureCode_FAILURE_CHANNEL {
				return fmt.Errorf("%w (the device refused the suite's HSM: %s)", ErrDevicePaired, f.GetMessage())
			}
			_, err = wantType[*pb.Success]("HandshakeFinish", a)
			return err
		}},
	{ID: "channel/credential-signature", Section: "channel.md §3.3 (check 3)", Title: "a core credential whose signature does not verify is refused",
		Needs: []string{"channel/handshake"},
		run: func(t *T) error {
			bad := *t.cred.cred
			bad.Signature = bytes.Clone(bad.Signature)
			bad.Signature[len(bad.Signature)/2] ^= 0x01
			return refusedHandshake(t, "a credential with a bad signature", t.cred, nil, bad.Marshal())
		}},
	{ID: "channel/credential-role", Section: "channel.md §3.3 (check 1)", Title: "a credential with the device role, from the core, is refused",
		Needs: []string{"channel/handshake"},
		run: func(t *T) error {
			c := *t.cred.cred
			c.Role = signed.RoleDevice
			if err := c.Sign(t.hsm.key); err != nil {
				return err
			}
			return refusedHandshake(t, "a core sending a device credential", t.cred, nil, c.Marshal())
		}},
	{ID: "channel/credential-static", Section: "channel.md §3.3 (check 2)", Title: "a credential for another channel key is refused",
		Needs: []string{"channel/handshake"},
		run: func(t *T) error {
			other, err := t.hsm.newCredential(t.cfg.Rand, t.t0.Add(-time.Hour), t.t0.Add(24*time.Hour))
			if err != nil {
				return err
			}
			return refusedHandshake(t, "a credential for another static key", t.cred, nil, other.raw)
		}},
	{ID: "channel/pairing-session", Section: "channel.md §3.3 (check 5), device.md §5 (secure channel)", Title: "an unpaired device opens a pairing session, which refuses everything but pairing",
		Needs: []string{"channel/handshake"},
		run: func(t *T) error {
			if err := t.refusedInChannel("Ping in a pairing session", &pb.Ping{Message: "inside"}, pb.FailureCode_FAILURE_NOT_PAIRED); err != nil {
				return err
			}
			p, err := t.newPrompt("Approve transfer", 1, nil)
			if err != nil {
				return err
			}
			a, err := t.secure(&pb.PromptRequest{Prompt: p.Marshal()})
			if err != nil {
				return err
			}
			return wantFailure("PromptRequest in a pairing session", a, pb.FailureCode_FAILURE_NOT_PAIRED)
		}},
	{ID: "channel/tampered", Section: "channel.md §5", Title: "an altered SecureMessage gets FAILURE_CHANNEL and closes the channel",
		Needs: []string{"channel/handshake"},
		run: func(t *T) error {
			if err := t.openChannel(t.cred); err != nil {
				return err
			}
			sm, err := t.seal(&pb.GetFeatures{})
			if err != nil {
				return err
			}
			sm.Ciphertext[0] ^= 0x80
			a, err := t.call(t.cid, sm)
			if err != nil {
				return err
			}
			if err := wantFailure("an altered SecureMessage", a, pb.FailureCode_FAILURE_CHANNEL); err != nil {
				return err
			}
			// The channel is closed: the next message, sealed correctly,
			// is refused too.
			sm, err = t.seal(&pb.GetFeatures{})
			if err != nil {
				return err
			}
			a, err = t.call(t.cid, sm)
			if err != nil {
				return err
			}
			return wantFailure("a SecureMessage after a failed one", a, pb.FailureCode_FAILURE_CHANNEL)
		}},
	{ID: "channel/replayed", Section: "channel.md §5", Title: "a SecureMessage sent twice gets FAILURE_CHANNEL",
		Needs: []string{"channel/handshake"},
		run: func(t *T) error {
			if err := t.openChannel(t.cred); err != nil {
				return err
			}
			sm, err := t.seal(&pb.GetFeatures{})
			if err != nil {
				return err
			}
			a, err := t.call(t.cid, sm)
			if err != nil {
				return err
			}
			if _, err := t.inside(a); err != nil {
				return err
			}
			a, err = t.call(t.cid, sm)
			if err != nil {
				return err
			}
			return wantFailure("a replayed SecureMessage", a, pb.FailureCode_FAILURE_CHANNEL)
		}},
}

// pairUpTo runs a pairing in a new pairing session up to the pairing
// screen (channel.md §6.1, steps 1–4) and returns the code the core
// computes.
func pairUpTo(t *T, user string) (string, error) {
	if err := t.openChannel(t.cred); err != nil {
		return "", err
	}
	a, err := t.secure(&pb.PairingRequest{User: user, Role: pb.PairingRole_PAIRING_ROLE_ADMIN})
	if err != nil {
		return "", err
	}
	com, err := wantType[*pb.PairingCommitment]("PairingRequest", a)
	if err != nil {
		return "", err
	}
	challenge := make([]byte, pairing.ChallengeSize)
	if _, err := t.cfg.Rand.Read(challenge); err != nil {
		return "", err
	}
	if a, err = t.secure(&pb.PairingChallenge{Challenge: challenge}); err != nil {
		return "", err
	}
	rev, err := wantType[*pb.PairingReveal]("PairingChallenge", a)
	if err != nil {
		return "", err
	}
	if err := pairing.CheckReveal(t.sess.hash, com.GetCommitment(), rev.GetSecret()); err != nil {
		return "", fmt.Errorf("the revealed secret does not match the commitment (channel.md §6.1): %w", err)
	}
	if a, err = t.secure(&pb.PairingConfirm{}); err != nil {
		return "", err
	}
	br, err := wantType[*pb.ButtonRequest]("PairingConfirm", a)
	if err != nil {
		return "", err
	}
	if br.GetCode() != pb.ButtonRequestCode_BUTTON_REQUEST_PAIRING {
		return "", fmt.Errorf("PairingConfirm got %s, want BUTTON_REQUEST_PAIRING", messageText(br))
	}
	if err := t.sendSecure(&pb.ButtonAck{}); err != nil {
		return "", err
	}
	return pairing.Code(t.sess.hash, rev.GetSecret(), challenge), nil
}

var pairingTests = []Test{
	{ID: "pairing/out-of-order", Section: "channel.md §6.3", Title: "a pairing message out of order gets FAILURE_UNEXPECTED_MESSAGE",
		Needs: []string{"channel/handshake"},
		run: func(t *T) error {
			return t.refusedInChannel("PairingChallenge before PairingRequest", &pb.PairingChallenge{Challenge: make([]byte, pairing.ChallengeSize)}, pb.FailureCode_FAILURE_UNEXPECTED_MESSAGE)
		}},
	{ID: "pairing/bad-request", Section: "device.md §5 (pairing)", Title: "a PairingRequest with no user gets FAILURE_DATA_ERROR",
		Needs: []string{"channel/handshake"},
		run: func(t *T) error {
			return t.refusedInChannel("PairingRequest with no user", &pb.PairingRequest{Role: pb.PairingRole_PAIRING_ROLE_ADMIN}, pb.FailureCode_FAILURE_DATA_ERROR)
		}},
	{ID: "pairing/cancel", Section: "channel.md §6.3, device.md §5 (pairing)", Title: "Cancel on the pairing screen answers FAILURE_ACTION_CANCELLED and pins nothing",
		Needs: []string{"channel/handshake"},
		run: func(t *T) error {
			if _, err := pairUpTo(t, "cancelled"); err != nil {
				return err
			}
			a, err := t.secure(&pb.Cancel{})
			if err != nil {
				return err
			}
			return wantFailure("Cancel on the pairing screen", a, pb.FailureCode_FAILURE_ACTION_CANCELLED)
		}},
	{ID: "pairing/reject", Section: "channel.md §6.1, §6.3", Title: "rejecting the pairing answers PairingDecision{false} and pins nothing", Person: true,
		Needs: []string{"channel/handshake"},
		run: func(t *T) error {
			if _, err := pairUpTo(t, "reject"); err != nil {
				return err
			}
			a, err := t.pressSecure(`the pairing screen for user "reject"`, Reject)
			if err != nil {
				return err
			}
			d, err := wantType[*pb.PairingDecision]("the rejected pairing", a)
			if err != nil {
				return err
			}
			if d.GetConfirmed() {
				return errors.New("rejected on the device, PairingDecision says confirmed")
			}
			// Nothing was pinned: a new channel is a pairing session.
			return t.refusedInChannel("Ping after a rejected pairing (a pairing session)", &pb.Ping{Message: "still unpaired?"}, pb.FailureCode_FAILURE_NOT_PAIRED)
		}},
	{ID: "pairing/confirm", Section: "channel.md §6", Title: "pairing confirmed on the device: the screen shows the code and the HSM fingerprint; PairingFinish pins the HSM", Person: true,
		Needs: []string{"channel/handshake"},
		run: func(t *T) error {
			code, err := pairUpTo(t, "conformance")
			if err != nil {
				return err
			}
			fp := t.hsm.fingerprint()
			if t.screen != nil {
				s, err := t.screen.Screen(t.ctx, func(s *debuglink.Screen) bool { return s.Kind == debuglink.KindPrompt })
				if err != nil {
					return err
				}
				if s.Title != "Pair with HSM" || s.Fields["code"] != pairing.Display(code) || s.Fields["hsm_fingerprint"] != fp {
					return fmt.Errorf("the pairing screen shows %q, code %q, HSM %q; want \"Pair with HSM\", %q, %q (channel.md §6.2)",
						s.Title, s.Fields["code"], s.Fields["hsm_fingerprint"], pairing.Display(code), fp)
				}
			}
			a, err := t.pressSecure(fmt.Sprintf("the pairing screen: confirm only if it shows code %s and HSM fingerprint %s", pairing.Display(code), fp), Confirm)
			if err != nil {
				return err
			}
			d, err := wantType[*pb.PairingDecision]("the confirmed pairing", a)
			if err != nil {
				return err
			}
			if !d.GetConfirmed() {
				return errors.New("PairingDecision says not confirmed: the device showed another code or fingerprint, or was rejected")
			}
			if a, err = t.secure(&pb.PairingFinish{}); err != nil {
				return err
			}
			_, err = wantType[*pb.Success]("PairingFinish", a)
			return err
		}},
	{ID: "channel/full-session", Section: "channel.md §3.3, device.md §5 (secure channel)", Title: "once paired, the pinned HSM's channel carries every message",
		Needs: []string{"pairing/confirm"},
		run: func(t *T) error {
			if err := t.openChannel(t.cred); err != nil {
				return err
			}
			a, err := t.secure(&pb.Ping{Message: "paired"})
			if err != nil {
				return err
			}
			s, err := wantType[*pb.Success]("Ping in a full session", a)
			if err == nil && s.GetMessage() != "paired" {
				err = fmt.Errorf("the Ping echoed %q", s.GetMessage())
			}
			return err
		}},
	{ID: "pairing/already-paired", Section: "device.md §5 (pairing)", Title: "a paired device refuses PairingRequest with FAILURE_UNEXPECTED_MESSAGE",
		Needs: []string{"pairing/confirm"},
		run: func(t *T) error {
			return t.refusedInChannel("PairingRequest to a paired device", &pb.PairingRequest{User: "mallory", Role: pb.PairingRole_PAIRING_ROLE_ADMIN}, pb.FailureCode_FAILURE_UNEXPECTED_MESSAGE)
		}},
	{ID: "channel/other-hsm", Section: "channel.md §3.3 (check 5)", Title: "a paired device refuses a core of another HSM",
		Needs: []string{"pairing/confirm"},
		run: func(t *T) error {
			c, err := t.other.newCredential(t.cfg.Rand, t.t0.Add(-time.Hour), t.t0.Add(24*time.Hour))
			if err != nil {
				return err
			}
			return refusedHandshake(t, "a core of another HSM", c, nil, nil)
		}},
	{ID: "channel/stale-credential", Section: "channel.md §3.3 (freshness)", Title: "a credential that expired before the newest one was issued is refused",
		Needs: []string{"pairing/confirm"},
		run: func(t *T) error {
			c, err := t.hsm.newCredential(t.cfg.Rand, t.t0.Add(-72*time.Hour), t.t0.Add(-48*time.Hour))
			if err != nil {
				return err
			}
			return refusedHandshake(t, "a stale credential", c, nil, nil)
		}},
	{ID: "channel/renewed-credential", Section: "channel.md §3.3 (freshness)", Title: "a newer credential of the pinned HSM is accepted",
		Needs: []string{"pairing/confirm"},
		run: func(t *T) error {
			c, err := t.hsm.newCredential(t.cfg.Rand, t.t0, t.t0.Add(24*time.Hour))
			if err != nil {
				return err
			}
			if err := t.openChannel(c); err != nil {
				return err
			}
			t.state.cred = c
			return nil
		}},
}
