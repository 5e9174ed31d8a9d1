package hsmd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/opencustodynet/opencustody/hsm/core"
	"github.com/opencustodynet/opencustody/hsm/records"
)

// Record kinds of the approval path.
const (
	walletKind     = "wallet"
	requestKind    = "request"
	changeKind     = "change"
	governanceKind = "governance"
	spendsKind     = "spends"
	governanceKey  = "admins"
)

// WalletStore keeps the core's wallet records as authenticated records:
// JSON bodies under kind "wallet", keyed by wallet name, each MAC'd by the
// HSM record key. A record that fails authentication is an error wrapping
// records.ErrIntegrity, never a wallet: a hostile database cannot add an
// approver, lower a quorum or swap a custody key unnoticed.
type WalletStore struct {
	Records *records.Store
}

// RequestStore keeps the core's request records the same way, under kind
// "request", keyed by request id: a hostile database cannot forge an
// approval, change what was approved or mark a request signed.
type RequestStore struct {
	Records *records.Store
}

// ChangeStore keeps the core's admin changes (kind "change", keyed by
// change id) and its governance record (kind "governance", key "admins")
// the same way: a hostile database cannot approve a change, alter what
// the admins approved, or lower the admin quorum.
type ChangeStore struct {
	Records *records.Store
}

var (
	_ core.WalletStore  = WalletStore{}
	_ core.RequestStore = RequestStore{}
	_ core.ChangeStore  = ChangeStore{}
)

// decodeRecord decodes r's JSON body into v and checks that the body names
// the record's own key.
func decodeRecord(r records.Record, v any, name func() string) error {
	if err := json.Unmarshal(r.Body, v); err != nil {
		return fmt.Errorf("hsmd: %s record %s: %w", r.Kind, r.Key, err)
	}
	if got := name(); got != r.Key {
		// The MAC binds the key; a body naming another was written so.
		return fmt.Errorf("hsmd: %s record %s names %s", r.Kind, r.Key, got)
	}
	return nil
}

func getRecord(ctx context.Context, rs *records.Store, kind, key string, notFound error, v any, name func() string) (uint64, error) {
	r, err := rs.Get(ctx, kind, key)
	if errors.Is(err, records.ErrNotFound) {
		return 0, fmt.Errorf("%w: %s", notFound, key)
	}
	if err != nil {
		return 0, err
	}
	return r.Version, decodeRecord(r, v, name)
}

func createRecord(ctx context.Context, rs *records.Store, kind, key string, v any) (uint64, error) {
	body, err := json.Marshal(v)
	if err != nil {
		return 0, err
	}
	r, err := rs.Create(ctx, kind, key, body)
	if err != nil {
		return 0, err
	}
	return r.Version, nil
}

func updateRecord(ctx context.Context, rs *records.Store, kind, key string, version uint64, v any) (uint64, error) {
	body, err := json.Marshal(v)
	if err != nil {
		return 0, err
	}
	r, err := rs.Update(ctx, kind, key, version, body)
	if err != nil {
		return 0, err
	}
	return r.Version, nil
}

// GetWallet implements core.WalletStore.
func (s WalletStore) GetWallet(ctx context.Context, name string) (*core.WalletRecord, error) {
	var w core.WalletRecord
	v, err := getRecord(ctx, s.Records, walletKind, name, core.ErrWalletNotFound, &w, func() string { return w.Name })
	if err != nil {
		return nil, err
	}
	w.Version = v
	return &w, nil
}

// ListWallets implements core.WalletStore.
func (s WalletStore) ListWallets(ctx context.Context) ([]*core.WalletRecord, error) {
	rs, err := s.Records.List(ctx, walletKind)
	if err != nil {
		return nil, err
	}
	out := make([]*core.WalletRecord, 0, len(rs))
	for _, r := range rs {
		w := &core.WalletRecord{}
		if err := decodeRecord(r, w, func() string { return w.Name }); err != nil {
			return nil, err
		}
		w.Version = r.Version
		out = append(out, w)
	}
	return out, nil
}

// CreateWallet implements core.WalletStore.
func (s WalletStore) CreateWallet(ctx context.Context, w *core.WalletRecord) error {
	v, err := createRecord(ctx, s.Records, walletKind, w.Name, w)
	if errors.Is(err, records.ErrExists) {
		return fmt.Errorf("%w: %s", core.ErrWalletExists, w.Name)
	}
	if err != nil {
		return err
	}
	w.Version = v
	return nil
}

// UpdateWallet implements core.WalletStore.
func (s WalletStore) UpdateWallet(ctx context.Context, w *core.WalletRecord) error {
	v, err := updateRecord(ctx, s.Records, walletKind, w.Name, w.Version, w)
	if err != nil {
		return err
	}
	w.Version = v
	return nil
}

// GetRequest implements core.RequestStore.
func (s RequestStore) GetRequest(ctx context.Context, id string) (*core.RequestRecord, error) {
	var r core.RequestRecord
	v, err := getRecord(ctx, s.Records, requestKind, id, core.ErrRequestNotFound, &r, func() string { return r.ID })
	if err != nil {
		return nil, err
	}
	r.Version = v
	return &r, nil
}

// ListRequests implements core.RequestStore.
func (s RequestStore) ListRequests(ctx context.Context) ([]*core.RequestRecord, error) {
	rs, err := s.Records.List(ctx, requestKind)
	if err != nil {
		return nil, err
	}
	out := make([]*core.RequestRecord, 0, len(rs))
	for _, rec := range rs {
		r, err := decodeRequest(rec)
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, nil
}

func decodeRequest(rec records.Record) (*core.RequestRecord, error) {
	r := &core.RequestRecord{}
	if err := decodeRecord(rec, r, func() string { return r.ID }); err != nil {
		return nil, err
	}
	r.Version = rec.Version
	return r, nil
}

// ListRequestStatus implements core.RequestStore. It reads the requests
// one at a time (records.Store.Each) and keeps only their status.
func (s RequestStore) ListRequestStatus(ctx context.Context) ([]core.RequestStatus, error) {
	var out []core.RequestStatus
	err := s.Records.Each(ctx, requestKind, func(r records.Record) error {
		var st core.RequestStatus
		if err := decodeRecord(r, &st, func() string { return st.ID }); err != nil {
			return err
		}
		out = append(out, st)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// EachRequest implements core.RequestStore with records.Store.Each.
func (s RequestStore) EachRequest(ctx context.Context, fn func(*core.RequestRecord) error) error {
	return s.Records.Each(ctx, requestKind, func(rec records.Record) error {
		r, err := decodeRequest(rec)
		if err != nil {
			return err
		}
		return fn(r)
	})
}

// CreateRequest implements core.RequestStore.
func (s RequestStore) CreateRequest(ctx context.Context, r *core.RequestRecord) error {
	v, err := createRecord(ctx, s.Records, requestKind, r.ID, r)
	if err != nil {
		return err
	}
	r.Version = v
	return nil
}

// UpdateRequest implements core.RequestStore.
func (s RequestStore) UpdateRequest(ctx context.Context, r *core.RequestRecord) error {
	v, err := updateRecord(ctx, s.Records, requestKind, r.ID, r.Version, r)
	if err != nil {
		return err
	}
	r.Version = v
	return nil
}

// StoreAnswer implements core.RequestStore: the device, the request and
// the ledger in one records.Store.Write, under one new root.
func (s RequestStore) StoreAnswer(ctx context.Context, d *core.DeviceRecord, r *core.RequestRecord, l *core.SpendLedger) error {
	dev, err := json.Marshal(d)
	if err != nil {
		return err
	}
	req, err := json.Marshal(r)
	if err != nil {
		return err
	}
	changes := []records.Change{
		{Kind: deviceKind, Key: d.ID, Version: d.Version, Body: dev},
		{Kind: requestKind, Key: r.ID, Version: r.Version, Body: req},
	}
	if l != nil {
		body, err := json.Marshal(l)
		if err != nil {
			return err
		}
		changes = append(changes, records.Change{Kind: spendsKind, Key: l.Wallet, Version: l.Version, Body: body})
	}
	recs, err := s.Records.Write(ctx, changes...)
	if err != nil {
		return err
	}
	d.Version, r.Version = recs[0].Version, recs[1].Version
	if l != nil {
		l.Version = recs[2].Version
	}
	return nil
}

// GetChange implements core.ChangeStore.
func (s ChangeStore) GetChange(ctx context.Context, id string) (*core.ChangeRecord, error) {
	var ch core.ChangeRecord
	v, err := getRecord(ctx, s.Records, changeKind, id, core.ErrChangeNotFound, &ch, func() string { return ch.ID })
	if err != nil {
		return nil, err
	}
	ch.Version = v
	return &ch, nil
}

// ListChanges implements core.ChangeStore.
func (s ChangeStore) ListChanges(ctx context.Context) ([]*core.ChangeRecord, error) {
	rs, err := s.Records.List(ctx, changeKind)
	if err != nil {
		return nil, err
	}
	out := make([]*core.ChangeRecord, 0, len(rs))
	for _, rec := range rs {
		ch := &core.ChangeRecord{}
		if err := decodeRecord(rec, ch, func() string { return ch.ID }); err != nil {
			return nil, err
		}
		ch.Version = rec.Version
		out = append(out, ch)
	}
	return out, nil
}

// CreateChange implements core.ChangeStore.
func (s ChangeStore) CreateChange(ctx context.Context, ch *core.ChangeRecord) error {
	v, err := createRecord(ctx, s.Records, changeKind, ch.ID, ch)
	if err != nil {
		return err
	}
	ch.Version = v
	return nil
}

// UpdateChange implements core.ChangeStore.
func (s ChangeStore) UpdateChange(ctx context.Context, ch *core.ChangeRecord) error {
	v, err := updateRecord(ctx, s.Records, changeKind, ch.ID, ch.Version, ch)
	if err != nil {
		return err
	}
	ch.Version = v
	return nil
}

// GetGovernance implements core.ChangeStore.
func (s ChangeStore) GetGovernance(ctx context.Context) (*core.GovernanceRecord, error) {
	r, err := s.Records.Get(ctx, governanceKind, governanceKey)
	if errors.Is(err, records.ErrNotFound) {
		return nil, core.ErrNoGovernance
	}
	if err != nil {
		return nil, err
	}
	var g core.GovernanceRecord
	if err := json.Unmarshal(r.Body, &g); err != nil {
		return nil, fmt.Errorf("hsmd: %s record %s: %w", r.Kind, r.Key, err)
	}
	g.Version = r.Version
	return &g, nil
}

// PutGovernance implements core.ChangeStore.
func (s ChangeStore) PutGovernance(ctx context.Context, g *core.GovernanceRecord) error {
	var (
		v   uint64
		err error
	)
	if g.Version == 0 {
		v, err = createRecord(ctx, s.Records, governanceKind, governanceKey, g)
	} else {
		v, err = updateRecord(ctx, s.Records, governanceKind, governanceKey, g.Version, g)
	}
	if err != nil {
		return err
	}
	g.Version = v
	return nil
}

// Spends implements core.RequestStore: the wallet's spend ledger, kind
// "spends" keyed by wallet name, authenticated like the requests (a
// hostile database cannot lower what a wallet has sent).
func (s RequestStore) Spends(ctx context.Context, wallet string) (*core.SpendLedger, error) {
	l := &core.SpendLedger{}
	v, err := getRecord(ctx, s.Records, spendsKind, wallet, records.ErrNotFound, l, func() string { return l.Wallet })
	if errors.Is(err, records.ErrNotFound) {
		return &core.SpendLedger{Wallet: wallet, Spends: []core.LedgerSpend{}}, nil
	}
	if err != nil {
		return nil, err
	}
	l.Version = v
	return l, nil
}

// UpdateSpends implements core.RequestStore.
func (s RequestStore) UpdateSpends(ctx context.Context, l *core.SpendLedger) error {
	var v uint64
	var err error
	if l.Version == 0 {
		v, err = createRecord(ctx, s.Records, spendsKind, l.Wallet, l)
	} else {
		v, err = updateRecord(ctx, s.Records, spendsKind, l.Wallet, l.Version, l)
	}
	if errors.Is(err, records.ErrExists) || errors.Is(err, records.ErrConflict) {
		return fmt.Errorf("%w: wallet %s: %w", core.ErrLedgerConflict, l.Wallet, err)
	}
	if err != nil {
		return err
	}
	l.Version = v
	return nil
}
