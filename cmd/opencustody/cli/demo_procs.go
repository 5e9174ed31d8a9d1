package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/opencustodynet/opencustody/emulator/debuglink"
)

// demoProc is a process the demo started.
type demoProc struct {
	name   string
	cmd    *exec.Cmd
	log    string
	exited chan struct{} // closed when the process has exited
	err    error         // its exit status, once exited is closed
}

// demoEnv is the environment of the demo's processes: this one's, without
// the OPENCUSTODY_ variables, so that each part uses the demo's directory
// and addresses and nothing else.
func demoEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "OPENCUSTODY_") {
			env = append(env, kv)
		}
	}
	return env
}

// start runs this binary with args in the background, its output going to
// DIR/logs/NAME.log.
func (d *demo) start(name string, args ...string) error {
	return d.startCmd(name, d.exe, args...)
}

func (d *demo) startCmd(name, bin string, args ...string) error {
	log := filepath.Join(d.dir, "logs", name+".log")
	f, err := os.Create(log)
	if err != nil {
		return err
	}
	defer f.Close()
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.Env = demoEnv()
	cmd.Dir = d.dir
	demoOrphanProof(cmd)
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", name, err)
	}
	p := &demoProc{name: name, cmd: cmd, log: log, exited: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.exited)
	}()
	d.procs = append(d.procs, p)
	return nil
}

// runOnce runs this binary with args to the end, its output going to out
// and to DIR/logs.
func (d *demo) runOnce(ctx context.Context, out io.Writer, args ...string) error {
	log := filepath.Join(d.dir, "logs", strings.Join(args[:2], "-")+".log")
	f, err := os.Create(log)
	if err != nil {
		return err
	}
	defer f.Close()
	cmd := exec.CommandContext(ctx, d.exe, args...)
	cmd.Stdout, cmd.Stderr = io.MultiWriter(out, f), f
	cmd.Env = demoEnv()
	cmd.Dir = d.dir
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("opencustody %s: %w; its output:\n%s", strings.Join(args, " "), err, tail(log))
	}
	return nil
}

// stopAll stops the processes the demo started, the last started first:
// SIGTERM, then SIGKILL for one that has not exited after a while.
func (d *demo) stopAll() {
	if d.node != nil {
		d.node.Shutdown()
	}
	if d.conn != nil {
		d.conn.Close()
	}
	if len(d.procs) == 0 {
		return
	}
	fmt.Fprintf(d.out, "\n== Stopping the processes\n")
	for i := len(d.procs) - 1; i >= 0; i-- {
		p := d.procs[i]
		select {
		case <-p.exited:
			fmt.Fprintf(d.out, "%s had already exited (%v); see %s\n", p.name, p.err, p.log)
			continue
		default:
		}
		p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.exited:
			fmt.Fprintf(d.out, "stopped %s (pid %d)\n", p.name, p.cmd.Process.Pid)
		case <-time.After(15 * time.Second):
			p.cmd.Process.Kill()
			<-p.exited
			fmt.Fprintf(d.out, "killed %s (pid %d): it did not stop on SIGTERM\n", p.name, p.cmd.Process.Pid)
		}
	}
	d.procs = nil
}

// errStop, returned by a condition of [demo.until], ends the wait at once.
type errStop struct{ error }

func (e errStop) Unwrap() error { return e.error }

// until calls cond until it returns nil, ctx ends, or one of the demo's
// processes exits; the error says what it was waiting for.
func (d *demo) until(ctx context.Context, what string, cond func() error) error {
	for {
		err := cond()
		if err == nil {
			return nil
		}
		var stop errStop
		if errors.As(err, &stop) {
			return stop.error
		}
		for _, p := range d.procs {
			select {
			case <-p.exited:
				return fmt.Errorf("waiting for %s: %s exited (%v); the end of %s:\n%s", what, p.name, p.err, p.log, tail(p.log))
			default:
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s: %w (last: %v)", what, ctx.Err(), err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// waitScreen waits for a screen that ok accepts on the device of dl, trying
// again while the debug link is not up yet.
func waitScreen(ctx context.Context, dl *debuglink.Client, what string, ok func(*debuglink.Screen) bool) (*debuglink.Screen, error) {
	for {
		s, err := dl.WaitFor(ctx, ok)
		if err == nil {
			return s, nil
		}
		var de *debuglink.Error
		if errors.As(err, &de) || ctx.Err() != nil {
			return nil, fmt.Errorf("waiting for %s: %w", what, err)
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("waiting for %s: %w (last: %v)", what, ctx.Err(), err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// tail returns the end of a log file, for error messages.
func tail(path string) string {
	b, _ := os.ReadFile(path)
	if len(b) > 3000 {
		b = b[len(b)-3000:]
	}
	return string(b)
}

// freeTCPPort returns a loopback TCP port that was free a moment ago.
func freeTCPPort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// freeEmulatorPort returns a UDP port whose next port is free on TCP, for an
// emulator and its debug link.
func freeEmulatorPort() (int, error) {
	for range 50 {
		u, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			return 0, err
		}
		p := u.LocalAddr().(*net.UDPAddr).Port
		u.Close()
		if p >= 65535 {
			continue
		}
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p+1))
		if err != nil {
			continue
		}
		l.Close()
		return p, nil
	}
	return 0, errors.New("no free pair of ports for an emulator and its debug link")
}

var lookPath = exec.LookPath
