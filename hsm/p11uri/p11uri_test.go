package p11uri

import (
	"bytes"
	"strings"
	"testing"
)

// rfcExamples are the examples of RFC 7512 section 3, plus the forms
// OpenCustody writes.
var rfcExamples = []string{
	"pkcs11:",
	"pkcs11:object=my-pubkey;type=public",
	"pkcs11:object=my-key;type=private?pin-source=file:/etc/token",
	"pkcs11:token=The%20Software%20PKCS%2311%20Softtoken;manufacturer=Snake%20Oil,%20Inc.;model=1.0;object=my-certificate;type=cert;id=%69%95%3E%5C%F4%BD%EC%91;serial=?pin-source=file:/etc/token_pin",
	"pkcs11:object=my-sign-key;type=private?module-name=mypkcs11",
	"pkcs11:object=my-sign-key;type=private?module-path=/mnt/libmypkcs11.so.1",
	"pkcs11:token=Software%20PKCS%2311%20softtoken;manufacturer=Snake%20Oil,%20Inc.?pin-value=the-pin",
	"pkcs11:slot-description=Sun%20Metaslot",
	"pkcs11:library-manufacturer=Snake%20Oil,%20Inc.;library-description=Soft%20Token%20Library;library-version=1.23",
	"pkcs11:token=My%20token%25%20created%20by%20Joe;library-version=3;id=%01%02%03%Ba%dd%Ef%fe;object=my-certificate;type=cert",
	"pkcs11:token=A%20name%20with%20a%20substring%20%25%3B;object=my-certificate;type=cert",
	"pkcs11:token=Name%20with%20a%20small%20A%20with%20acute:%20%C3%A1;object=my-certificate;type=cert",
	"pkcs11:token=my-token;object=my-certificate;type=cert;vendor-aaa=value-a?pin-source=file:/etc/token_pin&vendor-bbb=value-b",
	"pkcs11:token=opencustody;serial=a3030a511165dd0c;slot-id=0;object=custody-1;id=%01%02?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=env:OPENCUSTODY_PIN",
	"pkcs11:x-vendor=1;token=t?x-other=2",
}

func TestParseExamples(t *testing.T) {
	for _, s := range rfcExamples {
		u, err := Parse(s)
		if strings.Contains(s, "vendor-aaa") {
			// RFC 7512's example of vendor attributes predates the "x-"
			// prefix rule; OpenCustody refuses unknown names.
			if err == nil {
				t.Errorf("Parse(%q) accepted an unknown attribute", s)
			}
			continue
		}
		if err != nil {
			t.Errorf("Parse(%q): %v", s, err)
			continue
		}
		again, err := Parse(u.String())
		if err != nil {
			t.Errorf("Parse(String()) of %q = %q: %v", s, u.String(), err)
			continue
		}
		if !again.Equal(u) || again.String() != u.String() {
			t.Errorf("round trip of %q: %q then %q", s, u.String(), again.String())
		}
	}
}

func TestParseFields(t *testing.T) {
	u, err := Parse("pkcs11:token=opencustody;serial=a3030a511165dd0c;slot-id=7;object=custody%201;id=%01%ff;type=private?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/data/hsm-pin&x-foo=bar")
	if err != nil {
		t.Fatal(err)
	}
	if u.Token != "opencustody" || u.Serial != "a3030a511165dd0c" || u.SlotID == nil || *u.SlotID != 7 ||
		u.Object != "custody 1" || !bytes.Equal(u.ID, []byte{1, 0xff}) || u.Type != "private" ||
		u.ModulePath != "/usr/lib/softhsm/libsofthsm2.so" || u.PINSource != "file:/data/hsm-pin" || u.Vendor["x-foo"] != "bar" {
		t.Errorf("fields: %+v", u)
	}
	if !u.HasTokenAttributes() {
		t.Error("HasTokenAttributes = false")
	}
	want := "pkcs11:token=opencustody;serial=a3030a511165dd0c;slot-id=7;object=custody%201;id=%01%FF;type=private;x-foo=bar?pin-source=file:/data/hsm-pin&module-path=/usr/lib/softhsm/libsofthsm2.so"
	if got := u.String(); got != want {
		t.Errorf("String:\n got %s\nwant %s", got, want)
	}
}

func TestRedacted(t *testing.T) {
	u, err := Parse("pkcs11:token=t?pin-value=1234")
	if err != nil {
		t.Fatal(err)
	}
	if r := u.Redacted(); strings.Contains(r, "1234") || !strings.Contains(r, "pin-value=REDACTED") {
		t.Errorf("Redacted = %q", r)
	}
	if !strings.Contains(u.String(), "pin-value=1234") {
		t.Errorf("String lost the PIN: %q", u.String())
	}
}

func TestParseErrors(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"pkcs12:token=a", "does not start with"},
		{"token=a", "does not start with"},
		{"pkcs11:tokn=a", `unknown attribute "tokn"`},
		{"pkcs11:token=a;token=b", "appears twice"},
		{"pkcs11:token", "has no '='"},
		{"pkcs11:token=a;;object=b", "empty attribute"},
		{"pkcs11:token=a%2", "two hex digits"},
		{"pkcs11:token=a%zz", "two hex digits"},
		{"pkcs11:token=a b", "must be percent-encoded"},
		{"pkcs11:module-path=/x", "belongs in the query"},
		{"pkcs11:?token=a", "belongs in the path"},
		{"pkcs11:slot-id=-1", "not a decimal number"},
		{"pkcs11:slot-id=01", "not a decimal number"},
		{"pkcs11:type=key", "is not one of"},
		{"pkcs11:library-version=1.x", "major[.minor]"},
		{"pkcs11:x-=1", "vendor attribute name"},
		{"pkcs11:?x-a;b=1", "vendor attribute name"},
	} {
		u, err := Parse(tc.in)
		if err == nil || u != nil {
			t.Errorf("Parse(%q) = %v, %v; want an error", tc.in, u, err)
			continue
		}
		if !strings.Contains(err.Error(), tc.want) || !strings.HasPrefix(err.Error(), "p11uri: ") {
			t.Errorf("Parse(%q) error %q, want it to contain %q", tc.in, err, tc.want)
		}
	}
}

func TestEscapeAllBytes(t *testing.T) {
	var all []byte
	for i := 0; i < 256; i++ {
		all = append(all, byte(i))
	}
	u := &URI{Token: string(all), ID: all, ModulePath: string(all), Object: "a;b?c&d=e/f"}
	again, err := Parse(u.String())
	if err != nil {
		t.Fatalf("Parse(%q): %v", u.String(), err)
	}
	if again.Token != string(all) || !bytes.Equal(again.ID, all) || again.ModulePath != string(all) || again.Object != u.Object {
		t.Errorf("round trip of every byte failed: %q", u.String())
	}
}

// FuzzParse checks that Parse never panics, returns nil with an error, and
// that what it accepts round-trips through String.
func FuzzParse(f *testing.F) {
	for _, s := range rfcExamples {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		u, err := Parse(s)
		if err != nil {
			if u != nil {
				t.Fatalf("Parse(%q) returned a URI with error %v", s, err)
			}
			return
		}
		out := u.String()
		again, err := Parse(out)
		if err != nil {
			t.Fatalf("Parse(%q) accepted, but its String %q does not parse: %v", s, out, err)
		}
		if again.String() != out {
			t.Fatalf("String not canonical: %q then %q", out, again.String())
		}
		if !again.Equal(u) {
			t.Fatalf("round trip changed %q", s)
		}
	})
}
