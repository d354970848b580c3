#!/usr/bin/env bash
# Builds the OPA Wasm bundle of the bundled policy: policy-wasm/dist/bundle.tar.gz
# (policy.wasm + data.json), for `policy.engine: wasm`. Needs `opa` on PATH; without it,
# says so and succeeds, because the native `rego` engine needs no build step.
# Two entrypoints: tollgate/decision (every request) and tollgate/data_errors (the data
# check tollgate runs once per revision at load; without it the data loads unchecked).
# Works from any folder. The unit tests (*_test.rego) are not part of the bundle.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

if ! command -v opa >/dev/null 2>&1; then
    echo "skipped: opa not on PATH"
    exit 0
fi

mkdir -p "$here/dist"
cd "$here/.."
opa build -t wasm -e tollgate/decision -e tollgate/data_errors \
    -o policy-wasm/dist/bundle.tar.gz \
    policy-wasm/tollgate.rego policy-wasm/data.json
echo "built policy-wasm/dist/bundle.tar.gz"
