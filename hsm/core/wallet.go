package core

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/opencustodynet/opencustody/hsm"
	"github.com/opencustodynet/opencustody/hsm/bitcoin"
	"github.com/opencustodynet/opencustody/hsm/policy"
)

// WalletRecord is what the core stores about a wallet: its custody keys
// in the HSM and who approves its transfers.
type WalletRecord struct {
	Name    string          `json:"name"`
	Network bitcoin.Network `json:"network"`
	// Approvers are the users whose paired devices approve the wallet's
	// transfers; Quorum of them must approve (m of n, counted per user,
	// whatever number of devices a user has).
	Approvers []string `json:"approvers"`
	Quorum    int      `json:"quorum"`
	// PolicyDoc is the wallet's policy, its canonical document
	// ([policy.Policy.Marshal]); empty means the default policy of
	// Approvers and Quorum ([WalletRecord.Policy]). Once a policy is set,
	// Approvers lists its users and Quorum is the quorum of its only
	// group, or zero. PolicyVersion counts the policy's changes (see
	// [WalletRecord.CurrentPolicyVersion]).
	PolicyDoc     json.RawMessage `json:"policy,omitempty"`
	PolicyVersion uint64          `json:"policy_version,omitempty"`
	// Keys are the wallet's custody keys, one per address, in the order
	// they were made. Keys are only ever appended.
	Keys      []WalletKey `json:"keys"`
	CreatedAt time.Time   `json:"created_at"`
	// Backupable: the wallet's custody keys are made backup-able, so they
	// can move to a backup HSM wrapped end to end (package backup).
	Backupable bool `json:"backupable,omitempty"`
	// Version is the storage version the record was read at.
	Version uint64 `json:"-"`
}

// WalletKey is one custody key of a wallet, and so one address.
type WalletKey struct {
	Index uint32 `json:"index"`
	// Ref names the key in the HSM (a pkcs11: URI).
	Ref string `json:"ref"`
	// PublicKey is the 33-byte compressed secp256k1 public key.
	PublicKey []byte    `json:"public_key"`
	CreatedAt time.Time `json:"created_at"`
}

// Address is the key's P2WPKH address on network n.
func (k WalletKey) Address(n bitcoin.Network) (string, error) {
	a, err := bitcoin.Key{Ref: k.Ref, PublicKey: k.PublicKey}.Address(n)
	if err != nil {
		return "", err
	}
	return a.EncodeAddress(), nil
}

// bitcoinWallet is the wallet as package bitcoin takes it, with its first
// n keys: a request is analysed and signed with the keys the wallet had
// when it was submitted.
func (w *WalletRecord) bitcoinWallet(n int) (*bitcoin.Wallet, error) {
	if n <= 0 || n > len(w.Keys) {
		return nil, fmt.Errorf("core: wallet %s has %d keys, not %d", w.Name, len(w.Keys), n)
	}
	keys := make([]bitcoin.Key, n)
	for i, k := range w.Keys[:n] {
		keys[i] = bitcoin.Key{Ref: k.Ref, PublicKey: k.PublicKey}
	}
	bw, err := bitcoin.NewWallet(bitcoin.WalletConfig{Network: w.Network, Keys: keys})
	if err != nil {
		return nil, fmt.Errorf("core: wallet %s: %w", w.Name, err)
	}
	return bw, nil
}

// Errors of the wallet calls.
var (
	// ErrNoApprovalPath: the core was configured without wallet and
	// request stores.
	ErrNoApprovalPath = errors.New("core: the approval path is not configured (no wallet or request store)")
	// ErrWalletNotFound is returned by a [WalletStore] for an unknown name.
	ErrWalletNotFound = errors.New("core: wallet not found")
	// ErrWalletExists is returned by [WalletStore.CreateWallet] for a name
	// in use.
	ErrWalletExists = errors.New("core: wallet already exists")
	// ErrInvalidWallet: a wallet's name, network, approvers or quorum is
	// not acceptable.
	ErrInvalidWallet = errors.New("core: invalid wallet")
)

// WalletStore keeps wallet records. Implementations authenticate every
// record with the HSM record key, as [DeviceStore] does: GetWallet and
// ListWallets return an error, never a record, when authentication fails.
// GetWallet returns an error wrapping [ErrWalletNotFound] for an unknown
// name, CreateWallet one wrapping [ErrWalletExists] for a name in use.
type WalletStore interface {
	GetWallet(ctx context.Context, name string) (*WalletRecord, error)
	ListWallets(ctx context.Context) ([]*WalletRecord, error)
	CreateWallet(ctx context.Context, w *WalletRecord) error
	// UpdateWallet replaces the record read at w.Version.
	UpdateWallet(ctx context.Context, w *WalletRecord) error
}

// MaxWalletName is the longest wallet name: it is shown on a device's
// screen.
const MaxWalletName = 32

// CheckWalletName reports whether name is a valid wallet name: 1 to
// [MaxWalletName] ASCII letters, digits, '.', '_' and '-', starting with a
// letter or digit.
func CheckWalletName(name string) error {
	if name == "" || len(name) > MaxWalletName {
		return fmt.Errorf("%w: wallet name %q: want 1 to %d characters", ErrInvalidWallet, name, MaxWalletName)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case i > 0 && (c == '.' || c == '_' || c == '-'):
		default:
			return fmt.Errorf("%w: wallet name %q: use letters, digits, '.', '_' and '-', starting with a letter or digit", ErrInvalidWallet, name)
		}
	}
	return nil
}

// CreateWalletRequest describes a new wallet.
type CreateWalletRequest struct {
	Name    string
	Network bitcoin.Network
	// Approvers are user names, each with at least one paired device.
	Approvers []string
	// Quorum is how many of the approvers must approve, 1 to
	// len(Approvers).
	Quorum int
	// Policy, instead of Approvers and Quorum, is a policy document
	// (package policy, YAML or JSON): every user it names must have a
	// paired device.
	Policy []byte
	// Backupable makes every custody key of the wallet backup-able
	// (hsm.GenerateKeyRequest.Backupable). Decided at creation.
	Backupable bool
}

func (c *Core) approvalPath() error {
	if c.cfg.Wallets == nil || c.cfg.Requests == nil {
		return ErrNoApprovalPath
	}
	return nil
}

// CreateWallet stores a new wallet without keys; [Core.NewAddress] makes
// them. Every approver must be a user with a paired, unrevoked device.
func (c *Core) CreateWallet(ctx context.Context, req CreateWalletRequest) (*WalletRecord, error) {
	if err := c.approvalPath(); err != nil {
		return nil, err
	}
	if err := CheckWalletName(req.Name); err != nil {
		return nil, err
	}
	if req.Network.Params() == nil {
		return nil, fmt.Errorf("%w: wallet %s: unknown network %d", ErrInvalidWallet, req.Name, uint8(req.Network))
	}
	var pol *policy.Policy
	if len(req.Policy) > 0 {
		if len(req.Approvers) > 0 || req.Quorum != 0 {
			return nil, fmt.Errorf("%w: wallet %s: give a policy, or approvers and a quorum, not both", ErrInvalidWallet, req.Name)
		}
		p, err := policy.Parse(req.Policy)
		if err != nil {
			return nil, fmt.Errorf("%w: wallet %s: %w", ErrInvalidWallet, req.Name, err)
		}
		if err := p.CheckNetwork(req.Network); err != nil {
			return nil, fmt.Errorf("%w: wallet %s: %w", ErrInvalidWallet, req.Name, err)
		}
		pol, req.Approvers = p, p.Users()
	} else {
		if len(req.Approvers) == 0 {
			return nil, fmt.Errorf("%w: wallet %s needs at least one approver", ErrInvalidWallet, req.Name)
		}
		if req.Quorum < 1 || req.Quorum > len(req.Approvers) {
			return nil, fmt.Errorf("%w: wallet %s: quorum %d is not between 1 and the %d approvers", ErrInvalidWallet, req.Name, req.Quorum, len(req.Approvers))
		}
		for _, u := range req.Approvers {
			if err := policy.CheckUser(u); err != nil {
				return nil, fmt.Errorf("%w: wallet %s: %w", ErrInvalidWallet, req.Name, err)
			}
		}
	}
	c.reqMu.Lock()
	defer c.reqMu.Unlock()
	devices, err := c.cfg.Devices.ListDevices(ctx)
	if err != nil {
		return nil, err
	}
	for i, u := range req.Approvers {
		if slices.Contains(req.Approvers[:i], u) {
			return nil, fmt.Errorf("%w: wallet %s: approver %q is listed twice", ErrInvalidWallet, req.Name, u)
		}
		if len(pairedDevicesOf(devices, u)) == 0 {
			return nil, fmt.Errorf("%w: wallet %s: approver %q has no paired device (pair one with 'opencustody pair', then create the wallet)", ErrInvalidWallet, req.Name, u)
		}
	}
	w := &WalletRecord{
		Name: req.Name, Network: req.Network,
		Approvers: slices.Clone(req.Approvers), Quorum: req.Quorum,
		Keys: []WalletKey{}, CreatedAt: c.cfg.Now().UTC().Truncate(time.Second),
		Backupable: req.Backupable,
	}
	if pol != nil {
		w.setPolicy(pol, 1)
	}
	if err := c.cfg.Wallets.CreateWallet(ctx, w); err != nil {
		return nil, err
	}
	return w, nil
}

// pairedDevicesOf returns the paired, unrevoked devices of user, sorted by
// id.
func pairedDevicesOf(devices []*DeviceRecord, user string) []*DeviceRecord {
	var out []*DeviceRecord
	for _, d := range devices {
		if d.User == user && d.State == DevicePaired {
			out = append(out, d)
		}
	}
	slices.SortFunc(out, func(a, b *DeviceRecord) int { return strings.Compare(a.ID, b.ID) })
	return out
}

// maxKeyLabelAttempts bounds the labels NewAddress tries when a label is
// already on the token (a key made before a crash, or by hand).
const maxKeyLabelAttempts = 8

// NewAddress makes a new custody key in the HSM for wallet name and
// returns the updated wallet and the new key; [WalletKey.Address] gives
// its address. The key is labelled "opencustody-NAME-INDEX" on the token,
// and is backup-able if the wallet is.
func (c *Core) NewAddress(ctx context.Context, name string) (*WalletRecord, WalletKey, error) {
	if err := c.approvalPath(); err != nil {
		return nil, WalletKey{}, err
	}
	if c.cfg.Keys == nil {
		return nil, WalletKey{}, errors.New("core: no HSM key manager configured: cannot make custody keys")
	}
	c.reqMu.Lock()
	defer c.reqMu.Unlock()
	w, err := c.cfg.Wallets.GetWallet(ctx, name)
	if err != nil {
		return nil, WalletKey{}, err
	}
	index := uint32(len(w.Keys))
	var key bitcoin.Key
	for attempt := 0; ; attempt++ {
		label := fmt.Sprintf("opencustody-%s-%d", w.Name, index+uint32(attempt))
		key, err = bitcoin.NewKey(ctx, c.cfg.Keys, bitcoin.NewKeyRequest{Label: label, Backupable: w.Backupable})
		if err == nil {
			break
		}
		if !errors.Is(err, hsm.ErrKeyExists) || attempt+1 >= maxKeyLabelAttempts {
			return nil, WalletKey{}, fmt.Errorf("core: wallet %s: %w", w.Name, err)
		}
	}
	k := WalletKey{Index: index, Ref: key.Ref, PublicKey: key.PublicKey, CreatedAt: c.cfg.Now().UTC().Truncate(time.Second)}
	w.Keys = append(w.Keys, k)
	if _, err := w.bitcoinWallet(len(w.Keys)); err != nil {
		return nil, WalletKey{}, err
	}
	if err := c.cfg.Wallets.UpdateWallet(ctx, w); err != nil {
		return nil, WalletKey{}, fmt.Errorf("core: wallet %s: store the new key: %w", w.Name, err)
	}
	return w, k, nil
}

// Wallet returns the wallet called name.
func (c *Core) Wallet(ctx context.Context, name string) (*WalletRecord, error) {
	if err := c.approvalPath(); err != nil {
		return nil, err
	}
	return c.cfg.Wallets.GetWallet(ctx, name)
}

// Wallets lists the wallets.
func (c *Core) Wallets(ctx context.Context) ([]*WalletRecord, error) {
	if err := c.approvalPath(); err != nil {
		return nil, err
	}
	return c.cfg.Wallets.ListWallets(ctx)
}
