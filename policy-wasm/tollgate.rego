# tollgate's bundled policy.
#
# Entrypoint: data.tollgate.decision (`opa build -e tollgate/decision`). It is always defined
# and always an object {"allow": bool, "reason": string, ...} (SPEC §4.2).
#
# The policy holds no facts about agents: it reads them from data.tollgate_config
# (policy-wasm/data.json is the example). docs/POLICY.md is the reference for that schema,
# the matching rules and the deny reasons; keep the three in step.
#
# How a decision is made. The first check that fails names the deny reason:
#
#   invalid_input            the input lacks what SPEC §4.1 promises (a tollgate bug)
#   unauthenticated          no caller SPIFFE ID, or the agent requires mTLS and it is absent
#   unknown_agent            no entry for the caller under tollgate_config.agents
#   destination_not_allowed  no rule of the agent names this host
#   port_not_allowed         ... and this port
#   method_not_allowed       ... and this method          (per-request checks only)
#   path_not_allowed         ... and this path            (per-request checks only)
#   intent_required          ... the rules left need an intent and none was declared
#   intent_not_allowed       ... the declared intent is not one they accept
#   verified_intent_required ... they need a signed intent token; the intent is self-declared
#   outside_time_window      ... none of them is open at input.time (rule `windows`, UTC)
#
# Each check narrows the agent's rule list, so a deny names the check at which the *closest*
# rule stopped matching: what the agent's developer has to change. Rules still left after the
# last check allow; the first of them in list order decides credential, headers and mode.
#
# Performance. The policy runs on every request, on regorus' RVM, where every instruction
# costs tens of nanoseconds and rule and function calls cost several times more. So:
#   - The caller's entry is found by key: the cost does not grow with the number of agents,
#     only with the caller's own rules.
#   - A request is decided in two passes. The quick pass runs every check with tests that
#     are cheap because they are sufficient but not necessary: the rule names the request's
#     host, method and intent verbatim (as data usually does), and a field left out takes its
#     default. The first rule that passes them, rules[first], allows the request unless a rule
#     before it does. Only those rules (none, when first is 0) are then checked in full:
#     case-folded and glob host patterns, lower-case methods, explicit [] lists, intent
#     globs. When no rule passes the quick pass, every rule is checked in full, which also
#     gives the deny reason. glob.match (costly: it compiles the pattern) only ever runs in
#     the full checks.
#   - Checks are written inline, as comprehensions over builtins and `x in list` tests;
#     "or" is object.get({true: true}, a, b), which is true when a is true, else b.
# RVM pitfalls to keep clear of (regorus 0.14.1), found while writing this; the unit tests
# and a differential test against the interpreter are the safety net:
#   - A comprehension must start with `some x in ...`: a condition that fails before the
#     first loop of a comprehension derails the rest of the rule body.
#   - `x := <undefined>` does not fail a body: test every variable that can be undefined
#     (is_object(d), is_number(i), ...) before the body ends or uses it under `not`.
#   - A failing `some` loop at the top level of an else-branch body stops the else chain.
#   - An error in a builtin (lower(5), `some x in "s"`) is an error in the interpreter but
#     silently undefined in the RVM: guard types (is_string, is_array) before such calls.
#
# Portability: only builtins that regorus (interpreter and RVM) and OPA's Wasm target both
# implement natively. No http.send, io.jwt.*, regex.*, time.now_ns.
package tollgate

# Backstop: only reached if every branch below is undefined, which should never happen.
default decision := {"allow": false, "reason": "default_deny"}

decision := d if {
	# A well-formed request from an authenticated caller with an entry: nearly every request.
	# Anything else goes down the chain below, which reaches the same answers the long way.
	req := input.request
	method := req.method
	is_string(method)
	host := req.host
	is_string(host)
	port := req.port
	is_number(port)
	path := req.path
	is_string(path)
	startswith(path, "/")
	caller := input.source.spiffe_id
	is_string(caller)
	input.source.authenticated == true
	rs := data.tollgate_config.agents[caller].rules
	is_array(rs)
	default_port := {"https": 443, "http": 80}[req.scheme]
	is_number(default_port)

	# The quick pass (see the header): quick holds the rules that pass it.
	port_default := object.get({true: [port]}, port == default_port, [])
	path_slash := concat("", [path, "/"])
	name := object.get(input, ["intent", "name"], null)
	named := is_string(name)
	verified := [named, object.get(input, ["intent", "verified"], false)] == [true, true]
	quick := {i |
		some i, rule in rs
		host in rule.hosts
		is_array(rule.hosts)
		methods := object.get(rule, "methods", ["*"])
		is_array(methods)
		object.get({true: true}, method in methods, "*" in methods)
		ports := object.get(rule, "ports", port_default)
		is_array(ports)
		object.get({true: true}, port in ports, "*" in ports)
		object.get({true: true}, object.get(rule, "require_verified_intent", false) == false, verified)
		intents := object.get(rule, "intents", [])
		is_array(intents)
		object.get({true: true}, intents == [], [named, name in intents] == [true, true])
		object.get(rule, "windows", []) == []
		paths := object.get(rule, "paths", ["/"])
		is_array(paths)
		some prefix in paths
		is_string(prefix)
		startswith(path_slash, concat("", [trim_suffix(prefix, "/"), "/"]))
	}
	d := request_decision(rs, min(quick | {count(rs)}), host)
	is_object(d)
} else := d if {
	# The same for a connection-level check.
	d := connection_quick
	is_object(d)
} else := deny("invalid_input") if {
	not valid_input
} else := deny("unauthenticated") if {
	not caller_id
} else := deny("unknown_agent") if {
	not agent
} else := deny("unauthenticated") if {
	agent.require_authenticated
	not input.source.authenticated == true
} else := connection_decision(rules, count(rules), input.destination.host) if {
	connection_level
} else := request_decision(rules, count(rules), input.request.host)

deny(reason) := {"allow": false, "reason": reason}

# The fast path of a connection-level check: as for a request, without methods and paths.
# (A rule of its own: the RVM gives each rule at most 255 registers, too few for both paths.)
connection_quick := d if {
	input.request == null
	host := input.destination.host
	is_string(host)
	port := input.destination.port
	is_number(port)
	caller := input.source.spiffe_id
	is_string(caller)
	input.source.authenticated == true
	rs := data.tollgate_config.agents[caller].rules
	is_array(rs)

	port_default := object.get({true: [port]}, port in {80, 443}, [])
	name := object.get(input, ["intent", "name"], null)
	named := is_string(name)
	verified := [named, object.get(input, ["intent", "verified"], false)] == [true, true]
	quick := {i |
		some i, rule in rs
		host in rule.hosts
		is_array(rule.hosts)
		ports := object.get(rule, "ports", port_default)
		is_array(ports)
		object.get({true: true}, port in ports, "*" in ports)
		object.get({true: true}, object.get(rule, "mode", null) != "tunnel", object.get(rule, "windows", []) == [])
		intents := object.get(rule, "intents", [])
		object.get({true: true}, object.get(rule, "mode", null) != "tunnel", [
			object.get({true: true}, object.get(rule, "require_verified_intent", false) == false, verified),
			object.get({true: true}, intents == [], [named, is_array(intents), name in intents] == [true, true, true]),
		] == [true, true])
	}
	d := connection_decision(rs, min(quick | {count(rs)}), host)
	is_object(d)
}

# --- input ---------------------------------------------------------------------------------

# A connection-level check (CONNECT, or a transparent connection before any request is read)
# has `request: null`: the destination is all that is known.
connection_level if input.request == null

valid_input if {
	connection_level
	is_string(input.destination.host)
	is_number(input.destination.port)
}

valid_input if {
	is_object(input.request)
	is_string(input.request.method)
	is_string(input.request.scheme)
	is_string(input.request.host)
	is_number(input.request.port)
	is_string(input.request.path)
}

caller_id := input.source.spiffe_id if is_string(input.source.spiffe_id)

# --- the caller's rules --------------------------------------------------------------------

# Looked up by key: the cost of a decision does not grow with the number of agents.
agent := data.tollgate_config.agents[caller_id]

rules := agent.rules if {
	is_array(agent.rules)
} else := []

# --- the full checks -----------------------------------------------------------------------

# The rules (indices into rs) with a host pattern that matches the host: host names compare
# case-insensitively and without a trailing root dot. `*` stands for exactly one DNS label
# and `**` for one or more; glob.match only sees patterns with a wildcard, so IPv6 literals
# such as "[::1]" compare verbatim.
host_matches(rs, host) := {i |
	some i, rule in rs
	hosts := rule.hosts
	is_array(hosts)
	some pattern in hosts
	is_string(pattern)
	trim_suffix(lower(pattern), ".") == th
} | {i |
	some i, rule in rs
	hosts := rule.hosts
	is_array(hosts)
	some pattern in hosts
	is_string(pattern)
	contains(pattern, "*")
	glob.match(trim_suffix(lower(pattern), "."), ["."], th)
} if {
	th := trim_suffix(lower(host), ".")
}

# After the host, a rule is checked for port, method, path, intent present, intent allowed,
# verified intent and time window, in that order. A rule's stage is the number of these it
# passes before the first it fails (7: it passes them all); the deny reason is that of the
# check after the highest stage reached.
check_names := {
	0: "destination_not_allowed", 1: "port_not_allowed", 2: "method_not_allowed", 3: "path_not_allowed",
	4: "intent_required", 5: "intent_not_allowed", 6: "verified_intent_required", 7: "outside_time_window",
}

# A rule's stage for a request. A list field that is absent or [] does not restrict:
# object.get({0: default}, count(list), list) stands in the default for an empty list. Any
# other value that is not a list matches nothing ([null] stands in for it), so a malformed
# rule fails closed.
request_stage(rule) := 0 if {
	# The ports a rule without `ports` accepts: the scheme's default port.
	port := input.request.port
	default_port := object.get({"https": 443, "http": 80}, input.request.scheme, null)
	value := object.get(rule, "ports", [])
	list := object.get({true: value}, is_array(value), [null])
	ports := object.get({0: object.get({true: [port]}, port == default_port, [])}, count(list), list)
	object.get({true: true}, port in ports, "*" in ports) == false
} else := 1 if {
	method_keys := {upper(input.request.method), "*"}
	value := object.get(rule, "methods", [])
	list := object.get({true: value}, is_array(value), [null])
	[m | some m in object.get({0: ["*"]}, count(list), list); is_string(m); upper(m) in method_keys] == []
} else := 2 if {
	# Prefixes match whole segments, and a trailing "/" on the prefix does not matter:
	# "/repos/acme" matches "/repos/acme" and "/repos/acme/app" but not "/repos/acmeevil";
	# "/" matches every path.
	path_slash := concat("", [input.request.path, "/"])
	value := object.get(rule, "paths", [])
	list := object.get({true: value}, is_array(value), [null])
	[p |
		some p in object.get({0: ["/"]}, count(list), list)
		is_string(p)
		startswith(path_slash, object.get({"/": ""}, p, concat("", [trim_suffix(p, "/"), "/"])))
	] == []
} else := intent_stage(rule)

# A connection-level check: methods and paths belong to requests and pass. Intent conditions
# and time windows are checked only for `tunnel` rules: a tunnelled connection gets no
# per-request check afterwards, so the CONNECT is the last chance to enforce them. Rules
# exempt here pass the intent and window checks.
connection_stage(rule) := 0 if {
	# A connection does not know its scheme yet, so both default ports pass; each request
	# inside is then held to its own scheme's port.
	port := input.destination.port
	value := object.get(rule, "ports", [])
	list := object.get({true: value}, is_array(value), [null])
	ports := object.get({0: object.get({true: [port]}, port in {80, 443}, [])}, count(list), list)
	object.get({true: true}, port in ports, "*" in ports) == false
} else := 7 if {
	object.get(rule, "mode", null) != "tunnel"
} else := intent_stage(rule)

# A rule needs an intent when it lists `intents` or requires a verified one. Anything but an
# absent or `false` require_verified_intent turns the requirement on: a typo fails closed.
intent_stage(rule) := 3 if {
	need := [object.get(rule, "intents", []), object.get(rule, "require_verified_intent", false)] != [[], false]
	[is_string(object.get(input, ["intent", "name"], null)), need] == [false, true]
} else := 4 if {
	not intents_accept(object.get(rule, "intents", []), object.get(input, ["intent", "name"], null))
} else := 5 if {
	object.get(input, ["intent", "verified"], false) != true
	object.get(rule, "require_verified_intent", false) != false
} else := window_stage(rule)

# A rule with `windows` allows only while one of them is open at input.time (UTC); absent or
# [] means always. A malformed windows value is never open: a typo fails closed.
window_stage(rule) := 6 if {
	not windows_open(object.get(rule, "windows", []))
} else := 7

windows_open(windows) if windows == []

windows_open(windows) if {
	is_array(windows)
	some window in windows
	window_open(window)
}

# A window {"days": ["mon", ...], "from": "09:00", "to": "17:00"}: `from` inclusive, `to`
# exclusive, both "HH:MM" in UTC and compared as strings (input.time is RFC 3339 in UTC,
# so its characters 11..15 are the time of day). from > to spans midnight ("22:00" to
# "06:00"); `days` (default: every day) names the day the request is made on.
window_open(window) if {
	is_object(window)
	from := object.get(window, "from", "00:00")
	to := object.get(window, "to", "24:00")
	is_string(from)
	is_string(to)
	clock := substring(input.time, 11, 5)
	clock_in(from, to, clock)
	days := object.get(window, "days", [])
	is_array(days)
	object.get({true: true}, days == [], request_weekday in days)
}

clock_in(from, to, clock) if {
	from <= to
	from <= clock
	clock < to
}

clock_in(from, to, clock) if {
	from > to
	clock >= from
}

clock_in(from, to, clock) if {
	from > to
	clock < to
}

# "07" as 7. (to_number refuses a leading zero in regorus but not in OPA; "107" - 100 is
# read the same way by both.)
two_digits(text) := to_number(concat("", ["1", text])) - 100 if {
	count(text) == 2
	every c in split(text, "") {
		indexof("0123456789", c) >= 0
	}
}

# The UTC day of the week of input.time, by Sakamoto's method (arithmetic only: time.*
# builtins are not native to OPA's Wasm target).
request_weekday := ["sun", "mon", "tue", "wed", "thu", "fri", "sat"][dow] if {
	is_string(input.time)
	year := two_digits(substring(input.time, 0, 2)) * 100 + two_digits(substring(input.time, 2, 2))
	month := two_digits(substring(input.time, 5, 2))
	day := two_digits(substring(input.time, 8, 2))
	y := year - object.get({true: 1}, month < 3, 0)
	offsets := [0, 3, 2, 5, 0, 3, 5, 1, 4, 6, 2, 4]
	dow := (((y + floor(y / 4)) - floor(y / 100)) + floor(y / 400) + offsets[month - 1] + day) % 7
}

intents_accept(intents, _) if intents == []

intents_accept(intents, name) if {
	is_string(name)
	is_array(intents)
	some pattern in intents
	pattern == name
}

intents_accept(intents, name) if {
	is_string(name)
	is_array(intents)
	some pattern in intents
	is_string(pattern)
	contains(pattern, "*")
	glob.match(pattern, ["."], name)
}

# --- the decision --------------------------------------------------------------------------

# The decision for a request, given that rules[first] passes every check (unless first ==
# count(rs)): the rules before it that match the host get the full checks. best is the
# [-stage, index] of the first rule with the highest stage ([1, count(rs)] if none).
request_decision(rs, first, host) := {"allow": true, "reason": allow_reason(rule, 0)} if {
	# Nothing before rules[first] to check, and no credential or headers to add.
	first == 0
	rule := rs[0]
	is_object(rule)
	object.get(rule, "credential", null) == null
	object.get(rule, "headers", null) == null
} else := d if {
	hs := host_matches(array.slice(rs, 0, first), host)
	best := min({[0 - request_stage(rs[i]), i] | some i in hs} | {[1, count(rs)]})
	i := object.get({-7: best[1]}, best[0], first)
	d := array.concat(
		[x | some _ in [0]; i < count(rs); x := request_allow(rs[i], i)],
		[{"allow": false, "reason": object.get(check_names, 1 - best[0], null)}],
	)[0]
	is_object(d)
}

# The same for a connection-level check. The allow says how to carry the connection: the
# rule's `mode` is passed through verbatim; anything but intercept/tunnel makes the decision
# invalid, and tollgate then fails closed (policy_error).
connection_decision(rs, first, host) := d if {
	hs := host_matches(array.slice(rs, 0, first), host)
	best := min({[0 - connection_stage(rs[i]), i] | some i in hs} | {[1, count(rs)]})
	i := object.get({-7: best[1]}, best[0], first)
	d := array.concat(
		[x |
			some _ in [0]
			i < count(rs)
			x := {"allow": true, "reason": allow_reason(rs[i], i), "mode": object.get(rs[i], "mode", "intercept")}
		],
		[{"allow": false, "reason": object.get(check_names, 1 - best[0], null)}],
	)[0]
	is_object(d)
}

# The rule's reason; else "allowed by rule <id>"; else its index.
allow_reason(rule, i) := concat("", ["allowed by rule ", rule.id]) if {
	not is_string(rule.reason)
	is_string(rule.id)
} else := rule.reason if {
	is_string(rule.reason)
} else := concat("", ["allowed by rule rules[", format_int(i, 10), "]"])

# A per-request allow carries the rule's credential and header changes, when it has them.
# Missing scopes/set/remove are filled in. A credential or headers value of the wrong type is
# passed through as it is, so tollgate rejects the decision (policy_error) rather than
# forwarding the request without what the rule asked for.
request_allow(rule, i) := object.union(
	{"allow": true, "reason": allow_reason(rule, i)},
	object.union(credential_part(rule), headers_part(rule)),
)

credential_part(rule) := {"credential": object.union(
	{"name": object.get(rule.credential, "name", null), "scopes": object.get(rule.credential, "scopes", [])},
	ttl_part(rule.credential),
)} if {
	is_object(rule.credential)
} else := {"credential": rule.credential} if {
	rule.credential != null
} else := {}

ttl_part(credential) := {"ttl": credential.ttl} if {
	credential.ttl != null
} else := {}

headers_part(rule) := {"headers": {
	"set": object.get(rule.headers, "set", {}),
	"remove": object.get(rule.headers, "remove", []),
}} if {
	is_object(rule.headers)
} else := {"headers": rule.headers} if {
	rule.headers != null
} else := {}

# --- data checks ---------------------------------------------------------------------------

# Problems in data.tollgate_config, one message each; empty when the data is well formed.
# `decision` does not consult it (that would cost every request time for every agent) and
# never needs to: a malformed field fails closed (it matches nothing, or makes the decision
# invalid). The unit tests assert it is empty for data.json; tooling can query it too.
config_errors contains "tollgate_config.agents: must be an object keyed by SPIFFE ID" if {
	not is_object(data.tollgate_config.agents)
}

config_agents := data.tollgate_config.agents if is_object(data.tollgate_config.agents)

config_errors contains sprintf("tollgate_config.agents[%q]: key must be a SPIFFE ID (spiffe://...)", [id]) if {
	some id, _ in config_agents
	not startswith(id, "spiffe://")
}

config_errors contains sprintf("tollgate_config.agents[%q]: must be an object with a list of rules", [id]) if {
	some id, entry in config_agents
	not is_array(entry.rules)
}

config_errors contains sprintf("tollgate_config.agents[%q]: unknown field %q", [id, key]) if {
	some id, entry in config_agents
	is_object(entry)
	some key, _ in entry
	not key in {"description", "require_authenticated", "rules"}
}

config_errors contains sprintf("tollgate_config.agents[%q].require_authenticated: must be a boolean", [id]) if {
	some id, entry in config_agents
	is_object(entry)
	not is_boolean(object.get(entry, "require_authenticated", false))
}

config_errors contains sprintf("tollgate_config.agents[%q].rules[%d]: %s", [id, i, problem]) if {
	some id, entry in config_agents
	is_array(entry.rules)
	some i, rule in entry.rules
	some problem in rule_problems(rule)
}

rule_fields := {
	"id", "description", "reason", "hosts", "ports", "methods", "paths", "intents",
	"require_verified_intent", "credential", "headers", "mode", "windows",
}

rule_problems(rule) := {"must be an object"} if not is_object(rule)

rule_problems(rule) := problems if {
	is_object(rule)
	problems := (
		{sprintf("unknown field %q", [key]) | some key, _ in rule; not key in rule_fields} |
		{"id, description, reason: must be strings" | not strings_or_absent(rule, ["id", "description", "reason"])} |
		{"hosts: must be a non-empty list of host names or globs" | not hosts_valid(rule)} |
		{"ports: must be a list of port numbers (1-65535) or \"*\"" | not ports_valid(rule)} |
		{"methods: must be a list of strings" | not string_list_or_absent(rule, "methods")} |
		{"paths: must be a list of prefixes starting with \"/\"" | not paths_valid(rule)} |
		{"intents: must be a list of strings" | not string_list_or_absent(rule, "intents")} |
		{"require_verified_intent: must be a boolean" | not is_boolean(object.get(rule, "require_verified_intent", false))} |
		{"mode: must be \"intercept\" or \"tunnel\"" | not mode_valid(rule)} |
		{"windows: must be a list of {\"days\": [mon..sun], \"from\": \"HH:MM\", \"to\": \"HH:MM\"}" | not windows_valid(rule)} |
		{"credential: must be {\"name\": string, \"scopes\": [string], \"ttl\": string}" | not credential_valid(rule)} |
		{"headers: must be {\"set\": {name: string}, \"remove\": [name]}" | not headers_valid(rule)}
	)
}

# The predicates below hold when the field is well formed. (regorus makes object.get on a
# non-object an evaluation error, hence the is_object guards.)

strings_or_absent(obj, keys) if {
	every key in keys {
		is_string(object.get(obj, key, ""))
	}
}

string_list_or_absent(obj, key) if {
	is_array(object.get(obj, key, []))
	every v in object.get(obj, key, []) {
		is_string(v)
	}
}

hosts_valid(rule) if {
	string_list_or_absent(rule, "hosts")
	count(object.get(rule, "hosts", [])) > 0
}

ports_valid(rule) if {
	is_array(object.get(rule, "ports", []))
	every p in object.get(rule, "ports", []) {
		port_valid(p)
	}
}

port_valid(p) if p == "*"

port_valid(p) if {
	is_number(p)
	p >= 1
	p <= 65535
}

paths_valid(rule) if {
	string_list_or_absent(rule, "paths")
	every p in object.get(rule, "paths", []) {
		startswith(p, "/")
	}
}

mode_valid(rule) if object.get(rule, "mode", "intercept") in {"intercept", "tunnel"}

credential_valid(rule) if object.get(rule, "credential", null) == null

credential_valid(rule) if {
	is_object(rule.credential)
	is_string(rule.credential.name)
	string_list_or_absent(rule.credential, "scopes")
	strings_or_absent(rule.credential, ["ttl"])
	every key, _ in rule.credential {
		key in {"name", "scopes", "ttl"}
	}
}

headers_valid(rule) if object.get(rule, "headers", null) == null

headers_valid(rule) if {
	is_object(rule.headers)
	is_object(object.get(rule.headers, "set", {}))
	every _, v in object.get(rule.headers, "set", {}) {
		is_string(v)
	}
	string_list_or_absent(rule.headers, "remove")
	every key, _ in rule.headers {
		key in {"set", "remove"}
	}
}

windows_valid(rule) if {
	is_array(object.get(rule, "windows", []))
	every window in object.get(rule, "windows", []) {
		window_valid(window)
	}
}

window_valid(window) if {
	is_object(window)
	every key, _ in window {
		key in {"days", "from", "to"}
	}
	clock_valid(object.get(window, "from", "00:00"))
	clock_valid(object.get(window, "to", "24:00"))
	is_array(object.get(window, "days", []))
	every d in object.get(window, "days", []) {
		d in {"mon", "tue", "wed", "thu", "fri", "sat", "sun"}
	}
}

# "HH:MM", 00:00 to 24:00.
clock_valid(clock) if clock == "24:00"

clock_valid(clock) if {
	is_string(clock)
	count(clock) == 5
	substring(clock, 2, 1) == ":"
	two_digits(substring(clock, 0, 2)) < 24
	two_digits(substring(clock, 3, 2)) < 60
}
