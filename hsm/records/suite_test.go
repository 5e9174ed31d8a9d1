package records

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
)

// runBackendSuite tests a Store over the backends newBackend returns, each
// fresh and empty. Every Backend in this package runs it. The tampering
// cases here write bad rows through the Backend itself, which does no
// cryptography; backend-specific tests also tamper with the database behind
// the backend's back.
func runBackendSuite(t *testing.T, newBackend func(t *testing.T) Backend) {
	t.Run("RoundTrip", func(t *testing.T) { testRoundTrip(t, newBackend(t)) })
	t.Run("Versions", func(t *testing.T) { testVersions(t, newBackend(t)) })
	t.Run("Errors", func(t *testing.T) { testErrors(t, newBackend(t)) })
	t.Run("BackendContract", func(t *testing.T) { testBackendContract(t, newBackend(t)) })
	t.Run("ConcurrentUpdates", func(t *testing.T) {
		b := newBackend(t)
		testConcurrentUpdates(t, testStore(t, b), testStore(t, b))
	})
	t.Run("Tamper", func(t *testing.T) { testTamperThroughBackend(t, newBackend) })
	t.Run("AuthenticatorFailure", func(t *testing.T) { testAuthenticatorFailure(t, newBackend(t)) })
}

func testStore(t *testing.T, b Backend) *Store {
	t.Helper()
	auth, err := NewSoftHMAC(vectorKey())
	if err != nil {
		t.Fatal(err)
	}
	return New(b, auth)
}

func testRoundTrip(t *testing.T, b Backend) {
	ctx := context.Background()
	s := testStore(t, b)
	allBytes := make([]byte, 256)
	for i := range allBytes {
		allBytes[i] = byte(i)
	}
	bodies := map[string][]byte{
		"3f2a":    []byte(`{"name":"alice"}`),
		"empty":   {},
		"nil":     nil,
		"binary":  allBytes,
		"ünicøde": []byte("x"),
	}
	for key, body := range bodies {
		rec, err := s.Create(ctx, "device", key, body)
		if err != nil {
			t.Fatalf("Create %q: %v", key, err)
		}
		if rec.Kind != "device" || rec.Key != key || rec.Version != 1 || !bytes.Equal(rec.Body, body) || len(rec.MAC) == 0 {
			t.Errorf("Create %q returned %+v", key, rec)
		}
		got, err := s.Get(ctx, "device", key)
		if err != nil {
			t.Fatalf("Get %q: %v", key, err)
		}
		if got.Kind != "device" || got.Key != key || got.Version != 1 || !bytes.Equal(got.Body, body) || !bytes.Equal(got.MAC, rec.MAC) {
			t.Errorf("Get %q = %+v, want %+v", key, got, rec)
		}
	}
	// Same key, other kind: a separate record.
	if _, err := s.Create(ctx, "user", "3f2a", []byte("user")); err != nil {
		t.Fatal(err)
	}
	list, err := s.List(ctx, "device")
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, r := range list {
		if r.Kind != "device" || !bytes.Equal(r.Body, bodies[r.Key]) {
			t.Errorf("List: %+v", r)
		}
		keys = append(keys, r.Key)
	}
	if got, want := strings.Join(keys, ","), "3f2a,binary,empty,nil,ünicøde"; got != want {
		t.Errorf("List keys = %s, want %s", got, want)
	}
	if list, err := s.List(ctx, "wallet"); err != nil || len(list) != 0 {
		t.Errorf("List of an empty kind = %v, %v", list, err)
	}
	checkEachMatchesList(t, s, "device")
	checkEachMatchesList(t, s, "user")
	checkEachMatchesList(t, s, "wallet")
	// The store keeps its own copy of the body it authenticated.
	body := []byte("original")
	if _, err := s.Create(ctx, "device", "copied", body); err != nil {
		t.Fatal(err)
	}
	body[0] = 'X'
	if got, err := s.Get(ctx, "device", "copied"); err != nil || string(got.Body) != "original" {
		t.Errorf("after the caller changed its slice: Get = %q, %v", got.Body, err)
	}
}

func testVersions(t *testing.T, b Backend) {
	ctx := context.Background()
	s := testStore(t, b)
	rec, err := s.Create(ctx, "policy", "w1", []byte("v1"))
	if err != nil {
		t.Fatal(err)
	}
	for want := uint64(2); want <= 5; want++ {
		body := []byte(fmt.Sprintf("v%d", want))
		rec, err = s.Update(ctx, "policy", "w1", rec.Version, body)
		if err != nil {
			t.Fatalf("Update to version %d: %v", want, err)
		}
		if rec.Version != want || !bytes.Equal(rec.Body, body) {
			t.Fatalf("Update returned version %d body %q, want %d %q", rec.Version, rec.Body, want, body)
		}
		got, err := s.Get(ctx, "policy", "w1")
		if err != nil || got.Version != want || !bytes.Equal(got.Body, body) {
			t.Fatalf("Get after update = %+v, %v; want version %d", got, err, want)
		}
	}
}

func testErrors(t *testing.T, b Backend) {
	ctx := context.Background()
	s := testStore(t, b)
	if _, err := s.Get(ctx, "device", "nope"); !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), `device "nope"`) {
		t.Errorf("Get of a missing record: %v", err)
	}
	if _, err := s.Update(ctx, "device", "nope", 1, nil); !errors.Is(err, ErrNotFound) {
		t.Errorf("Update of a missing record: %v", err)
	}
	if _, err := s.Create(ctx, "device", "a", []byte("first")); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Create(ctx, "device", "a", []byte("second")); !errors.Is(err, ErrExists) || !strings.Contains(err.Error(), `device "a"`) {
		t.Errorf("second Create: %v", err)
	}
	if got, _ := s.Get(ctx, "device", "a"); string(got.Body) != "first" {
		t.Errorf("second Create changed the body to %q", got.Body)
	}
	for _, stale := range []uint64{0, 2, 7} {
		_, err := s.Update(ctx, "device", "a", stale, []byte("stale"))
		if !errors.Is(err, ErrConflict) || !strings.Contains(err.Error(), `device "a"`) {
			t.Errorf("Update expecting version %d of a version 1 record: %v", stale, err)
		}
	}
	if got, _ := s.Get(ctx, "device", "a"); got.Version != 1 || string(got.Body) != "first" {
		t.Errorf("refused updates changed the record: %+v", got)
	}
	for _, kk := range [][2]string{{"", "a"}, {"Device", "a"}, {"device", ""}, {"device", "a\x00"}, {"device", "\xff"}} {
		if _, err := s.Get(ctx, kk[0], kk[1]); err == nil || errors.Is(err, ErrNotFound) {
			t.Errorf("Get(%q, %q): %v, want a syntax error", kk[0], kk[1], err)
		}
		if _, err := s.Create(ctx, kk[0], kk[1], nil); err == nil {
			t.Errorf("Create(%q, %q) accepted", kk[0], kk[1])
		}
	}
	if _, err := s.Create(ctx, "device", "big", make([]byte, MaxBodyLen+1)); err == nil {
		t.Error("Create accepted a body over MaxBodyLen")
	}
}

// testBackendContract checks the Backend's own promises, without a Store.
func testBackendContract(t *testing.T, b Backend) {
	ctx := context.Background()
	r := Row{Kind: "device", Key: "k", Version: 1, Body: []byte("body"), MAC: []byte("mac")}
	if _, err := b.Get(ctx, "device", "k"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Get before Insert: %v", err)
	}
	if err := b.Insert(ctx, r); err != nil {
		t.Fatal(err)
	}
	if err := b.Insert(ctx, Row{Kind: "device", Key: "k", Version: 9, Body: []byte("x"), MAC: []byte("y")}); !errors.Is(err, ErrExists) {
		t.Errorf("second Insert: %v", err)
	}
	if got, err := b.Get(ctx, "device", "k"); err != nil || !rowsEqual(got, r) {
		t.Errorf("Get = %+v, %v; want %+v", got, err, r)
	}
	next := Row{Kind: "device", Key: "k", Version: 2, Body: []byte("body2"), MAC: []byte("mac2")}
	for name, old := range map[string]Row{
		"version": {Kind: "device", Key: "k", Version: 2, Body: r.Body, MAC: r.MAC},
		"body":    {Kind: "device", Key: "k", Version: 1, Body: []byte("bodY"), MAC: r.MAC},
		"mac":     {Kind: "device", Key: "k", Version: 1, Body: r.Body, MAC: []byte("maC")},
		"missing": {Kind: "device", Key: "other", Version: 1, Body: r.Body, MAC: r.MAC},
	} {
		if name == "missing" {
			next := next
			next.Key = "other"
			if err := b.Swap(ctx, old, next); !errors.Is(err, ErrConflict) {
				t.Errorf("Swap of a missing row: %v", err)
			}
			continue
		}
		if err := b.Swap(ctx, old, next); !errors.Is(err, ErrConflict) {
			t.Errorf("Swap from a row with another %s: %v", name, err)
		}
	}
	if got, _ := b.Get(ctx, "device", "k"); !rowsEqual(got, r) {
		t.Errorf("refused Swaps changed the row to %+v", got)
	}
	if err := b.Swap(ctx, r, next); err != nil {
		t.Fatalf("Swap: %v", err)
	}
	if err := b.Swap(ctx, r, next); !errors.Is(err, ErrConflict) {
		t.Errorf("second Swap from the same old row: %v", err)
	}
	if got, _ := b.Get(ctx, "device", "k"); !rowsEqual(got, next) {
		t.Errorf("after Swap Get = %+v, want %+v", got, next)
	}
	// Empty bodies and MACs are stored and compared as themselves.
	e := Row{Kind: "device", Key: "e", Version: 1, Body: []byte{}, MAC: []byte{}}
	if err := b.Insert(ctx, e); err != nil {
		t.Fatal(err)
	}
	if err := b.Swap(ctx, e, Row{Kind: "device", Key: "e", Version: 2, Body: []byte{}, MAC: []byte{1}}); err != nil {
		t.Errorf("Swap from a row with an empty body and mac: %v", err)
	}
	rows, err := b.List(ctx, "device")
	if err != nil || len(rows) != 2 {
		t.Errorf("List = %+v, %v; want 2 rows", rows, err)
	}
}

func rowsEqual(a, b Row) bool {
	return a.Kind == b.Kind && a.Key == b.Key && a.Version == b.Version &&
		bytes.Equal(a.Body, b.Body) && bytes.Equal(a.MAC, b.MAC)
}

// testConcurrentUpdates runs read-modify-write loops on one record through
// two stores over the same database. Each successful update appends its own
// token to the body; at the end the body must hold every successful token,
// once, and the version must be one more than the successful updates.
func testConcurrentUpdates(t *testing.T, s1, s2 *Store) {
	ctx := context.Background()
	const workers, perWorker = 6, 15
	if _, err := s1.Create(ctx, "request", "r1", nil); err != nil {
		t.Fatal(err)
	}
	var (
		mu        sync.Mutex // guards won and conflicts
		won       = map[string]bool{}
		conflicts int
		wg        sync.WaitGroup
	)
	for w := range workers {
		s := s1
		if w%2 == 1 {
			s = s2
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range perWorker {
				token := fmt.Sprintf("w%d.%d;", w, i)
				for {
					rec, err := s.Get(ctx, "request", "r1")
					if err != nil {
						t.Error(err)
						return
					}
					body := append(rec.Body, token...)
					_, err = s.Update(ctx, "request", "r1", rec.Version, body)
					if errors.Is(err, ErrConflict) {
						mu.Lock()
						conflicts++
						mu.Unlock()
						continue
					}
					if err != nil {
						t.Error(err)
						return
					}
					mu.Lock()
					won[token] = true
					mu.Unlock()
					break
				}
			}
		}()
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	rec, err := s2.Get(ctx, "request", "r1")
	if err != nil {
		t.Fatal(err)
	}
	if rec.Version != uint64(len(won))+1 {
		t.Errorf("final version %d after %d successful updates, want %d", rec.Version, len(won), len(won)+1)
	}
	if len(won) != workers*perWorker {
		t.Errorf("%d successful updates, want %d", len(won), workers*perWorker)
	}
	tokens := strings.Split(strings.TrimSuffix(string(rec.Body), ";"), ";")
	seen := map[string]bool{}
	for _, tok := range tokens {
		tok += ";"
		if !won[tok] || seen[tok] {
			t.Errorf("token %q in the body: successful %v, seen before %v", tok, won[tok], seen[tok])
		}
		seen[tok] = true
	}
	if len(seen) != len(won) {
		t.Errorf("body holds %d tokens, %d updates succeeded: updates were lost", len(seen), len(won))
	}
	t.Logf("%d updates, %d conflicts retried", len(won), conflicts)
}

// A tampering is a change an attacker makes to the stored rows; it returns the
// records it broke.
type tampering struct {
	name   string
	tamper func(t *testing.T, b Backend, a, c Row) []Row
}

// backendTamperings make their changes through the Backend, which stores
// whatever it is given.
var backendTamperings = []tampering{
	{"body edited", func(t *testing.T, b Backend, a, c Row) []Row {
		r := a
		r.Body = []byte(`{"name":"mallory"}`)
		mustSwap(t, b, a, r)
		return []Row{a}
	}},
	{"version changed", func(t *testing.T, b Backend, a, c Row) []Row {
		r := a
		r.Version++
		mustSwap(t, b, a, r)
		return []Row{a}
	}},
	{"row copied to another key", func(t *testing.T, b Backend, a, c Row) []Row {
		r := a
		r.Key = "mallory"
		mustInsert(t, b, r)
		return []Row{r}
	}},
	{"row copied to another kind", func(t *testing.T, b Backend, a, c Row) []Row {
		r := a
		r.Kind = "user"
		mustInsert(t, b, r)
		return []Row{r}
	}},
	{"row inserted with a garbage mac", func(t *testing.T, b Backend, a, c Row) []Row {
		r := Row{Kind: "device", Key: "mallory", Version: 1, Body: []byte(`{"approver":true}`), MAC: bytes.Repeat([]byte{0xa5}, 32)}
		mustInsert(t, b, r)
		return []Row{r}
	}},
	{"mac emptied", func(t *testing.T, b Backend, a, c Row) []Row {
		r := a
		r.MAC = []byte{}
		mustSwap(t, b, a, r)
		return []Row{a}
	}},
	{"macs swapped between rows", func(t *testing.T, b Backend, a, c Row) []Row {
		ra, rc := a, c
		ra.MAC, rc.MAC = c.MAC, a.MAC
		mustSwap(t, b, a, ra)
		mustSwap(t, b, c, rc)
		return []Row{a, c}
	}},
	{"bodies and macs swapped between rows", func(t *testing.T, b Backend, a, c Row) []Row {
		ra, rc := a, c
		ra.Body, rc.Body = c.Body, a.Body
		ra.MAC, rc.MAC = c.MAC, a.MAC
		mustSwap(t, b, a, ra)
		mustSwap(t, b, c, rc)
		return []Row{a, c}
	}},
}

func mustSwap(t *testing.T, b Backend, old, new Row) {
	t.Helper()
	if err := b.Swap(context.Background(), old, new); err != nil {
		t.Fatal(err)
	}
}

func mustInsert(t *testing.T, b Backend, r Row) {
	t.Helper()
	if err := b.Insert(context.Background(), r); err != nil {
		t.Fatal(err)
	}
}

func testTamperThroughBackend(t *testing.T, newBackend func(t *testing.T) Backend) {
	for _, tc := range backendTamperings {
		t.Run(tc.name, func(t *testing.T) {
			b := newBackend(t)
			s := testStore(t, b)
			a, c, other := seedTamperRecords(t, s)
			broken := tc.tamper(t, b, Row(a), Row(c))
			checkRefused(t, s, broken, other)
		})
	}
}

// seedTamperRecords creates the records tampering starts from: two devices
// (at versions 2 and 1, so versions differ) and one that tampering leaves
// alone.
func seedTamperRecords(t *testing.T, s *Store) (a, c, other Record) {
	t.Helper()
	ctx := context.Background()
	var err error
	if _, err = s.Create(ctx, "device", "alice", []byte(`{"name":"alice"}`)); err != nil {
		t.Fatal(err)
	}
	if a, err = s.Update(ctx, "device", "alice", 1, []byte(`{"name":"alice","role":"admin"}`)); err != nil {
		t.Fatal(err)
	}
	if c, err = s.Create(ctx, "device", "carol", []byte(`{"name":"carol"}`)); err != nil {
		t.Fatal(err)
	}
	if other, err = s.Create(ctx, "device", "zed", []byte(`{"name":"zed"}`)); err != nil {
		t.Fatal(err)
	}
	return a, c, other
}

// checkRefused checks that every broken record is refused by Get, Update,
// Create and List with an IntegrityError naming it, and that the untouched
// record still reads.
func checkRefused(t *testing.T, s *Store, broken []Row, untouched Record) {
	t.Helper()
	ctx := context.Background()
	for _, r := range broken {
		name := fmt.Sprintf("%s %q", r.Kind, r.Key)
		_, err := s.Get(ctx, r.Kind, r.Key)
		checkIntegrityError(t, "Get", err, r.Kind, r.Key)

		cur, _ := s.backend.Get(ctx, r.Kind, r.Key)
		_, err = s.Update(ctx, r.Kind, r.Key, cur.Version, []byte("overwrite"))
		checkIntegrityError(t, "Update", err, r.Kind, r.Key)

		_, err = s.Create(ctx, r.Kind, r.Key, []byte("recreate"))
		checkIntegrityError(t, "Create", err, r.Kind, r.Key)

		list, err := s.List(ctx, r.Kind)
		if list != nil {
			t.Errorf("List %s returned records despite %s", r.Kind, name)
		}
		checkIntegrityError(t, "List", err, r.Kind, r.Key)
		checkEachRefuses(t, s, r.Kind, broken)

		if after, _ := s.backend.Get(ctx, r.Kind, r.Key); !rowsEqual(after, cur) {
			t.Errorf("%s: a refused call changed the row", name)
		}
	}
	got, err := s.Get(ctx, untouched.Kind, untouched.Key)
	if err != nil || got.Version != untouched.Version || !bytes.Equal(got.Body, untouched.Body) {
		t.Errorf("untouched record: Get = %+v, %v", got, err)
	}
}

// checkEachRefuses checks that Each over kind ends in an integrity error
// naming one of the broken rows, and never passes fn one of them.
func checkEachRefuses(t *testing.T, s *Store, kind string, broken []Row) {
	t.Helper()
	isBroken := func(kind, key string) bool {
		return slices.ContainsFunc(broken, func(b Row) bool { return b.Kind == kind && b.Key == key })
	}
	err := s.Each(context.Background(), kind, func(r Record) error {
		if isBroken(r.Kind, r.Key) {
			t.Errorf("Each passed the broken %s %q", r.Kind, r.Key)
		}
		return nil
	})
	var ie *IntegrityError
	if !errors.As(err, &ie) || !isBroken(ie.Kind, ie.Key) {
		t.Errorf("Each %s: %v, want an integrity error naming a broken row", kind, err)
	}
}

// checkEachMatchesList checks that Each passes fn exactly the records
// List returns.
func checkEachMatchesList(t *testing.T, s *Store, kind string) {
	t.Helper()
	ctx := context.Background()
	list, err := s.List(ctx, kind)
	if err != nil {
		t.Fatal(err)
	}
	var each []Record
	if err := s.Each(ctx, kind, func(r Record) error { each = append(each, r); return nil }); err != nil {
		t.Fatalf("Each %s: %v", kind, err)
	}
	slices.SortFunc(each, func(a, b Record) int { return strings.Compare(a.Key, b.Key) })
	if len(each) != len(list) {
		t.Fatalf("Each %s: %d records, List: %d", kind, len(each), len(list))
	}
	for i := range list {
		if each[i].Key != list[i].Key || each[i].Version != list[i].Version || !bytes.Equal(each[i].Body, list[i].Body) {
			t.Fatalf("Each %s: %+v, List: %+v", kind, each[i], list[i])
		}
	}
	stop := errors.New("stop")
	n := 0
	if err := s.Each(ctx, kind, func(Record) error { n++; return stop }); len(list) > 0 && (err != stop || n != 1) {
		t.Fatalf("Each %s with fn failing: %v after %d records, want fn's error after one", kind, err, n)
	}
}

func checkIntegrityError(t *testing.T, op string, err error, kind, key string) {
	t.Helper()
	if !errors.Is(err, ErrIntegrity) {
		t.Errorf("%s %s %q: err = %v, want an integrity error", op, kind, key, err)
		return
	}
	var ie *IntegrityError
	if !errors.As(err, &ie) {
		t.Errorf("%s %s %q: %v is not an *IntegrityError", op, kind, key, err)
		return
	}
	if want := fmt.Sprintf("records: %s %q: integrity check failed", kind, key); !strings.Contains(err.Error(), want) {
		t.Errorf("%s: error %q does not name the record (%s)", op, err, want)
	}
	// A List error may name several records; one of them must be this one.
	for _, e := range unjoin(err) {
		if errors.As(e, &ie) && ie.Kind == kind && ie.Key == key {
			return
		}
	}
	t.Errorf("%s: no IntegrityError for %s %q in %v", op, kind, key, err)
}

func unjoin(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	return []error{err}
}

// failingAuth fails every call, as an unreachable HSM would.
type failingAuth struct{}

var errHSMDown = errors.New("hsm unreachable")

func (failingAuth) MAC([]byte) ([]byte, error)     { return nil, errHSMDown }
func (failingAuth) VerifyMAC([]byte, []byte) error { return errHSMDown }

func testAuthenticatorFailure(t *testing.T, b Backend) {
	ctx := context.Background()
	if _, err := testStore(t, b).Create(ctx, "device", "a", []byte("a")); err != nil {
		t.Fatal(err)
	}
	s := New(b, failingAuth{})
	check := func(op string, err error) {
		t.Helper()
		if !errors.Is(err, errHSMDown) || errors.Is(err, ErrIntegrity) {
			t.Errorf("%s with the HSM down: %v; want the HSM's error, not an integrity error", op, err)
		}
	}
	_, err := s.Get(ctx, "device", "a")
	check("Get", err)
	list, err := s.List(ctx, "device")
	check("List", err)
	if list != nil {
		t.Error("List returned unverified records")
	}
	_, err = s.Update(ctx, "device", "a", 1, nil)
	check("Update", err)
	_, err = s.Create(ctx, "device", "b", nil)
	check("Create", err)
	if _, err := b.Get(ctx, "device", "b"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Create stored a row it could not MAC: %v", err)
	}
}

// testLocker checks that a Locker's lock excludes a second holder, also
// through a second handle on the same database, that a waiter gives up
// when its context ends, and that the holder can still read while more
// goroutines wait than the backend has connections.
func testLocker(t *testing.T, a, b Locker) {
	ctx := context.Background()
	unlock, err := a.Lock(ctx)
	if err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithCancel(ctx)
	waiting := make(chan error, 1)
	go func() {
		u, err := b.Lock(short)
		if err == nil {
			u()
		}
		waiting <- err
	}()
	cancel()
	if err := <-waiting; err == nil {
		t.Fatal("a second handle took the lock while the first held it")
	}
	var mu sync.Mutex // guards inside
	inside := 0
	var wg sync.WaitGroup
	for i := range 16 {
		l := a
		if i%2 == 1 {
			l = b
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			u, err := l.Lock(ctx)
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			inside++
			if inside != 1 {
				t.Errorf("%d holders at once", inside)
			}
			mu.Unlock()
			if _, err := l.(Backend).List(ctx, "device"); err != nil {
				t.Errorf("a read while holding the lock: %v", err)
			}
			mu.Lock()
			inside--
			mu.Unlock()
			u()
		}()
	}
	unlock()
	wg.Wait()
}
