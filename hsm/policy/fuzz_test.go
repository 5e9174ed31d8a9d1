package policy

import (
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

// FuzzParse: Parse never panics, returns a policy or an error (never
// both), and a policy it returns reads back from its canonical form to an
// equal one, fits the screen line by line, and evaluates without panic.
func FuzzParse(f *testing.F) {
	files, _ := filepath.Glob("testdata/*.*")
	for _, name := range files {
		b, err := os.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte(base))
	f.Add([]byte("version: 1\ngroups: {a: {members: [x], quorum: 1}}\nrequire: {steps: [a, {any: [a, a]}]}\nvelocity: [{window: 1h, max: \"1 sat\"}]\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := Parse(data)
		if err != nil {
			if p != nil {
				t.Fatal("a policy and an error")
			}
			return
		}
		q, err := Parse(p.Marshal())
		if err != nil {
			t.Fatalf("canonical form refused: %v\n%s", err, p.Marshal())
		}
		if !reflect.DeepEqual(p, q) {
			t.Fatalf("round trip:\n%s\n%s", p.Marshal(), q.Marshal())
		}
		for _, l := range p.Lines() {
			if len(l) > MaxLineLen {
				t.Fatalf("line of %d bytes", len(l))
			}
		}
		users := p.Users()
		d := p.Evaluate(Input{Transfer: transfer(cold, 1000, other, btc), Answers: answers(users...), Initiator: users[0], Now: t0})
		if d.Outcome == Approved && d.SignAfter.Before(d.MetAt) {
			t.Fatal("signs before the rule is met")
		}
	})
}
