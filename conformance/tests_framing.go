package conformance

import (
	"bytes"
	"errors"
	"fmt"
	"time"

	"github.com/opencustodynet/opencustody/firmware-spec/vectors"
	"github.com/opencustodynet/opencustody/protocol"
	"github.com/opencustodynet/opencustody/protocol/framing"
	"github.com/opencustodynet/opencustody/protocol/pb"
)

const (
	cmdPing  = byte(framing.CmdPing)
	cmdInit  = byte(framing.CmdInit)
	cmdError = byte(framing.CmdError)
	cmdKeep  = byte(framing.CmdKeepalive)
)

func pattern(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i)
	}
	return b
}

var framingTests = []Test{
	{ID: "framing/allocate", Section: "framing.md §4", Title: "INIT on the broadcast channel allocates distinct channels",
		run: func(t *T) error {
			a, _, err := t.alloc()
			if err != nil {
				return err
			}
			b, _, err := t.alloc()
			if err != nil {
				return err
			}
			if a == b || a == t.cid || b == t.cid {
				return fmt.Errorf("allocated channel %08x twice", a)
			}
			return nil
		}},
	{ID: "framing/resync", Section: "framing.md §4", Title: "INIT on an allocated channel resynchronises it and keeps its id",
		run: func(t *T) error {
			var q framing.InitRequest
			copy(q.Nonce[:], "resync!!")
			if err := t.link.send(t.cid, framing.CmdInit, q.Marshal()); err != nil {
				return err
			}
			m, err := t.await(t.cid, t.cfg.AnswerTimeout, false)
			if err != nil {
				return err
			}
			if m.Cmd != framing.CmdInit {
				return fmt.Errorf("INIT on channel %08x answered %s", t.cid, describe(m))
			}
			r, err := framing.ParseInitResponse(m.Data)
			if err != nil {
				return err
			}
			if r.Nonce != q.Nonce || r.CID != t.cid {
				return fmt.Errorf("resynchronisation answered nonce %x channel %08x, want %x and %08x", r.Nonce, r.CID, q.Nonce, t.cid)
			}
			return nil
		}},
	{ID: "framing/init-bad-length", Section: "framing.md §4, §5 (bad_init)", Title: "an INIT payload of the wrong length gets ERROR 02",
		run: func(t *T) error {
			if err := t.link.write(initReport(framing.BroadcastCID, cmdInit, 7, []byte("1234567"))); err != nil {
				return err
			}
			return t.expectError(framing.BroadcastCID, framing.ErrCodeInvalidPar, "a 7-byte INIT")
		}},
	{ID: "framing/channels", Section: "device.md §4", Title: "the device keeps at least 8 channels allocated",
		run: func(t *T) error {
			var cids []uint32
			for range 8 {
				c, _, err := t.alloc()
				if err != nil {
					return err
				}
				cids = append(cids, c)
			}
			for _, c := range cids {
				if err := t.link.send(c, framing.CmdPing, []byte("still here")); err != nil {
					return err
				}
				m, err := t.await(c, t.cfg.AnswerTimeout, false)
				if err != nil {
					return err
				}
				if m.Cmd != framing.CmdPing || string(m.Data) != "still here" {
					return fmt.Errorf("PING on channel %08x (of the last 8 allocated) answered %s", c, describe(m))
				}
			}
			return nil
		}},
	{ID: "framing/ping", Section: "framing.md §1, §3", Title: "PING is echoed: empty, one report, 57/58 bytes, several reports",
		run: func(t *T) error {
			for _, n := range []int{0, 1, 57, 58, 116, 117, 1000} {
				if err := echo(t, pattern(n)); err != nil {
					return err
				}
			}
			return nil
		}},
	{ID: "framing/max-size", Section: "framing.md §1", Title: "a 7609-byte message (INIT and CONT 0 to 127) is received and echoed",
		run: func(t *T) error { return echo(t, pattern(framing.MaxMessageSize)) }},
	{ID: "framing/too-long", Section: "framing.md §5 (too_long)", Title: "BCNT 7610 gets ERROR 03",
		run: func(t *T) error {
			if err := t.link.write(initReport(t.cid, cmdPing, framing.MaxMessageSize+1, pattern(57))); err != nil {
				return err
			}
			return t.expectError(t.cid, framing.ErrCodeInvalidLen, "BCNT 7610")
		}},
	{ID: "framing/unknown-command", Section: "framing.md §3, §5 (unknown_command)", Title: "an unknown command gets ERROR 01",
		run: func(t *T) error {
			if err := t.link.write(initReport(t.cid, 0x85, 0, nil)); err != nil {
				return err
			}
			return t.expectError(t.cid, framing.ErrCodeInvalidCmd, "command 85")
		}},
	{ID: "framing/unexpected-cont", Section: "framing.md §5 (unexpected_cont)", Title: "a CONT report with no message in progress gets ERROR 04",
		run: func(t *T) error {
			if err := t.link.write(contReport(t.cid, 0, nil)); err != nil {
				return err
			}
			return t.expectError(t.cid, framing.ErrCodeInvalidSeq, "a lone CONT")
		}},
	{ID: "framing/wrong-sequence", Section: "framing.md §5 (wrong_sequence)", Title: "a CONT with the wrong SEQ gets ERROR 04 and drops the message",
		run: func(t *T) error {
			if err := t.link.write(initReport(t.cid, cmdPing, 200, pattern(57))); err != nil {
				return err
			}
			if err := t.link.write(contReport(t.cid, 1, pattern(59))); err != nil {
				return err
			}
			if err := t.expectError(t.cid, framing.ErrCodeInvalidSeq, "CONT 1 after INIT"); err != nil {
				return err
			}
			// The message is gone: CONT 0 now has nothing to continue.
			if err := t.link.write(contReport(t.cid, 0, pattern(59))); err != nil {
				return err
			}
			return t.expectError(t.cid, framing.ErrCodeInvalidSeq, "CONT 0 after the dropped message")
		}},
	{ID: "framing/interleaved", Section: "framing.md §5 (interleaved)", Title: "an INIT on the channel whose message is in progress gets ERROR 04",
		run: func(t *T) error {
			if err := t.link.write(initReport(t.cid, cmdPing, 200, pattern(57))); err != nil {
				return err
			}
			if err := t.link.write(initReport(t.cid, cmdPing, 3, []byte("abc"))); err != nil {
				return err
			}
			if err := t.expectError(t.cid, framing.ErrCodeInvalidSeq, "a second INIT"); err != nil {
				return err
			}
			return t.expectSilence("the interleaved INIT (it is not started)")
		}},
	{ID: "framing/wrong-channel", Section: "framing.md §5 (wrong_channel)", Title: "another channel's report gets ERROR 06 and the message in progress is kept",
		run: func(t *T) error {
			other, _, err := t.alloc()
			if err != nil {
				return err
			}
			data := pattern(100)
			rs, _ := framing.Fragment(t.cid, framing.CmdPing, data)
			if err := t.link.write(rs[0]); err != nil {
				return err
			}
			if err := t.link.write(initReport(other, cmdPing, 3, []byte("abc"))); err != nil {
				return err
			}
			if err := t.expectError(other, framing.ErrCodeChannelBusy, "a PING on another channel"); err != nil {
				return err
			}
			if err := t.link.write(rs[1]); err != nil {
				return err
			}
			m, err := t.await(t.cid, t.cfg.AnswerTimeout, false)
			if err != nil {
				return err
			}
			if m.Cmd != framing.CmdPing || !bytes.Equal(m.Data, data) {
				return fmt.Errorf("the interrupted PING was not kept: it was answered %s", describe(m))
			}
			return nil
		}},
	{ID: "framing/broadcast-misuse", Section: "framing.md §5 (broadcast_misuse)", Title: "a PING on the broadcast channel gets ERROR 0b there",
		run: func(t *T) error {
			if err := t.link.write(initReport(framing.BroadcastCID, cmdPing, 1, []byte("x"))); err != nil {
				return err
			}
			return t.expectError(framing.BroadcastCID, framing.ErrCodeInvalidChannel, "PING on ffffffff")
		}},
	{ID: "framing/reserved-channel", Section: "framing.md §2, §5 (reserved_channel)", Title: "reports on channel 00000000 are not answered",
		run: func(t *T) error {
			if err := t.link.write(initReport(framing.ReservedCID, cmdPing, 1, []byte("x"))); err != nil {
				return err
			}
			return t.expectSilence("a PING on channel 00000000")
		}},
	{ID: "framing/unallocated-channel", Section: "framing.md §2, device.md §4", Title: "a message on a channel the device did not allocate gets ERROR 0b",
		run: func(t *T) error {
			const stranger = 0x0badc0de
			if err := t.link.write(initReport(stranger, cmdPing, 1, []byte("x"))); err != nil {
				return err
			}
			return t.expectError(stranger, framing.ErrCodeInvalidChannel, "PING on an unallocated channel")
		}},
	{ID: "framing/host-error-ignored", Section: "framing.md §3", Title: "ERROR and KEEPALIVE from the host are not answered",
		run: func(t *T) error {
			if err := t.link.write(initReport(t.cid, cmdError, 1, []byte{0x01})); err != nil {
				return err
			}
			if err := t.link.write(initReport(t.cid, cmdKeep, 1, []byte{0x01})); err != nil {
				return err
			}
			return t.expectSilence("ERROR and KEEPALIVE from the host")
		}},
	{ID: "framing/timeout", Section: "framing.md §5 (timeout)", Title: "a message whose reports stop for more than 3000 ms gets ERROR 05",
		run: func(t *T) error {
			start := time.Now()
			if err := t.link.write(initReport(t.cid, cmdPing, 200, pattern(57))); err != nil {
				return err
			}
			err := t.expectError(t.cid, framing.ErrCodeMsgTimeout, "a PING whose CONT reports never come")
			if err != nil {
				// Clear the message in progress for the next tests.
				_ = t.link.write(initReport(t.cid, cmdPing, 0, nil))
				return err
			}
			if d := time.Since(start); d < framing.DefaultTimeout {
				return fmt.Errorf("ERROR 05 came %s after the INIT, before the 3000 ms timeout", d.Round(time.Millisecond))
			}
			return nil
		}},
}

// echo sends data as a PING on the suite's channel and checks the echo.
func echo(t *T, data []byte) error {
	if err := t.link.send(t.cid, framing.CmdPing, data); err != nil {
		return err
	}
	m, err := t.await(t.cid, t.cfg.AnswerTimeout, false)
	if err != nil {
		return fmt.Errorf("PING of %d bytes: %w", len(data), err)
	}
	if m.Cmd != framing.CmdPing || !bytes.Equal(m.Data, data) {
		return fmt.Errorf("PING of %d bytes answered %s", len(data), describe(m))
	}
	return nil
}

var envelopeTests = []Test{
	{ID: "envelope/invalid", Section: "framing.md §7", Title: "every invalid envelope of vectors/envelope.json gets its Failure",
		run: func(t *T) error {
			v, err := vectors.LoadEnvelope()
			if err != nil {
				return err
			}
			var errs []error
			for _, x := range v.Invalid {
				if len(x.Encoding) > framing.MaxMessageSize {
					continue // cannot be sent in one MSG; framing/too-long covers it
				}
				code := pb.FailureCode_FAILURE_DATA_ERROR
				if x.Error == "unsupported_version" {
					code = pb.FailureCode_FAILURE_UNSUPPORTED_VERSION
				}
				a, err := t.callRaw(t.cid, x.Encoding)
				if err != nil {
					errs = append(errs, fmt.Errorf("%s: %w", x.Name, err))
					continue
				}
				if err := wantFailure(x.Name+" ("+x.Error+")", a, code); err != nil {
					errs = append(errs, err)
				}
			}
			return errors.Join(errs...)
		}},
	{ID: "envelope/valid", Section: "framing.md §7", Title: "GetFeatures in a non-deterministic but valid encoding (unknown field first) is answered",
		run: func(t *T) error {
			// Field 99 (unknown, ignored) before version and GetFeatures.
			a, err := t.callRaw(t.cid, []byte{0x9a, 0x06, 0x00, 0x08, 0x01, 0x52, 0x00})
			if err != nil {
				return err
			}
			_, err = wantType[*pb.Features]("GetFeatures", a)
			return err
		}},
	{ID: "envelope/answers", Section: "framing.md §7", Title: "the device's envelopes have version 1",
		run: func(t *T) error {
			if err := t.sendMsg(t.cid, &pb.Ping{Message: "version"}); err != nil {
				return err
			}
			m, err := t.await(t.cid, t.cfg.AnswerTimeout, false)
			if err != nil {
				return err
			}
			if m.Cmd != framing.CmdMsg {
				return fmt.Errorf("the Ping was answered %s", describe(m))
			}
			env, err := protocol.DecodeEnvelope(m.Data)
			if err != nil {
				return fmt.Errorf("the answer is not a valid version-1 envelope: %w", err)
			}
			_, err = wantType[*pb.Success]("Ping", protocol.Unwrap(env))
			return err
		}},
}
