package core

import (
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/flynn/noise"

	"github.com/opencustodynet/opencustody/hsm"
	"github.com/opencustodynet/opencustody/protocol"
	"github.com/opencustodynet/opencustody/protocol/channel"
	"github.com/opencustodynet/opencustody/protocol/signed"
)

// DefaultCredentialLifetime is how long a core channel credential is valid.
const DefaultCredentialLifetime = 24 * time.Hour

// DefaultPromptExpiry is how long approvers have to answer a request.
const DefaultPromptExpiry = 30 * time.Minute

// Config configures a [Core].
type Config struct {
	// Identity is the HSM identity key. It signs the core's channel
	// credentials and the prompts (and, later, records checkpoints).
	Identity signed.Signer
	// Devices holds the device records.
	Devices DeviceStore
	// Wallets and Requests hold the wallet and request records of the
	// approval path. Without them, wallet and request calls fail with
	// [ErrNoApprovalPath]; channels and pairing work.
	Wallets  WalletStore
	Requests RequestStore
	// Custody signs transactions with the wallets' custody keys, and Keys
	// makes a custody key for each new address: both are the HSM. Without
	// Keys no address can be made; without Custody nothing is signed.
	Custody hsm.Signer
	Keys    hsm.KeyManager
	// Changes holds admin changes and the governance record (the admin
	// quorum). Without it, admin changes fail with [ErrNoGovernance].
	Changes ChangeStore
	// ChangeHandlers adds change kinds to the core's own (see
	// [ChangeHandler]); a kind the core defines itself cannot be
	// replaced.
	ChangeHandlers map[ChangeKind]ChangeHandler
	// PromptExpiry is how long a request's prompts may be answered;
	// zero means DefaultPromptExpiry.
	PromptExpiry time.Duration
	// Ceremony allows pairing devices directly, as in the key ceremony at
	// the HSM's console. Without it, pairing is refused.
	Ceremony bool
	// AttestationRoots, when not empty, makes attestation a condition of
	// pairing: a device is paired only if its Features.attestation chain
	// certifies the identity key it proved in the handshake under one of
	// these roots (see [signed.VerifyAttestation]). Nil pairs devices
	// without attestation. Devices paired earlier are not re-checked.
	AttestationRoots []signed.Root
	// CredentialLifetime defaults to DefaultCredentialLifetime.
	CredentialLifetime time.Duration
	// Now and Rand default to time.Now and crypto/rand.
	Now  func() time.Time
	Rand io.Reader
}

// Core is the trusted core. It is safe for concurrent use; each [Link] is
// not, and its caller serialises calls per link.
type Core struct {
	cfg Config

	// reqMu serialises every change to wallets, requests and device
	// counters ([Core.CreateWallet], [Core.NewAddress], [Core.Submit],
	// [Core.Answer], [Core.Tick], [Core.Revoke]), and is held across their
	// HSM calls, so that a request is signed at most once and an answer
	// counted once. Reads do not take it. Lock order: reqMu, then mu.
	reqMu sync.Mutex
	// withdrawQueue holds the prompts of requests a policy change
	// withdrew, until the call that applied it returns them; guarded by
	// reqMu.
	withdrawQueue []PromptRef

	// ceremony starts as Config.Ceremony; EndCeremony clears it.
	ceremony atomic.Bool

	mu     sync.Mutex // guards static, cred
	static noise.DHKey
	cred   *signed.Credential
}

// New returns a core for cfg.
func New(cfg Config) (*Core, error) {
	if cfg.Identity == nil || cfg.Devices == nil {
		return nil, errors.New("core: Identity and Devices are required")
	}
	if cfg.CredentialLifetime <= 0 {
		cfg.CredentialLifetime = DefaultCredentialLifetime
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Rand == nil {
		cfg.Rand = rand.Reader
	}
	if cfg.PromptExpiry <= 0 {
		cfg.PromptExpiry = DefaultPromptExpiry
	}
	c := &Core{cfg: cfg}
	c.ceremony.Store(cfg.Ceremony)
	return c, nil
}

// HSMFingerprint is the fingerprint of the HSM identity key, the one
// devices show when they pair.
func (c *Core) HSMFingerprint() string {
	return signed.Fingerprint(c.cfg.Identity.Algorithm(), c.cfg.Identity.PublicKey())
}

// Ceremony reports whether direct pairing is allowed.
func (c *Core) Ceremony() bool { return c.ceremony.Load() }

// EndCeremony ends ceremony mode for good, as if hsmd were restarted
// without --ceremony: from now on pairings and the admin quorum go
// through the admins. There is no way back.
func (c *Core) EndCeremony() { c.ceremony.Store(false) }

// credential returns the current Noise static key and its credential,
// making a new pair (signed inside the HSM) when none exists or the current
// one has less than a quarter of its lifetime left.
func (c *Core) credential() (noise.DHKey, *signed.Credential, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.cfg.Now()
	if c.cred != nil && c.cred.NotAfter.Sub(now) > c.cfg.CredentialLifetime/4 {
		return c.static, c.cred, nil
	}
	st, err := channel.GenerateStatic(c.cfg.Rand)
	if err != nil {
		return noise.DHKey{}, nil, fmt.Errorf("core: channel key: %w", err)
	}
	cred := &signed.Credential{
		Role:      signed.RoleCore,
		NotBefore: now.Add(-time.Minute).Truncate(time.Second),
		NotAfter:  now.Add(c.cfg.CredentialLifetime).Truncate(time.Second),
	}
	copy(cred.StaticKey[:], st.Public)
	if err := cred.Sign(c.cfg.Identity); err != nil {
		return noise.DHKey{}, nil, fmt.Errorf("core: certify channel key with the HSM identity key: %w", err)
	}
	c.static, c.cred = st, cred
	return st, cred, nil
}

func (c *Core) channelConfig(accept func(*signed.Credential) error) (channel.Config, error) {
	st, cred, err := c.credential()
	if err != nil {
		return channel.Config{}, err
	}
	return channel.Config{
		Role: signed.RoleCore, Static: st, Credential: cred,
		ProtocolVersion: protocol.Version, Accept: accept,
		Now: c.cfg.Now, Rand: c.cfg.Rand,
	}, nil
}
