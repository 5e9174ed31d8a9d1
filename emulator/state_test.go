package emulator

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/opencustodynet/opencustody/protocol/pb"
)

// crashEnv makes the test binary run crashLoop instead of the tests.
const crashEnv = "OPENCUSTODY_EMULATOR_CRASH_LOOP_DIR"

func TestMain(m *testing.M) {
	if dir := os.Getenv(crashEnv); dir != "" {
		crashLoop(dir)
		return
	}
	os.Exit(m.Run())
}

// crashLoop increments the counter forever, printing each value once it is
// on disk, until the parent kills the process.
func crashLoop(dir string) {
	s, _, err := OpenStore(StoreRequest{Dir: dir})
	if err != nil {
		fmt.Println("error:", err)
		os.Exit(1)
	}
	for {
		n, err := s.NextCounter()
		if err != nil {
			fmt.Println("error:", err)
			os.Exit(1)
		}
		fmt.Println(n)
	}
}

func TestStoreCreateAndReload(t *testing.T) {
	for _, alg := range []string{AlgP256, AlgEd25519, AlgSecp256k1} {
		t.Run(alg, func(t *testing.T) {
			dir := t.TempDir()
			s, created, err := OpenStore(StoreRequest{Dir: dir, Algorithm: alg, Label: "desk 3", Rand: SeededRand("state")})
			if err != nil || !created {
				t.Fatalf("create: %v (created %v)", err, created)
			}
			want, _ := ParseAlgorithm(alg)
			if s.Identity().Algorithm != want {
				t.Errorf("algorithm %v, want %v", s.Identity().Algorithm, want)
			}
			wantLen := 33
			if alg == AlgEd25519 {
				wantLen = 32
			}
			if n := len(s.Identity().PublicKey()); n != wantLen {
				t.Errorf("public key is %d bytes, want %d", n, wantLen)
			}
			for range 3 {
				if _, err := s.NextCounter(); err != nil {
					t.Fatal(err)
				}
			}
			r, created, err := OpenStore(StoreRequest{Dir: dir})
			if err != nil || created {
				t.Fatalf("reload: %v (created %v)", err, created)
			}
			if !bytes.Equal(r.Identity().PublicKey(), s.Identity().PublicKey()) || r.Counter() != 3 || r.Label() != "desk 3" {
				t.Errorf("reloaded state differs: key %x counter %d label %q", r.Identity().PublicKey(), r.Counter(), r.Label())
			}
			if _, _, err := OpenStore(StoreRequest{Dir: dir, Algorithm: otherAlg(alg)}); err == nil || !strings.Contains(err.Error(), "identity key") {
				t.Errorf("opening with another algorithm: %v", err)
			}
			info, err := os.Stat(filepath.Join(dir, StateFile))
			if err != nil || info.Mode().Perm() != 0o600 {
				t.Errorf("state file mode: %v %v", info.Mode(), err)
			}
		})
	}
}

func otherAlg(a string) string {
	if a == AlgP256 {
		return AlgEd25519
	}
	return AlgP256
}

func TestSeededIdentityIsDeterministic(t *testing.T) {
	a, _, err := OpenStore(StoreRequest{Dir: t.TempDir(), Rand: SeededRand("x")})
	if err != nil {
		t.Fatal(err)
	}
	b, _, _ := OpenStore(StoreRequest{Dir: t.TempDir(), Rand: SeededRand("x")})
	c, _, _ := OpenStore(StoreRequest{Dir: t.TempDir(), Rand: SeededRand("y")})
	if a.Identity().DeviceID() != b.Identity().DeviceID() {
		t.Error("same seed, different keys")
	}
	if a.Identity().DeviceID() == c.Identity().DeviceID() {
		t.Error("different seeds, same key")
	}
	if a.Identity().Algorithm != pb.Algorithm_ALGORITHM_ECDSA_P256 {
		t.Errorf("default algorithm %v", a.Identity().Algorithm)
	}
}

func TestStoreRejectsCorruptState(t *testing.T) {
	for name, content := range map[string]string{
		"not json":   "{",
		"format":     `{"format": 9, "algorithm": "p256", "identity_private_key": "00"}`,
		"algorithm":  `{"format": 1, "algorithm": "rsa", "identity_private_key": "00"}`,
		"key hex":    `{"format": 1, "algorithm": "p256", "identity_private_key": "zz"}`,
		"key length": `{"format": 1, "algorithm": "ed25519", "identity_private_key": "00"}`,
		"key range":  `{"format": 1, "algorithm": "secp256k1", "identity_private_key": "` + strings.Repeat("ff", 32) + `"}`,
	} {
		dir := t.TempDir()
		os.WriteFile(filepath.Join(dir, StateFile), []byte(content), 0o600)
		if _, _, err := OpenStore(StoreRequest{Dir: dir}); err == nil {
			t.Errorf("%s: loaded a corrupt state", name)
		}
	}
}

// TestStateSurvivesKill kills a process with SIGKILL while it writes the
// state in a loop, and checks that the state still loads and that no
// counter value it handed out is handed out again.
func TestStateSurvivesKill(t *testing.T) {
	if testing.Short() {
		t.Skip("starts subprocesses")
	}
	dir := t.TempDir()
	last := uint64(0)
	for round := range 5 {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), crashEnv+"="+dir)
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(out)
		// Let it write a varying number of times, then kill it wherever
		// it is.
		for i := 0; i < 50+round*37 && sc.Scan(); i++ {
			n, err := strconv.ParseUint(sc.Text(), 10, 64)
			if err != nil {
				cmd.Process.Kill()
				t.Fatalf("round %d: child said %q", round, sc.Text())
			}
			if n <= last {
				t.Errorf("round %d: counter %d handed out after %d", round, n, last)
			}
			last = n
		}
		cmd.Process.Signal(syscall.SIGKILL)
		cmd.Wait()
		s, created, err := OpenStore(StoreRequest{Dir: dir})
		if err != nil || created {
			t.Fatalf("round %d: state after kill: %v (created %v)", round, err, created)
		}
		if c := s.Counter(); c < last {
			t.Fatalf("round %d: counter went back from %d to %d", round, last, c)
		}
	}
	if last == 0 {
		t.Fatal("the child never wrote")
	}
}
