package hsmd

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"

	"github.com/opencustodynet/opencustody/hsm/core"
	"github.com/opencustodynet/opencustody/hsm/records"
)

// deviceKind is the record kind of device records.
const deviceKind = "device"

// DeviceStore keeps the core's device records as authenticated records:
// JSON bodies under kind "device", keyed by device id, each MAC'd by the
// HSM record key (package records). A record that fails authentication is
// returned as an error wrapping records.ErrIntegrity, never as a device.
type DeviceStore struct {
	Records *records.Store
}

var _ core.DeviceStore = DeviceStore{}

func (s DeviceStore) decode(r records.Record) (*core.DeviceRecord, error) {
	if d := deviceDecodes.get(r); d != nil {
		return d, nil
	}
	var d core.DeviceRecord
	if err := json.Unmarshal(r.Body, &d); err != nil {
		return nil, fmt.Errorf("hsmd: device record %s: %w", r.Key, err)
	}
	if d.ID != r.Key {
		// The MAC binds the key; a body naming another id was written so.
		return nil, fmt.Errorf("hsmd: device record %s names device %s", r.Key, d.ID)
	}
	d.Version = r.Version
	deviceDecodes.put(r, &d)
	return cloneDevice(&d), nil
}

// deviceDecodes remembers decoded device records by their exact key,
// version and body: the approval path decodes every device at every
// submit, and they seldom change.
var deviceDecodes = decodeCache{m: map[decodeKey]*core.DeviceRecord{}}

type decodeKey struct {
	key     string
	version uint64
	body    string
}

// maxDecodes bounds decodeCache; when full it starts again, empty.
const maxDecodes = 8192

type decodeCache struct {
	mu sync.Mutex
	m  map[decodeKey]*core.DeviceRecord
}

func (c *decodeCache) get(r records.Record) *core.DeviceRecord {
	c.mu.Lock()
	d := c.m[decodeKey{r.Key, r.Version, string(r.Body)}]
	c.mu.Unlock()
	if d == nil {
		return nil
	}
	return cloneDevice(d)
}

func (c *decodeCache) put(r records.Record, d *core.DeviceRecord) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.m) >= maxDecodes {
		c.m = map[decodeKey]*core.DeviceRecord{}
	}
	c.m[decodeKey{r.Key, r.Version, string(r.Body)}] = cloneDevice(d)
}

// cloneDevice copies d, so that no caller shares memory with the cache.
func cloneDevice(d *core.DeviceRecord) *core.DeviceRecord {
	c := *d
	c.IdentityKey = bytes.Clone(d.IdentityKey)
	if d.Attestation != nil {
		a := *d.Attestation
		c.Attestation = &a
	}
	return &c
}

// GetDevice implements core.DeviceStore.
func (s DeviceStore) GetDevice(ctx context.Context, id string) (*core.DeviceRecord, error) {
	r, err := s.Records.Get(ctx, deviceKind, id)
	if errors.Is(err, records.ErrNotFound) {
		return nil, fmt.Errorf("%w: %s", core.ErrDeviceNotFound, id)
	}
	if err != nil {
		return nil, err
	}
	return s.decode(r)
}

// ListDevices implements core.DeviceStore.
func (s DeviceStore) ListDevices(ctx context.Context) ([]*core.DeviceRecord, error) {
	return s.decodeAll(s.Records.List(ctx, deviceKind))
}

// CurrentDevices implements core.DeviceStore.
func (s DeviceStore) CurrentDevices(ctx context.Context) ([]*core.DeviceRecord, error) {
	return s.decodeAll(s.Records.Latest(ctx, deviceKind))
}

func (s DeviceStore) decodeAll(rs []records.Record, err error) ([]*core.DeviceRecord, error) {
	if err != nil {
		return nil, err
	}
	out := make([]*core.DeviceRecord, 0, len(rs))
	for _, r := range rs {
		d, err := s.decode(r)
		if err != nil {
			return nil, err
		}
		out = append(out, d)
	}
	return out, nil
}

// CreateDevice implements core.DeviceStore.
func (s DeviceStore) CreateDevice(ctx context.Context, d *core.DeviceRecord) error {
	body, err := json.Marshal(d)
	if err != nil {
		return err
	}
	r, err := s.Records.Create(ctx, deviceKind, d.ID, body)
	if err != nil {
		return err
	}
	d.Version = r.Version
	return nil
}

// UpdateDevice implements core.DeviceStore.
func (s DeviceStore) UpdateDevice(ctx context.Context, d *core.DeviceRecord) error {
	body, err := json.Marshal(d)
	if err != nil {
		return err
	}
	r, err := s.Records.Update(ctx, deviceKind, d.ID, d.Version, body)
	if err != nil {
		return err
	}
	d.Version = r.Version
	return nil
}
