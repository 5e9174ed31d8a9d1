//go:build !linux

package cli

import "os/exec"

// demoOrphanProof does nothing here: only Linux signals a child when its
// parent dies. The demo stops its processes itself on every way out but a
// kill.
func demoOrphanProof(*exec.Cmd) {}
