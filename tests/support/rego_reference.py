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

Each input line is one group of cases that share their modules and data (the engine is
prepared once per group):
  {"modules": [["name.rego", "text"], ...], "data": {...},
   "cases": [{"id": "...", "input": {...}, "query": "data.pkg.rule"}, ...]}
and each output line the answer to one case:
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


def answer_opa(group, emit):
    from opa_bindings.engine import OpaEngine, OpaError, OpaUndefinedError

    engine = OpaEngine()
    try:
        try:
            for name, text in group["modules"]:
                engine.add_policy(name, text)
            engine.add_data(group.get("data") or {})
        except OpaError as e:
            for case in group["cases"]:
                emit(case, {"outcome": "error", "error": f"{e.code}: {e.message}"})
            return
        for case in group["cases"]:
            path = case["query"]
            if not path.startswith("data."):
                raise ValueError(f"query must be a data reference: {path}")
            try:
                value = engine.eval_document(path[len("data.") :], case.get("input"))
                emit(case, {"outcome": "value", "value": value})
            except OpaUndefinedError:
                emit(case, {"outcome": "undefined"})
            except OpaError as e:
                emit(case, {"outcome": "error", "error": f"{e.code}: {e.message}"})
    finally:
        engine.close()


def regopy_group_in_child(group, emit):
    from regopy import Interpreter

    rego = Interpreter()
    try:
        for name, text in group["modules"]:
            rego.add_module(name, text)
        rego.add_data_json(json.dumps(group.get("data") or {}))
    except Exception as e:  # parse errors are raised here
        for case in group["cases"]:
            emit(case, {"outcome": "error", "error": str(e).strip()[:500]})
        return
    for case in group["cases"]:
        try:
            rego.set_input_term(json.dumps(case.get("input")))
            output = rego.query(f"x = {case['query']}")
        except Exception as e:  # compile errors and unreadable results are raised here
            emit(case, {"outcome": "error", "error": str(e).strip()[:500]})
            continue
        if not output.ok():
            emit(case, {"outcome": "error", "error": "rego-cpp reported an error"})
            continue
        # Never call output.binding() on an undefined result: rego-cpp aborts the process.
        text = str(output).strip()
        if text in ("undefined", ""):
            emit(case, {"outcome": "undefined"})
            continue
        bindings = json.loads(text).get("bindings") or {}
        if "x" in bindings:
            emit(case, {"outcome": "value", "value": bindings["x"]})
        else:
            emit(case, {"outcome": "undefined"})


def answer_regopy(group, emit):
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        # rego-cpp prints some diagnostics on standard output: keep them off the answers.
        os.dup2(2, 1)
        signal.alarm(CASE_SECONDS * max(1, len(group["cases"])))
        with os.fdopen(write_end, "w") as out:

            def child_emit(case, result):
                out.write(json.dumps({"id": case["id"], **result}) + "\n")
                out.flush()

            try:
                regopy_group_in_child(group, child_emit)
            except Exception as e:
                out.write(json.dumps({"driver_error": repr(e)}) + "\n")
        os._exit(0)
    os.close(write_end)
    answered = {}
    with os.fdopen(read_end) as inp:
        for line in inp:
            result = json.loads(line)
            if "id" in result:
                answered[result.pop("id")] = result
    _, status = os.waitpid(pid, 0)
    for case in group["cases"]:
        result = answered.get(case["id"])
        if result is None:
            result = {
                "outcome": "crash",
                "error": f"rego-cpp ended the process (wait status {status})",
            }
        emit(case, result)


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
    def emit(case, result):
        sys.stdout.write(json.dumps({"id": case["id"], **result}) + "\n")
        sys.stdout.flush()

    for line in sys.stdin:
        if line.strip():
            answer(json.loads(line), emit)


if __name__ == "__main__":
    main()
