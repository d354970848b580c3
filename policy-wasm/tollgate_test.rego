# Unit tests for tollgate.rego: `tollgate policy test policy-wasm/` (or `opa test policy-wasm/`).
#
# Convention (docs/POLICY.md, "Testing"): every test is a rule named test_<verdict>_<what>
# that must evaluate to true. Tests build their own input with req()/conn() and their own
# config with `with data.tollgate_config as ...`, so they do not depend on data.json; only the
# tests named test_example_* read the shipped example data.
package tollgate_test

# --- fixtures ------------------------------------------------------------------------------

triage := "spiffe://example.org/ns/agents/sa/triage"

other := "spiffe://example.org/ns/agents/sa/other"

base_input := {
	"version": 1,
	"time": "2026-11-22T10:00:00.123Z",
	"source": {
		"spiffe_id": triage,
		"trust_domain": "example.org",
		"path": "/ns/agents/sa/triage",
		"authenticated": true,
		"listener": "agents",
		"address": "10.0.0.7:51234",
	},
	"intent": {
		"name": null, "task": null, "purpose": null, "delegation": [],
		"verified": false, "issuer": null, "claims": {},
	},
	"request": null,
	"destination": {"host": "api.github.com", "port": 443, "ip": "140.82.112.6"},
	"connection": {"mode": "forward", "intercepted": true, "tls_sni": "api.github.com"},
}

# A per-request input (SPEC §4.1).
req(method, scheme, host, port, path) := object.union(base_input, {
	"request": {
		"method": method, "scheme": scheme, "host": host, "port": port, "path": path,
		"query": "", "headers": {"content-type": "application/json"}, "protocol": "HTTP/1.1",
	},
	"destination": {"host": host, "port": port, "ip": "192.0.2.10"},
})

# The common case: GET https://<host>:443<path>.
get(host, path) := req("GET", "https", host, 443, path)

# A connection-level input: request is null.
conn(host, port) := object.union(base_input, {
	"request": null,
	"destination": {"host": host, "port": port, "ip": "192.0.2.10"},
})

with_intent(inp, name, verified) := object.union(inp, {"intent": object.union(inp.intent, {
	"name": name, "task": "t-42", "verified": verified,
})})

as_caller(inp, spiffe_id, authenticated) := object.union(inp, {"source": object.union(inp.source, {
	"spiffe_id": spiffe_id, "authenticated": authenticated,
})})

# The config with one agent (triage) holding `rules`.
config(rules) := {"agents": {triage: {"rules": rules}}}

# The decision for input `inp` when triage holds `rules`.
decide(inp, rules) := d if {
	cfg := config(rules)
	d := data.tollgate.decision with input as inp with data.tollgate_config as cfg
}

github_read := {
	"id": "github-read",
	"hosts": ["api.github.com"],
	"methods": ["GET"],
	"paths": ["/repos/acme"],
}

deny(reason) := {"allow": false, "reason": reason}

# --- allow paths ---------------------------------------------------------------------------

test_allows_request_matching_host_port_method_and_path if {
	decide(get("api.github.com", "/repos/acme/app/issues"), [github_read]) == {
		"allow": true, "reason": "allowed by rule github-read",
	}
}

test_allows_with_reason_from_rule_reason_field if {
	rule := object.union(github_read, {"reason": "triage may read issues"})
	decide(get("api.github.com", "/repos/acme"), [rule]).reason == "triage may read issues"
}

test_allows_with_reason_naming_rule_index_when_rule_has_no_id if {
	rule := object.remove(github_read, ["id"])
	d := decide(get("api.github.com", "/repos/acme"), [{"hosts": ["example.com"]}, rule])
	d == {"allow": true, "reason": "allowed by rule rules[1]"}
}

test_allows_with_credential_passed_through if {
	rule := object.union(github_read, {"credential": {"name": "github", "scopes": ["issues:read"], "ttl": "5m"}})
	decide(get("api.github.com", "/repos/acme"), [rule]) == {
		"allow": true,
		"reason": "allowed by rule github-read",
		"credential": {"name": "github", "scopes": ["issues:read"], "ttl": "5m"},
	}
}

test_allows_with_credential_scopes_defaulted_and_ttl_omitted if {
	rule := object.union(github_read, {"credential": {"name": "github"}})
	decide(get("api.github.com", "/repos/acme"), [rule]).credential == {"name": "github", "scopes": []}
}

test_allows_with_headers_passed_through if {
	rule := object.union(github_read, {"headers": {"set": {"x-request-source": "tollgate"}, "remove": ["x-debug"]}})
	decide(get("api.github.com", "/repos/acme"), [rule]).headers == {
		"set": {"x-request-source": "tollgate"}, "remove": ["x-debug"],
	}
}

test_allows_with_headers_normalized_to_set_and_remove if {
	rule := object.union(github_read, {"headers": {"set": {"x-a": "1"}}})
	decide(get("api.github.com", "/repos/acme"), [rule]).headers == {"set": {"x-a": "1"}, "remove": []}
}

test_allows_by_first_matching_rule_in_list_order if {
	first := object.union(github_read, {"id": "first", "credential": {"name": "one"}})
	second := object.union(github_read, {"id": "second", "credential": {"name": "two"}})
	d := decide(get("api.github.com", "/repos/acme"), [first, second])
	d.reason == "allowed by rule first"
	d.credential.name == "one"
}

test_allows_any_method_when_methods_absent if {
	rule := object.remove(github_read, ["methods"])
	decide(req("DELETE", "https", "api.github.com", 443, "/repos/acme"), [rule]).allow == true
}

test_allows_any_method_when_methods_empty if {
	rule := object.union(github_read, {"methods": []})
	decide(req("PATCH", "https", "api.github.com", 443, "/repos/acme"), [rule]).allow == true
}

test_allows_any_method_with_star if {
	rule := object.union(github_read, {"methods": ["*"]})
	decide(req("PROPFIND", "https", "api.github.com", 443, "/repos/acme"), [rule]).allow == true
}

test_allows_method_case_insensitively if {
	rule := object.union(github_read, {"methods": ["get"]})
	decide(get("api.github.com", "/repos/acme"), [rule]).allow == true
}

test_allows_any_path_when_paths_absent if {
	rule := object.remove(github_read, ["paths"])
	decide(get("api.github.com", "/anything/at/all"), [rule]).allow == true
}

test_allows_without_intent_when_intents_absent if {
	decide(get("api.github.com", "/repos/acme"), [github_read]).allow == true
}

test_allows_any_intent_when_intents_empty if {
	rule := object.union(github_read, {"intents": []})
	inp := with_intent(get("api.github.com", "/repos/acme"), "whatever", false)
	decide(inp, [rule]).allow == true
}

test_allows_listed_intent if {
	rule := object.union(github_read, {"intents": ["issues.read", "issues.triage"]})
	inp := with_intent(get("api.github.com", "/repos/acme"), "issues.triage", false)
	decide(inp, [rule]).allow == true
}

test_allows_intent_matching_one_label_glob if {
	rule := object.union(github_read, {"intents": ["issues.*"]})
	inp := with_intent(get("api.github.com", "/repos/acme"), "issues.read", false)
	decide(inp, [rule]).allow == true
}

test_allows_verified_intent_when_verification_required if {
	rule := object.union(github_read, {"intents": ["issues.read"], "require_verified_intent": true})
	inp := with_intent(get("api.github.com", "/repos/acme"), "issues.read", true)
	decide(inp, [rule]).allow == true
}

test_allows_any_verified_intent_when_only_verification_required if {
	rule := object.union(github_read, {"require_verified_intent": true})
	inp := with_intent(get("api.github.com", "/repos/acme"), "anything", true)
	decide(inp, [rule]).allow == true
}

test_allows_when_authentication_required_and_caller_authenticated if {
	cfg := {"agents": {triage: {"require_authenticated": true, "rules": [github_read]}}}
	inp := get("api.github.com", "/repos/acme")
	d := data.tollgate.decision with input as inp with data.tollgate_config as cfg
	d.allow == true
}

test_allows_unauthenticated_caller_with_known_id_by_default if {
	inp := as_caller(get("api.github.com", "/repos/acme"), triage, false)
	decide(inp, [github_read]).allow == true
}

# --- hosts ---------------------------------------------------------------------------------

test_allows_host_glob_for_one_label if {
	rule := object.union(github_read, {"hosts": ["*.github.com"]})
	decide(get("api.github.com", "/repos/acme"), [rule]).allow == true
}

test_denies_host_glob_for_two_labels if {
	rule := object.union(github_read, {"hosts": ["*.github.com"]})
	decide(get("a.b.github.com", "/repos/acme"), [rule]) == deny("destination_not_allowed")
}

test_denies_host_glob_for_apex if {
	rule := object.union(github_read, {"hosts": ["*.github.com"]})
	decide(get("github.com", "/repos/acme"), [rule]) == deny("destination_not_allowed")
}

test_allows_double_star_glob_for_many_labels if {
	rule := object.union(github_read, {"hosts": ["**.github.com"]})
	decide(get("a.b.github.com", "/repos/acme"), [rule]).allow == true
}

test_denies_double_star_glob_for_apex if {
	rule := object.union(github_read, {"hosts": ["**.github.com"]})
	decide(get("github.com", "/repos/acme"), [rule]) == deny("destination_not_allowed")
}

test_allows_every_host_with_lone_double_star if {
	rule := object.union(github_read, {"hosts": ["**"]})
	decide(get("api.github.com", "/repos/acme"), [rule]).allow == true
	decide(get("localhost", "/repos/acme"), [rule]).allow == true
}

test_allows_glob_in_the_middle_of_a_host if {
	rule := object.union(github_read, {"hosts": ["s3.*.amazonaws.com"]})
	decide(get("s3.eu-west-1.amazonaws.com", "/repos/acme"), [rule]).allow == true
	decide(get("s3.amazonaws.com", "/repos/acme"), [rule]) == deny("destination_not_allowed")
}

test_allows_empty_ports_as_scheme_default if {
	rule := object.union(github_read, {"ports": []})
	decide(get("api.github.com", "/repos/acme"), [rule]).allow == true
	decide(req("GET", "https", "api.github.com", 8443, "/repos/acme"), [rule]) == deny("port_not_allowed")
}

test_denies_host_that_only_ends_with_allowed_name if {
	rule := object.union(github_read, {"hosts": ["github.com"]})
	decide(get("evilgithub.com", "/repos/acme"), [rule]) == deny("destination_not_allowed")
}

test_allows_host_case_insensitively if {
	rule := object.union(github_read, {"hosts": ["API.GitHub.com"]})
	decide(get("Api.GITHUB.com", "/repos/acme"), [rule]).allow == true
}

test_allows_host_with_trailing_root_dot if {
	decide(get("api.github.com.", "/repos/acme"), [github_read]).allow == true
}

test_allows_ipv6_literal_compared_verbatim if {
	rule := {"id": "v6", "hosts": ["[::1]"], "ports": ["*"]}
	decide(req("GET", "http", "[::1]", 8080, "/"), [rule]).allow == true
}

# --- ports ---------------------------------------------------------------------------------

test_allows_https_on_default_port_443 if {
	decide(req("GET", "https", "api.github.com", 443, "/repos/acme"), [github_read]).allow == true
}

test_allows_http_on_default_port_80 if {
	decide(req("GET", "http", "api.github.com", 80, "/repos/acme"), [github_read]).allow == true
}

test_denies_https_on_port_80_without_ports if {
	decide(req("GET", "https", "api.github.com", 80, "/repos/acme"), [github_read]) == deny("port_not_allowed")
}

test_denies_https_on_other_port_without_ports if {
	decide(req("GET", "https", "api.github.com", 8443, "/repos/acme"), [github_read]) == deny("port_not_allowed")
}

test_allows_listed_port if {
	rule := object.union(github_read, {"ports": [8443]})
	decide(req("GET", "https", "api.github.com", 8443, "/repos/acme"), [rule]).allow == true
}

test_denies_default_port_when_ports_listed if {
	rule := object.union(github_read, {"ports": [8443]})
	decide(get("api.github.com", "/repos/acme"), [rule]) == deny("port_not_allowed")
}

test_allows_any_port_with_star if {
	rule := object.union(github_read, {"ports": ["*"]})
	decide(req("GET", "http", "api.github.com", 41234, "/repos/acme"), [rule]).allow == true
}

# --- paths ---------------------------------------------------------------------------------

test_allows_path_equal_to_prefix if {
	decide(get("api.github.com", "/repos/acme"), [github_read]).allow == true
}

test_allows_path_below_prefix if {
	decide(get("api.github.com", "/repos/acme/app/issues/1"), [github_read]).allow == true
}

test_denies_path_sharing_prefix_across_segment_boundary if {
	decide(get("api.github.com", "/repos/acmeevil"), [github_read]) == deny("path_not_allowed")
}

test_denies_parent_of_prefix if {
	decide(get("api.github.com", "/repos"), [github_read]) == deny("path_not_allowed")
}

test_allows_path_below_prefix_with_trailing_slash if {
	rule := object.union(github_read, {"paths": ["/repos/"]})
	decide(get("api.github.com", "/repos/anything"), [rule]).allow == true
}

test_allows_bare_path_for_prefix_with_trailing_slash if {
	rule := object.union(github_read, {"paths": ["/repos/"]})
	decide(get("api.github.com", "/repos"), [rule]).allow == true
}

test_denies_sibling_for_prefix_with_trailing_slash if {
	rule := object.union(github_read, {"paths": ["/repos/"]})
	decide(get("api.github.com", "/reposx/y"), [rule]) == deny("path_not_allowed")
}

test_allows_path_with_trailing_slash_for_prefix_without if {
	decide(get("api.github.com", "/repos/acme/"), [github_read]).allow == true
}

test_allows_every_path_for_root_prefix if {
	rule := object.union(github_read, {"paths": ["/"]})
	decide(get("api.github.com", "/"), [rule]).allow == true
	decide(get("api.github.com", "/x/y"), [rule]).allow == true
	decide(req("OPTIONS", "https", "api.github.com", 443, "*"), [object.union(rule, {"methods": ["OPTIONS"]})]).allow == true
}

test_allows_path_matching_any_listed_prefix if {
	rule := object.union(github_read, {"paths": ["/users/", "/repos/acme"]})
	decide(get("api.github.com", "/users/octocat"), [rule]).allow == true
}

# --- connection level (request: null) ------------------------------------------------------

test_allows_connection_with_intercept_mode_by_default if {
	decide(conn("api.github.com", 443), [github_read]) == {
		"allow": true, "reason": "allowed by rule github-read", "mode": "intercept",
	}
}

test_allows_connection_with_tunnel_mode_from_rule if {
	rule := {"id": "pypi", "hosts": ["files.pythonhosted.org"], "mode": "tunnel"}
	decide(conn("files.pythonhosted.org", 443), [rule]) == {
		"allow": true, "reason": "allowed by rule pypi", "mode": "tunnel",
	}
}

test_allows_connection_regardless_of_methods_and_paths if {
	rule := object.union(github_read, {"methods": ["POST"], "paths": ["/nowhere"]})
	decide(conn("api.github.com", 443), [rule]).allow == true
}

test_allows_connection_without_credential_or_headers if {
	rule := object.union(github_read, {"credential": {"name": "github"}, "headers": {"set": {"x-a": "1"}}})
	decide(conn("api.github.com", 443), [rule]) == {
		"allow": true, "reason": "allowed by rule github-read", "mode": "intercept",
	}
}

test_allows_connection_to_intercept_rule_without_intent if {
	rule := object.union(github_read, {"intents": ["issues.read"], "require_verified_intent": true})
	decide(conn("api.github.com", 443), [rule]).allow == true
}

test_allows_connection_on_port_80_or_443_without_ports if {
	decide(conn("api.github.com", 80), [github_read]).allow == true
	decide(conn("api.github.com", 443), [github_read]).allow == true
}

test_denies_connection_on_other_port_without_ports if {
	decide(conn("api.github.com", 8443), [github_read]) == deny("port_not_allowed")
}

test_denies_connection_to_unlisted_host if {
	decide(conn("evil.example", 443), [github_read]) == deny("destination_not_allowed")
}

test_denies_tunnel_connection_without_required_intent if {
	rule := {"id": "t", "hosts": ["db.example.org"], "ports": [5432], "mode": "tunnel", "intents": ["db.query"]}
	decide(conn("db.example.org", 5432), [rule]) == deny("intent_required")
}

test_denies_tunnel_connection_with_other_intent if {
	rule := {"id": "t", "hosts": ["db.example.org"], "ports": [5432], "mode": "tunnel", "intents": ["db.query"]}
	inp := with_intent(conn("db.example.org", 5432), "db.drop", false)
	decide(inp, [rule]) == deny("intent_not_allowed")
}

test_denies_tunnel_connection_with_unverified_intent_when_required if {
	rule := {"id": "t", "hosts": ["db.example.org"], "ports": [5432], "mode": "tunnel", "intents": ["db.query"], "require_verified_intent": true}
	inp := with_intent(conn("db.example.org", 5432), "db.query", false)
	decide(inp, [rule]) == deny("verified_intent_required")
}

test_allows_tunnel_connection_with_required_intent if {
	rule := {"id": "t", "hosts": ["db.example.org"], "ports": [5432], "mode": "tunnel", "intents": ["db.query"]}
	inp := with_intent(conn("db.example.org", 5432), "db.query", false)
	decide(inp, [rule]).mode == "tunnel"
}

test_allows_intercept_when_tunnel_rule_intent_fails if {
	tunnel := {"id": "tunnel", "hosts": ["api.github.com"], "mode": "tunnel", "intents": ["bulk.clone"]}
	decide(conn("api.github.com", 443), [tunnel, github_read]) == {
		"allow": true, "reason": "allowed by rule github-read", "mode": "intercept",
	}
}

test_allows_connection_with_mode_of_first_matching_rule if {
	tunnel := {"id": "tunnel", "hosts": ["api.github.com"], "mode": "tunnel"}
	decide(conn("api.github.com", 443), [github_read, tunnel]).mode == "intercept"
	decide(conn("api.github.com", 443), [tunnel, github_read]).mode == "tunnel"
}

test_allows_request_by_tunnel_rule_like_any_other if {
	# Plain-HTTP requests never had a connection-level check; a tunnel rule applies in full.
	rule := {"id": "t", "hosts": ["example.org"], "methods": ["GET"], "mode": "tunnel"}
	decide(req("GET", "http", "example.org", 80, "/"), [rule]) == {"allow": true, "reason": "allowed by rule t"}
	decide(req("POST", "http", "example.org", 80, "/"), [rule]) == deny("method_not_allowed")
}

# --- deny reasons --------------------------------------------------------------------------

test_denies_invalid_input_without_request_key if {
	inp := object.remove(get("api.github.com", "/repos/acme"), ["request"])
	decide(inp, [github_read]) == deny("invalid_input")
}

test_denies_invalid_input_for_empty_input if {
	decide({}, [github_read]) == deny("invalid_input")
}

test_denies_invalid_input_for_string_port if {
	inp := object.union(get("api.github.com", "/repos/acme"), {"request": {
		"method": "GET", "scheme": "https", "host": "api.github.com", "port": "443", "path": "/",
	}})
	decide(inp, [github_read]) == deny("invalid_input")
}

test_denies_invalid_input_for_connection_without_destination if {
	inp := object.remove(conn("api.github.com", 443), ["destination"])
	decide(inp, [github_read]) == deny("invalid_input")
}

test_denies_unauthenticated_without_spiffe_id if {
	inp := as_caller(get("api.github.com", "/repos/acme"), null, false)
	decide(inp, [github_read]) == deny("unauthenticated")
}

test_denies_unauthenticated_without_source if {
	inp := object.remove(get("api.github.com", "/repos/acme"), ["source"])
	decide(inp, [github_read]) == deny("unauthenticated")
}

test_denies_unauthenticated_when_agent_requires_authentication if {
	cfg := {"agents": {triage: {"require_authenticated": true, "rules": [github_read]}}}
	inp := as_caller(get("api.github.com", "/repos/acme"), triage, false)
	d := data.tollgate.decision with input as inp with data.tollgate_config as cfg
	d == deny("unauthenticated")
}

test_denies_unauthenticated_when_agent_requires_authentication_and_flag_is_missing if {
	cfg := {"agents": {triage: {"require_authenticated": true, "rules": [github_read]}}}
	req_input := get("api.github.com", "/repos/acme")
	inp := object.union(object.remove(req_input, ["source"]), {"source": object.remove(req_input.source, ["authenticated"])})
	d := data.tollgate.decision with input as inp with data.tollgate_config as cfg
	d == deny("unauthenticated")
}

test_denies_unknown_agent if {
	inp := as_caller(get("api.github.com", "/repos/acme"), other, true)
	decide(inp, [github_read]) == deny("unknown_agent")
}

test_denies_unknown_agent_without_config if {
	inp := get("api.github.com", "/repos/acme")
	d := data.tollgate.decision with input as inp with data.tollgate_config as {}
	d == deny("unknown_agent")
}

test_denies_unknown_agent_with_rules_of_other_agent_only if {
	cfg := {"agents": {other: {"rules": [github_read]}}}
	inp := get("api.github.com", "/repos/acme")
	d := data.tollgate.decision with input as inp with data.tollgate_config as cfg
	d == deny("unknown_agent")
}

test_denies_destination_not_allowed if {
	decide(get("api.openai.com", "/v1/models"), [github_read]) == deny("destination_not_allowed")
}

test_denies_destination_not_allowed_for_agent_without_rules if {
	decide(get("api.github.com", "/repos/acme"), []) == deny("destination_not_allowed")
}

test_denies_port_not_allowed if {
	decide(req("GET", "https", "api.github.com", 444, "/repos/acme"), [github_read]) == deny("port_not_allowed")
}

test_denies_method_not_allowed if {
	decide(req("POST", "https", "api.github.com", 443, "/repos/acme"), [github_read]) == deny("method_not_allowed")
}

test_denies_path_not_allowed if {
	decide(get("api.github.com", "/orgs/acme"), [github_read]) == deny("path_not_allowed")
}

test_denies_intent_required if {
	rule := object.union(github_read, {"intents": ["issues.read"]})
	decide(get("api.github.com", "/repos/acme"), [rule]) == deny("intent_required")
}

test_denies_intent_required_when_only_verification_required if {
	rule := object.union(github_read, {"require_verified_intent": true})
	decide(get("api.github.com", "/repos/acme"), [rule]) == deny("intent_required")
}

test_denies_intent_not_allowed if {
	rule := object.union(github_read, {"intents": ["issues.read"]})
	inp := with_intent(get("api.github.com", "/repos/acme"), "issues.delete", true)
	decide(inp, [rule]) == deny("intent_not_allowed")
}

test_denies_intent_beyond_one_label_glob if {
	rule := object.union(github_read, {"intents": ["issues.*"]})
	inp := with_intent(get("api.github.com", "/repos/acme"), "issues.comments.write", false)
	decide(inp, [rule]) == deny("intent_not_allowed")
}

test_denies_verified_intent_required if {
	rule := object.union(github_read, {"intents": ["issues.read"], "require_verified_intent": true})
	inp := with_intent(get("api.github.com", "/repos/acme"), "issues.read", false)
	decide(inp, [rule]) == deny("verified_intent_required")
}

# --- reason priority -----------------------------------------------------------------------

test_denies_with_invalid_input_before_unauthenticated if {
	inp := as_caller(object.remove(get("api.github.com", "/"), ["request"]), null, false)
	decide(inp, [github_read]) == deny("invalid_input")
}

test_denies_with_unauthenticated_before_unknown_agent if {
	inp := as_caller(get("x.example", "/"), null, false)
	d := data.tollgate.decision with input as inp with data.tollgate_config as {}
	d == deny("unauthenticated")
}

test_denies_with_method_before_path if {
	decide(req("POST", "https", "api.github.com", 443, "/orgs/acme"), [github_read]) == deny("method_not_allowed")
}

test_denies_with_port_before_method if {
	decide(req("POST", "https", "api.github.com", 8443, "/repos/acme"), [github_read]) == deny("port_not_allowed")
}

test_denies_with_reason_of_closest_rule if {
	# wrong_method stops at the method; wrong_path gets one stage further: its reason wins.
	wrong_method := object.union(github_read, {"id": "a", "methods": ["PUT"]})
	wrong_path := object.union(github_read, {"id": "b", "methods": ["POST"], "paths": ["/gists/"]})
	decide(req("POST", "https", "api.github.com", 443, "/repos/acme"), [wrong_method, wrong_path]) == deny("path_not_allowed")
}

test_denies_with_intent_required_before_intent_not_allowed if {
	rule := object.union(github_read, {"intents": ["issues.read"], "require_verified_intent": true})
	decide(get("api.github.com", "/repos/acme"), [rule]) == deny("intent_required")
}

test_denies_with_intent_not_allowed_before_verified_intent_required if {
	rule := object.union(github_read, {"intents": ["issues.read"], "require_verified_intent": true})
	inp := with_intent(get("api.github.com", "/repos/acme"), "issues.write", false)
	decide(inp, [rule]) == deny("intent_not_allowed")
}

test_allows_when_a_later_rule_needs_no_intent if {
	strict := object.union(github_read, {"id": "strict", "intents": ["issues.read"], "require_verified_intent": true})
	lenient := object.union(github_read, {"id": "lenient"})
	decide(get("api.github.com", "/repos/acme"), [strict, lenient]).reason == "allowed by rule lenient"
}

# --- the first matching rule wins, however it matches -------------------------------------
#
# A rule that matches only through case folding, a root dot, a glob or an empty list still
# wins over a later rule that names the request verbatim.

test_allows_by_earlier_rule_with_lower_case_method if {
	earlier := object.union(github_read, {"id": "earlier", "methods": ["get"]})
	later := object.union(github_read, {"id": "later"})
	decide(get("api.github.com", "/repos/acme"), [earlier, later]).reason == "allowed by rule earlier"
}

test_allows_by_earlier_rule_with_host_in_other_case_and_root_dot if {
	earlier := object.union(github_read, {"id": "earlier", "hosts": ["API.GitHub.com."]})
	later := object.union(github_read, {"id": "later"})
	decide(get("api.github.com", "/repos/acme"), [earlier, later]).reason == "allowed by rule earlier"
}

test_allows_by_earlier_rule_with_host_glob if {
	earlier := object.union(github_read, {"id": "earlier", "hosts": ["*.github.com"]})
	later := object.union(github_read, {"id": "later"})
	decide(get("api.github.com", "/repos/acme"), [earlier, later]).reason == "allowed by rule earlier"
}

test_allows_by_earlier_rule_with_empty_lists if {
	earlier := {"id": "earlier", "hosts": ["api.github.com"], "ports": [], "methods": [], "paths": [], "intents": []}
	later := object.union(github_read, {"id": "later"})
	decide(get("api.github.com", "/repos/acme"), [earlier, later]).reason == "allowed by rule earlier"
}

test_allows_by_earlier_rule_with_intent_glob if {
	earlier := object.union(github_read, {"id": "earlier", "intents": ["issues.*"]})
	later := object.union(github_read, {"id": "later"})
	inp := with_intent(get("api.github.com", "/repos/acme"), "issues.read", false)
	decide(inp, [earlier, later]).reason == "allowed by rule earlier"
}

test_allows_by_later_rule_when_earlier_rule_fails_a_check if {
	earlier := object.union(github_read, {"id": "earlier", "hosts": ["API.GITHUB.COM"], "methods": ["post"]})
	later := object.union(github_read, {"id": "later", "credential": {"name": "github"}})
	d := decide(get("api.github.com", "/repos/acme"), [earlier, later])
	d == {"allow": true, "reason": "allowed by rule later", "credential": {"name": "github", "scopes": []}}
}

test_allows_request_host_in_other_case if {
	decide(get("API.GitHub.COM.", "/repos/acme"), [github_read]).reason == "allowed by rule github-read"
}

test_allows_request_path_without_leading_slash_for_prefix_slash if {
	rule := object.union(github_read, {"methods": ["OPTIONS"], "paths": ["/"]})
	decide(req("OPTIONS", "https", "api.github.com", 443, "*"), [rule]).allow == true
}

test_denies_with_reason_of_closest_rule_found_by_full_checks if {
	# Neither rule names the host verbatim; the second gets further (to the intent).
	near := object.union(github_read, {"id": "near", "hosts": ["API.GITHUB.COM"], "paths": ["/gists/"]})
	nearer := object.union(github_read, {"id": "nearer", "hosts": ["*.github.com"], "intents": ["issues.read"]})
	decide(get("api.github.com", "/repos/acme"), [near, nearer]) == deny("intent_required")
}

test_allows_connection_by_earlier_tunnel_rule_with_host_glob if {
	earlier := {"id": "earlier", "hosts": ["*.example.org"], "ports": [5432], "mode": "tunnel", "intents": ["db.*"]}
	later := {"id": "later", "hosts": ["db.example.org"], "ports": ["*"]}
	inp := with_intent(conn("db.example.org", 5432), "db.query", false)
	decide(inp, [earlier, later]) == {"allow": true, "reason": "allowed by rule earlier", "mode": "tunnel"}
	decide(conn("db.example.org", 5432), [earlier, later]) == {"allow": true, "reason": "allowed by rule later", "mode": "intercept"}
}

test_denies_connection_to_tunnel_rule_without_verified_intent if {
	rule := {"id": "db", "hosts": ["db.example.org"], "ports": [5432], "mode": "tunnel", "intents": ["db.query"], "require_verified_intent": true}
	inp := with_intent(conn("db.example.org", 5432), "db.query", false)
	decide(inp, [rule]) == deny("verified_intent_required")
	decide(with_intent(conn("db.example.org", 5432), "db.query", true), [rule]).mode == "tunnel"
}

# --- malformed data fails closed -----------------------------------------------------------

test_denies_every_method_when_methods_is_not_a_list if {
	rule := object.union(github_read, {"methods": "GET"})
	decide(get("api.github.com", "/repos/acme"), [rule]) == deny("method_not_allowed")
}

test_denies_every_host_when_hosts_is_not_a_list if {
	rule := object.union(github_read, {"hosts": "api.github.com"})
	decide(get("api.github.com", "/repos/acme"), [rule]) == deny("destination_not_allowed")
}

test_denies_every_path_when_paths_is_null if {
	rule := object.union(github_read, {"paths": null})
	decide(get("api.github.com", "/repos/acme"), [rule]) == deny("path_not_allowed")
}

test_denies_unverified_intent_when_flag_is_not_boolean if {
	rule := object.union(github_read, {"intents": ["issues.read"], "require_verified_intent": "yes"})
	inp := with_intent(get("api.github.com", "/repos/acme"), "issues.read", false)
	decide(inp, [rule]) == deny("verified_intent_required")
}

test_denies_unauthenticated_when_require_authenticated_is_not_boolean if {
	cfg := {"agents": {triage: {"require_authenticated": "true", "rules": [github_read]}}}
	inp := as_caller(get("api.github.com", "/repos/acme"), triage, false)
	d := data.tollgate.decision with input as inp with data.tollgate_config as cfg
	d == deny("unauthenticated")
}

test_passes_unknown_mode_through_for_tollgate_to_reject if {
	rule := {"id": "typo", "hosts": ["api.github.com"], "mode": "tunell"}
	decide(conn("api.github.com", 443), [rule]).mode == "tunell"
}

test_passes_malformed_credential_through_for_tollgate_to_reject if {
	rule := object.union(github_read, {"credential": "github"})
	decide(get("api.github.com", "/repos/acme"), [rule]).credential == "github"
}

test_passes_credential_without_name_as_null_name if {
	rule := object.union(github_read, {"credential": {"scopes": ["a"]}})
	decide(get("api.github.com", "/repos/acme"), [rule]).credential == {"name": null, "scopes": ["a"]}
}

test_denies_destination_for_rule_that_is_not_an_object if {
	decide(get("api.github.com", "/repos/acme"), ["api.github.com"]) == deny("destination_not_allowed")
}

# --- time windows --------------------------------------------------------------------------

at(inp, time) := object.union(inp, {"time": time})

office_hours := object.union(github_read, {"windows": [{"days": ["mon", "tue", "wed", "thu", "fri"], "from": "09:00", "to": "17:00"}]})

overnight := object.union(github_read, {"windows": [{"from": "22:00", "to": "06:00"}]})

# 2026-11-23 is a Monday, 2026-11-22 a Sunday.
test_allows_inside_a_window if {
	d := decide(at(get("api.github.com", "/repos/acme"), "2026-11-23T10:00:00.000Z"), [office_hours])
	d == {"allow": true, "reason": "allowed by rule github-read"}
}

test_window_from_is_inclusive if {
	decide(at(get("api.github.com", "/repos/acme"), "2026-11-23T09:00:00.000Z"), [office_hours]).allow
}

test_denies_at_the_end_of_a_window if {
	d := decide(at(get("api.github.com", "/repos/acme"), "2026-11-23T17:00:00.000Z"), [office_hours])
	d == deny("outside_time_window")
}

test_denies_before_a_window if {
	d := decide(at(get("api.github.com", "/repos/acme"), "2026-11-23T08:59:59.999Z"), [office_hours])
	d == deny("outside_time_window")
}

test_denies_on_a_day_outside_the_window if {
	d := decide(at(get("api.github.com", "/repos/acme"), "2026-11-22T10:00:00.000Z"), [office_hours])
	d == deny("outside_time_window")
}

test_weekday_of_known_dates if {
	every time, day in {
		"2026-11-22T00:00:00.000Z": "sun", "2026-11-23T00:00:00.000Z": "mon",
		"2026-11-24T00:00:00.000Z": "tue", "2026-11-25T00:00:00.000Z": "wed",
		"2026-11-26T00:00:00.000Z": "thu", "2026-11-27T00:00:00.000Z": "fri",
		"2026-11-28T00:00:00.000Z": "sat", "2024-02-29T12:00:00.000Z": "thu",
		"2000-01-01T12:00:00.000Z": "sat", "2100-03-01T12:00:00.000Z": "mon",
		"2027-01-01T23:59:59.999Z": "fri", "2026-03-01T00:00:00.000Z": "sun",
	} {
		data.tollgate.weekday == day with input as {"time": time}
	}
}

test_overnight_window_spans_midnight if {
	decide(at(get("api.github.com", "/repos/acme"), "2026-11-23T23:30:00.000Z"), [overnight]).allow
	decide(at(get("api.github.com", "/repos/acme"), "2026-11-23T05:59:00.000Z"), [overnight]).allow
	decide(at(get("api.github.com", "/repos/acme"), "2026-11-23T12:00:00.000Z"), [overnight]) == deny("outside_time_window")
}

test_any_open_window_allows if {
	rule := object.union(github_read, {"windows": [{"from": "01:00", "to": "02:00"}, {"days": ["sun"]}]})
	decide(at(get("api.github.com", "/repos/acme"), "2026-11-22T15:00:00.000Z"), [rule]).allow
	decide(at(get("api.github.com", "/repos/acme"), "2026-11-23T15:00:00.000Z"), [rule]) == deny("outside_time_window")
}

test_a_later_rule_without_window_still_allows if {
	later := object.union(github_read, {"id": "always"})
	d := decide(at(get("api.github.com", "/repos/acme"), "2026-11-22T10:00:00.000Z"), [office_hours, later])
	d == {"allow": true, "reason": "allowed by rule always"}
}

test_an_earlier_open_window_rule_decides if {
	later := object.union(github_read, {"id": "always", "reason": "later"})
	d := decide(at(get("api.github.com", "/repos/acme"), "2026-11-23T10:00:00.000Z"), [office_hours, later])
	d == {"allow": true, "reason": "allowed by rule github-read"}
}

test_window_deny_only_after_other_checks_pass if {
	d := decide(at(req("POST", "https", "api.github.com", 443, "/repos/acme"), "2026-11-22T10:00:00.000Z"), [office_hours])
	d == deny("method_not_allowed")
}

test_malformed_windows_never_open if {
	every windows in [{"from": "09:00"}, [{"from": 9}], [{"from": "9:00"}], [{"to": "17:0"}], ["09:00-17:00"], [{"days": "mon"}]] {
		rule := object.union(github_read, {"windows": windows})
		decide(at(get("api.github.com", "/repos/acme"), "2026-11-23T10:00:00.000Z"), [rule]) == deny("outside_time_window")
	}
}

test_empty_windows_always_open if {
	rule := object.union(github_read, {"windows": []})
	decide(at(get("api.github.com", "/repos/acme"), "2026-11-22T03:00:00.000Z"), [rule]).allow
}

test_connection_level_ignores_windows_of_intercept_rules if {
	rule := object.union(office_hours, {"mode": "intercept"})
	d := decide(at(conn("api.github.com", 443), "2026-11-22T10:00:00.000Z"), [rule])
	d.allow
}

test_connection_level_enforces_windows_of_tunnel_rules if {
	rule := object.union(office_hours, {"mode": "tunnel"})
	decide(at(conn("api.github.com", 443), "2026-11-22T10:00:00.000Z"), [rule]) == deny("outside_time_window")
	d := decide(at(conn("api.github.com", 443), "2026-11-23T10:00:00.000Z"), [rule])
	d == {"allow": true, "reason": "allowed by rule github-read", "mode": "tunnel"}
}

# --- data_errors: the data checks run once per revision -----------------------------------

# The data_errors of `cfg` as tollgate_config.
data_errors(cfg) := errors if {
	errors := data.tollgate.data_errors with data.tollgate_config as cfg
}

# The key path of triage's rules[i] in a message.
triage_rule(i) := sprintf("tollgate_config.agents[\"%s\"].rules[%d]", [triage, i])

test_data_errors_empty_for_well_formed_config if {
	rule := object.union(github_read, {
		"description": "d", "reason": "r", "ports": [443, "*"], "intents": ["a.*"],
		"require_verified_intent": false, "mode": "tunnel",
		"credential": {"name": "github", "scopes": ["x"], "ttl": "5m"},
		"headers": {"set": {"x-a": "1"}, "remove": ["x-b"]},
		"windows": [{"days": ["sat", "sun"], "from": "00:00", "to": "24:00"}, {"from": "22:00", "to": "06:00"}],
	})
	cfg := {"agents": {triage: {"description": "d", "require_authenticated": true, "rules": [rule]}}}
	data_errors(cfg) == set()
}

test_data_errors_empty_for_an_agent_without_rules if {
	data_errors({"agents": {triage: {"rules": []}}}) == set()
	data_errors({"agents": {}}) == set()
}

test_data_errors_name_each_malformed_field_of_a_rule if {
	rule := {
		"hosts": [], "ports": [0, "any"], "methods": "GET", "paths": ["repos"], "intents": [1],
		"require_verified_intent": "yes", "mode": "tunell", "credential": {"scopes": []},
		"headers": {"add": {}}, "id": 7, "colour": "red",
	}
	data_errors(config([rule])) == {concat("", [triage_rule(0), problem]) | some problem in [
		"[\"colour\"]: unknown field",
		".id: must be a string",
		".hosts: must be a non-empty list of host names or globs",
		".ports: must be a list of ports (1-65535) or \"*\"",
		".methods: must be a list of strings",
		".paths: must be a list of prefixes starting with \"/\"",
		".intents: must be a list of strings",
		".require_verified_intent: must be a boolean",
		".mode: must be \"intercept\" or \"tunnel\"",
		".credential: must be {\"name\": string, \"scopes\": [string], \"ttl\": string}",
		".headers: must be {\"set\": {name: string}, \"remove\": [name]}",
	]}
}

test_data_errors_name_the_rule_index if {
	bad := object.union(github_read, {"ports": [443, 70000]})
	data_errors(config([github_read, github_read, bad])) == {
		concat("", [triage_rule(2), ".ports: must be a list of ports (1-65535) or \"*\""]),
	}
}

test_data_errors_name_fields_of_the_wrong_type if {
	rule := {"hosts": "api.github.com", "ports": 443, "paths": "/", "credential": "github", "headers": "x-a: 1", "mode": null, "reason": ["r"]}
	expected := {concat("", [triage_rule(0), problem]) | some problem in [
		".hosts: must be a non-empty list of host names or globs",
		".ports: must be a list of ports (1-65535) or \"*\"",
		".paths: must be a list of prefixes starting with \"/\"",
		".mode: must be \"intercept\" or \"tunnel\"",
		".credential: must be {\"name\": string, \"scopes\": [string], \"ttl\": string}",
		".headers: must be {\"set\": {name: string}, \"remove\": [name]}",
		".reason: must be a string",
	]}
	data_errors(config([rule, "api.github.com"])) == expected | {concat("", [triage_rule(1), ": must be an object"])}
}

test_data_errors_accept_a_null_credential_and_headers if {
	rule := object.union(github_read, {"credential": null, "headers": null})
	data_errors(config([rule])) == set()
}

test_data_errors_name_non_integer_and_out_of_range_ports if {
	every ports in [[0], [65536], [443.5], ["443"], [null]] {
		rule := object.union(github_read, {"ports": ports})
		data_errors(config([rule])) == {concat("", [triage_rule(0), ".ports: must be a list of ports (1-65535) or \"*\""])}
	}
}

test_data_errors_name_malformed_windows if {
	every windows, key in {
		[{"from": "9:00"}]: ".windows[0].from: must be \"HH:MM\", from 00:00 to 24:00",
		[{"from": "24:01"}]: ".windows[0].from: must be \"HH:MM\", from 00:00 to 24:00",
		[{"to": "12:60"}]: ".windows[0].to: must be \"HH:MM\", from 00:00 to 24:00",
		[{"from": "ab:cd"}]: ".windows[0].from: must be \"HH:MM\", from 00:00 to 24:00",
		[{}, {"from": 9}]: ".windows[1].from: must be \"HH:MM\", from 00:00 to 24:00",
		[{"days": ["monday"]}]: ".windows[0].days: must be a list of mon, tue, wed, thu, fri, sat, sun",
		[{"days": "mon"}]: ".windows[0].days: must be a list of mon, tue, wed, thu, fri, sat, sun",
		[{"start": "09:00"}]: ".windows[0][\"start\"]: unknown field",
		["09:00-17:00"]: ".windows[0]: must be an object {\"days\": [...], \"from\": \"HH:MM\", \"to\": \"HH:MM\"}",
		{"from": "09:00"}: ".windows: must be a list of {\"days\": [...], \"from\": \"HH:MM\", \"to\": \"HH:MM\"}",
	} {
		rule := object.union(github_read, {"windows": windows})
		data_errors(config([rule])) == {concat("", [triage_rule(0), key])}
	}
}

test_data_errors_name_malformed_credentials_and_headers if {
	credential_problem := concat("", [triage_rule(0), ".credential: must be {\"name\": string, \"scopes\": [string], \"ttl\": string}"])
	every credential in [{"name": 1}, {"name": "a", "scopes": "s"}, {"name": "a", "ttl": 300}, {"name": "a", "key": "k"}] {
		data_errors(config([object.union(github_read, {"credential": credential})])) == {credential_problem}
	}
	headers_problem := concat("", [triage_rule(0), ".headers: must be {\"set\": {name: string}, \"remove\": [name]}"])
	every headers in [{"set": []}, {"set": {"x-a": 1}}, {"remove": "x-b"}, {"add": {}}] {
		data_errors(config([object.union(github_read, {"headers": headers})])) == {headers_problem}
	}
}

test_data_errors_name_malformed_agents if {
	cfg := {"agents": {
		triage: {"rules": [github_read], "require_authenticated": "true", "description": 1, "extra": 1},
		"not-a-spiffe-id": {"rules": []},
		other: [github_read],
		"spiffe://example.org/ns/agents/sa/norules": {},
	}}
	data_errors(cfg) == {
		sprintf("tollgate_config.agents[\"%s\"].require_authenticated: must be a boolean", [triage]),
		sprintf("tollgate_config.agents[\"%s\"].description: must be a string", [triage]),
		sprintf("tollgate_config.agents[\"%s\"][\"extra\"]: unknown field", [triage]),
		"tollgate_config.agents[\"not-a-spiffe-id\"]: key must be a SPIFFE ID (spiffe://...)",
		sprintf("tollgate_config.agents[\"%s\"]: must be an object with a list of rules", [other]),
		"tollgate_config.agents[\"spiffe://example.org/ns/agents/sa/norules\"].rules: must be a list of rules",
	}
}

test_data_errors_quote_keys_as_json if {
	odd := "spiffe://example.org/a \"quoted\" key"
	data_errors({"agents": {odd: {"rules": [{"hosts": "x"}]}}}) == {
		"tollgate_config.agents[\"spiffe://example.org/a \\\"quoted\\\" key\"].rules[0].hosts: must be a non-empty list of host names or globs",
	}
}

test_data_errors_name_missing_or_malformed_agents if {
	data_errors({}) == {"tollgate_config.agents: must be an object keyed by SPIFFE ID"}
	data_errors({"agents": null}) == {"tollgate_config.agents: must be an object keyed by SPIFFE ID"}
	data_errors({"agents": [], "agent": {}}) == {
		"tollgate_config.agents: must be an object keyed by SPIFFE ID",
		"tollgate_config[\"agent\"]: unknown field",
	}
}

test_data_errors_without_tollgate_config if {
	errors := data.tollgate.data_errors with data.tollgate_config as null
	errors == {"tollgate_config.agents: must be an object keyed by SPIFFE ID"}
}

test_decision_does_not_depend_on_data_errors if {
	# Malformed data is refused at load; were it ever evaluated, it fails closed per request.
	rule := object.union(github_read, {"methods": "GET", "colour": "red"})
	count(data_errors(config([rule]))) == 2
	decide(get("api.github.com", "/repos/acme"), [rule]) == deny("method_not_allowed")
}

# --- the shipped example data (policy-wasm/data.json) --------------------------------------

dev := "spiffe://tollgate.local/dev/agent"

writer := "spiffe://tollgate.local/dev/writer"

# The decision for `inp` from caller `id` against the example data as loaded.
example(inp, id) := d if {
	caller_input := as_caller(inp, id, false)
	d := data.tollgate.decision with input as caller_input
}

test_example_data_is_well_formed if {
	data.tollgate.data_errors == set()
}

test_example_dev_agent_allows_github_repo_reads if {
	example(get("api.github.com", "/repos/acme/app/issues"), dev) == {"allow": true, "reason": "allowed by rule github-read"}
	example(get("api.github.com", "/users/octocat"), dev).allow == true
}

test_example_dev_agent_denies_github_writes if {
	example(req("POST", "https", "api.github.com", 443, "/repos/acme/app/issues"), dev) == deny("method_not_allowed")
}

test_example_dev_agent_denies_other_github_paths if {
	example(get("api.github.com", "/orgs/acme"), dev) == deny("path_not_allowed")
}

test_example_dev_agent_allows_openai_api if {
	example(req("POST", "https", "api.openai.com", 443, "/v1/chat/completions"), dev).reason == "allowed by rule openai-api"
}

test_example_dev_agent_allows_httpbin_get_on_default_ports if {
	example(req("GET", "http", "httpbin.org", 80, "/get"), dev).allow == true
	example(req("GET", "https", "httpbin.org", 443, "/get"), dev).allow == true
	example(req("GET", "http", "httpbin.org", 8080, "/get"), dev) == deny("port_not_allowed")
}

test_example_dev_agent_allows_loopback_on_any_port_with_header if {
	example(req("PUT", "http", "127.0.0.1", 38411, "/anything"), dev) == {
		"allow": true,
		"reason": "allowed by rule loopback",
		"headers": {"set": {"x-tollgate-agent": "dev"}, "remove": []},
	}
	example(req("GET", "https", "localhost", 8443, "/"), dev).allow == true
	example(conn("127.0.0.1", 50123), dev) == {"allow": true, "reason": "allowed by rule loopback", "mode": "intercept"}
}

test_example_dev_agent_denies_unlisted_host if {
	example(get("example.com", "/"), dev) == deny("destination_not_allowed")
}

test_example_writer_denies_issue_write_without_intent if {
	example(req("POST", "https", "api.github.com", 443, "/repos/acme/app/issues"), writer) == deny("intent_required")
}

test_example_writer_allows_issue_write_with_intent if {
	inp := with_intent(req("POST", "https", "api.github.com", 443, "/repos/acme/app/issues"), "issues.write", false)
	example(inp, writer).reason == "allowed by rule writer-github-issues"
}

test_example_writer_denies_content_write_without_verified_intent if {
	inp := with_intent(req("PUT", "https", "api.github.com", 443, "/repos/acme/app/contents/README.md"), "contents.write", false)
	example(inp, writer) == deny("verified_intent_required")
}

test_example_writer_allows_content_write_with_verified_intent if {
	inp := with_intent(req("PUT", "https", "api.github.com", 443, "/repos/acme/app/contents/README.md"), "contents.write", true)
	example(inp, writer).reason == "allowed by rule writer-github-contents"
}

test_example_writer_loopback_reads_freely_and_writes_with_intent if {
	example(req("GET", "http", "127.0.0.1", 40001, "/x"), writer).reason == "allowed by rule writer-local-read"
	example(req("POST", "http", "127.0.0.1", 40001, "/x"), writer) == deny("intent_required")
	example(with_intent(req("POST", "http", "127.0.0.1", 40001, "/x"), "other", false), writer) == deny("intent_not_allowed")
	example(with_intent(req("POST", "http", "127.0.0.1", 40001, "/x"), "local.write", false), writer).reason == "allowed by rule writer-local-write"
}

test_example_writer_loopback_admin_needs_verified_intent if {
	example(with_intent(req("DELETE", "http", "127.0.0.1", 40001, "/admin/x"), "local.admin", false), writer) == deny("verified_intent_required")
	example(with_intent(req("DELETE", "http", "127.0.0.1", 40001, "/admin/x"), "local.admin", true), writer).reason == "allowed by rule writer-local-admin"
}
