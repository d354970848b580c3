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
#
# Each check narrows the agent's rule list, so a deny names the check at which the *closest*
# rule stopped matching: what the agent's developer has to change. Rules still left after the
# last check allow; the first of them in list order decides credential, headers and mode.
#
# Performance: the caller's entry is found by key, so the cost does not grow with the number
# of agents, only with the caller's own rules. Matching is written as comprehensions over
# builtins rather than calls to helper functions: on regorus' RVM a user-function call costs
# about as much as a dozen builtin calls.
#
# Portability: only builtins that regorus (interpreter and RVM) and OPA's Wasm target both
# implement natively. No http.send, io.jwt.*, regex.*, time.now_ns.
package tollgate

# Backstop: only reached if every branch below is undefined, which should never happen.
default decision := {"allow": false, "reason": "default_deny"}

decision := deny("invalid_input") if {
	not valid_input
} else := deny("unauthenticated") if {
	not caller_id
} else := deny("unknown_agent") if {
	not agent
} else := deny("unauthenticated") if {
	agent.require_authenticated
	not input.source.authenticated == true
} else := deny("destination_not_allowed") if {
	count(host_idx) == 0
} else := deny("port_not_allowed") if {
	count(port_idx) == 0
} else := deny("method_not_allowed") if {
	count(method_idx) == 0
} else := deny("path_not_allowed") if {
	count(path_idx) == 0
} else := deny("intent_required") if {
	count(intent_present_idx) == 0
} else := deny("intent_not_allowed") if {
	count(intent_allowed_idx) == 0
} else := deny("verified_intent_required") if {
	count(verified_idx) == 0
} else := allow_decision

deny(reason) := {"allow": false, "reason": reason}

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

# What is matched against hosts and ports: the connection's destination, or the authority
# the request goes to.
target := input.destination if {
	connection_level
} else := input.request

# Host names compare case-insensitively and without a trailing root dot.
target_host := trim_suffix(lower(target.host), ".")

target_port := target.port

# The ports a rule without `ports` accepts. A connection does not know its scheme yet, so both
# defaults pass there; each request inside is then held to its own scheme's port.
default_ports := {80, 443} if {
	connection_level
} else := {443} if {
	input.request.scheme == "https"
} else := {80} if {
	input.request.scheme == "http"
} else := set()

port_keys := {target_port, "*"}

method_keys := {upper(input.request.method), "*"}

# The path with a "/" appended, so that prefixes compare on segment boundaries (below).
path_slash := concat("", [input.request.path, "/"])

caller_id := input.source.spiffe_id if is_string(input.source.spiffe_id)

intent_name := input.intent.name if is_string(input.intent.name)

# --- the caller's rules --------------------------------------------------------------------

# Looked up by key: the cost of a decision does not grow with the number of agents.
agent := data.tollgate_config.agents[caller_id]

rules := agent.rules if {
	is_array(agent.rules)
} else := []

# Each check keeps the indices, ascending (list order), of the rules that still match.
# A list field that is absent or [] does not restrict; any other value that is not a list
# matches nothing, so a malformed rule fails closed. (`some x in v` is an evaluation error
# when v is a string or null, hence the is_array guards.)

# `*` stands for exactly one DNS label and `**` for one or more; glob.match only sees patterns
# with a wildcard, so IPv6 literals such as "[::1]" compare verbatim.
host_idx := sort({i |
	some i, rule in rules
	is_array(rule.hosts)
	some pattern in rule.hosts
	is_string(pattern)
	trim_suffix(lower(pattern), ".") == target_host
} | {i |
	some i, rule in rules
	is_array(rule.hosts)
	some pattern in rule.hosts
	is_string(pattern)
	contains(pattern, "*")
	glob.match(trim_suffix(lower(pattern), "."), ["."], target_host)
})

port_idx := sort({i |
	some i in host_idx
	object.get(rules[i], "ports", []) == []
	target_port in default_ports
} | {i |
	some i in host_idx
	is_array(rules[i].ports)
	some port in rules[i].ports
	port in port_keys
})

# Methods and paths belong to requests: a connection-level check passes them.
method_idx := port_idx if {
	connection_level
} else := sort({i |
	some i in port_idx
	object.get(rules[i], "methods", []) == []
} | {i |
	some i in port_idx
	is_array(rules[i].methods)
	some method in rules[i].methods
	is_string(method)
	upper(method) in method_keys
})

# Prefixes match whole segments, and a trailing "/" on the prefix does not matter:
# "/repos/acme" matches "/repos/acme" and "/repos/acme/app" but not "/repos/acmeevil";
# "/" matches every path.
path_idx := method_idx if {
	connection_level
} else := sort({i |
	some i in method_idx
	object.get(rules[i], "paths", []) == []
} | {i |
	some i in method_idx
	is_array(rules[i].paths)
	some prefix in rules[i].paths
	prefix == "/"
} | {i |
	some i in method_idx
	is_array(rules[i].paths)
	some prefix in rules[i].paths
	is_string(prefix)
	startswith(path_slash, concat("", [trim_suffix(prefix, "/"), "/"]))
})

# Intent conditions are checked on every request. At connection level they are checked only
# for `tunnel` rules: a tunnelled connection gets no per-request check afterwards, so the
# intent declared on the CONNECT is the last chance to enforce them. Rules exempt here pass
# the three intent checks.
intent_exempt := {i |
	some i in path_idx
	not rules[i].mode == "tunnel"
} if {
	connection_level
} else := set()

# A rule needs an intent when it lists `intents` or requires a verified one. Anything but an
# absent or `false` require_verified_intent turns the requirement on: a typo fails closed.
intent_present_idx := path_idx if {
	intent_name
} else := sort(intent_exempt | {i |
	some i in path_idx
	object.get(rules[i], "intents", []) == []
	not rules[i].require_verified_intent
})

intent_allowed_idx := sort(intent_exempt | {i |
	some i in intent_present_idx
	object.get(rules[i], "intents", []) == []
} | {i |
	some i in intent_present_idx
	is_array(rules[i].intents)
	some pattern in rules[i].intents
	pattern == intent_name
} | {i |
	some i in intent_present_idx
	is_array(rules[i].intents)
	some pattern in rules[i].intents
	is_string(pattern)
	contains(pattern, "*")
	glob.match(pattern, ["."], intent_name)
})

verified_idx := intent_allowed_idx if {
	input.intent.verified == true
} else := sort(intent_exempt | {i |
	some i in intent_allowed_idx
	not rules[i].require_verified_intent
})

# --- the allow decision --------------------------------------------------------------------

chosen_index := verified_idx[0]

chosen := rules[chosen_index]

allow_reason := chosen.reason if {
	is_string(chosen.reason)
} else := concat("", ["allowed by rule ", chosen.id]) if {
	is_string(chosen.id)
} else := concat("", ["allowed by rule rules[", format_int(chosen_index, 10), "]"])

# A connection-level allow says how to carry the connection. The rule's `mode` is passed
# through verbatim: anything but intercept/tunnel makes the decision invalid, and tollgate
# then fails closed (policy_error).
# A per-request allow carries the rule's credential and header changes, when it has them.
allow_decision := {"allow": true, "reason": allow_reason, "mode": object.get(chosen, "mode", "intercept")} if {
	connection_level
} else := object.union({"allow": true, "reason": allow_reason}, object.union(credential_part, headers_part))

# Missing scopes/set/remove are filled in. A credential or headers value of the wrong type
# is passed through as it is, so tollgate rejects the decision (policy_error) rather than
# forwarding the request without what the rule asked for.
credential_part := {"credential": object.union(
	{"name": object.get(chosen.credential, "name", null), "scopes": object.get(chosen.credential, "scopes", [])},
	ttl_part,
)} if {
	is_object(chosen.credential)
} else := {"credential": chosen.credential} if {
	chosen.credential != null
} else := {}

ttl_part := {"ttl": chosen.credential.ttl} if {
	chosen.credential.ttl != null
} else := {}

headers_part := {"headers": {
	"set": object.get(chosen.headers, "set", {}),
	"remove": object.get(chosen.headers, "remove", []),
}} if {
	is_object(chosen.headers)
} else := {"headers": chosen.headers} if {
	chosen.headers != null
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
	"require_verified_intent", "credential", "headers", "mode",
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
