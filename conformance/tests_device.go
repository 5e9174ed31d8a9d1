package conformance

import (
	"fmt"

	"github.com/opencustodynet/opencustody/protocol/framing"
	"github.com/opencustodynet/opencustody/protocol/pb"
	"github.com/opencustodynet/opencustody/protocol/signed"
)

var deviceTests = []Test{
	{ID: "device/features", Section: "device.md §3, §6 (GetFeatures)", Title: "Features names protocol 1, the identity key and the device id derived from it",
		run: func(t *T) error {
			f, err := t.getFeatures(t.cid, "GetFeatures")
			if err != nil {
				return err
			}
			if err := checkFeatures(f); err != nil {
				return err
			}
			key := f.GetIdentityPublicKey()
			switch f.GetIdentityAlgorithm() {
			case pb.Algorithm_ALGORITHM_ED25519:
				if len(key) != 32 {
					return fmt.Errorf("Ed25519 identity key of %d bytes, want 32", len(key))
				}
			case pb.Algorithm_ALGORITHM_ECDSA_P256:
				if _, err := signed.ParseP256(key); err != nil {
					return fmt.Errorf("P-256 identity key: %w", err)
				}
			case pb.Algorithm_ALGORITHM_ECDSA_SECP256K1:
				if len(key) != 33 || (key[0] != 2 && key[0] != 3) {
					return fmt.Errorf("secp256k1 identity key is not a 33-byte compressed point")
				}
			default:
				return fmt.Errorf("unknown identity algorithm %v", f.GetIdentityAlgorithm())
			}
			if want := signed.DeviceID(key); f.GetDeviceId() != want {
				return fmt.Errorf("device_id %q, want %q (SHA-256 of the identity key, channel.md §2)", f.GetDeviceId(), want)
			}
			i := t.init
			if want := fmt.Sprintf("%d.%d.%d", i.Major, i.Minor, i.Patch); f.GetFirmwareVersion() != want {
				return fmt.Errorf("firmware_version %q, but the INIT response says %s", f.GetFirmwareVersion(), want)
			}
			return nil
		}},
	{ID: "device/ping", Section: "device.md §6 (Ping)", Title: "Ping without button protection is echoed in Success",
		run: func(t *T) error {
			a, err := t.call(t.cid, &pb.Ping{Message: "conformance"})
			if err != nil {
				return err
			}
			s, err := wantType[*pb.Success]("Ping", a)
			if err == nil && s.GetMessage() != "conformance" {
				err = fmt.Errorf("the Ping echoed %q, want %q", s.GetMessage(), "conformance")
			}
			return err
		}},
	{ID: "device/unexpected", Section: "device.md §5", Title: "ButtonAck with no ButtonRequest gets FAILURE_UNEXPECTED_MESSAGE",
		run: func(t *T) error {
			a, err := t.call(t.cid, &pb.ButtonAck{})
			if err != nil {
				return err
			}
			return wantFailure("ButtonAck in idle", a, pb.FailureCode_FAILURE_UNEXPECTED_MESSAGE)
		}},
	{ID: "device/cancel-idle", Section: "device.md §5, §6 (Cancel)", Title: "Cancel with nothing pending is not answered",
		run: func(t *T) error {
			if err := t.sendMsg(t.cid, &pb.Cancel{}); err != nil {
				return err
			}
			if err := t.link.send(t.cid, framing.CmdCancel, nil); err != nil {
				return err
			}
			return t.expectSilence("Cancel with nothing pending")
		}},
	{ID: "device/ping-unshowable", Section: "device.md §6 (Ping), §7", Title: "a protected Ping that cannot be shown gets FAILURE_DATA_ERROR",
		run: func(t *T) error {
			a, err := t.call(t.cid, &pb.Ping{Message: "caf\u00e9", ButtonProtection: true})
			if err != nil {
				return err
			}
			return wantFailure("a Ping with a non-ASCII character", a, pb.FailureCode_FAILURE_DATA_ERROR)
		}},
	{ID: "device/ping-confirm", Section: "device.md §5, §6 (Ping)", Title: "a protected Ping asks the user; confirm answers Success", Person: true,
		run: func(t *T) error {
			if _, err := protectedPing(t, "Confirm this ping"); err != nil {
				return err
			}
			if err := t.cfg.Operator.Press(t.ctx, `the prompt "Confirm ping"`, Confirm); err != nil {
				return err
			}
			a, err := t.answer(t.cid, t.cfg.UserTimeout)
			if err != nil {
				return err
			}
			s, err := wantType[*pb.Success]("the confirmed Ping", a)
			if err == nil && s.GetMessage() != "Confirm this ping" {
				err = fmt.Errorf("the confirmed Ping echoed %q", s.GetMessage())
			}
			return err
		}},
	{ID: "device/ping-reject", Section: "device.md §5, §6 (Ping)", Title: "reject answers FAILURE_ACTION_REJECTED", Person: true,
		run: func(t *T) error {
			if _, err := protectedPing(t, "Reject this ping"); err != nil {
				return err
			}
			if err := t.cfg.Operator.Press(t.ctx, `the prompt "Confirm ping" (Reject this ping)`, Reject); err != nil {
				return err
			}
			a, err := t.answer(t.cid, t.cfg.UserTimeout)
			if err != nil {
				return err
			}
			return wantFailure("the rejected Ping", a, pb.FailureCode_FAILURE_ACTION_REJECTED)
		}},
	{ID: "device/keepalive", Section: "device.md §5", Title: "while it waits for the user the device sends KEEPALIVE 02", Person: true,
		run: func(t *T) error {
			if _, err := protectedPing(t, "Keepalive test: reject"); err != nil {
				return err
			}
			m, err := t.await(t.cid, t.cfg.AnswerTimeout, true)
			if err == nil && (m.Cmd != framing.CmdKeepalive || len(m.Data) != 1 || m.Data[0] != byte(framing.KeepaliveUserNeeded)) {
				err = fmt.Errorf("while waiting for the user the device sent %s, want KEEPALIVE 02", describe(m))
			}
			if err != nil {
				_ = t.sendMsg(t.cid, &pb.Cancel{})
				return err
			}
			if err := t.cfg.Operator.Press(t.ctx, `the prompt "Confirm ping" (Keepalive test)`, Reject); err != nil {
				return err
			}
			a, err := t.answer(t.cid, t.cfg.UserTimeout)
			if err != nil {
				return err
			}
			return wantFailure("the rejected Ping", a, pb.FailureCode_FAILURE_ACTION_REJECTED)
		}},
	{ID: "device/cancel-message", Section: "device.md §5, §6 (Cancel)", Title: "Cancel while waiting for the user answers FAILURE_ACTION_CANCELLED",
		run: func(t *T) error {
			if _, err := protectedPing(t, "Cancel test"); err != nil {
				return err
			}
			a, err := t.call(t.cid, &pb.Cancel{})
			if err != nil {
				return err
			}
			return wantFailure("Cancel", a, pb.FailureCode_FAILURE_ACTION_CANCELLED)
		}},
	{ID: "device/cancel-command", Section: "framing.md §3 (CANCEL), device.md §5", Title: "the CANCEL command while waiting for the user answers FAILURE_ACTION_CANCELLED",
		run: func(t *T) error {
			if _, err := protectedPing(t, "CANCEL test"); err != nil {
				return err
			}
			if err := t.link.send(t.cid, framing.CmdCancel, nil); err != nil {
				return err
			}
			a, err := t.answer(t.cid, t.cfg.AnswerTimeout)
			if err != nil {
				_ = t.sendMsg(t.cid, &pb.Cancel{})
				return fmt.Errorf("CANCEL: %w", err)
			}
			return wantFailure("CANCEL", a, pb.FailureCode_FAILURE_ACTION_CANCELLED)
		}},
	{ID: "device/busy", Section: "device.md §5", Title: "while one channel waits for the user, another gets FAILURE_BUSY (and Features)",
		run: func(t *T) error {
			if _, err := protectedPing(t, "Busy test"); err != nil {
				return err
			}
			defer func() { _, _ = t.call(t.cid, &pb.Cancel{}) }()
			other, _, err := t.alloc()
			if err != nil {
				return err
			}
			a, err := t.call(other, &pb.Ping{Message: "busy?"})
			if err != nil {
				return err
			}
			if err := wantFailure("Ping on another channel", a, pb.FailureCode_FAILURE_BUSY); err != nil {
				return err
			}
			_, err = t.getFeatures(other, "GetFeatures on another channel")
			return err
		}},
}

// protectedPing sends a Ping with button protection, checks the
// ButtonRequest and sends ButtonAck: the device then waits for its user.
func protectedPing(t *T, msg string) (*pb.ButtonRequest, error) {
	a, err := t.call(t.cid, &pb.Ping{Message: msg, ButtonProtection: true})
	if err != nil {
		return nil, err
	}
	br, err := wantType[*pb.ButtonRequest]("a protected Ping", a)
	if err != nil {
		return nil, err
	}
	if br.GetCode() != pb.ButtonRequestCode_BUTTON_REQUEST_CONFIRM_ACTION {
		return nil, fmt.Errorf("a protected Ping got %s, want BUTTON_REQUEST_CONFIRM_ACTION", messageText(br))
	}
	return br, t.sendMsg(t.cid, &pb.ButtonAck{})
}
