#!/usr/bin/env python3
"""Evaluates Rego cases on an independent engine: the reference answers of tests/differential.rs.

    python3 tests/support/rego_reference.py --engine opa|regopy < cases.jsonl > answers.jsonl

Engines:
  opa     OPA itself: the Go library github.com/open-policy-agent/opa/v1/rego (v1.20.2), built
          as a C shared library, from PyPI `opa-golib-python-bindings` (module `opa_bindings`).
          It evaluates with strict builtin errors (a builtin that fails is an error, as with
          `opa eval --strict-builtin-errors`), so a case's `want_strict` is its answer.
  regopy  rego-cpp (Microsoft's C++ Rego engine, which runs OPA's conformance suite upstream),
          from PyPI `regopy`. Default (non-strict) builtin errors, so a case's `want` is its
          answer. Each case runs in a forked child: rego-cpp aborts the process on some inputs
          (for example reading a binding of an undefined result), and one case must not take
          the others with it; such a case is answered as `crash`.

Each input line is one case:
  {"id": "...", "modules": [["name.rego", "text"], ...], "data": {...}, "input": {...},
   "query": "data.pkg.rule"}
and each output line its answer:
  {"id": "...", "outcome": "value" | "undefined" | "error" | "crash", "value": ..., "error": "..."}

Numbers keep their exact digits (Python ints are unbounded). Sets are rendered as JSON
arrays, as both engines print them.
"""

import argparse
import json
import os
import signal
import sys

CASE_SECONDS = 20


def answer_opa(case):
    from opa_bindings.engine import OpaEngine, OpaError, OpaUndefinedError

    engine = OpaEngine()
    try:
        for name, text in case["modules"]:
            engine.add_policy(name, text)
        engine.add_data(case.get("data") or {})
        path = case["query"]
        if not path.startswith("data."):
            raise ValueError(f"query must be a data reference: {path}")
        value = engine.eval_document(path[len("data.") :], case.get("input"))
        return {"outcome": "value", "value": value}
    except OpaUndefinedError:
        return {"outcome": "undefined"}
    except OpaError as e:
        return {"outcome": "error", "error": f"{e.code}: {e.message}"}
    finally:
        engine.close()


def regopy_in_child(case):
    from regopy import Interpreter

    rego = Interpreter()
    try:
        for name, text in case["modules"]:
            rego.add_module(name, text)
        rego.add_data_json(json.dumps(case.get("data") or {}))
        rego.set_input_term(json.dumps(case.get("input")))
        output = rego.query(f"x = {case['query']}")
    except Exception as e:  # parse and compile errors are raised here
        return {"outcome": "error", "error": str(e).strip()[:500]}
    if not output.ok():
        return {"outcome": "error", "error": "rego-cpp reported an error"}
    # Never call output.binding() on an undefined result: rego-cpp aborts the process.
    text = str(output).strip()
    if text == "undefined" or text == "":
        return {"outcome": "undefined"}
    parsed = json.loads(text)
    bindings = parsed.get("bindings") or {}
    if "x" not in bindings:
        return {"outcome": "undefined"}
    return {"outcome": "value", "value": bindings["x"]}


def answer_regopy(case):
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        # rego-cpp prints some diagnostics on standard output: keep them off the answers.
        os.dup2(2, 1)
        signal.alarm(CASE_SECONDS)
        try:
            result = regopy_in_child(case)
        except Exception as e:
            result = {"outcome": "error", "error": f"driver: {e!r}"}
        with os.fdopen(write_end, "w") as out:
            out.write(json.dumps(result))
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as inp:
        text = inp.read()
    _, status = os.waitpid(pid, 0)
    if text:
        return json.loads(text)
    return {"outcome": "crash", "error": f"rego-cpp ended the process (wait status {status})"}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", choices=["opa", "regopy"], required=True)
    parser.add_argument("--check", action="store_true", help="import the engine and exit")
    args = parser.parse_args()
    if args.engine == "opa":
        import opa_bindings  # noqa: F401  (fails here, with the module name, when missing)

        answer = answer_opa
    else:
        import regopy  # noqa: F401

        answer = answer_regopy
    if args.check:
        print(f"{args.engine}: ok")
        return
    for line in sys.stdin:
        if not line.strip():
            continue
        case = json.loads(line)
        result = answer(case)
        result["id"] = case["id"]
        sys.stdout.write(json.dumps(result) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
