// Package p11uri parses and builds RFC 7512 PKCS#11 URIs, the one way
// OpenCustody names a PKCS#11 module, a token on it, and a key on the token.
//
// A URI has a path of `;`-separated attributes that select a token and an
// object, and a query of `&`-separated attributes that say how to reach it:
//
//	pkcs11:token=opencustody;object=custody-1?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/var/lib/opencustody/hsm-pin
//
// [Parse] accepts the attributes of RFC 7512 and keeps vendor attributes
// (names starting with "x-") for round trips; anything else is an error, so a
// typo ("tokn=") never silently selects every token. [URI.String] writes the
// canonical form: attributes in a fixed order, bytes outside the characters
// RFC 7512 allows percent-encoded, and every byte of id= percent-encoded. An attribute with an empty value is the
// same as an absent one. For every URI u that Parse accepts,
// Parse(u.String()) returns a URI equal to u.
//
// # PIN sources
//
// RFC 7512 defines pin-source as a URI that names where the PIN is. OpenCustody
// reads "file:/path", "file:///path" and a bare absolute path as a file whose
// first line is the PIN, and, as an extension, "env:NAME" as the environment
// variable NAME. pin-value (the PIN itself in the URI) is parsed, but it puts a
// secret into configuration files and process listings: prefer pin-source, and
// print URIs with [URI.Redacted].
//
// This package only parses; it opens nothing and reads no PIN. Package
// [github.com/opencustodynet/opencustody/hsm] does that.
package p11uri

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
)

// Scheme is the URI scheme, with its colon.
const Scheme = "pkcs11:"

// URI is a parsed PKCS#11 URI. The zero URI is "pkcs11:" and matches every
// token and every object.
type URI struct {
	// Token attributes (CK_TOKEN_INFO).
	Token        string // token label
	Manufacturer string // token manufacturer ID
	Model        string // token model
	Serial       string // token serial number

	// Library attributes (CK_INFO).
	LibraryManufacturer string
	LibraryDescription  string
	LibraryVersion      string // "major[.minor]"

	// Slot attributes (CK_SLOT_INFO).
	SlotDescription  string
	SlotManufacturer string
	SlotID           *uint // nil when absent

	// Object attributes.
	Object string // CKA_LABEL
	ID     []byte // CKA_ID; nil when absent
	Type   string // "public", "private", "cert", "secret-key" or "data"

	// Query attributes.
	PINSource  string
	PINValue   string
	ModuleName string
	ModulePath string

	// Vendor holds "x-" attributes, path and query alike, by name.
	Vendor map[string]string
}

// The attribute names of RFC 7512, in the order String writes them.
var (
	pathNames = []string{
		"token", "manufacturer", "model", "serial",
		"library-manufacturer", "library-description", "library-version",
		"slot-description", "slot-manufacturer", "slot-id",
		"object", "id", "type",
	}
	queryNames = []string{"pin-source", "pin-value", "module-name", "module-path"}
)

// objectTypes are the values RFC 7512 allows for type=.
var objectTypes = []string{"public", "private", "cert", "secret-key", "data"}

// Parse parses s, which must start with "pkcs11:". Errors name the attribute
// that is wrong.
func Parse(s string) (*URI, error) {
	if len(s) < len(Scheme) || !strings.EqualFold(s[:len(Scheme)], Scheme) {
		return nil, fmt.Errorf("p11uri: %q does not start with %q", short(s), Scheme)
	}
	rest := s[len(Scheme):]
	path, query, hasQuery := strings.Cut(rest, "?")
	u := &URI{}
	seen := map[string]bool{}
	if path != "" {
		for attr := range strings.SplitSeq(path, ";") {
			if err := u.set(attr, false, seen); err != nil {
				return nil, err
			}
		}
	}
	if hasQuery && query != "" {
		for attr := range strings.SplitSeq(query, "&") {
			if err := u.set(attr, true, seen); err != nil {
				return nil, err
			}
		}
	}
	return u, nil
}

// set parses one name=value attribute into u.
func (u *URI) set(attr string, inQuery bool, seen map[string]bool) error {
	where := "path"
	if inQuery {
		where = "query"
	}
	if attr == "" {
		return fmt.Errorf("p11uri: empty attribute in the %s", where)
	}
	name, raw, ok := strings.Cut(attr, "=")
	if !ok {
		return fmt.Errorf("p11uri: attribute %q has no '='", short(attr))
	}
	name = strings.ToLower(name)
	if seen[name] {
		return fmt.Errorf("p11uri: attribute %q appears twice", short(name))
	}
	seen[name] = true
	known := pathNames
	if inQuery {
		known = queryNames
	}
	if strings.HasPrefix(name, "x-") {
		if !validVendorName(name) {
			return fmt.Errorf("p11uri: vendor attribute name %q may hold only letters, digits and '-'", short(name))
		}
		value, err := unescape(raw, inQuery)
		if err != nil {
			return fmt.Errorf("p11uri: attribute %q: %w", name, err)
		}
		if value != "" {
			if u.Vendor == nil {
				u.Vendor = map[string]string{}
			}
			u.Vendor[name] = value
		}
		return nil
	}
	if !slices.Contains(known, name) {
		other := "query"
		if inQuery {
			other = "path"
		}
		if slices.Contains(pathNames, name) || slices.Contains(queryNames, name) {
			return fmt.Errorf("p11uri: attribute %q belongs in the %s, not the %s", name, other, where)
		}
		return fmt.Errorf("p11uri: unknown attribute %q (RFC 7512 names it none of %s)", short(name), strings.Join(append(slices.Clone(pathNames), queryNames...), ", "))
	}
	value, err := unescape(raw, inQuery)
	if err != nil {
		return fmt.Errorf("p11uri: attribute %q: %w", name, err)
	}
	if value == "" {
		return nil
	}
	switch name {
	case "token":
		u.Token = value
	case "manufacturer":
		u.Manufacturer = value
	case "model":
		u.Model = value
	case "serial":
		u.Serial = value
	case "library-manufacturer":
		u.LibraryManufacturer = value
	case "library-description":
		u.LibraryDescription = value
	case "library-version":
		if !validVersion(value) {
			return fmt.Errorf("p11uri: library-version %q is not major[.minor]", short(value))
		}
		u.LibraryVersion = value
	case "slot-description":
		u.SlotDescription = value
	case "slot-manufacturer":
		u.SlotManufacturer = value
	case "slot-id":
		n, err := strconv.ParseUint(value, 10, strconv.IntSize)
		if err != nil || strconv.FormatUint(n, 10) != value {
			return fmt.Errorf("p11uri: slot-id %q is not a decimal number", short(value))
		}
		id := uint(n)
		u.SlotID = &id
	case "object":
		u.Object = value
	case "id":
		u.ID = []byte(value)
	case "type":
		if !slices.Contains(objectTypes, value) {
			return fmt.Errorf("p11uri: type %q is not one of %s", short(value), strings.Join(objectTypes, ", "))
		}
		u.Type = value
	case "pin-source":
		u.PINSource = value
	case "pin-value":
		u.PINValue = value
	case "module-name":
		u.ModuleName = value
	case "module-path":
		u.ModulePath = value
	}
	return nil
}

func validVendorName(name string) bool {
	if len(name) <= 2 {
		return false
	}
	for i := 2; i < len(name); i++ {
		c := name[i]
		if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

func validVersion(v string) bool {
	major, minor, hasMinor := strings.Cut(v, ".")
	if !allDigits(major) {
		return false
	}
	return !hasMinor || allDigits(minor)
}

func allDigits(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// String returns the canonical form of u.
func (u *URI) String() string { return u.format(false) }

// Redacted returns the canonical form of u with pin-value replaced by
// "REDACTED", for logs and messages.
func (u *URI) Redacted() string { return u.format(true) }

func (u *URI) format(redact bool) string {
	var b strings.Builder
	b.WriteString(Scheme)
	first := true
	add := func(name, value string, inQuery bool) {
		if value == "" {
			return
		}
		if !first {
			if inQuery {
				b.WriteByte('&')
			} else {
				b.WriteByte(';')
			}
		}
		first = false
		b.WriteString(name)
		b.WriteByte('=')
		if name == "id" {
			// An ID is bytes, not text: every byte is written as %XX,
			// as RFC 7512's examples do.
			for i := 0; i < len(value); i++ {
				b.WriteString(pctEncode(value[i]))
			}
			return
		}
		b.WriteString(escape(value, inQuery))
	}
	for _, name := range pathNames {
		add(name, u.pathValue(name), false)
	}
	// Vendor attributes go in the path, sorted: RFC 7512 allows them in both
	// parts, and String writes each in one fixed place.
	vendor := slices.Sorted(maps.Keys(u.Vendor))
	for _, name := range vendor {
		add(name, u.Vendor[name], false)
	}
	first = true
	hasQuery := false
	for _, name := range queryNames {
		v := u.queryValue(name)
		if v == "" {
			continue
		}
		if name == "pin-value" && redact {
			v = "REDACTED"
		}
		if !hasQuery {
			b.WriteByte('?')
			hasQuery = true
		}
		add(name, v, true)
	}
	return b.String()
}

func (u *URI) pathValue(name string) string {
	switch name {
	case "token":
		return u.Token
	case "manufacturer":
		return u.Manufacturer
	case "model":
		return u.Model
	case "serial":
		return u.Serial
	case "library-manufacturer":
		return u.LibraryManufacturer
	case "library-description":
		return u.LibraryDescription
	case "library-version":
		return u.LibraryVersion
	case "slot-description":
		return u.SlotDescription
	case "slot-manufacturer":
		return u.SlotManufacturer
	case "slot-id":
		if u.SlotID == nil {
			return ""
		}
		return strconv.FormatUint(uint64(*u.SlotID), 10)
	case "object":
		return u.Object
	case "id":
		return string(u.ID)
	case "type":
		return u.Type
	}
	return ""
}

func (u *URI) queryValue(name string) string {
	switch name {
	case "pin-source":
		return u.PINSource
	case "pin-value":
		return u.PINValue
	case "module-name":
		return u.ModuleName
	case "module-path":
		return u.ModulePath
	}
	return ""
}

// Equal reports whether u and v have the same attributes.
func (u *URI) Equal(v *URI) bool {
	if u == nil || v == nil {
		return u == v
	}
	return u.String() == v.String()
}

// HasTokenAttributes reports whether u selects a token by any attribute:
// the token, library or slot attributes.
func (u *URI) HasTokenAttributes() bool {
	return u.Token != "" || u.Manufacturer != "" || u.Model != "" || u.Serial != "" ||
		u.LibraryManufacturer != "" || u.LibraryDescription != "" || u.LibraryVersion != "" ||
		u.SlotDescription != "" || u.SlotManufacturer != "" || u.SlotID != nil
}

// unreserved per RFC 3986, plus the characters RFC 7512 allows unescaped in
// path values (pk11-path-res-avail, with '&' from the errata) and in query
// values (pk11-query-res-avail).
const (
	unreserved = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~"
	pathAvail  = ":[]@!$'()*+,=&"
	queryAvail = ":[]@!$'()*+,;/?|"
)

func allowed(c byte, inQuery bool) bool {
	if strings.IndexByte(unreserved, c) >= 0 {
		return true
	}
	if inQuery {
		return strings.IndexByte(queryAvail, c) >= 0
	}
	return strings.IndexByte(pathAvail, c) >= 0
}

// errEscape is returned for a malformed percent escape.
var errEscape = errors.New("'%' must be followed by two hex digits")

func unescape(s string, inQuery bool) (string, error) {
	if !strings.ContainsRune(s, '%') {
		for i := 0; i < len(s); i++ {
			if !allowed(s[i], inQuery) {
				return "", fmt.Errorf("character %q must be percent-encoded", s[i])
			}
		}
		return s, nil
	}
	b := make([]byte, 0, len(s))
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c == '%' {
			if i+2 >= len(s) {
				return "", errEscape
			}
			hi, ok1 := unhex(s[i+1])
			lo, ok2 := unhex(s[i+2])
			if !ok1 || !ok2 {
				return "", errEscape
			}
			b = append(b, hi<<4|lo)
			i += 2
			continue
		}
		if !allowed(c, inQuery) {
			return "", fmt.Errorf("character %q must be percent-encoded", c)
		}
		b = append(b, c)
	}
	return string(b), nil
}

func unhex(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	case 'A' <= c && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

func escape(s string, inQuery bool) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if allowed(c, inQuery) && !(c == '&' && !inQuery) {
			b.WriteByte(c)
			continue
		}
		b.WriteString(pctEncode(c))
	}
	return b.String()
}

func pctEncode(c byte) string {
	const hex = "0123456789ABCDEF"
	return string([]byte{'%', hex[c>>4], hex[c&15]})
}

// short trims s for use in an error message.
func short(s string) string {
	if len(s) > 64 {
		return s[:61] + "..."
	}
	return s
}
