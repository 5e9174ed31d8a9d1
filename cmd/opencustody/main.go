// Command opencustody is the single OpenCustody binary: the custody core
// (hsmd), the bridge, the emulator and the operator's CLI. All behaviour lives
// in package [github.com/opencustodynet/opencustody/cmd/opencustody/cli]; main
// only hands it the process's arguments and streams.
package main

import (
	"os"

	"github.com/opencustodynet/opencustody/cmd/opencustody/cli"
)

func main() {
	os.Exit(cli.Main(os.Args[1:], cli.Streams{In: os.Stdin, Out: os.Stdout, Err: os.Stderr}))
}
