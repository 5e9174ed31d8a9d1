package hsmd

import (
	"fmt"
	"sync"
	"time"

	"github.com/opencustodynet/opencustody/hsm/audit"
	"github.com/opencustodynet/opencustody/hsm/core"
)

// A secure channel that fails closed on what came from the device side — a
// message altered, replayed, reordered or swapped by a relay, a device that
// proves another key than the one announced, a device that refuses the
// core — is a security event: hsmd appends it to the audit log
// ([audit.KindChannel], subject the device id the bridge announced).
//
// A bridge can cause such failures at will (announce a paired device
// again, then spoil its handshake), so the entries are bounded: at most
// channelAuditBurst per device in each channelAuditWindow. Failures past
// that are still logged and counted in
// opencustody_hsmd_channel_failures_total, and the device's next entry
// says how many were left out. Channels closed by hsmd itself (a detached
// or revoked device, a pairing the operator ended) are not channel
// failures in this sense: the revocation or pairing has its own entry.
const (
	channelAuditBurst  = 30
	channelAuditWindow = time.Minute
)

// channelAudit counts the channel-failure entries per device.
type channelAudit struct {
	mu sync.Mutex // guards devices; taken under deviceConn.mu, never the reverse
	// devices holds only ids whose channel was opened, so paired devices
	// and devices an operator pairs: a bridge cannot grow it with made-up
	// ids, since the core opens no channel to those.
	devices map[string]*channelAuditCount
}

type channelAuditCount struct {
	since   time.Time // start of the current window
	entries int       // entries recorded in the window
	skipped int       // failures not recorded since the device's last entry
}

// allow reports whether a channel failure of device id gets an entry now,
// and how many failures of the device were left out before it.
func (c *channelAudit) allow(id string, now time.Time) (bool, int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.devices == nil {
		c.devices = map[string]*channelAuditCount{}
	}
	n := c.devices[id]
	if n == nil {
		n = &channelAuditCount{since: now}
		c.devices[id] = n
	}
	if now.Sub(n.since) >= channelAuditWindow || now.Before(n.since) {
		n.since, n.entries = now, 0
	}
	if n.entries >= channelAuditBurst {
		n.skipped++
		return false, 0
	}
	n.entries++
	skipped := n.skipped
	n.skipped = 0
	return true, skipped
}

// auditChannelFailure records that device id's channel failed closed on
// err, within the bound above.
func (s *Server) auditChannelFailure(id string, err error) {
	ok, skipped := s.channelAudit.allow(id, time.Now())
	if !ok {
		return
	}
	detail := fmt.Sprintf("secure channel failed closed: %v", err)
	if skipped > 0 {
		detail += fmt.Sprintf(" (and %d earlier failures of this device not recorded one by one)", skipped)
	}
	s.recordLater(audit.KindChannel, id, detail)
}

// channelWentDown reports whether out closed a channel or a handshake.
func channelWentDown(out core.Output) bool {
	for _, e := range out.Events {
		if _, ok := e.(core.ChannelDown); ok {
			return true
		}
	}
	return false
}
