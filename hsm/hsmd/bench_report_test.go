package hsmd_test

// The figures `make bench` prints for the approval pipeline, measured in
// one run on real parts: the raw rates of the HSM operations an approval
// needs (SoftHSM2 through PKCS#11), the pipeline's throughput with three
// emulators approving 2-of-3 through a bridge, its ratio to the ceiling
// the HSM alone would allow, and the latency of one approval.

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"net/http/httptest"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/btcsuite/btcd/chaincfg/chainhash"
	"github.com/btcsuite/btcd/wire"

	"github.com/opencustodynet/opencustody/emulator/debuglink"
	"github.com/opencustodynet/opencustody/hsm"
	"github.com/opencustodynet/opencustody/hsm/hsmtest"
	"github.com/opencustodynet/opencustody/protocol/apipb"
)

// benchScale is how much work a benchmark report does. `make bench`
// (OPENCUSTODY_BENCH=1) runs the real sizes; `make test` runs a small
// version of each report, so that the reports keep working, and prints
// nothing: its figures would mean nothing under -race.
type benchScale struct {
	full                    bool
	rateFor                 time.Duration // how long each HSM rate is measured
	latencyRuns, throughput int           // approvals measured one at a time, and as a backlog
	devices, pending        int           // the scale report's connected devices and pending requests
}

func benchSize(t *testing.T) benchScale {
	if os.Getenv("OPENCUSTODY_BENCH") == "" {
		return benchScale{rateFor: 50 * time.Millisecond, latencyRuns: 5, throughput: 20, devices: 20, pending: 40}
	}
	b := benchScale{full: true, rateFor: time.Second, latencyRuns: 100, throughput: 200, devices: 1000, pending: 10000}
	if n, err := strconv.Atoi(os.Getenv("OPENCUSTODY_BENCH_DEVICES")); err == nil {
		b.devices = n
	}
	if n, err := strconv.Atoi(os.Getenv("OPENCUSTODY_BENCH_PENDING")); err == nil {
		b.pending = n
	}
	return b
}

// row prints one row of the report table, in a full run.
func (b benchScale) row(figure, value, target, holds string) {
	if !b.full {
		return
	}
	fmt.Printf("BENCH | %-52s | %-22s | %-12s | %s\n", figure, value, target, holds)
}

func holds(ok bool) string {
	if ok {
		return "holds"
	}
	return "MISSED"
}

// hsmRate measures how many times a second op runs back to back on one
// session.
func (b benchScale) hsmRate(t *testing.T, op func() error) float64 {
	t.Helper()
	n, start := 0, time.Now()
	for time.Since(start) < b.rateFor || n < 20 {
		if err := op(); err != nil {
			t.Fatal(err)
		}
		n++
	}
	return float64(n) / time.Since(start).Seconds()
}

// signedCount reads hsmd's count of requests signed from its metrics,
// which costs no HSM operation.
func signedCount(t *testing.T, h *env) int {
	t.Helper()
	rec := httptest.NewRecorder()
	h.srv.MetricsHandler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	for l := range strings.SplitSeq(rec.Body.String(), "\n") {
		if v, ok := strings.CutPrefix(l, `opencustody_hsmd_requests_total{event="signed"} `); ok {
			n, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatal(err)
			}
			return int(n)
		}
	}
	return 0
}

// benchPSBT is a PSBT spending a fresh made-up coin of the wallet's first
// address, with change to its second.
func benchPSBT(t *testing.T, addrs []*apipb.WalletAddress) []byte {
	prev := wire.NewMsgTx(2)
	var coin chainhash.Hash
	rand.Read(coin[:])
	prev.AddTxIn(wire.NewTxIn(wire.NewOutPoint(&coin, 0), nil, nil))
	prev.AddTxOut(wire.NewTxOut(50_000_000, p2wpkh(addrs[0].GetPublicKey())))
	return spend(t, prev, 0, p2wpkh(addrs[1].GetPublicKey()))
}

// waitSigned polls hsmd's metrics until at least n requests are signed.
func waitSigned(t *testing.T, ctx context.Context, h *env, n int) {
	t.Helper()
	for signedCount(t, h) < n {
		select {
		case <-ctx.Done():
			t.Fatalf("waiting for %d signed requests: %v (signed %d)", n, ctx.Err(), signedCount(t, h))
		case <-time.After(200 * time.Microsecond):
		}
	}
}

func percentile(sorted []time.Duration, p float64) time.Duration {
	return sorted[min(len(sorted)-1, int(float64(len(sorted))*p))]
}

func TestBenchReportPipeline(t *testing.T) {
	b := benchSize(t)
	w := newWorld(t, 3)
	users := []string{"alice", "bob", "carol"}
	addrs := w.approverWallet("bench", 2, users...)
	for _, e := range w.emus {
		// Each emulator's user approves whatever it shows, at once.
		if err := e.dl.SetRules(w.ctx, []debuglink.Rule{{Pattern: ".", Action: "confirm"}}); err != nil {
			t.Fatal(err)
		}
	}
	cust := apipb.NewCustodyClient(w.hsmd.dial(t, "operator"))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	submit := func() {
		if _, err := cust.Submit(ctx, &apipb.SubmitRequest{Wallet: "bench", Initiator: "operator", Psbt: benchPSBT(t, addrs)}); err != nil {
			t.Error(err)
		}
	}

	// Raw rates of each HSM operation an approval needs, on one session,
	// while the pipeline is idle.
	store := w.hsmd.store
	if _, err := store.GenerateKey(ctx, hsm.GenerateKeyRequest{Label: "bench-custody", Algorithm: hsm.ECDSASecp256k1}); err != nil {
		t.Fatal(err)
	}
	digest := sha256.Sum256([]byte("bench"))
	signRate := map[hsm.Algorithm]float64{
		hsm.ECDSAP256: b.hsmRate(t, func() error {
			_, err := store.Sign(ctx, hsm.SignRequest{Key: hsmtest.IdentityKey, Digest: digest[:]})
			return err
		}),
		hsm.ECDSASecp256k1: b.hsmRate(t, func() error {
			_, err := store.Sign(ctx, hsm.SignRequest{Key: "bench-custody", Digest: digest[:]})
			return err
		}),
	}
	record := make([]byte, 1024)
	mac, err := store.MAC(ctx, hsm.MACRequest{Key: hsmtest.RecordKey, Data: record})
	if err != nil {
		t.Fatal(err)
	}
	macRate := b.hsmRate(t, func() error {
		_, err := store.MAC(ctx, hsm.MACRequest{Key: hsmtest.RecordKey, Data: record})
		return err
	})
	verifyRate := b.hsmRate(t, func() error {
		return store.VerifyMAC(ctx, hsm.VerifyMACRequest{Key: hsmtest.RecordKey, Data: record, MAC: mac})
	})
	b.row("HSM: P-256 sign (identity key: prompts, checkpoints)", fmt.Sprintf("%.0f /s", signRate[hsm.ECDSAP256]), "", "")
	b.row("HSM: secp256k1 sign (custody key: inputs)", fmt.Sprintf("%.0f /s", signRate[hsm.ECDSASecp256k1]), "", "")
	b.row("HSM: HMAC-SHA256 (record key: store a record)", fmt.Sprintf("%.0f /s", macRate), "", "")
	b.row("HSM: HMAC-SHA256 verify (record key: read a record)", fmt.Sprintf("%.0f /s", verifyRate), "", "")

	// Warm up: connections, caches, the first prompts.
	for range 5 {
		submit()
	}
	waitSigned(t, ctx, w.hsmd, 5)

	// Latency: one request at a time, submit until hsmd has stored its
	// signed transaction.
	latencyRuns := b.latencyRuns
	var lat []time.Duration
	for i := range latencyRuns {
		t0 := time.Now()
		submit()
		waitSigned(t, ctx, w.hsmd, 5+i+1)
		lat = append(lat, time.Since(t0))
	}
	slices.Sort(lat)
	p50, p99 := percentile(lat, 0.50), percentile(lat, 0.99)
	b.row("approval latency p50, submit to signed (2-of-3)", fmt.Sprintf("%.1f ms", ms(p50)), "<= 15 ms", holds(p50 <= 15*time.Millisecond))
	b.row("approval latency p99, submit to signed (2-of-3)", fmt.Sprintf("%.1f ms", ms(p99)), "<= 40 ms", holds(p99 <= 40*time.Millisecond))

	// Throughput: a backlog of requests submitted by four clients at once,
	// until all are signed; the HSM operations they cost are counted.
	requests := b.throughput
	base := signedCount(t, w.hsmd)
	before := store.Operations()
	t0 := time.Now()
	var wg sync.WaitGroup
	for c := range 4 {
		wg.Go(func() {
			for i := c; i < requests; i += 4 {
				submit()
			}
		})
	}
	wg.Wait()
	waitSigned(t, ctx, w.hsmd, base+requests)
	elapsed := time.Since(t0)
	ops := store.Operations().Sub(before)
	throughput := float64(requests) / elapsed.Seconds()

	// The ceiling: the HSM doing nothing but this work, one operation
	// after another, at the rates measured above.
	per := func(n uint64) float64 { return float64(n) / float64(requests) }
	hsmSeconds := per(ops.MAC)/macRate + per(ops.VerifyMAC)/verifyRate
	for alg, n := range ops.Sign {
		r, ok := signRate[alg]
		if !ok {
			t.Fatalf("the pipeline signed with %s, whose rate was not measured", alg)
		}
		hsmSeconds += per(n) / r
	}
	ceiling := 1 / hsmSeconds
	b.row("HSM work per approval", fmt.Sprintf("%.1f sign, %.1f MAC, %.1f verify", per(ops.Sign[hsm.ECDSAP256]+ops.Sign[hsm.ECDSASecp256k1]), per(ops.MAC), per(ops.VerifyMAC)), "", "")
	b.row("HSM-bound ceiling (from the rates above)", fmt.Sprintf("%.0f approvals/s", ceiling), "", "")
	b.row("pipeline throughput (2-of-3, 3 emulators, bridge)", fmt.Sprintf("%.0f approvals/s", throughput), "", "")
	b.row("pipeline / HSM-bound ceiling", fmt.Sprintf("%.2f", throughput/ceiling), ">= 0.80", holds(throughput/ceiling >= 0.8))
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
