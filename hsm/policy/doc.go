// Package policy is a wallet's approval policy: the document that says who
// must approve which transfers, and the pure evaluation of a transfer
// under it. It is part of the trusted core (package core evaluates it on
// every answer and again before every signature) and does no I/O: the
// core supplies the transfer's summary, the wallet's history, the
// answers and the time.
//
// # The document
//
// A policy is YAML or JSON (JSON is YAML), read by [Parse], which refuses
// unknown fields and names the line and field of every problem:
//
//	version: 1
//	groups:
//	  ops:   {members: [alice, bob, carol], quorum: 2}
//	  execs: {members: [dave, erin], quorum: 1}
//	tiers:
//	  - name: small
//	    up_to: 1 BTC
//	    require: ops
//	  - name: large                       # no up_to: above 1 BTC
//	    require: {steps: [ops, execs]}    # ops first, then execs
//	allow_list:
//	  addresses:
//	    cold: sb1q...
//	  unlisted_require: execs             # leave out to refuse other destinations
//	velocity:
//	  - {window: 24h, max: 5 BTC}
//	expiry: 30m                           # how long approvers have to answer
//	time_lock: 1h                         # from the rule being met to signing
//	single_veto: true                     # the default: one rejection stops a request
//
// A rule is a group's name (that group's quorum), or a mapping with one
// of all, any and steps, each a list of rules: every one, one of them,
// or each in turn (an approval counts towards a step only after the steps
// before it are met). A user in several groups counts in each.
//
// Amounts are satoshis, "N sat" or "X BTC"; tiers are compared with what a
// transfer sends (its outputs that are not change), inclusive of up_to.
//
// [Policy.Marshal] is the canonical form (JSON, sorted keys) that the core
// stores and that admins approve; [Policy.Lines] is one line per fact,
// what `opencustody policy show` prints, and [Diff] compares two policies
// line by line: what an admin's device shows for a policy change.
//
// # Evaluation
//
// [Policy.Evaluate] takes an [Input] (the transfer's summary, the
// initiator, the wallet's signed transfers, the answers so far, the users
// who can answer, and now) and returns a [Decision]: refused (above the
// tiers, outside the allow-list, over a velocity limit), rejected (a veto,
// or the rule can no longer be met), pending (with what is missing and
// whom to ask) or approved (with the time the HSM may sign, after the time
// lock). The initiator's answers never count and the initiator is never
// asked.
package policy
