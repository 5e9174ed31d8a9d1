package bitcoin_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/btcsuite/btcd/btcutil/psbt"
	"github.com/btcsuite/btcd/wire"

	"github.com/opencustodynet/opencustody/hsm/bitcoin"
)

// bigPacket spends n coins of the fixture's keys (each from its own
// previous transaction) to one destination and one change output.
func bigPacket(b testing.TB, f *fixture, n int) *psbt.Packet {
	coins := make([]coin, n)
	for i := range coins {
		coins[i] = newCoin(fmt.Sprint("bench ", i), uint32(i%3), 100_000, f.keys[i%len(f.keys)].PkScript())
	}
	total := int64(n) * 100_000
	return newPacket(b, coins, []*wire.TxOut{
		wire.NewTxOut(total/2, foreignScript("destination")),
		wire.NewTxOut(total/2-int64(n)*1000, f.keys[0].PkScript()),
	})
}

func BenchmarkAnalyse(b *testing.B) {
	f := newFixture(b, 20)
	for _, n := range []int{100, 1000} {
		p := bigPacket(b, f, n)
		b.Run(fmt.Sprintf("inputs=%d", n), func(b *testing.B) {
			for b.Loop() {
				if _, err := bitcoin.Analyse(p, f.wallet); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkAnalyseScaling times Analyse on 100 and on 1,000 inputs in the
// same run and reports the ratio: linear work gives about 10.
func BenchmarkAnalyseScaling(b *testing.B) {
	f := newFixture(b, 20)
	small, large := bigPacket(b, f, 100), bigPacket(b, f, 1000)
	scaling(b, func(p *psbt.Packet) error {
		_, err := bitcoin.Analyse(p, f.wallet)
		return err
	}, small, large)
}

// BenchmarkSignScaling does the same for Sign with the in-memory signer
// (the HSM's own time, which is linear, is left out), to show that the
// sighashes share one midstate.
func BenchmarkSignScaling(b *testing.B) {
	f := newFixture(b, 20)
	small, large := bigPacket(b, f, 100), bigPacket(b, f, 1000)
	approved := map[*psbt.Packet][]byte{}
	for _, p := range []*psbt.Packet{small, large} {
		s, err := bitcoin.Analyse(p, f.wallet)
		if err != nil {
			b.Fatal(err)
		}
		approved[p] = canonical(b, s)
	}
	scaling(b, func(p *psbt.Packet) error {
		_, err := bitcoin.Sign(b.Context(), f.signer, bitcoin.SignRequest{Packet: p, Wallet: f.wallet, Approved: approved[p]})
		return err
	}, small, large)
}

func scaling(b *testing.B, run func(*psbt.Packet) error, small, large *psbt.Packet) {
	var tSmall, tLarge time.Duration
	n := 0
	for b.Loop() {
		start := time.Now()
		if err := run(small); err != nil {
			b.Fatal(err)
		}
		mid := time.Now()
		if err := run(large); err != nil {
			b.Fatal(err)
		}
		tSmall += mid.Sub(start)
		tLarge += time.Since(mid)
		n++
	}
	b.ReportMetric(float64(tSmall.Nanoseconds())/float64(n), "ns/op-100")
	b.ReportMetric(float64(tLarge.Nanoseconds())/float64(n), "ns/op-1000")
	b.ReportMetric(float64(tLarge)/float64(tSmall), "ratio")
}
