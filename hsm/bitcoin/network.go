package bitcoin

import (
	"fmt"

	"github.com/btcsuite/btcd/chaincfg"
)

// Network is a Bitcoin network. Its value is part of a [Summary]'s canonical
// encoding, so the numbers never change.
type Network uint8

const (
	// Mainnet is Bitcoin's main network (addresses bc1…, 1…, 3…).
	Mainnet Network = 1
	// Testnet3 is the public test network version 3 (tb1…, m…, n…, 2…).
	Testnet3 Network = 2
	// Signet is the default public signet (tb1…).
	Signet Network = 3
	// Regtest is Bitcoin Core's and btcd's local regression test network
	// (bcrt1…).
	Regtest Network = 4
	// Simnet is btcd's local simulation network (sb1…).
	Simnet Network = 5
)

var networks = []struct {
	n      Network
	params *chaincfg.Params
}{
	{Mainnet, &chaincfg.MainNetParams},
	{Testnet3, &chaincfg.TestNet3Params},
	{Signet, &chaincfg.SigNetParams},
	{Regtest, &chaincfg.RegressionNetParams},
	{Simnet, &chaincfg.SimNetParams},
}

// Params returns the network's parameters, or nil if n is not a known
// network.
func (n Network) Params() *chaincfg.Params {
	for _, e := range networks {
		if e.n == n {
			return e.params
		}
	}
	return nil
}

// String returns the network's name as btcd's chaincfg spells it:
// "mainnet", "testnet3", "signet", "regtest" or "simnet".
func (n Network) String() string {
	if p := n.Params(); p != nil {
		return p.Name
	}
	return fmt.Sprintf("network(%d)", uint8(n))
}

// ParseNetwork accepts a network's name ([Network.String]), and "bitcoin",
// "main" and "testnet" as other names for mainnet and testnet3.
func ParseNetwork(s string) (Network, error) {
	switch s {
	case "bitcoin", "main":
		return Mainnet, nil
	case "testnet", "test":
		return Testnet3, nil
	}
	for _, e := range networks {
		if e.params.Name == s {
			return e.n, nil
		}
	}
	return 0, fmt.Errorf("bitcoin: unknown network %q (want mainnet, testnet3, signet, regtest or simnet)", s)
}
