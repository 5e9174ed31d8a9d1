package backup_test

import (
	"crypto/ecdh"
	"crypto/rand"
	"testing"

	"github.com/btcsuite/btcd/btcec/v2"
	"github.com/btcsuite/btcd/btcutil"
	"github.com/btcsuite/btcd/txscript"

	"github.com/opencustodynet/opencustody/protocol/pb"
	"github.com/opencustodynet/opencustody/protocol/signed"
)

// softKey is a software P-256 identity key, for format tests only.
func softKey(t testing.TB) *signed.SoftwareKey {
	t.Helper()
	k, err := signed.GenerateSoftwareKey(pb.Algorithm_ALGORITHM_ECDSA_P256, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// point is a fresh P-256 point, standing in for a backup key.
func point(t testing.TB) []byte {
	t.Helper()
	k, err := ecdh.P256().GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k.PublicKey().Bytes()
}

func compressed(t testing.TB) []byte {
	t.Helper()
	k, err := btcec.NewPrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	return k.PubKey().SerializeCompressed()
}

func bitcoinPkScript(a btcutil.Address) ([]byte, error) { return txscript.PayToAddrScript(a) }
