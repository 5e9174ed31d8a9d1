package hsm

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/opencustodynet/opencustody/hsm/softhsm"
)

// TokenConfigFile is the name, in OpenCustody's data directory, of the file
// that says which token to use. `opencustody hsm init` writes it; hsmd and
// the other commands read it.
const TokenConfigFile = "hsm.json"

// TokenConfig is the content of [TokenConfigFile]. It holds no secret: the
// URI names the PIN's source, never the PIN.
type TokenConfig struct {
	// URI is the token's RFC 7512 URI with module-path and, usually,
	// pin-source.
	URI string `json:"uri"`
	// SoftHSM2Conf, if set, is the softhsm2.conf of a SoftHSM2 token kept in
	// the data directory; [TokenConfig.Open] points SOFTHSM2_CONF at it.
	SoftHSM2Conf string `json:"softhsm2_conf,omitempty"`
	// IdentityKey and RecordKey are the labels of the identity and record
	// keys ([IdentityKeyLabel] and [RecordKeyLabel] unless chosen otherwise).
	IdentityKey string `json:"identity_key"`
	RecordKey   string `json:"record_key"`
	// IdentityFingerprint is the identity key's fingerprint when the file
	// was written, so a replaced key is noticed.
	IdentityFingerprint string `json:"identity_fingerprint,omitempty"`
}

// ErrNoTokenConfig is wrapped by [ReadTokenConfig] when the data directory
// has no [TokenConfigFile].
var ErrNoTokenConfig = errors.New("no HSM token configured")

// ReadTokenConfig reads dataDir's [TokenConfigFile].
func ReadTokenConfig(dataDir string) (*TokenConfig, error) {
	path := filepath.Join(dataDir, TokenConfigFile)
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("hsm: %w in %s (no %s): run `opencustody hsm init` first, or name the token with --uri", ErrNoTokenConfig, dataDir, TokenConfigFile)
	}
	if err != nil {
		return nil, fmt.Errorf("hsm: read token configuration: %w", err)
	}
	var c TokenConfig
	if err := json.Unmarshal(b, &c); err != nil {
		return nil, fmt.Errorf("hsm: token configuration %s: %w", path, err)
	}
	if c.URI == "" {
		return nil, fmt.Errorf("hsm: token configuration %s has no uri", path)
	}
	return &c, nil
}

// WriteTokenConfig writes c to dataDir's [TokenConfigFile], mode 0600,
// replacing it atomically.
func WriteTokenConfig(dataDir string, c *TokenConfig) error {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false) // keep the URI's '&' readable
	enc.SetIndent("", "  ")
	if err := enc.Encode(c); err != nil {
		return fmt.Errorf("hsm: %w", err)
	}
	b := buf.Bytes()
	tmp, err := os.CreateTemp(dataDir, TokenConfigFile+".*")
	if err != nil {
		return fmt.Errorf("hsm: write token configuration: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return fmt.Errorf("hsm: write token configuration: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("hsm: write token configuration: %w", err)
	}
	if err := os.Rename(tmp.Name(), filepath.Join(dataDir, TokenConfigFile)); err != nil {
		return fmt.Errorf("hsm: write token configuration: %w", err)
	}
	return nil
}

// Open opens the configured token: it points SOFTHSM2_CONF at
// c.SoftHSM2Conf if set, then calls [Open] with cfg and c.URI (cfg.URI is
// ignored).
func (c *TokenConfig) Open(ctx context.Context, cfg Config) (*PKCS11Store, error) {
	if c.SoftHSM2Conf != "" {
		if err := softhsm.Use(c.SoftHSM2Conf); err != nil {
			return nil, fmt.Errorf("hsm: %w", err)
		}
	}
	cfg.URI = c.URI
	return Open(ctx, cfg)
}
