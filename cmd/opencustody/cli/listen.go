package cli

import (
	"fmt"
	"net"
)

// listenLoopback listens on addr (host:port), which must be a loopback
// address: the daemons' status and metrics endpoints have no
// authentication, so they are for their own machine only.
func listenLoopback(addr string) (net.Listener, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("address %q: %w", addr, err)
	}
	if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		return nil, fmt.Errorf("address %s is not a loopback address; this endpoint has no authentication", addr)
	}
	return net.Listen("tcp", addr)
}
