package cli

import (
	"strings"
	"testing"
)

func TestListenLoopback(t *testing.T) {
	for _, addr := range []string{"127.0.0.1:0", "localhost:0", "[::1]:0"} {
		l, err := listenLoopback(addr)
		if err != nil {
			if addr == "[::1]:0" && strings.Contains(err.Error(), "cannot assign") {
				continue // no IPv6 here
			}
			t.Errorf("%s: %v", addr, err)
			continue
		}
		l.Close()
	}
	for _, addr := range []string{"0.0.0.0:0", ":0", "192.0.2.1:7421", "example.com:7421", "nonsense"} {
		if l, err := listenLoopback(addr); err == nil {
			l.Close()
			t.Errorf("%s: accepted", addr)
		}
	}
}
