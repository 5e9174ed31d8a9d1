package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/opencustodynet/opencustody/hsm/hsmd"
	"github.com/opencustodynet/opencustody/protocol/apiclient"
	"github.com/opencustodynet/opencustody/protocol/apipb"
)

// hsmdFlags say how a client command reaches hsmd.
type hsmdFlags struct {
	addr      string
	cert      string
	tokenFile string
}

func addHSMDFlags(c *cobra.Command, f *hsmdFlags) {
	c.Flags().StringVar(&f.addr, "hsmd", "", "hsmd address (default $OPENCUSTODY_HSMD, then "+hsmd.DefaultAddress+")")
	c.Flags().StringVar(&f.cert, "hsmd-cert", "", "SHA-256 fingerprint of hsmd's certificate (default $OPENCUSTODY_HSMD_CERT, then the certificate in the data directory)")
	c.Flags().StringVar(&f.tokenFile, "token-file", "", "file holding the token (default $OPENCUSTODY_TOKEN_FILE, then the one in the data directory)")
}

// hsmdDir is where hsmd keeps its certificate and tokens.
func hsmdDir(dataDir string) string { return filepath.Join(dataDir, "hsmd") }

func firstOf(vals ...string) string {
	for _, v := range vals {
		if v != "" {
			return v
		}
	}
	return ""
}

// dial connects to hsmd with the token in tokenName (operator or bridge).
func (g *globals) dialHSMD(f *hsmdFlags, tokenName string) (*grpc.ClientConn, error) {
	addr := firstOf(f.addr, os.Getenv("OPENCUSTODY_HSMD"), hsmd.DefaultAddress)
	cert := firstOf(f.cert, os.Getenv("OPENCUSTODY_HSMD_CERT"))
	tokenFile := firstOf(f.tokenFile, os.Getenv("OPENCUSTODY_TOKEN_FILE"))
	if cert == "" || tokenFile == "" {
		dir, err := g.DataDir()
		if err != nil {
			return nil, err
		}
		if cert == "" {
			if cert, err = hsmd.CertFingerprintFromDir(hsmdDir(dir)); err != nil {
				return nil, withCode(ExitUnavailable, fmt.Errorf("%w; on another machine pass --hsmd-cert with the fingerprint hsmd printed", err))
			}
		}
		if tokenFile == "" {
			tokenFile = filepath.Join(hsmdDir(dir), tokenName)
		}
	}
	token, err := hsmd.ReadToken(tokenFile)
	if err != nil {
		return nil, withCode(ExitUnavailable, fmt.Errorf("%w; pass --token-file", err))
	}
	conn, err := apiclient.Dial(apiclient.Options{Address: addr, CertFingerprint: cert, Token: token})
	if err != nil {
		return nil, withCode(ExitUsage, err)
	}
	return conn, nil
}

// callHSMD dials hsmd with the operator token, runs call on the client
// newClient makes, with a context bounded by timeout, and maps its error to
// the CLI's exit codes.
func callHSMD[C any](ctx context.Context, g *globals, f *hsmdFlags, timeout time.Duration, newClient func(grpc.ClientConnInterface) C, call func(context.Context, C) error) error {
	conn, err := g.dialHSMD(f, hsmd.OperatorTokenFile)
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	return rpcError(call(ctx, newClient(conn)))
}

// withOperator calls the Operator API (see callHSMD).
func (g *globals) withOperator(ctx context.Context, f *hsmdFlags, timeout time.Duration, call func(context.Context, apipb.OperatorClient) error) error {
	return callHSMD(ctx, g, f, timeout, apipb.NewOperatorClient, call)
}

// withCustody calls the Custody API (see callHSMD).
func (g *globals) withCustody(ctx context.Context, f *hsmdFlags, timeout time.Duration, call func(context.Context, apipb.CustodyClient) error) error {
	return callHSMD(ctx, g, f, timeout, apipb.NewCustodyClient, call)
}

// rpcError turns a gRPC error into a CLI error with the right exit code.
func rpcError(err error) error {
	if err == nil {
		return nil
	}
	var ee *ExitError
	if errors.As(err, &ee) {
		return err
	}
	st, ok := status.FromError(err)
	if !ok {
		return err
	}
	msg := errors.New(st.Message())
	switch st.Code() {
	case codes.Unavailable:
		return withCode(ExitUnavailable, fmt.Errorf("cannot reach hsmd: %s (is 'opencustody hsmd' running, is --hsmd its address, and --hsmd-cert the fingerprint it printed?)", st.Message()))
	case codes.DeadlineExceeded:
		return withCode(ExitUnavailable, msg)
	case codes.Unauthenticated, codes.PermissionDenied, codes.Aborted:
		return withCode(ExitRefused, msg)
	case codes.DataLoss:
		return withCode(ExitIntegrity, msg)
	case codes.InvalidArgument:
		return withCode(ExitUsage, msg)
	}
	return msg
}
