package policy

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/btcsuite/btcd/btcutil"

	"github.com/opencustodynet/opencustody/hsm/bitcoin"
)

const (
	cold  = "sb1qqaq2zjfs68nqhlwlywlvj3e33a383dy322z64n"
	other = "sb1qn3cgrkptv3hjjyv28hsejx5ftj9wldavhj7877"
	third = "sb1q35kjk7cmux3dgw9mht33rflnssgyczu4mc89cw"
)

func load(t testing.TB, name string) *Policy {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	p, err := Parse(b)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return p
}

func TestParseExamples(t *testing.T) {
	files, _ := filepath.Glob("testdata/*.*")
	if len(files) < 3 {
		t.Fatalf("examples: %v", files)
	}
	for _, f := range files {
		p := load(t, filepath.Base(f))
		if err := p.CheckNetwork(bitcoin.Simnet); err != nil {
			t.Errorf("%s: %v", f, err)
		}
		// The canonical form reads back to the same policy and the same
		// bytes.
		q, err := Parse(p.Marshal())
		if err != nil {
			t.Fatalf("%s: canonical form: %v\n%s", f, err, p.Marshal())
		}
		if !reflect.DeepEqual(p, q) || string(q.Marshal()) != string(p.Marshal()) {
			t.Errorf("%s: round trip:\n%s\n%s", f, p.Marshal(), q.Marshal())
		}
	}
	p := load(t, "full.yaml")
	if p.TimeLock.D() != time.Hour || p.Expiry.D() != 30*time.Minute || *p.Tiers[0].UpTo != 100_000_000 ||
		len(p.Tiers[1].Require.Steps) != 2 || p.AllowList.UnlistedRequire.Group != "execs" || !p.SingleVetoOn() {
		t.Fatalf("full.yaml read as %+v", p)
	}
	if d := load(t, "default.json"); !reflect.DeepEqual(d, Default([]string{"alice", "bob", "carol"}, 2)) {
		t.Fatalf("default.json read as %+v", d)
	}
	if load(t, "any.yaml").SingleVetoOn() {
		t.Fatal("single_veto: false ignored")
	}
}

// base is a valid document that each case below breaks in one place.
const base = `version: 1
groups:
  ops:
    members: [alice, bob, carol]
    quorum: 2
  execs:
    members: [dave]
    quorum: 1
tiers:
  - name: small
    up_to: 1 BTC
    require: ops
  - name: large
    require: {all: [ops, execs]}
`

func TestParseRefuses(t *testing.T) {
	if _, err := Parse([]byte(base)); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, old, new, want string
	}{
		{"unknown field", "version: 1\n", "version: 1\nquorom: 3\n", "line 2: field quorom not found"},
		{"unknown group field", "    quorum: 2\n", "    quorum: 2\n    minimum: 1\n", "line 6: field minimum not found"},
		{"no version", "version: 1\n", "", "version: missing"},
		{"future version", "version: 1", "version: 2", "line 1: version: version 2 is not supported"},
		{"quorum above group size", "    quorum: 2\n", "    quorum: 4\n", "line 5: groups.ops.quorum: 4 is not between 1 and the group's 3 members"},
		{"zero quorum", "    quorum: 2\n", "    quorum: 0\n", "groups.ops.quorum: 0 is not between 1"},
		{"member twice", "[alice, bob, carol]", "[alice, bob, alice]", "line 4: groups.ops.members[2]: alice is listed twice"},
		{"bad group name", "  execs:", "  Execs:", "groups.Execs: name \"Execs\""},
		{"unknown group in rule", "require: ops\n", "require: opz\n", "line 12: tiers[0].require: no group is called \"opz\""},
		{"overlapping tiers", "  - name: large\n", "  - name: large\n    up_to: 0.5 BTC\n", "line 14: tiers[1].up_to: 0.50000000 BTC is not above tiers[0].up_to (1.00000000 BTC): tiers overlap"},
		{"unbounded tier not last", "    up_to: 1 BTC\n", "", "line 10: tiers[0].up_to: only the last tier may leave up_to out"},
		{"tier names", "name: large", "name: small", "tiers[1].name: small is also the name of tiers[0]"},
		{"require and tiers", "tiers:\n", "require: ops\ntiers:\n", "set require or tiers, not both"},
		{"bad amount", "1 BTC", "1 ETH", "line 11: amount \"1 ETH\": unknown unit"},
		{"too many decimals", "1 BTC", "0.000000001 BTC", "at most eight decimals"},
		{"bad rule key", "{all: [ops, execs]}", "{every: [ops, execs]}", "unknown rule \"every\""},
		{"two rule keys", "{all: [ops, execs]}", "{all: [ops], any: [execs]}", "exactly one of group, all, any and steps"},
		{"empty all", "{all: [ops, execs]}", "{all: []}", "want a list of at least one rule"},
		{"deep rule", "{all: [ops, execs]}", "{all: [{all: [{all: [{all: [{all: [ops]}]}]}]}]}", "nests more than 4 deep"},
		{"rule as number", "require: ops\n", "require: 3\n", "a rule is a group's name"},
		{"duplicate key", "  execs:\n", "  ops:\n", "already defined"},
		{"velocity window", "", "velocity:\n  - {window: 1s, max: 1 BTC}\n", "line 16: velocity[0].window: 1s: want between 1m0s and"},
		{"velocity zero", "", "velocity:\n  - {window: 1h, max: 0}\n", "want more than zero"},
		{"expiry", "", "expiry: 10s\n", "line 15: expiry: 10s: want between 1m0s and 168h0m0s"},
		{"time lock", "", "time_lock: 1000h\n", "time_lock: 1000h0m0s: want at most 720h0m0s"},
		{"bad duration", "", "time_lock: soon\n", "duration \"soon\""},
		{"duplicate address", "", "allow_list:\n  addresses:\n    a: " + cold + "\n    b: " + cold + "\n", "allow_list.addresses.b: the same address as a"},
		{"empty allow-list", "", "allow_list:\n  addresses: {}\n", "an empty allow-list refuses every transfer"},
		{"not a mapping", base, "- version: 1\n", "the document must be a mapping"},
		{"empty", base, "", "the document is empty"},
		{"two documents", "", "---\nversion: 1\n", "more than one document"},
		{"syntax", "", "groups: [\n", "line 15"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			doc := base + ""
			if tc.old == "" {
				doc += tc.new
			} else {
				if !strings.Contains(doc, tc.old) {
					t.Fatalf("base lacks %q", tc.old)
				}
				doc = strings.Replace(doc, tc.old, tc.new, 1)
			}
			p, err := Parse([]byte(doc))
			if err == nil || p != nil {
				t.Fatalf("accepted:\n%s", doc)
			}
			if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v\nwant %q", err, tc.want)
			}
		})
	}
}

func TestCheckNetwork(t *testing.T) {
	p := load(t, "full.yaml")
	if err := p.CheckNetwork(bitcoin.Mainnet); err == nil || !strings.Contains(err.Error(), "allow_list.addresses.cold") {
		t.Fatalf("a simnet address on mainnet: %v", err)
	}
	p.AllowList.Addresses["bad"] = "sb1qnotanaddress"
	if err := p.CheckNetwork(bitcoin.Simnet); err == nil || !strings.Contains(err.Error(), "allow_list.addresses.bad") {
		t.Fatalf("got %v", err)
	}
}

func TestLinesAndDiff(t *testing.T) {
	old := load(t, "full.yaml")
	new := load(t, "full.yaml")
	new.Groups["ops"] = Group{Members: []string{"alice", "bob", "frank"}, Quorum: 2}
	new.AllowList.Addresses["other"] = other
	new.TimeLock = 0
	var got []string
	for _, l := range Diff(old, new) {
		got = append(got, l.String())
	}
	want := []string{
		"- groups.ops.member: carol",
		"- time_lock: 1h0m0s",
		"+ groups.ops.member: frank",
		"+ allow_list.other: " + other,
	}
	if !slices.Equal(got, want) {
		t.Fatalf("diff:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if d := Diff(old, old); len(d) != 0 {
		t.Fatalf("diff with itself: %v", d)
	}
	for _, l := range old.Lines() {
		if len(l) > MaxLineLen {
			t.Errorf("line too long: %s", l)
		}
	}
	if !slices.Contains(old.Lines(), "tiers[1].large: no limit: steps(ops, execs)") {
		t.Fatalf("lines: %q", old.Lines())
	}
}

func TestParseAmount(t *testing.T) {
	for in, want := range map[string]Amount{"1": 1, "120000 sat": 120_000, "1.2 BTC": 120_000_000, "0.00000001 BTC": 1, "21000000 BTC": 21_000_000 * btcutil.SatoshiPerBitcoin} {
		if got, err := ParseAmount(in); err != nil || got != want {
			t.Errorf("%q: %v, %v", in, got, err)
		}
	}
	for _, in := range []string{"", "0", "-1", "1.5", "21000001 BTC", "1e3 sat", "one BTC", "1. BTC x"} {
		if got, err := ParseAmount(in); err == nil {
			t.Errorf("%q accepted as %v", in, got)
		}
	}
}
