package hsmd_test

// The scale figures of `make bench`: one hsmd in its own process (so its
// memory is its own) with 1,000 paired devices connected through relay
// streams and 10,000 pending requests, its resident memory, and the
// latency of an approval while it carries that load.

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/metrics"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/opencustodynet/opencustody/hsm/core"
	"github.com/opencustodynet/opencustody/hsm/hsmd"
	"github.com/opencustodynet/opencustody/protocol/apiclient"
	"github.com/opencustodynet/opencustody/protocol/apipb"
	"github.com/opencustodynet/opencustody/protocol/pb"
	"github.com/opencustodynet/opencustody/protocol/signed"
)

// scaleHSMD is what the hsmd process tells the benchmark about itself.
type scaleHSMD struct {
	Addr, CertFingerprint, BridgeToken, OperatorToken string
	Identity                                          []byte
}

// TestBenchHSMDProcess is the hsmd of TestBenchReportScale, run in a
// process of its own: it stores the pairing records the benchmark wrote
// to its directory, serves, tells the benchmark where, and stops when its
// standard input closes.
func TestBenchHSMDProcess(t *testing.T) {
	dir := os.Getenv("OPENCUSTODY_BENCH_HSMD")
	if dir == "" {
		t.Skip("the hsmd process of TestBenchReportScale")
	}
	e := startWith(t, false, true)
	raw, err := os.ReadFile(filepath.Join(dir, "devices.json"))
	if err != nil {
		t.Fatal(err)
	}
	var recs []*core.DeviceRecord
	if err := json.Unmarshal(raw, &recs); err != nil {
		t.Fatal(err)
	}
	for _, r := range recs {
		if err := e.devices.CreateDevice(t.Context(), r); err != nil {
			t.Fatal(err)
		}
	}
	bt, ot := e.srv.TokenPaths()
	info := scaleHSMD{Addr: e.addr, CertFingerprint: e.srv.CertFingerprint(), Identity: e.identity.PublicKey()}
	if info.BridgeToken, err = hsmd.ReadToken(bt); err != nil {
		t.Fatal(err)
	}
	if info.OperatorToken, err = hsmd.ReadToken(ot); err != nil {
		t.Fatal(err)
	}
	out, _ := json.Marshal(info)
	if err := os.WriteFile(filepath.Join(dir, "hsmd.json.tmp"), out, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(dir, "hsmd.json.tmp"), filepath.Join(dir, "hsmd.json")); err != nil {
		t.Fatal(err)
	}
	go sampleMemory(t.Context(), dir)
	io.Copy(io.Discard, os.Stdin)
}

// goMemory is the peak of what the Go runtime of the hsmd process holds:
// its heap objects (live and not yet collected), and all the memory it
// has mapped. What RSS holds beyond that is C memory: SoftHSM2's.
type goMemory struct {
	HeapObjects, Total uint64
}

// sampleMemory records the Go runtime's peaks in dir/memory.json every
// 20 ms (written every half second), until ctx ends.
func sampleMemory(ctx context.Context, dir string) {
	samples := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}, {Name: "/memory/classes/total:bytes"}}
	var peak goMemory
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for n := 0; ; n++ {
		metrics.Read(samples)
		peak.HeapObjects = max(peak.HeapObjects, samples[0].Value.Uint64())
		peak.Total = max(peak.Total, samples[1].Value.Uint64())
		if n%25 == 0 {
			out, _ := json.Marshal(peak)
			if os.WriteFile(filepath.Join(dir, "memory.json.tmp"), out, 0o600) == nil {
				os.Rename(filepath.Join(dir, "memory.json.tmp"), filepath.Join(dir, "memory.json"))
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// rss reads a process's resident and peak resident memory, in MiB.
func rss(t *testing.T, pid int) (now, peak float64) {
	t.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 2 {
			continue
		}
		kb, _ := strconv.ParseFloat(fields[1], 64)
		switch fields[0] {
		case "VmRSS:":
			now = kb / 1024
		case "VmHWM:":
			peak = kb / 1024
		}
	}
	return now, peak
}

func TestBenchReportScale(t *testing.T) {
	b := benchSize(t)
	devices, pending := b.devices, b.pending
	ctx := t.Context()

	// The devices: users u0..; u0-u2 approve the wallet whose requests
	// stay pending, u3-u5 approve at once the wallet whose latency is
	// measured.
	var devs []*relayDevice
	var recs []*core.DeviceRecord
	algs := []pb.Algorithm{pb.Algorithm_ALGORITHM_ECDSA_P256, pb.Algorithm_ALGORITHM_ED25519}
	for i := range devices {
		d := newRelayDevice(t, fmt.Sprintf("dev-%d", i), fmt.Sprintf("u%d", i), algs[i%len(algs)], nil)
		devs = append(devs, d)
		recs = append(recs, d.record())
	}
	dir := t.TempDir()
	raw, _ := json.Marshal(recs)
	if err := os.WriteFile(filepath.Join(dir, "devices.json"), raw, 0o600); err != nil {
		t.Fatal(err)
	}

	args := []string{"-test.run=^TestBenchHSMDProcess$", "-test.count=1"}
	if prof := os.Getenv("OPENCUSTODY_BENCH_PROFILE"); prof != "" {
		// Where the hsmd process spends its time and memory, for pprof.
		args = append(args, "-test.cpuprofile="+filepath.Join(prof, "hsmd-cpu.out"), "-test.memprofile="+filepath.Join(prof, "hsmd-mem.out"))
	}
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), "OPENCUSTODY_BENCH_HSMD="+dir)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stdin.Close()
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case <-done:
		case <-time.After(time.Minute):
			cmd.Process.Kill()
			<-done
		}
	})
	var info scaleHSMD
	for {
		raw, err := os.ReadFile(filepath.Join(dir, "hsmd.json"))
		if err == nil {
			if err := json.Unmarshal(raw, &info); err != nil {
				t.Fatal(err)
			}
			break
		}
		if cmd.ProcessState != nil || ctx.Err() != nil {
			t.Fatal("hsmd process ended before serving")
		}
		time.Sleep(50 * time.Millisecond)
	}
	pid := cmd.Process.Pid
	idle, _ := rss(t, pid)
	for _, d := range devs {
		d.pinned = info.Identity
	}
	conns := map[string]*grpc.ClientConn{}
	for _, token := range []string{info.BridgeToken, info.OperatorToken} {
		conn, err := apiclient.Dial(apiclient.Options{Address: info.Addr, CertFingerprint: info.CertFingerprint, Token: token})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		conns[token] = conn
	}
	op := apipb.NewOperatorClient(conns[info.OperatorToken])
	cust := apipb.NewCustodyClient(conns[info.OperatorToken])

	// Four bridges, each relaying a quarter of the devices; the devices of
	// u3-u5 approve whatever they are shown.
	auto := map[string]bool{"u3": true, "u4": true, "u5": true}
	t0 := time.Now()
	for b := range 4 {
		stream, err := apipb.NewRelayClient(conns[info.BridgeToken]).Connect(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := stream.Send(&apipb.BridgeMessage{Msg: &apipb.BridgeMessage_Hello{Hello: &apipb.BridgeHello{BridgeName: fmt.Sprintf("desk-%d", b)}}}); err != nil {
			t.Fatal(err)
		}
		if m, err := stream.Recv(); err != nil || m.GetHello() == nil {
			t.Fatalf("no CoreHello: %v", err)
		}
		rb := &relayBridge{t: t, stream: stream, devices: map[string]*relayDevice{}}
		for i := b; i < len(devs); i += 4 {
			rb.devices[devs[i].ref] = devs[i]
		}
		go func() {
			for {
				m, err := rb.stream.Recv()
				if err != nil {
					return
				}
				f := m.GetFrame()
				if f == nil {
					continue
				}
				d := rb.devices[f.GetRef()]
				d.mu.Lock()
				ans := d.handle(f.GetEnvelope())
				press := ans == nil && d.showing != nil && auto[d.user]
				d.mu.Unlock()
				if ans != nil {
					rb.frame(d.ref, ans)
				}
				if press {
					rb.press(d, signed.Approve)
				}
			}
		}()
		for _, d := range rb.devices {
			rb.attach(d)
		}
	}
	var up int
	for {
		res, err := op.ListDevices(ctx, &apipb.ListDevicesRequest{})
		if err != nil {
			t.Fatal(err)
		}
		up = 0
		for _, d := range res.GetDevices() {
			if d.GetChannel() {
				up++
			}
		}
		if up == len(devs) {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("%d of %d channels up", up, len(devs))
		}
		time.Sleep(100 * time.Millisecond)
	}
	connectTime := time.Since(t0)
	connected, _ := rss(t, pid)

	wallet := func(name string, approvers ...string) []*apipb.WalletAddress {
		if _, err := cust.CreateWallet(ctx, &apipb.CreateWalletRequest{Name: name, Network: "simnet", Approvers: approvers, Quorum: 2}); err != nil {
			t.Fatal(err)
		}
		var addrs []*apipb.WalletAddress
		for range 2 {
			a, err := cust.NewAddress(ctx, &apipb.NewAddressRequest{Wallet: name})
			if err != nil {
				t.Fatal(err)
			}
			addrs = append(addrs, a.GetAddress())
		}
		return addrs
	}
	held, live := wallet("held", "u0", "u1", "u2"), wallet("live", "u3", "u4", "u5")

	// The pending requests, from four clients at once.
	t0 = time.Now()
	var wg sync.WaitGroup
	for c := range 4 {
		wg.Go(func() {
			for i := c; i < pending; i += 4 {
				if _, err := cust.Submit(ctx, &apipb.SubmitRequest{Initiator: "operator", Wallet: "held", Psbt: benchPSBT(t, held)}); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	submitRate := float64(pending) / time.Since(t0).Seconds()
	loaded, _ := rss(t, pid)

	// Approvals while loaded: one at a time, submit until signed.
	var lat []time.Duration
	for range b.latencyRuns {
		t0 := time.Now()
		r, err := cust.Submit(ctx, &apipb.SubmitRequest{Initiator: "operator", Wallet: "live", Psbt: benchPSBT(t, live)})
		if err != nil {
			t.Fatal(err)
		}
		for {
			got, err := cust.GetRequest(ctx, &apipb.GetRequestRequest{Id: r.GetId()})
			if err != nil {
				t.Fatal(err)
			}
			if got.GetState() == apipb.RequestState_REQUEST_STATE_SIGNED {
				break
			}
			if got.GetState() != apipb.RequestState_REQUEST_STATE_PENDING && got.GetState() != apipb.RequestState_REQUEST_STATE_APPROVED {
				t.Fatalf("request %s: %v %s", r.GetId(), got.GetState(), got.GetError())
			}
			time.Sleep(time.Millisecond)
		}
		lat = append(lat, time.Since(t0))
	}
	slices.Sort(lat)
	final, peak := rss(t, pid)
	time.Sleep(600 * time.Millisecond) // a last write of memory.json
	var gm goMemory
	if raw, err := os.ReadFile(filepath.Join(dir, "memory.json")); err == nil {
		json.Unmarshal(raw, &gm)
	}

	b.row(fmt.Sprintf("scale: %d devices connected (channels up)", len(devs)), fmt.Sprintf("in %.1f s", connectTime.Seconds()), "", "")
	b.row(fmt.Sprintf("scale: %d requests submitted, left pending", pending), fmt.Sprintf("%.0f /s", submitRate), "", "")
	b.row("scale: hsmd RSS idle / devices up / loaded", fmt.Sprintf("%.0f / %.0f / %.0f MiB", idle, connected, loaded), "", "")
	b.row("scale: hsmd RSS at the end, and its peak", fmt.Sprintf("%.0f MiB, peak %.0f", final, peak), "<= 256 MiB", holds(peak <= 256))
	b.row("scale: hsmd Go heap objects peak / Go runtime peak", fmt.Sprintf("%.0f / %.0f MiB", float64(gm.HeapObjects)/(1<<20), float64(gm.Total)/(1<<20)), "", "")
	b.row("scale: approval latency p50 / p99 while loaded", fmt.Sprintf("%.1f / %.1f ms", ms(percentile(lat, 0.5)), ms(percentile(lat, 0.99))), "", "")
}
