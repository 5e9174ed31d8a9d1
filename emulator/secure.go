package emulator

import (
	"bytes"
	"fmt"
	"io"

	"google.golang.org/protobuf/proto"

	"github.com/opencustodynet/opencustody/protocol"
	"github.com/opencustodynet/opencustody/protocol/channel"
	"github.com/opencustodynet/opencustody/protocol/pairing"
	"github.com/opencustodynet/opencustody/protocol/pb"
	"github.com/opencustodynet/opencustody/protocol/signed"
)

// MaxUserLength bounds the user name a PairingRequest may carry, in bytes.
const MaxUserLength = 64

// secureChannel is the device's end of the secure channel with a core
// (firmware-spec/channel.md). The device holds at most one; a new
// HandshakeInit replaces it. It is guarded by Device.mu.
type secureChannel struct {
	hs   *channel.Handshake // the handshake in progress; nil once established
	sess *channel.Session   // the established session
	// pinned: the core proved the pinned HSM identity key, and the channel
	// carries everything; otherwise it is a pairing session, which
	// carries only pairing messages (channel.md §3.3).
	pinned bool
	pair   *pairingRun // the pairing in progress, pairing sessions only
}

// pairStep is where a pairing stands (channel.md §6.1).
type pairStep int

const (
	pairCommitted pairStep = iota // PairingCommitment sent
	pairRevealed                  // PairingReveal sent; the code is known
	pairAsked                     // ButtonRequest sent; the pairing screen is (to be) shown
	pairConfirmed                 // the user confirmed; waiting for PairingFinish
)

// pairingRun is a pairing in progress.
type pairingRun struct {
	step   pairStep
	user   string
	role   pb.PairingRole
	secret []byte
	code   string
}

// pairingMessage reports whether m may travel in a pairing session.
func pairingMessage(m proto.Message) bool {
	switch m.(type) {
	case *pb.PairingRequest, *pb.PairingChallenge, *pb.PairingConfirm, *pb.PairingFinish, *pb.ButtonAck, *pb.Cancel:
		return true
	}
	return false
}

// closeChannel discards the secure channel, the pairing in it and a
// request that came through it. d.mu is held.
func (d *Device) closeChannel() {
	sc := d.sc
	if sc == nil {
		return
	}
	if d.op != nil && d.op.secure == sc {
		d.abortOp()
	}
	if sc.sess != nil {
		sc.sess.Close()
	}
	sc.pair = nil
	d.sc = nil
}

// startHandshake answers HandshakeInit: the current channel is discarded
// and a new handshake starts (channel.md §4).
func (d *Device) startHandshake(cid uint32, m *pb.HandshakeInit) {
	d.closeChannel()
	sc := &secureChannel{}
	hs, err := channel.NewHandshake(channel.Config{
		Role:            signed.RoleDevice,
		Static:          d.store.ChannelKey(),
		Credential:      d.store.Credential(),
		ProtocolVersion: protocol.Version,
		CheckTime:       d.checkFresh,
		Accept:          func(c *signed.Credential) error { return d.acceptCore(sc, c) },
		Now:             d.now,
		Rand:            d.rand,
	})
	if err != nil {
		d.log.Error("device: handshake", "err", err)
		d.sendFailure(cid, pb.FailureCode_FAILURE_CHANNEL, "handshake failed")
		return
	}
	msg2, err := hs.Respond(m.GetNoise())
	if err != nil {
		d.log.Debug("device: handshake refused", "cid", fmt.Sprintf("%08x", cid), "err", err)
		d.sendFailure(cid, pb.FailureCode_FAILURE_CHANNEL, err.Error())
		return
	}
	sc.hs = hs
	d.sc = sc
	d.send(cid, &pb.HandshakeResponse{Noise: msg2})
}

// checkFresh is the freshness rule of a device without a clock
// (channel.md §3.3): a core credential that expired before the newest one
// accepted from the pinned HSM was issued is stale.
func (d *Device) checkFresh(c *signed.Credential) error {
	if newest := d.store.Newest(); c.NotAfter.Before(newest) && d.quirk != QuirkAcceptStale {
		return fmt.Errorf("stale core credential: it expired at %d, before the newest credential seen was issued at %d",
			c.NotAfter.Unix(), newest.Unix())
	}
	return nil
}

// acceptCore decides on a core whose credential verified: a device paired
// with an HSM talks only to that HSM; an unpaired device opens a pairing
// session with any core (channel.md §3.3, check 5).
func (d *Device) acceptCore(sc *secureChannel, c *signed.Credential) error {
	pin := d.store.Pin()
	if pin == nil {
		sc.pinned = false
		return nil
	}
	if (c.Algorithm != pin.Algorithm || !bytes.Equal(c.IdentityKey, pin.PublicKey)) && d.quirk != QuirkAcceptAnyHSM {
		return fmt.Errorf("the core's credential is not signed by the HSM this device is paired with")
	}
	sc.pinned = true
	return nil
}

// finishHandshake answers HandshakeFinish: Success once the core's
// credential is accepted, Failure{FAILURE_CHANNEL} and no channel
// otherwise.
func (d *Device) finishHandshake(cid uint32, m *pb.HandshakeFinish) {
	sc := d.sc
	if sc == nil || sc.hs == nil {
		d.sendFailure(cid, pb.FailureCode_FAILURE_CHANNEL, "no handshake in progress")
		return
	}
	sess, err := sc.hs.Complete(m.GetNoise())
	if err != nil {
		d.sc = nil
		d.log.Warn("device: core refused in the handshake", "cid", fmt.Sprintf("%08x", cid), "err", err)
		d.sendFailure(cid, pb.FailureCode_FAILURE_CHANNEL, err.Error())
		return
	}
	if sc.pinned {
		// Remember how new the pinned HSM's credentials are, before the
		// channel is used.
		if err := d.store.RaiseNewest(sess.Peer().NotBefore); err != nil {
			d.sc = nil
			d.log.Error("device: record credential freshness", "err", err)
			d.sendFailure(cid, pb.FailureCode_FAILURE_CHANNEL, "cannot record the credential's freshness")
			return
		}
	}
	sc.hs, sc.sess = nil, sess
	d.log.Info("device: secure channel established", "cid", fmt.Sprintf("%08x", cid), "pairing_only", !sc.pinned)
	d.send(cid, &pb.Success{})
}

// handlePairing runs the device's side of pairing (channel.md §6) inside
// the channel sc.
func (d *Device) handlePairing(cid uint32, sc *secureChannel, m proto.Message) {
	p := sc.pair
	if p == nil && (sc.pinned || d.store.Pin() != nil) {
		d.answer(cid, sc, &pb.Failure{Code: pb.FailureCode_FAILURE_UNEXPECTED_MESSAGE, Message: "already paired"})
		return
	}
	outOfOrder := func() {
		d.endPairing(sc, "message out of order")
		d.answer(cid, sc, &pb.Failure{Code: pb.FailureCode_FAILURE_UNEXPECTED_MESSAGE, Message: fmt.Sprintf("unexpected %s; pairing ended", messageName(m))})
	}
	switch m := m.(type) {
	case *pb.PairingRequest:
		if p != nil {
			outOfOrder()
			return
		}
		role := m.GetRole()
		if roleName(role) == "" || m.GetUser() == "" || len(m.GetUser()) > MaxUserLength || checkPrintable(m.GetUser()) != nil {
			d.answer(cid, sc, &pb.Failure{Code: pb.FailureCode_FAILURE_DATA_ERROR,
				Message: fmt.Sprintf("pairing needs a role and a user name of 1 to %d printable ASCII characters", MaxUserLength)})
			return
		}
		secret := make([]byte, pairing.SecretSize)
		if _, err := io.ReadFull(d.rand, secret); err != nil {
			d.log.Error("device: pairing secret", "err", err)
			d.answer(cid, sc, &pb.Failure{Code: pb.FailureCode_FAILURE_PROCESS_ERROR, Message: "no randomness"})
			return
		}
		sc.pair = &pairingRun{step: pairCommitted, user: m.GetUser(), role: role, secret: secret}
		d.log.Info("device: pairing started", "cid", fmt.Sprintf("%08x", cid))
		d.answer(cid, sc, &pb.PairingCommitment{Commitment: pairing.Commitment(sc.sess.HandshakeHash(), secret)})
	case *pb.PairingChallenge:
		if p == nil || p.step != pairCommitted {
			outOfOrder()
			return
		}
		if len(m.GetChallenge()) != pairing.ChallengeSize {
			d.endPairing(sc, "bad challenge")
			d.answer(cid, sc, &pb.Failure{Code: pb.FailureCode_FAILURE_DATA_ERROR, Message: fmt.Sprintf("challenge must be %d bytes; pairing ended", pairing.ChallengeSize)})
			return
		}
		p.code = pairing.Code(sc.sess.HandshakeHash(), p.secret, m.GetChallenge())
		p.step = pairRevealed
		d.answer(cid, sc, &pb.PairingReveal{Secret: p.secret})
	case *pb.PairingConfirm:
		if p == nil || p.step != pairRevealed {
			outOfOrder()
			return
		}
		peer := sc.sess.Peer()
		fp, code := signed.Fingerprint(peer.Algorithm, peer.IdentityKey), pairing.Display(p.code)
		pages, err := Layout(pairingDocument(fp, p.user, roleName(p.role), code))
		if err != nil {
			// The user name was checked; this cannot happen.
			d.endPairing(sc, "cannot show the pairing screen")
			d.answer(cid, sc, &pb.Failure{Code: pb.FailureCode_FAILURE_PROCESS_ERROR, Message: "cannot show the pairing screen"})
			return
		}
		p.step = pairAsked
		d.op = &operation{
			cid: cid, state: opWaitAck, title: "pairing", pages: pages, secure: sc,
			fields:  map[string]string{FieldHSMFingerprint: fp, FieldUser: p.user, FieldRole: roleName(p.role), FieldCode: code},
			confirm: &pb.PairingDecision{Confirmed: true},
			reject:  &pb.PairingDecision{Confirmed: false},
			end: func(r opResult) {
				if r == opConfirmed && sc.pair == p {
					p.step = pairConfirmed
					return
				}
				d.endPairing(sc, "the user did not confirm")
			},
		}
		d.log.Info("device: waiting for the user", "cid", fmt.Sprintf("%08x", cid), "request", "pairing")
		d.answer(cid, sc, &pb.ButtonRequest{Code: pb.ButtonRequestCode_BUTTON_REQUEST_PAIRING})
	case *pb.PairingFinish:
		if p == nil || p.step != pairConfirmed {
			outOfOrder()
			return
		}
		peer := sc.sess.Peer()
		pin := &Pin{Algorithm: peer.Algorithm, PublicKey: peer.IdentityKey, User: p.user, Role: p.role}
		// The pin is on disk before the core hears of it.
		if err := d.store.SetPin(pin, peer.NotBefore); err != nil {
			d.log.Error("device: store the pairing", "err", err)
			d.endPairing(sc, "cannot store the pairing")
			d.answer(cid, sc, &pb.Failure{Code: pb.FailureCode_FAILURE_PROCESS_ERROR, Message: "cannot store the pairing"})
			return
		}
		// The session stays a pairing session: the core opens a new
		// channel, in which the device accepts it as its pinned HSM.
		sc.pair = nil
		d.log.Info("device: paired", "cid", fmt.Sprintf("%08x", cid))
		d.log.Debug("device: paired", "hsm", pin.Fingerprint(), "user", pin.User, "role", roleName(pin.Role))
		d.showHome()
		d.answer(cid, sc, &pb.Success{})
	}
}

// endPairing ends the pairing in sc, if any: nothing is pinned.
func (d *Device) endPairing(sc *secureChannel, why string) {
	if sc.pair == nil {
		return
	}
	sc.pair = nil
	d.log.Info("device: pairing ended without a pairing", "reason", why)
}

// pairingDocument is the pairing screen (channel.md §6.2).
func pairingDocument(hsmFingerprint, user, role, code string) Document {
	return Document{
		Title: "Pair with HSM",
		Body:  "HSM fingerprint:\n" + hsmFingerprint + "\nUser: " + user + "\nRole: " + role + "\nCode: " + code,
	}
}
