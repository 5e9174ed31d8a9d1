package policy

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/btcsuite/btcd/btcutil"
	"go.yaml.in/yaml/v3"

	"github.com/opencustodynet/opencustody/hsm/bitcoin"
)

// Version is the version of the document format this package reads.
const Version = 1

// Limits on a document, so that it can be evaluated cheaply and every line
// of it shown on a device's screen.
const (
	MaxDocumentSize = 64 << 10
	MaxGroups       = 16
	MaxMembers      = 32
	MaxTiers        = 8
	MaxAddresses    = 256
	MaxVelocity     = 4
	MaxRuleDepth    = 4
	MaxRuleGroups   = 16
	MaxNameLen      = 32
	MaxUserLen      = 64
	MaxAddressLen   = 100
	// MaxLineLen bounds a line of [Policy.Lines]: a device shows each as
	// one field value.
	MaxLineLen = 200
	MinExpiry  = time.Minute
	MaxExpiry  = 7 * 24 * time.Hour
	MaxLock    = 30 * 24 * time.Hour
	MinWindow  = time.Minute
	MaxWindow  = 366 * 24 * time.Hour
)

// ErrInvalid is wrapped by every error about a document's content.
var ErrInvalid = errors.New("policy: invalid document")

// Policy is a wallet's policy document: who must approve which transfers,
// and the limits on them. Parse reads one; its zero value is not valid.
type Policy struct {
	Version int `yaml:"version" json:"version"`
	// Groups are the approver groups by name: Quorum of Members must
	// approve for the group to be met.
	Groups map[string]Group `yaml:"groups" json:"groups"`
	// Require is the rule every transfer must meet, when there are no
	// Tiers; with Tiers, the rule of the tier the transfer's amount falls
	// in applies. Exactly one of the two is set.
	Require *Rule  `yaml:"require,omitempty" json:"require,omitempty"`
	Tiers   []Tier `yaml:"tiers,omitempty" json:"tiers,omitempty"`
	// AllowList, when set, is the address book: a destination outside it
	// is refused, or needs its UnlistedRequire rule as well.
	AllowList *AllowList `yaml:"allow_list,omitempty" json:"allow_list,omitempty"`
	// Velocity limits the sum sent over rolling windows.
	Velocity []Velocity `yaml:"velocity,omitempty" json:"velocity,omitempty"`
	// Expiry is how long approvers have to answer; zero means the core's
	// default.
	Expiry Duration `yaml:"expiry,omitempty" json:"expiry,omitempty"`
	// TimeLock is the least time between the rule being met and the HSM
	// signing.
	TimeLock Duration `yaml:"time_lock,omitempty" json:"time_lock,omitempty"`
	// SingleVeto (the default) stops a request at the first rejection by
	// any approver who may approve it. When false, a rejection only
	// removes that approver, and the request is rejected once its rule can
	// no longer be met.
	SingleVeto *bool `yaml:"single_veto,omitempty" json:"single_veto,omitempty"`
}

// Group is an approver group: Quorum of its Members must approve.
type Group struct {
	Members []string `yaml:"members" json:"members"`
	Quorum  int      `yaml:"quorum" json:"quorum"`
}

// Tier is an amount tier: transfers sending at most UpTo (the sum of the
// outputs that are not change), and more than the tier before, need
// Require. The last tier may leave UpTo out: it has no upper bound.
type Tier struct {
	Name    string  `yaml:"name" json:"name"`
	UpTo    *Amount `yaml:"up_to,omitempty" json:"up_to,omitempty"`
	Require Rule    `yaml:"require" json:"require"`
}

// AllowList is the address book.
type AllowList struct {
	// Addresses are the allowed destinations, by name.
	Addresses map[string]string `yaml:"addresses" json:"addresses"`
	// UnlistedRequire, when set, lets a transfer to a destination outside
	// Addresses through if this rule is met as well as the tier's; when
	// nil, such a transfer is refused.
	UnlistedRequire *Rule `yaml:"unlisted_require,omitempty" json:"unlisted_require,omitempty"`
}

// Velocity limits the sum sent by signed transfers over a rolling window,
// this transfer included.
type Velocity struct {
	Window Duration `yaml:"window" json:"window"`
	Max    Amount   `yaml:"max" json:"max"`
}

// Rule says which approvals a transfer needs. Exactly one field is set:
// Group (that group's quorum), All (every rule), Any (one of them) or
// Steps (each in turn: approvals count towards a step only once the
// steps before it are met).
//
// In a document a rule is a group's name, or a mapping with one key:
// group, all, any or steps.
type Rule struct {
	Group string `json:"group,omitempty"`
	All   []Rule `json:"all,omitempty"`
	Any   []Rule `json:"any,omitempty"`
	Steps []Rule `json:"steps,omitempty"`
}

// Amount is an amount in satoshis. In a document it is an integer number
// of satoshis, or a string "N sat" or "X BTC" (at most eight decimals).
type Amount btcutil.Amount

// Duration is a duration written as Go does ("30m", "24h").
type Duration time.Duration

// SingleVetoOn reports whether one rejection stops a request.
func (p *Policy) SingleVetoOn() bool { return p.SingleVeto == nil || *p.SingleVeto }

// Default is the policy of a wallet made with approvers and a quorum
// only: one group "approvers", whose quorum every transfer needs, with a
// single veto and no limits.
func Default(approvers []string, quorum int) *Policy {
	return &Policy{
		Version: Version,
		Groups:  map[string]Group{"approvers": {Members: slices.Clone(approvers), Quorum: quorum}},
		Require: &Rule{Group: "approvers"},
	}
}

// Parse reads a policy document, YAML or JSON (JSON is YAML), and
// validates it. Its errors wrap [ErrInvalid] and name the line and the
// field: unknown fields, wrong types, and every rule below are refused.
//
//   - version is 1;
//   - there are 1 to [MaxGroups] groups, named by 1 to [MaxNameLen]
//     lowercase letters, digits, '-' and '_'; each has 1 to [MaxMembers]
//     distinct members (user names without spaces) and a quorum between 1
//     and its size;
//   - exactly one of require and tiers is set; every rule names existing
//     groups, nests at most [MaxRuleDepth] deep and names at most
//     [MaxRuleGroups] groups; all, any and steps list at least one rule;
//   - tiers have distinct names and strictly increasing up_to amounts
//     (so they do not overlap); only the last may leave up_to out;
//   - allow-list names are names as above, and its addresses distinct;
//   - velocity windows are distinct, between [MinWindow] and [MaxWindow],
//     with a positive max;
//   - expiry is zero or between [MinExpiry] and [MaxExpiry]; time_lock
//     between zero and [MaxLock];
//   - every line of [Policy.Lines] fits [MaxLineLen].
//
// Addresses are checked against a network by [Policy.CheckNetwork].
func Parse(data []byte) (*Policy, error) {
	if len(data) > MaxDocumentSize {
		return nil, fmt.Errorf("%w: %d bytes, at most %d", ErrInvalid, len(data), MaxDocumentSize)
	}
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalid, cleanYAMLError(err))
	}
	if root.Kind == 0 || len(root.Content) == 0 {
		return nil, fmt.Errorf("%w: the document is empty", ErrInvalid)
	}
	if root.Content[0].Kind != yaml.MappingNode {
		return nil, fmt.Errorf("%w: line %d: the document must be a mapping (version, groups, ...)", ErrInvalid, root.Content[0].Line)
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	var p Policy
	if err := dec.Decode(&p); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalid, cleanYAMLError(err))
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("%w: more than one document", ErrInvalid)
	}
	// An empty list is no list: the canonical form leaves both out.
	if len(p.Tiers) == 0 {
		p.Tiers = nil
	}
	if len(p.Velocity) == 0 {
		p.Velocity = nil
	}
	if err := p.validate(); err != nil {
		var ve *validationError
		if errors.As(err, &ve) {
			if line := lineOf(root.Content[0], ve.path); line > 0 {
				return nil, fmt.Errorf("%w: line %d: %s: %s", ErrInvalid, line, ve.field(), ve.msg)
			}
			return nil, fmt.Errorf("%w: %s: %s", ErrInvalid, ve.field(), ve.msg)
		}
		return nil, err
	}
	return &p, nil
}

// cleanYAMLError drops the "yaml: " prefixes of the library's messages.
func cleanYAMLError(err error) string {
	s := err.Error()
	s = strings.ReplaceAll(s, "yaml: unmarshal errors:\n  ", "")
	s = strings.ReplaceAll(s, "\n  ", "; ")
	s = strings.ReplaceAll(s, "yaml: ", "")
	s = strings.ReplaceAll(s, "in type policy.Policy", "")
	s = strings.ReplaceAll(s, "in type policy.", "in ")
	return strings.TrimSpace(s)
}

// Marshal encodes the policy as its canonical document: JSON with sorted
// keys, which Parse reads back to an equal policy.
func (p *Policy) Marshal() []byte {
	b, err := json.Marshal(p)
	if err != nil {
		panic("policy: marshal: " + err.Error()) // every field marshals
	}
	return b
}

// MarshalIndent is [Policy.Marshal] for people.
func (p *Policy) MarshalIndent() []byte {
	var out bytes.Buffer
	_ = json.Indent(&out, p.Marshal(), "", "  ")
	out.WriteByte('\n')
	return out.Bytes()
}

// MarshalJSON writes the rule in its mapping form.
func (r Rule) MarshalJSON() ([]byte, error) {
	type plain Rule
	return json.Marshal(plain(r))
}

// UnmarshalYAML reads a rule: a group's name, or a mapping with exactly
// one of group, all, any and steps.
func (r *Rule) UnmarshalYAML(n *yaml.Node) error {
	return r.fromNode(n, 1)
}

func (r *Rule) fromNode(n *yaml.Node, depth int) error {
	if depth > MaxRuleDepth {
		return fmt.Errorf("line %d: a rule nests more than %d deep", n.Line, MaxRuleDepth)
	}
	switch n.Kind {
	case yaml.ScalarNode:
		if n.Tag != "!!str" {
			return fmt.Errorf("line %d: a rule is a group's name or a mapping with group, all, any or steps, not %q", n.Line, n.Value)
		}
		*r = Rule{Group: n.Value}
		return nil
	case yaml.MappingNode:
	default:
		return fmt.Errorf("line %d: a rule is a group's name or a mapping with group, all, any or steps", n.Line)
	}
	if len(n.Content) != 2 {
		return fmt.Errorf("line %d: a rule has exactly one of group, all, any and steps", n.Line)
	}
	k, v := n.Content[0], n.Content[1]
	switch k.Value {
	case "group":
		if v.Kind != yaml.ScalarNode || v.Tag != "!!str" {
			return fmt.Errorf("line %d: group: want a group's name", v.Line)
		}
		*r = Rule{Group: v.Value}
		return nil
	case "all", "any", "steps":
	default:
		return fmt.Errorf("line %d: unknown rule %q: use group, all, any or steps", k.Line, k.Value)
	}
	if v.Kind != yaml.SequenceNode || len(v.Content) == 0 {
		return fmt.Errorf("line %d: %s: want a list of at least one rule", v.Line, k.Value)
	}
	rs := make([]Rule, len(v.Content))
	for i, c := range v.Content {
		if err := rs[i].fromNode(c, depth+1); err != nil {
			return err
		}
	}
	switch k.Value {
	case "all":
		*r = Rule{All: rs}
	case "any":
		*r = Rule{Any: rs}
	default:
		*r = Rule{Steps: rs}
	}
	return nil
}

// UnmarshalYAML reads an integer number of satoshis, or "N sat" or
// "X BTC".
func (a *Amount) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return fmt.Errorf("line %d: want an amount: satoshis, \"N sat\" or \"X BTC\"", n.Line)
	}
	v, err := ParseAmount(n.Value)
	if err != nil {
		return fmt.Errorf("line %d: %v", n.Line, err)
	}
	*a = v
	return nil
}

// ParseAmount reads "120000", "120000 sat" or "1.2 BTC" (at most eight
// decimals). Amounts are positive and at most 21 million BTC.
func ParseAmount(s string) (Amount, error) {
	s = strings.TrimSpace(s)
	num, unit, _ := strings.Cut(s, " ")
	unit = strings.TrimSpace(unit)
	var sat int64
	switch strings.ToLower(unit) {
	case "", "sat", "sats":
		v, err := strconv.ParseInt(num, 10, 64)
		if err != nil || v < 0 {
			return 0, fmt.Errorf("amount %q: want whole satoshis, \"N sat\" or \"X BTC\"", s)
		}
		sat = v
	case "btc":
		whole, frac, _ := strings.Cut(num, ".")
		if len(frac) > 8 || whole == "" {
			return 0, fmt.Errorf("amount %q: at most eight decimals", s)
		}
		w, err := strconv.ParseInt(whole, 10, 64)
		if err != nil || w < 0 || w > 21_000_000 {
			return 0, fmt.Errorf("amount %q: not a number of BTC", s)
		}
		var f int64
		if frac != "" {
			if f, err = strconv.ParseInt(frac+strings.Repeat("0", 8-len(frac)), 10, 64); err != nil || f < 0 {
				return 0, fmt.Errorf("amount %q: not a number of BTC", s)
			}
		}
		sat = w*btcutil.SatoshiPerBitcoin + f
	default:
		return 0, fmt.Errorf("amount %q: unknown unit %q: use sat or BTC", s, unit)
	}
	if sat <= 0 || sat > btcutil.MaxSatoshi {
		return 0, fmt.Errorf("amount %q: want more than zero and at most 21,000,000 BTC", s)
	}
	return Amount(sat), nil
}

// String writes the amount exactly in BTC: "1.20000000 BTC".
func (a Amount) String() string { return formatSat(int64(a)) }

func formatSat(v int64) string {
	sign := ""
	if v < 0 {
		v, sign = -v, "-"
	}
	return fmt.Sprintf("%s%d.%08d BTC", sign, v/btcutil.SatoshiPerBitcoin, v%btcutil.SatoshiPerBitcoin)
}

// UnmarshalYAML reads a duration such as "30m" or "24h".
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return fmt.Errorf("line %d: want a duration such as \"30m\" or \"24h\"", n.Line)
	}
	v, err := time.ParseDuration(n.Value)
	if err != nil || v < 0 {
		return fmt.Errorf("line %d: duration %q: want one such as \"30m\" or \"24h\"", n.Line, n.Value)
	}
	*d = Duration(v)
	return nil
}

// MarshalJSON writes the duration as Go does ("1h30m0s").
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

// D is the duration as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// validationError is a content error at a path of the document.
type validationError struct {
	path []any // string keys and int indices
	msg  string
}

func (e *validationError) Error() string { return e.field() + ": " + e.msg }

func (e *validationError) field() string {
	var b strings.Builder
	for i, p := range e.path {
		switch p := p.(type) {
		case int:
			fmt.Fprintf(&b, "[%d]", p)
		case string:
			if i > 0 {
				b.WriteByte('.')
			}
			b.WriteString(p)
		}
	}
	return b.String()
}

func invalid(msg string, path ...any) error {
	return &validationError{path: path, msg: msg}
}

// lineOf finds the line of path in a mapping node: the key's line for a
// mapping entry, the item's for a list item. It returns the deepest line
// found.
func lineOf(n *yaml.Node, path []any) int {
	line := n.Line
	for _, p := range path {
		switch p := p.(type) {
		case string:
			if n.Kind != yaml.MappingNode {
				return line
			}
			found := false
			for i := 0; i+1 < len(n.Content); i += 2 {
				if n.Content[i].Value == p {
					line, n, found = n.Content[i].Line, n.Content[i+1], true
					break
				}
			}
			if !found {
				return line
			}
		case int:
			if n.Kind != yaml.SequenceNode || p >= len(n.Content) {
				return line
			}
			n = n.Content[p]
			line = n.Line
		}
	}
	return line
}

func checkName(s string) error {
	if s == "" || len(s) > MaxNameLen {
		return fmt.Errorf("name %q: want 1 to %d characters", s, MaxNameLen)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || i > 0 && (c == '-' || c == '_')) {
			return fmt.Errorf("name %q: use lowercase letters, digits, '-' and '_', starting with a letter or digit", s)
		}
	}
	return nil
}

// CheckUser reports whether s can be a user name in a policy: 1 to
// [MaxUserLen] bytes of printable ASCII without spaces.
func CheckUser(s string) error {
	if s == "" || len(s) > MaxUserLen {
		return fmt.Errorf("user %q: want 1 to %d characters", s, MaxUserLen)
	}
	for i := 0; i < len(s); i++ {
		if s[i] <= ' ' || s[i] >= 0x7f {
			return fmt.Errorf("user %q: printable characters without spaces only", s)
		}
	}
	return nil
}

func sortedKeys[V any](m map[string]V) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}

func (p *Policy) validate() error {
	switch {
	case p.Version == 0:
		return invalid("missing: this format is version 1", "version")
	case p.Version != Version:
		return invalid(fmt.Sprintf("version %d is not supported: this format is version %d", p.Version, Version), "version")
	}
	if len(p.Groups) == 0 {
		return invalid("at least one approver group is needed", "groups")
	}
	if len(p.Groups) > MaxGroups {
		return invalid(fmt.Sprintf("%d groups, at most %d", len(p.Groups), MaxGroups), "groups")
	}
	for _, name := range sortedKeys(p.Groups) {
		g := p.Groups[name]
		if err := checkName(name); err != nil {
			return invalid(err.Error(), "groups", name)
		}
		if len(g.Members) == 0 || len(g.Members) > MaxMembers {
			return invalid(fmt.Sprintf("want 1 to %d members", MaxMembers), "groups", name, "members")
		}
		for i, m := range g.Members {
			if err := CheckUser(m); err != nil {
				return invalid(err.Error(), "groups", name, "members", i)
			}
			if slices.Contains(g.Members[:i], m) {
				return invalid(fmt.Sprintf("%s is listed twice", m), "groups", name, "members", i)
			}
		}
		if g.Quorum < 1 || g.Quorum > len(g.Members) {
			return invalid(fmt.Sprintf("%d is not between 1 and the group's %d members", g.Quorum, len(g.Members)), "groups", name, "quorum")
		}
	}
	switch {
	case p.Require == nil && len(p.Tiers) == 0:
		return invalid("set require (one rule for every transfer) or tiers (rules by amount)", "require")
	case p.Require != nil && len(p.Tiers) > 0:
		return invalid("set require or tiers, not both", "require")
	case p.Require != nil:
		if err := p.checkRule(*p.Require, "require"); err != nil {
			return err
		}
	}
	if len(p.Tiers) > MaxTiers {
		return invalid(fmt.Sprintf("%d tiers, at most %d", len(p.Tiers), MaxTiers), "tiers")
	}
	for i, t := range p.Tiers {
		if err := checkName(t.Name); err != nil {
			return invalid(err.Error(), "tiers", i, "name")
		}
		for j := range i {
			if p.Tiers[j].Name == t.Name {
				return invalid(fmt.Sprintf("%s is also the name of tiers[%d]", t.Name, j), "tiers", i, "name")
			}
		}
		if t.UpTo == nil && i != len(p.Tiers)-1 {
			return invalid("only the last tier may leave up_to out (no upper bound)", "tiers", i, "up_to")
		}
		if i > 0 && t.UpTo != nil && *t.UpTo <= *p.Tiers[i-1].UpTo {
			return invalid(fmt.Sprintf("%s is not above tiers[%d].up_to (%s): tiers overlap; list them by increasing amount", t.UpTo, i-1, p.Tiers[i-1].UpTo), "tiers", i, "up_to")
		}
		if err := p.checkRule(t.Require, "tiers", i, "require"); err != nil {
			return err
		}
	}
	if al := p.AllowList; al != nil {
		if len(al.Addresses) == 0 && al.UnlistedRequire == nil {
			return invalid("an empty allow-list refuses every transfer: list addresses, or set unlisted_require", "allow_list", "addresses")
		}
		if len(al.Addresses) > MaxAddresses {
			return invalid(fmt.Sprintf("%d addresses, at most %d", len(al.Addresses), MaxAddresses), "allow_list", "addresses")
		}
		seen := map[string]string{}
		for _, name := range sortedKeys(al.Addresses) {
			a := al.Addresses[name]
			if err := checkName(name); err != nil {
				return invalid(err.Error(), "allow_list", "addresses", name)
			}
			if a == "" || len(a) > MaxAddressLen || strings.ContainsFunc(a, func(r rune) bool { return r <= ' ' || r >= 0x7f }) {
				return invalid(fmt.Sprintf("address %q: want 1 to %d printable characters", a, MaxAddressLen), "allow_list", "addresses", name)
			}
			if other, ok := seen[a]; ok {
				return invalid(fmt.Sprintf("the same address as %s", other), "allow_list", "addresses", name)
			}
			seen[a] = name
		}
		if al.UnlistedRequire != nil {
			if err := p.checkRule(*al.UnlistedRequire, "allow_list", "unlisted_require"); err != nil {
				return err
			}
		}
	}
	if len(p.Velocity) > MaxVelocity {
		return invalid(fmt.Sprintf("%d limits, at most %d", len(p.Velocity), MaxVelocity), "velocity")
	}
	for i, v := range p.Velocity {
		if v.Window.D() < MinWindow || v.Window.D() > MaxWindow {
			return invalid(fmt.Sprintf("%s: want between %s and %s", v.Window.D(), MinWindow, MaxWindow), "velocity", i, "window")
		}
		if v.Max <= 0 {
			return invalid("want an amount above zero", "velocity", i, "max")
		}
		for j := range i {
			if p.Velocity[j].Window == v.Window {
				return invalid(fmt.Sprintf("the same window as velocity[%d]", j), "velocity", i, "window")
			}
		}
	}
	if e := p.Expiry.D(); e != 0 && (e < MinExpiry || e > MaxExpiry) {
		return invalid(fmt.Sprintf("%s: want between %s and %s", e, MinExpiry, MaxExpiry), "expiry")
	}
	if l := p.TimeLock.D(); l < 0 || l > MaxLock {
		return invalid(fmt.Sprintf("%s: want at most %s", l, MaxLock), "time_lock")
	}
	for _, l := range p.Lines() {
		if len(l) > MaxLineLen {
			key, _, _ := strings.Cut(l, ": ")
			return invalid(fmt.Sprintf("%d characters to show on a device, at most %d: use fewer or shorter names", len(l), MaxLineLen), key)
		}
	}
	return nil
}

// checkRule checks that a rule names existing groups, and not too many.
func (p *Policy) checkRule(r Rule, path ...any) error {
	n := 0
	var walk func(r Rule, depth int) error
	walk = func(r Rule, depth int) error {
		if depth > MaxRuleDepth {
			return invalid(fmt.Sprintf("nests more than %d deep", MaxRuleDepth), path...)
		}
		subs := 0
		for _, l := range [][]Rule{r.All, r.Any, r.Steps} {
			if l != nil {
				subs++
			}
		}
		if r.Group != "" {
			subs++
		}
		if subs != 1 {
			return invalid("a rule has exactly one of group, all, any and steps", path...)
		}
		if r.Group != "" {
			n++
			if _, ok := p.Groups[r.Group]; !ok {
				return invalid(fmt.Sprintf("no group is called %q", r.Group), path...)
			}
			return nil
		}
		for _, l := range [][]Rule{r.All, r.Any, r.Steps} {
			if l != nil && len(l) == 0 {
				return invalid("all, any and steps list at least one rule", path...)
			}
			for _, c := range l {
				if err := walk(c, depth+1); err != nil {
					return err
				}
			}
		}
		return nil
	}
	if err := walk(r, 1); err != nil {
		return err
	}
	if n > MaxRuleGroups {
		return invalid(fmt.Sprintf("names %d groups, at most %d", n, MaxRuleGroups), path...)
	}
	return nil
}

// CheckNetwork reports whether every allow-listed address is an address
// on network n, naming the first that is not.
func (p *Policy) CheckNetwork(n bitcoin.Network) error {
	if p.AllowList == nil {
		return nil
	}
	params := n.Params()
	if params == nil {
		return fmt.Errorf("%w: unknown network %d", ErrInvalid, uint8(n))
	}
	for _, name := range sortedKeys(p.AllowList.Addresses) {
		a := p.AllowList.Addresses[name]
		addr, err := btcutil.DecodeAddress(a, params)
		if err != nil || !addr.IsForNet(params) {
			return fmt.Errorf("%w: allow_list.addresses.%s: %s is not an address on %s", ErrInvalid, name, a, n)
		}
		if addr.EncodeAddress() != a {
			return fmt.Errorf("%w: allow_list.addresses.%s: write %s as %s (the form transfers show)", ErrInvalid, name, a, addr.EncodeAddress())
		}
	}
	return nil
}

// Users lists every member of every group, sorted.
func (p *Policy) Users() []string {
	var us []string
	for _, g := range p.Groups {
		for _, m := range g.Members {
			if !slices.Contains(us, m) {
				us = append(us, m)
			}
		}
	}
	slices.Sort(us)
	return us
}

// String writes a rule compactly: "ops", "all(ops, execs)",
// "steps(ops, execs)".
func (r Rule) String() string {
	if r.Group != "" {
		return r.Group
	}
	op, l := "all", r.All
	switch {
	case r.Any != nil:
		op, l = "any", r.Any
	case r.Steps != nil:
		op, l = "steps", r.Steps
	}
	parts := make([]string, len(l))
	for i, c := range l {
		parts[i] = c.String()
	}
	return op + "(" + strings.Join(parts, ", ") + ")"
}

// Lines writes the policy as one line per fact, "field: value", in a
// fixed order: what policy show prints and what a change's diff compares.
// Every member, tier, address and limit has its own line, so a diff names
// exactly what changed.
func (p *Policy) Lines() []string {
	l := []string{fmt.Sprintf("version: %d", p.Version)}
	for _, name := range sortedKeys(p.Groups) {
		g := p.Groups[name]
		l = append(l, fmt.Sprintf("groups.%s.quorum: %d of %d", name, g.Quorum, len(g.Members)))
		for _, m := range g.Members {
			l = append(l, fmt.Sprintf("groups.%s.member: %s", name, m))
		}
	}
	if p.Require != nil {
		l = append(l, "require: "+p.Require.String())
	}
	for i, t := range p.Tiers {
		up := "no limit"
		if t.UpTo != nil {
			up = "up to " + t.UpTo.String()
		}
		l = append(l, fmt.Sprintf("tiers[%d].%s: %s: %s", i, t.Name, up, t.Require))
	}
	if al := p.AllowList; al != nil {
		for _, name := range sortedKeys(al.Addresses) {
			l = append(l, fmt.Sprintf("allow_list.%s: %s", name, al.Addresses[name]))
		}
		if al.UnlistedRequire != nil {
			l = append(l, "allow_list.unlisted: needs "+al.UnlistedRequire.String())
		} else {
			l = append(l, "allow_list.unlisted: refused")
		}
	}
	for _, v := range p.Velocity {
		l = append(l, fmt.Sprintf("velocity.%s: at most %s", v.Window.D(), v.Max))
	}
	if p.Expiry != 0 {
		l = append(l, "expiry: "+p.Expiry.D().String())
	}
	if p.TimeLock != 0 {
		l = append(l, "time_lock: "+p.TimeLock.D().String())
	}
	l = append(l, fmt.Sprintf("single_veto: %v", p.SingleVetoOn()))
	return l
}

// DiffLine is one line of a [Diff]: a line of [Policy.Lines] removed or
// added.
type DiffLine struct {
	Added bool
	Line  string
}

func (d DiffLine) String() string {
	if d.Added {
		return "+ " + d.Line
	}
	return "- " + d.Line
}

// Diff compares two policies line by line ([Policy.Lines]): the lines of
// old that new lacks (removed), then those new adds, each in order. A nil
// old is the empty policy.
func Diff(old, new *Policy) []DiffLine {
	var ol, nl []string
	if old != nil {
		ol = old.Lines()
	}
	if new != nil {
		nl = new.Lines()
	}
	var out []DiffLine
	for _, l := range ol {
		if !slices.Contains(nl, l) {
			out = append(out, DiffLine{Line: l})
		}
	}
	for _, l := range nl {
		if !slices.Contains(ol, l) {
			out = append(out, DiffLine{Added: true, Line: l})
		}
	}
	return out
}

// sum adds amounts, saturating instead of overflowing.
func sum(a, b int64) int64 {
	if b > 0 && a > math.MaxInt64-b {
		return math.MaxInt64
	}
	return a + b
}
