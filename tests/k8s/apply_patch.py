#!/usr/bin/env python3
"""Applies the JSON Patch of an AdmissionReview response to a pod, as the API server does.

    apply_patch.py POD.json REVIEW_RESPONSE.json PATCHED.json

Uses the `jsonpatch` package (RFC 6902), independent of tollgate's code. Prints "no patch" and
writes the pod unchanged when the response carries none. Fails on a patch that does not apply.
"""
import base64
import json
import sys

import jsonpatch


def main():
    pod_path, review_path, out_path = sys.argv[1:4]
    with open(pod_path) as f:
        pod = json.load(f)
    with open(review_path) as f:
        review = json.load(f)
    response = review["response"]
    if "patch" not in response:
        print("no patch")
        patched = pod
    else:
        assert response["patchType"] == "JSONPatch", response
        ops = json.loads(base64.b64decode(response["patch"]))
        patched = jsonpatch.JsonPatch(ops).apply(pod)
        print("applied %d operations" % len(ops))
    with open(out_path, "w") as f:
        json.dump(patched, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
