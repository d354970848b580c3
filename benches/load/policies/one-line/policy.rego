# benches/load.sh --policy benches/load/policies/one-line: a decision that asks nothing of the
# request, so the run measures tollgate's own request path and not the policy.
package tollgate

import rego.v1

decision := {"allow": true, "reason": "one-line bench policy"}
