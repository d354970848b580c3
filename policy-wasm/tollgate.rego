# tollgate's bundled policy: each agent may call what its entry in the data allows.
#
# Two entrypoints:
#
#   data.tollgate.decision     asked about every connection and every request (SPEC §4).
#                              Always defined: {"allow": bool, "reason": string, ...}.
#   data.tollgate.data_errors  asked once per revision, when tollgate loads or reloads the
#                              policy with its data: a set of messages, each naming a bad key.
#                              Any message refuses the revision (docs/POLICY.md, "Data checks").
#
# The policy holds no facts about agents: it reads them from data.tollgate_config
# (policy-wasm/data.json is the example). docs/POLICY.md is the reference for that schema, the
# matching rules and the deny reasons; keep the three in step.
#
# Copy this file to start your own policy. It keeps to builtins that both of tollgate's engines
# run (regorus, and OPA's Wasm target without host calls), so `opa build -t wasm` works on it.
package tollgate

import rego.v1

# --- The decision ---------------------------------------------------------------------------
#
# The checks run in this order; the first that fails names the deny reason.

decision := deny("invalid_input") if {
	not valid_input
} else := deny("unauthenticated") if {
	not has_spiffe_id
} else := deny("unknown_agent") if {
	not agent
} else := deny("unauthenticated") if {
	authentication_required
	not input.source.authenticated == true
} else := allowed if {
	allowed
} else := deny(reasons[closest])

# Only reached if the policy itself is broken: the chain above decides every input.
default decision := {"allow": false, "reason": "default_deny"}

deny(reason) := {"allow": false, "reason": reason}

# --- The input (SPEC §4.1) ------------------------------------------------------------------

# A connection-level check (CONNECT, or a transparent connection before any request is read)
# has `request: null`: only the destination is known.
connection_level if input.request == null

valid_input if {
	connection_level
	is_string(input.destination.host)
	is_number(input.destination.port)
}

valid_input if {
	is_string(input.request.method)
	is_string(input.request.scheme)
	is_string(input.request.host)
	is_number(input.request.port)
	is_string(input.request.path)
}

# Where the request (or connection) goes. Host names compare case-insensitively and without
# the root dot.
host := trim_suffix(lower(input.destination.host), ".") if connection_level

host := trim_suffix(lower(input.request.host), ".") if not connection_level

port := input.destination.port if connection_level

port := input.request.port if not connection_level

# --- The caller's entry ---------------------------------------------------------------------

# The caller's entry, looked up by its SPIFFE ID: a decision costs the same with ten agents
# or ten thousand.
agent := data.tollgate_config.agents[input.source.spiffe_id]

# A helper rule, not `not is_string(input.source.spiffe_id)` in the chain above: OPA evaluates
# a call's arguments before the `not`, so a missing spiffe_id would make that body undefined and
# the chain would go on to `unknown_agent`.
has_spiffe_id if is_string(input.source.spiffe_id)

rules := agent.rules if {
	is_array(agent.rules)
} else := []

# Any value but `false` turns it on: a typo such as "yes" fails closed.
authentication_required if agent.require_authenticated

# --- Matching the caller's rules ------------------------------------------------------------
#
# A rule is checked for host, port, method, path, intent declared, intent allowed, intent
# verified and time window, in that order. A rule matches when it passes all eight. A deny
# names the check at which the closest rule (the one that passed the most) stopped: that is
# what the agent's developer has to change. (reasons[n] is the reason of a rule that passed n
# checks.)

reasons := [
	"destination_not_allowed",
	"port_not_allowed",
	"method_not_allowed",
	"path_not_allowed",
	"intent_required",
	"intent_not_allowed",
	"verified_intent_required",
	"outside_time_window",
]

# The caller's rules that name the host, by index. Only these get the other checks.
#
# A host pattern is an exact name, or a glob with "." as the separator: `*` stands for exactly
# one label and `**` for one or more. IP literals compare verbatim ("::1", "[::1]").
naming_host contains i if {
	some i, rule in rules
	is_array(rule.hosts)
	some pattern in rule.hosts
	trim_suffix(lower(pattern), ".") == host
}

naming_host contains i if {
	some i, rule in rules
	is_array(rule.hosts)
	some pattern in rule.hosts
	contains(pattern, "*")
	glob.match(trim_suffix(lower(pattern), "."), ["."], host)
}

# How many of the checks a rule that names the host passes, in order, before the first it
# fails (1: the host only; 8: all).
checks_passed(rule) := 1 if {
	not port_allowed(rule)
} else := 2 if {
	not method_allowed(rule)
} else := 3 if {
	not path_allowed(rule)
} else := 8 if {
	# A connection-level check of a rule that intercepts: the rest is checked per request.
	not conditions_apply(rule)
} else := 8 if {
	# Most rules have no intent conditions and no windows.
	unconditional(rule)
} else := 4 if {
	not intent_declared(rule)
} else := 5 if {
	not intent_allowed(rule)
} else := 6 if {
	not intent_verified(rule)
} else := 7 if {
	not window_open(rule)
} else := 8

# checks_passed of each rule that names the host, by index.
progress := {i: checks_passed(rules[i]) | some i in naming_host}

# The first rule in list order that passes every check decides what an allow carries (its
# credential, headers or mode): put the most specific rule first.
first_match := min(matches) if {
	all_checks := count(reasons)
	matches := {i | some i, n in progress; n == all_checks}
	count(matches) > 0
}

# How far the closest rule got; 0 (destination_not_allowed) when no rule names the host.
closest := max({n | some n in progress} | {0})

# --- The checks -----------------------------------------------------------------------------
#
# A list field that is absent or [] does not restrict. Any other value that is not a list (a
# typo such as "methods": "GET") matches nothing, so a malformed rule fails closed. (An item of
# the wrong type, such as a number among the hosts, is a builtin error: with strict builtin
# errors the evaluation fails and tollgate denies it as policy_error, without them it matches
# nothing.) data_errors refuses all of these before they are ever used.

port_allowed(rule) if port in rule.ports

port_allowed(rule) if "*" in rule.ports

# Without `ports`, a request may use its scheme's default port. A connection does not know its
# scheme yet, so both pass there; each request inside is then held to its own scheme's port.
port_allowed(rule) if {
	object.get(rule, "ports", []) == []
	port in default_ports
}

default_ports := [80, 443] if {
	connection_level
} else := [443] if {
	input.request.scheme == "https"
} else := [80] if {
	input.request.scheme == "http"
} else := []

# Methods and paths belong to requests: a connection-level check passes them.
method_allowed(_) if connection_level

method_allowed(rule) if object.get(rule, "methods", []) == []

method_allowed(rule) if {
	is_array(rule.methods)
	method := upper(input.request.method)
	some listed in rule.methods
	upper(listed) in {"*", method}
}

path_allowed(_) if connection_level

path_allowed(rule) if object.get(rule, "paths", []) == []

# Prefixes match whole segments, and a trailing "/" on the prefix does not matter:
# "/repos/acme" matches "/repos/acme" and "/repos/acme/app", not "/repos/acmeevil".
# "/" matches every path (also OPTIONS' "*").
path_allowed(rule) if "/" in rule.paths

path_allowed(rule) if {
	is_array(rule.paths)
	path := concat("", [input.request.path, "/"])
	some prefix in rule.paths
	startswith(path, concat("", [trim_suffix(prefix, "/"), "/"]))
}

# Intent conditions and time windows apply to every request, but to a connection only when the
# rule tunnels it: nothing inside a tunnel is checked again, so the CONNECT is the last chance
# to enforce them. An intercepted connection is checked request by request.
conditions_apply(_) if not connection_level

conditions_apply(rule) if rule.mode == "tunnel"

# Most rules set no intent conditions and no windows: they pass the last four checks at once.
unconditional(rule) if {
	object.get(rule, "intents", []) == []
	object.get(rule, "require_verified_intent", false) == false
	object.get(rule, "windows", []) == []
}

# A rule needs an intent when it lists `intents` or requires a verified one.
intent_declared(rule) if {
	object.get(rule, "intents", []) == []
	not verification_required(rule)
}

intent_declared(_) if is_string(input.intent.name)

# Any value but an absent or `false` require_verified_intent turns it on: a typo fails closed.
verification_required(rule) if object.get(rule, "require_verified_intent", false) != false

# A pattern containing `*` is a glob with "." as the separator: "issues.*" allows
# "issues.read", not "issues.comments.write".
intent_allowed(rule) if object.get(rule, "intents", []) == []

intent_allowed(rule) if input.intent.name in rule.intents

intent_allowed(rule) if {
	is_array(rule.intents)
	is_string(input.intent.name)
	some pattern in rule.intents
	contains(pattern, "*")
	glob.match(pattern, ["."], input.intent.name)
}

# Only a signed intent token sets input.intent.verified; X-Agent-Intent alone never does.
intent_verified(rule) if not verification_required(rule)

intent_verified(_) if input.intent.verified == true

# --- Time windows ---------------------------------------------------------------------------
#
# {"days": ["mon", ...], "from": "09:00", "to": "17:00"}, in UTC: `from` inclusive, `to`
# exclusive, both "HH:MM" (defaults 00:00 and 24:00). from > to spans midnight ("22:00" to
# "06:00"). `days` (default: every day) names the day the request is made on. A rule allows
# while any of its windows is open; without windows (absent or []) always. A malformed window
# is never open.

window_open(rule) if object.get(rule, "windows", []) == []

window_open(rule) if {
	is_array(rule.windows)
	some window in rule.windows
	open_now(window)
}

open_now(window) if {
	is_object(window)
	from := object.get(window, "from", "00:00")
	to := object.get(window, "to", "24:00")
	valid_clock(from)
	valid_clock(to)
	clock_between(from, to, time_of_day)
	days := object.get(window, "days", [])
	is_array(days)
	today_among(days)
}

clock_between(from, to, clock) if {
	from <= to
	from <= clock
	clock < to
}

clock_between(from, to, clock) if {
	from > to
	clock >= from
}

clock_between(from, to, clock) if {
	from > to
	clock < to
}

today_among(days) if days == []

today_among(days) if weekday in days

# input.time is RFC 3339 in UTC ("2026-11-23T10:00:00.000Z"): "HH:MM" strings compare in
# time order, so characters 11 to 15 are all a window needs.
time_of_day := substring(input.time, 11, 5) if is_string(input.time)

# The UTC day of the week of input.time, by Sakamoto's method. (Arithmetic: OPA's Wasm target
# has no time.* builtins of its own.)
weekday := ["sun", "mon", "tue", "wed", "thu", "fri", "sat"][day_number] if {
	is_string(input.time)
	year := (two_digits(substring(input.time, 0, 2)) * 100) + two_digits(substring(input.time, 2, 2))
	month := two_digits(substring(input.time, 5, 2))
	day := two_digits(substring(input.time, 8, 2))
	y := sakamoto_year(year, month)
	offset := [0, 3, 2, 5, 0, 3, 5, 1, 4, 6, 2, 4][month - 1]
	day_number := ((((y + floor(y / 4)) - floor(y / 100)) + floor(y / 400)) + offset + day) % 7
}

# Sakamoto's method counts January and February with the year before.
sakamoto_year(year, month) := year - 1 if {
	month < 3
} else := year

# "HH:MM" from 00:00 to 24:00.
valid_clock("24:00") := true

valid_clock(clock) if {
	is_string(clock)
	count(clock) == 5
	substring(clock, 2, 1) == ":"
	two_digits(substring(clock, 0, 2)) < 24
	two_digits(substring(clock, 3, 2)) < 60
}

# "07" as 7; undefined unless both characters are digits.
two_digits(text) := (10 * digit(substring(text, 0, 1))) + digit(substring(text, 1, 1)) if {
	count(text) == 2
}

digit(character) := n if {
	n := indexof("0123456789", character)
	n >= 0
}

# --- What an allow carries ------------------------------------------------------------------

# A connection-level allow says how to carry the connection: the rule's `mode`, verbatim.
# Anything but intercept/tunnel makes the decision invalid, and tollgate fails closed.
allowed := {"allow": true, "reason": allow_reason(rule, i), "mode": object.get(rule, "mode", "intercept")} if {
	connection_level
	i := first_match
	rule := rules[i]
}

# A per-request allow carries the rule's credential and header changes, when it has them.
allowed := object.union(
	{"allow": true, "reason": allow_reason(rule, i)},
	object.union(credential_of(rule), headers_of(rule)),
) if {
	not connection_level
	i := first_match
	rule := rules[i]
}

# The rule's `reason`; else "allowed by rule <id>"; else "allowed by rule rules[<index>]".
allow_reason(rule, index) := rule.reason if {
	is_string(rule.reason)
} else := concat("", ["allowed by rule ", rule.id]) if {
	is_string(rule.id)
} else := concat("", ["allowed by rule rules[", format_int(index, 10), "]"])

# Missing scopes are filled in. A credential or headers value of the wrong type is passed
# through as it is, so tollgate rejects the decision (policy_error) rather than forward the
# request without what the rule asked for.
credential_of(rule) := {"credential": object.union(
	{"name": object.get(rule.credential, "name", null), "scopes": object.get(rule.credential, "scopes", [])},
	ttl_of(rule.credential),
)} if {
	is_object(rule.credential)
} else := {"credential": rule.credential} if {
	rule.credential != null
} else := {}

ttl_of(credential) := {"ttl": credential.ttl} if {
	credential.ttl != null
} else := {}

headers_of(rule) := {"headers": {
	"set": object.get(rule.headers, "set", {}),
	"remove": object.get(rule.headers, "remove", []),
}} if {
	is_object(rule.headers)
} else := {"headers": rule.headers} if {
	rule.headers != null
} else := {}

# --- Data checks: data.tollgate.data_errors --------------------------------------------------
#
# tollgate evaluates data_errors once per revision, when the policy and its data are loaded or
# reloaded (and in `tollgate check`); any message refuses the revision, and the last good one
# stays in force. `decision` never consults it: checking every agent's data on every request
# would cost each request time for all agents.
#
# Each message starts with the key path of what is wrong:
#   tollgate_config.agents["spiffe://example.org/a"].rules[2].ports: must be a list of ...

data_errors contains "tollgate_config.agents: must be an object keyed by SPIFFE ID" if {
	not agents_is_object
}

# A helper rule, not `not is_object(data.tollgate_config.agents)`: OPA evaluates a call's
# arguments before the `not`, so with no agents at all that body would be undefined, not true.
agents_is_object if is_object(data.tollgate_config.agents)

data_errors contains problem("tollgate_config", key_path(key), "unknown field") if {
	some key, _ in config
	key != "agents"
}

data_errors contains problem(path, "", "key must be a SPIFFE ID (spiffe://...)") if {
	some path, id in agent_ids
	not startswith(id, "spiffe://")
}

data_errors contains problem(path, "", "must be an object with a list of rules") if {
	some path, entry in agent_entries
	not is_object(entry)
}

data_errors contains problem(path, key, message) if {
	some path, entry in agent_objects
	some [key, message] in agent_problems(entry)
}

data_errors contains problem(path, "", "must be an object") if {
	some path, rule in rule_entries
	not is_object(rule)
}

data_errors contains problem(path, key, message) if {
	some path, rule in rule_objects
	some [key, message] in rule_problems(rule)
}

data_errors contains problem(path, "", "must be an object {\"days\": [...], \"from\": \"HH:MM\", \"to\": \"HH:MM\"}") if {
	some path, window in window_entries
	not is_object(window)
}

data_errors contains problem(path, key, message) if {
	some path, window in window_entries
	is_object(window)
	some [key, message] in window_problems(window)
}

# What is wrong with one agent entry, rule or window: [key, message] pairs, each for a field
# that is there (or, for `hosts`, required). An unknown key is an error too: a misspelt field
# ("method") would otherwise be ignored, and the rule would allow more than meant.

agent_problems(entry) := {[key_path(key), "unknown field"] |
	some key, _ in entry
	not key in {"description", "require_authenticated", "rules"}
} | {[".rules", "must be a list of rules"] |
	not has_rule_list(entry)
} | {[".description", "must be a string"] |
	description := entry.description
	not is_string(description)
} | {[".require_authenticated", "must be a boolean"] |
	required := entry.require_authenticated
	not is_boolean(required)
}

# A helper, not `not is_array(entry.rules)`: OPA evaluates a call's arguments before the `not`,
# so an agent without `rules` would report nothing.
has_rule_list(entry) if is_array(entry.rules)

rule_problems(rule) := {[key_path(key), "unknown field"] |
	some key, _ in rule
	not key in rule_fields
} | {[concat("", [".", key]), "must be a string"] |
	some key in ["id", "description", "reason"]
	value := rule[key]
	not is_string(value)
} | {[".hosts", "must be a non-empty list of host names or globs"] |
	not non_empty_strings(object.get(rule, "hosts", null))
} | {[".ports", "must be a list of ports (1-65535) or \"*\""] |
	ports := rule.ports
	not port_list(ports)
} | {[".methods", "must be a list of strings"] |
	methods := rule.methods
	not string_list(methods)
} | {[".paths", "must be a list of prefixes starting with \"/\""] |
	paths := rule.paths
	not path_list(paths)
} | {[".intents", "must be a list of strings"] |
	intents := rule.intents
	not string_list(intents)
} | {[".require_verified_intent", "must be a boolean"] |
	required := rule.require_verified_intent
	not is_boolean(required)
} | {[".mode", "must be \"intercept\" or \"tunnel\""] |
	mode := rule.mode
	not mode in {"intercept", "tunnel"}
} | {[".windows", "must be a list of {\"days\": [...], \"from\": \"HH:MM\", \"to\": \"HH:MM\"}"] |
	windows := rule.windows
	not is_array(windows)
} | {[".credential", "must be {\"name\": string, \"scopes\": [string], \"ttl\": string}"] |
	credential := rule.credential
	not valid_credential(credential)
} | {[".headers", "must be {\"set\": {name: string}, \"remove\": [name]}"] |
	headers := rule.headers
	not valid_headers(headers)
}

window_problems(window) := {[key_path(key), "unknown field"] |
	some key, _ in window
	not key in {"days", "from", "to"}
} | {[concat("", [".", key]), "must be \"HH:MM\", from 00:00 to 24:00"] |
	some key in ["from", "to"]
	clock := window[key]
	not valid_clock(clock)
} | {[".days", "must be a list of mon, tue, wed, thu, fri, sat, sun"] |
	days := window.days
	not day_list(days)
}

rule_fields := {
	"id", "description", "reason", "hosts", "ports", "methods", "paths", "intents",
	"require_verified_intent", "credential", "headers", "mode", "windows",
}

# Each agent, rule and window of the data under the key path that names it in a message.

config := data.tollgate_config if is_object(data.tollgate_config)

agents := config.agents if is_object(config.agents)

agent_ids := {agent_path(id): id | some id, _ in agents}

agent_entries := {agent_path(id): entry | some id, entry in agents}

agent_objects := {path: entry | some path, entry in agent_entries; is_object(entry)}

rule_entries := {index_path(path, ".rules", i): rule |
	some path, entry in agent_objects
	is_array(entry.rules)
	some i, rule in entry.rules
}

rule_objects := {path: rule | some path, rule in rule_entries; is_object(rule)}

window_entries := {index_path(path, ".windows", i): window |
	some path, rule in rule_objects
	is_array(rule.windows)
	some i, window in rule.windows
}

# Messages are built with concat, json.marshal and format_int, which OPA's Wasm target
# compiles in (its sprintf would be a call to the host). Keys are quoted as JSON, so any
# character in a SPIFFE ID or a misspelt field reads unambiguously.
agent_path(id) := concat("", ["tollgate_config.agents[", json.marshal(id), "]"])

index_path(path, field, i) := concat("", [path, field, "[", format_int(i, 10), "]"])

key_path(key) := concat("", ["[", json.marshal(key), "]"])

problem(path, key, message) := concat("", [path, key, ": ", message])

# The predicates below hold when a value is well formed.

string_list(list) if {
	is_array(list)
	every item in list {
		is_string(item)
	}
}

non_empty_strings(list) if {
	string_list(list)
	count(list) > 0
}

path_list(list) if {
	string_list(list)
	every item in list {
		startswith(item, "/")
	}
}

day_list(list) if {
	is_array(list)
	every item in list {
		item in {"mon", "tue", "wed", "thu", "fri", "sat", "sun"}
	}
}

port_list(list) if {
	is_array(list)
	every item in list {
		valid_port(item)
	}
}

valid_port("*") := true

valid_port(port) if {
	is_number(port)
	port == floor(port)
	port >= 1
	port <= 65535
}

valid_credential(null) := true

valid_credential(credential) if {
	is_object(credential)
	is_string(credential.name)
	string_list(object.get(credential, "scopes", []))
	is_string(object.get(credential, "ttl", ""))
	every key, _ in credential {
		key in {"name", "scopes", "ttl"}
	}
}

valid_headers(null) := true

valid_headers(headers) if {
	is_object(headers)
	set := object.get(headers, "set", {})
	is_object(set)
	every _, value in set {
		is_string(value)
	}
	string_list(object.get(headers, "remove", []))
	every key, _ in headers {
		key in {"set", "remove"}
	}
}
