package cli

import (
	"os/exec"
	"syscall"
)

// demoOrphanProof makes cmd get SIGTERM if the demo dies without stopping
// it, so that no part of the demo outlives it.
func demoOrphanProof(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
}
