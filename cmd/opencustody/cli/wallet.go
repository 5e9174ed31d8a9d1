package cli

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/opencustodynet/opencustody/protocol/apipb"
)

func init() { commands = append(commands, newWalletCommand) }

// walletJSON is a wallet as hsmd knows it, for --json output.
type walletJSON struct {
	Name      string        `json:"name"`
	Network   string        `json:"network"`
	Approvers []string      `json:"approvers"`
	Quorum    uint32        `json:"quorum"`
	CreatedAt string        `json:"created_at"`
	Addresses []addressJSON `json:"addresses"`
	// PolicyVersion counts the wallet's policy changes, from 1.
	PolicyVersion uint64 `json:"policy_version"`
	Backupable    bool   `json:"backupable"`
}

type addressJSON struct {
	Index     uint32 `json:"index"`
	Address   string `json:"address"`
	PublicKey string `json:"public_key"`
	KeyRef    string `json:"key_ref"`
	CreatedAt string `json:"created_at"`
}

func unixTime(s int64) string {
	if s == 0 {
		return ""
	}
	return time.Unix(s, 0).UTC().Format(time.RFC3339)
}

func newAddressJSON(a *apipb.WalletAddress) addressJSON {
	return addressJSON{Index: a.GetIndex(), Address: a.GetAddress(), PublicKey: hex.EncodeToString(a.GetPublicKey()),
		KeyRef: a.GetKeyRef(), CreatedAt: unixTime(a.GetCreatedAt())}
}

func newWalletJSON(w *apipb.Wallet) *walletJSON {
	j := &walletJSON{Name: w.GetName(), Network: w.GetNetwork(), Approvers: w.GetApprovers(), Quorum: w.GetQuorum(),
		CreatedAt: unixTime(w.GetCreatedAt()), Addresses: []addressJSON{}, PolicyVersion: w.GetPolicyVersion(), Backupable: w.GetBackupable()}
	if j.Approvers == nil {
		j.Approvers = []string{}
	}
	for _, a := range w.GetAddresses() {
		j.Addresses = append(j.Addresses, newAddressJSON(a))
	}
	return j
}

// printWallet writes a wallet for people.
func printWallet(w io.Writer, j *walletJSON) error {
	fmt.Fprintf(w, "wallet %s (%s)\n", j.Name, j.Network)
	if j.Quorum > 0 {
		fmt.Fprintf(w, "approvers: %s; quorum %d of %d\n", strings.Join(j.Approvers, ", "), j.Quorum, len(j.Approvers))
	} else {
		fmt.Fprintf(w, "approvers: %s; see 'opencustody policy show %s'\n", strings.Join(j.Approvers, ", "), j.Name)
	}
	fmt.Fprintf(w, "policy:    version %d\n", j.PolicyVersion)
	fmt.Fprintf(w, "created:   %s\n", j.CreatedAt)
	if j.Backupable {
		fmt.Fprintln(w, "backup:    its keys are backup-able (wrapped for a registered backup HSM only)")
	} else {
		fmt.Fprintln(w, "backup:    no; its keys never leave this HSM")
	}
	if len(j.Addresses) == 0 {
		fmt.Fprintf(w, "no addresses yet: make one with 'opencustody wallet address %s'\n", j.Name)
		return nil
	}
	fmt.Fprintln(w, "addresses:")
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for _, a := range j.Addresses {
		fmt.Fprintf(tw, "  %d\t%s\t%s\n", a.Index, a.Address, a.KeyRef)
	}
	return tw.Flush()
}

func newWalletCommand(g *globals) *cobra.Command {
	c := &cobra.Command{
		Use:   "wallet",
		Short: "Create wallets, make their addresses, and show them",
		Long: `A wallet is a set of custody keys in the HSM, one per address, on one Bitcoin
network, and the approvers of its transfers: a quorum of them must approve each
transfer on their paired devices. Wallet records are authenticated by the HSM
record key: a hostile database cannot add an approver or lower a quorum.`,
	}
	c.AddCommand(newWalletCreateCommand(g), newWalletAddressCommand(g), newWalletShowCommand(g), newWalletListCommand(g))
	return c
}

func newWalletCreateCommand(g *globals) *cobra.Command {
	var (
		f          hsmdFlags
		approvers  []string
		quorum     uint32
		network    string
		polFile    string
		backupable bool
	)
	c := &cobra.Command{
		Use:   "create NAME (--approvers USER,... --quorum M | --policy FILE)",
		Short: "Create a wallet approved by M of the given users, or under a policy",
		Long: `create stores a new wallet: QUORUM of the APPROVERS must approve each of its
transfers on their devices. Every approver must be a user with a paired device
('opencustody devices list'). The wallet has no address until 'opencustody
wallet address NAME'.

--policy FILE (YAML or JSON, see 'opencustody policy --help') sets a full policy
instead: groups, tiers, allow-list, velocity limits, time lock. Every user it
names must have a paired device. Later changes go through the admin quorum
('opencustody policy set').

--backupable makes each of the wallet's custody keys backup-able: it can leave
the HSM wrapped for a registered backup HSM ('opencustody backup'), and in no
other form. Decide now: a key cannot be made backup-able later.`,
		Args: cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			var doc []byte
			switch {
			case polFile != "" && (len(approvers) > 0 || quorum != 0):
				return withCode(ExitUsage, errNoPolicyFile)
			case polFile != "":
				var err error
				if doc, _, err = readPolicyFile(g, polFile); err != nil {
					return err
				}
			case len(approvers) == 0 || quorum == 0:
				return withCode(ExitUsage, errors.New("wallet create needs --approvers and --quorum, or --policy"))
			}
			var w *apipb.Wallet
			err := g.withCustody(c.Context(), &f, 30*time.Second, func(ctx context.Context, cl apipb.CustodyClient) (err error) {
				w, err = cl.CreateWallet(ctx, &apipb.CreateWalletRequest{Name: args[0], Network: network, Approvers: approvers, Quorum: quorum, Policy: doc, Backupable: backupable})
				return err
			})
			if err != nil {
				return err
			}
			j := newWalletJSON(w)
			if g.json {
				return writeJSON(g.streams.Out, j)
			}
			if doc != nil {
				fmt.Fprintf(g.streams.Out, "created wallet %s on %s under the policy in %s ('opencustody policy show %s')\n", j.Name, j.Network, polFile, j.Name)
				return nil
			}
			fmt.Fprintf(g.streams.Out, "created wallet %s on %s: %d of %s must approve\n", j.Name, j.Network, j.Quorum, strings.Join(j.Approvers, ", "))
			return nil
		},
	}
	addHSMDFlags(c, &f)
	c.Flags().StringSliceVar(&approvers, "approvers", nil, "users who approve transfers, comma separated")
	c.Flags().Uint32Var(&quorum, "quorum", 0, "how many of the approvers must approve each transfer")
	c.Flags().StringVar(&network, "network", "mainnet", "mainnet, testnet3, signet, regtest or simnet")
	c.Flags().StringVar(&polFile, "policy", "", "a policy document (YAML or JSON) instead of --approvers and --quorum")
	c.Flags().BoolVar(&backupable, "backupable", false, "make the wallet's custody keys backup-able to a second HSM")
	addJSONFlag(c, g)
	return c
}

func newWalletAddressCommand(g *globals) *cobra.Command {
	var f hsmdFlags
	c := &cobra.Command{
		Use:   "address NAME",
		Short: "Make a new custody key in the HSM and print its address",
		Long: `address has the HSM generate a new custody key (secp256k1, never extractable)
for the wallet and prints its P2WPKH address. Coins sent there can be spent only
with the wallet's approvers' approval.`,
		Args: cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			var res *apipb.NewAddressResponse
			err := g.withCustody(c.Context(), &f, time.Minute, func(ctx context.Context, cl apipb.CustodyClient) (err error) {
				res, err = cl.NewAddress(ctx, &apipb.NewAddressRequest{Wallet: args[0]})
				return err
			})
			if err != nil {
				return err
			}
			a := newAddressJSON(res.GetAddress())
			if g.json {
				return writeJSON(g.streams.Out, a)
			}
			fmt.Fprintln(g.streams.Out, a.Address)
			return nil
		},
	}
	addHSMDFlags(c, &f)
	addJSONFlag(c, g)
	return c
}

func newWalletShowCommand(g *globals) *cobra.Command {
	var f hsmdFlags
	c := &cobra.Command{
		Use:   "show NAME",
		Short: "Show a wallet: network, approvers, quorum and addresses",
		Args:  cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			var w *apipb.Wallet
			err := g.withCustody(c.Context(), &f, 30*time.Second, func(ctx context.Context, cl apipb.CustodyClient) (err error) {
				w, err = cl.GetWallet(ctx, &apipb.GetWalletRequest{Name: args[0]})
				return err
			})
			if err != nil {
				return err
			}
			j := newWalletJSON(w)
			if g.json {
				return writeJSON(g.streams.Out, j)
			}
			return printWallet(g.streams.Out, j)
		},
	}
	addHSMDFlags(c, &f)
	addJSONFlag(c, g)
	return c
}

func newWalletListCommand(g *globals) *cobra.Command {
	var f hsmdFlags
	c := &cobra.Command{
		Use:   "list",
		Short: "List the wallets",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			var res *apipb.ListWalletsResponse
			err := g.withCustody(c.Context(), &f, 30*time.Second, func(ctx context.Context, cl apipb.CustodyClient) (err error) {
				res, err = cl.ListWallets(ctx, &apipb.ListWalletsRequest{})
				return err
			})
			if err != nil {
				return err
			}
			ws := make([]*walletJSON, 0, len(res.GetWallets()))
			for _, w := range res.GetWallets() {
				ws = append(ws, newWalletJSON(w))
			}
			if g.json {
				return writeJSON(g.streams.Out, ws)
			}
			if len(ws) == 0 {
				fmt.Fprintln(g.streams.Out, "no wallets: create one with 'opencustody wallet create'")
				return nil
			}
			tw := tabwriter.NewWriter(g.streams.Out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tNETWORK\tQUORUM\tAPPROVERS\tADDRESSES")
			for _, w := range ws {
				fmt.Fprintf(tw, "%s\t%s\t%d of %d\t%s\t%d\n", w.Name, w.Network, w.Quorum, len(w.Approvers), strings.Join(w.Approvers, ","), len(w.Addresses))
			}
			return tw.Flush()
		},
	}
	addHSMDFlags(c, &f)
	addJSONFlag(c, g)
	return c
}
