// Package apiclient dials hsmd's gRPC API the one way every client must:
// over TLS to a server whose certificate is pinned by its SHA-256
// fingerprint, with a bearer token on every call.
//
// hsmd's certificate is self-signed (hsmd makes it on first start and
// prints its fingerprint), so no CA is involved: a client that does not
// know the fingerprint cannot connect. Tokens authorise the caller: the
// bridge token opens the relay stream, the operator token the operator API.
package apiclient

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
)

// Options says how to reach hsmd.
type Options struct {
	// Address is host:port.
	Address string
	// CertFingerprint is the hex SHA-256 of hsmd's certificate (DER),
	// optionally prefixed "sha256:" and with ':' or ' ' separators.
	CertFingerprint string
	// Token is the bearer token.
	Token string
}

// CertFingerprint returns the canonical fingerprint of a DER certificate.
func CertFingerprint(der []byte) string {
	h := sha256.Sum256(der)
	return "sha256:" + hex.EncodeToString(h[:])
}

// normalize turns the accepted spellings of a fingerprint into raw bytes.
func normalize(fp string) ([]byte, error) {
	s := strings.TrimPrefix(strings.ToLower(strings.TrimSpace(fp)), "sha256:")
	s = strings.NewReplacer(":", "", " ", "").Replace(s)
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != sha256.Size {
		return nil, fmt.Errorf("apiclient: certificate fingerprint %q is not a SHA-256 hex value", fp)
	}
	return b, nil
}

// ErrCertMismatch means the server's certificate is not the pinned one.
var ErrCertMismatch = errors.New("apiclient: hsmd certificate does not match the pinned fingerprint")

// TLSConfig returns a client TLS configuration that accepts exactly the
// certificate with the given fingerprint.
func TLSConfig(fingerprint string) (*tls.Config, error) {
	want, err := normalize(fingerprint)
	if err != nil {
		return nil, err
	}
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		// Chain verification is replaced by pinning: VerifyConnection
		// accepts only the pinned certificate.
		InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return ErrCertMismatch
			}
			got := sha256.Sum256(cs.PeerCertificates[0].Raw)
			if subtle.ConstantTimeCompare(got[:], want) != 1 {
				return fmt.Errorf("%w (got sha256:%x)", ErrCertMismatch, got)
			}
			return nil
		},
	}, nil
}

type bearer string

func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(b)}, nil
}

func (bearer) RequireTransportSecurity() bool { return true }

// Keepalive makes a client notice an hsmd that vanished without closing
// the connection (a host gone, a half-open TCP connection); hsmd allows
// pings this often.
var Keepalive = keepalive.ClientParameters{Time: 30 * time.Second, Timeout: 10 * time.Second, PermitWithoutStream: true}

// MaxMessageSize bounds a message a client receives: a request with its
// PSBT and the signed PSBT, each up to the 4 MiB hsmd reads, and room for
// the rest. gRPC's default of 4 MiB would cut such an answer off.
const MaxMessageSize = 16 << 20

// Dial connects to hsmd with [Keepalive] and any extra options. The
// connection is lazy: errors reaching hsmd surface on the first call.
func Dial(o Options, extra ...grpc.DialOption) (*grpc.ClientConn, error) {
	if o.Address == "" {
		return nil, errors.New("apiclient: no hsmd address")
	}
	if o.Token == "" {
		return nil, errors.New("apiclient: no token")
	}
	cfg, err := TLSConfig(o.CertFingerprint)
	if err != nil {
		return nil, err
	}
	opts := append([]grpc.DialOption{
		grpc.WithTransportCredentials(credentials.NewTLS(cfg)),
		grpc.WithPerRPCCredentials(bearer(o.Token)),
		grpc.WithKeepaliveParams(Keepalive),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(MaxMessageSize)),
	}, extra...)
	return grpc.NewClient(o.Address, opts...)
}
