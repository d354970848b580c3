# benches/load.sh --policy benches/load/policies/glob-regex: issue 13's "realistic" policy —
# the caller looked up by key among 1,000 agents (make-data.py writes them), and for each of its
# four rules a glob.match on the host and a regex.match on the path; the first rule in list
# order that matches both allows.
package tollgate

import rego.v1

default decision := {"allow": false, "reason": "destination_not_allowed"}

decision := {"allow": true, "reason": matching[0]} if count(matching) > 0

matching := [rule.id |
	some rule in data.scale.agents[input.source.spiffe_id].rules
	glob.match(rule.host, ["."], input.request.host)
	regex.match(rule.path, input.request.path)
]
