package core

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/opencustodynet/opencustody/protocol/pb"
	"github.com/opencustodynet/opencustody/protocol/signed"
)

// Role is what a paired device's user may do.
type Role string

const (
	// RoleApprover approves requests.
	RoleApprover Role = "approver"
	// RoleAdmin approves requests and changes to users, devices and policies.
	RoleAdmin Role = "admin"
)

// ParseRole parses "approver" or "admin".
func ParseRole(s string) (Role, error) {
	switch r := Role(s); r {
	case RoleApprover, RoleAdmin:
		return r, nil
	}
	return "", fmt.Errorf("core: unknown role %q: use approver or admin", s)
}

// DeviceState is the lifecycle of a paired device.
type DeviceState string

const (
	// DevicePaired may open channels and approve.
	DevicePaired DeviceState = "paired"
	// DeviceRevoked is refused for good.
	DeviceRevoked DeviceState = "revoked"
)

// DeviceRecord is what the core stores about a paired device.
type DeviceRecord struct {
	ID          string       `json:"id"`
	Algorithm   pb.Algorithm `json:"algorithm"`
	IdentityKey []byte       `json:"identity_key"`
	User        string       `json:"user"`
	Role        Role         `json:"role"`
	State       DeviceState  `json:"state"`
	// Model and Emulator are what the device claimed in Features when it
	// was paired: unverified.
	Model    string `json:"model,omitempty"`
	Emulator bool   `json:"emulator,omitempty"`
	// Attestation is the attestation verified at pairing; nil when the
	// core did not require attestation then.
	Attestation *DeviceAttestation `json:"attestation,omitempty"`
	PairedAt    time.Time          `json:"paired_at"`
	RevokedAt   time.Time          `json:"revoked_at,omitzero"`
	// Counter is the highest approval counter the core accepted from the
	// device (firmware-spec/approval.md): an approval or rejection must
	// carry a greater one.
	Counter uint64 `json:"counter,omitempty"`
	// Version is the storage version the record was read at; the store
	// refuses an update made from a stale version.
	Version uint64 `json:"-"`
}

// DeviceAttestation records which trusted root vouched for a device's
// identity key when it was paired, and under what name.
type DeviceAttestation struct {
	// Root is the name of the root, as the operator configured it.
	Root string `json:"root"`
	// RootFingerprint is the fingerprint of the root key; unlike the name,
	// it identifies the root.
	RootFingerprint string `json:"root_fingerprint"`
	// Development is true for the development root, under which anyone can
	// issue certificates: such a device is attested by nobody.
	Development bool `json:"development,omitempty"`
	// Subject is the device certificate's subject name (for example the
	// model), as the vendor certified it.
	Subject string `json:"subject"`
}

// Fingerprint is the fingerprint of the device's identity key.
func (d *DeviceRecord) Fingerprint() string { return signed.Fingerprint(d.Algorithm, d.IdentityKey) }

// ErrDeviceNotFound is returned by a [DeviceStore] for an unknown id.
var ErrDeviceNotFound = errors.New("core: device not found")

// DeviceStore keeps device records. Implementations authenticate every
// record with the HSM record key: Get and List must return an error, never
// a record, when authentication fails. Get returns an error wrapping
// [ErrDeviceNotFound] for an unknown id.
type DeviceStore interface {
	GetDevice(ctx context.Context, id string) (*DeviceRecord, error)
	ListDevices(ctx context.Context) ([]*DeviceRecord, error)
	// CurrentDevices returns what ListDevices returns, but may answer
	// from the records it verified before while its authenticated
	// manifests show them unchanged (records.Store.Latest); so a record
	// edited behind its back is refused when next read one by one, not
	// reported here. The approval path, which addresses every device at
	// every submit, uses it; listings for operators use ListDevices.
	CurrentDevices(ctx context.Context) ([]*DeviceRecord, error)
	// CreateDevice stores a new record; it fails if the id exists.
	CreateDevice(ctx context.Context, d *DeviceRecord) error
	// UpdateDevice replaces the record read at d.Version.
	UpdateDevice(ctx context.Context, d *DeviceRecord) error
}

// DeviceID is the stable id of a device: the first 8 bytes of
// SHA-256(identity public key), hex. Devices report it in Features; the
// core recomputes it from the key the device proved.
func DeviceID(identityKey []byte) string { return signed.DeviceID(identityKey) }

// Revoke marks a paired device revoked: from now on its channel and its
// approvals are refused. Callers close any link open to it. Prompts issued
// to it stay in their requests, but [Core.Answer] refuses its answers.
func (c *Core) Revoke(ctx context.Context, id string) (*DeviceRecord, error) {
	// Answers update the record's counter under reqMu: revoking under it
	// too keeps the two from racing into a version conflict.
	c.reqMu.Lock()
	defer c.reqMu.Unlock()
	rec, err := c.cfg.Devices.GetDevice(ctx, id)
	if err != nil {
		return nil, err
	}
	if rec.State == DeviceRevoked {
		return rec, nil
	}
	rec.State, rec.RevokedAt = DeviceRevoked, c.cfg.Now().UTC()
	if err := c.cfg.Devices.UpdateDevice(ctx, rec); err != nil {
		return nil, fmt.Errorf("core: revoke device %s: %w", id, err)
	}
	return rec, nil
}

// Devices lists the paired and revoked devices.
func (c *Core) Devices(ctx context.Context) ([]*DeviceRecord, error) {
	return c.cfg.Devices.ListDevices(ctx)
}
