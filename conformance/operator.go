package conformance

import (
	"bufio"
	"context"
	"fmt"
	"io"

	"github.com/opencustodynet/opencustody/emulator/debuglink"
)

// Buttons a test asks the user to press.
const (
	Confirm = debuglink.Confirm
	Reject  = debuglink.Reject
)

// Operator stands for the device's user: it presses buttons, and unplugs
// and replugs the device.
type Operator interface {
	// Press has the user press button ([Confirm] or [Reject]) on the
	// screen that is about to show what (a description for people, such
	// as "the pairing screen"). Confirm means: read every page, then
	// confirm on the last. Press may return before the press happens;
	// the suite waits for the device's answer.
	Press(ctx context.Context, what, button string) error
	// PowerCycle has the device unplugged and plugged back in (or
	// restarted), and returns once it is back.
	PowerCycle(ctx context.Context) error
}

// ScreenReader is an [Operator] that can also read the screen and press a
// single button as it is, the emulator's debug link. Tests that check
// what the screen shows need one; on hardware they are skipped.
type ScreenReader interface {
	Operator
	// Screen waits until ok is true of the screen and returns it.
	Screen(ctx context.Context, ok func(*debuglink.Screen) bool) (*debuglink.Screen, error)
	// PressNow presses button on the screen as it is, without paging; it
	// fails (a *debuglink.Error with status 409) if the button does
	// nothing there.
	PressNow(ctx context.Context, button string) error
}

// DebugLinkOperator drives an emulator through its debug link, as a user
// who reads every page would.
type DebugLinkOperator struct {
	Client *debuglink.Client
}

// Press waits for a prompt on the screen, pages to its last page for
// Confirm, and presses button.
func (o DebugLinkOperator) Press(ctx context.Context, what, button string) error {
	s, err := o.Client.WaitFor(ctx, func(s *debuglink.Screen) bool { return s.Kind == debuglink.KindPrompt })
	if err != nil {
		return fmt.Errorf("waiting for %s on the screen: %w", what, err)
	}
	for button == Confirm && !s.Has(Confirm) && s.Has(debuglink.Next) {
		if s, err = o.Client.Press(ctx, debuglink.Next); err != nil {
			return err
		}
	}
	_, err = o.Client.Press(ctx, button)
	return err
}

// PowerCycle restarts the emulator through the debug link.
func (o DebugLinkOperator) PowerCycle(ctx context.Context) error {
	_, err := o.Client.PowerCycle(ctx)
	return err
}

// Screen implements [ScreenReader].
func (o DebugLinkOperator) Screen(ctx context.Context, ok func(*debuglink.Screen) bool) (*debuglink.Screen, error) {
	return o.Client.WaitFor(ctx, ok)
}

// PressNow implements [ScreenReader].
func (o DebugLinkOperator) PressNow(ctx context.Context, button string) error {
	_, err := o.Client.Press(ctx, button)
	return err
}

// TerminalOperator asks a person at a terminal to press the buttons of a
// real device.
type TerminalOperator struct {
	// In is where the person answers (Enter after a power cycle).
	In io.Reader
	// Out is where the instructions go.
	Out io.Writer
	in  *bufio.Reader
}

// Press tells the person which button to press; the suite then waits for
// the device's answer.
func (o *TerminalOperator) Press(ctx context.Context, what, button string) error {
	switch button {
	case Confirm:
		fmt.Fprintf(o.Out, "  >> on the device: %s. Read every page, then press CONFIRM.\n", what)
	default:
		fmt.Fprintf(o.Out, "  >> on the device: %s. Press %s.\n", what, upper(button))
	}
	return nil
}

// PowerCycle asks the person to unplug and replug the device and waits for
// Enter.
func (o *TerminalOperator) PowerCycle(ctx context.Context) error {
	if o.in == nil {
		o.in = bufio.NewReader(o.In)
	}
	fmt.Fprintf(o.Out, "  >> unplug the device, plug it back in, wait for its home screen, then press Enter here: ")
	done := make(chan error, 1)
	go func() {
		_, err := o.in.ReadString('\n')
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			return fmt.Errorf("waiting for Enter: %w", err)
		}
		return nil
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}

func upper(s string) string {
	b := []byte(s)
	for i, c := range b {
		if c >= 'a' && c <= 'z' {
			b[i] = c - 32
		}
	}
	return string(b)
}
