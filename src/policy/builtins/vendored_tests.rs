//! Unit tests for builtins of the vendored regorus that tollgate patched to decide as OPA does
//! (`vendor/regorus/PATCHES.md` #7–#9), run through the native engine as a policy runs them.
//! Every answer here was checked against OPA v1.20.2 (`tests/support/rego_reference.py
//! --engine opa`); the trap corpus (`tests/traps/builtins.yaml`) holds the main cases.

use regorus::Value;

use crate::policy::rego::RegoPolicy;

/// `r := <expr>` in its own policy, evaluated once: the value, or `None` when undefined.
fn eval(expr: &str) -> Option<Value> {
    let policy = RegoPolicy::compile(
        &[("t.rego".into(), format!("package t\nr := {expr}\n"))],
        Value::new_object(),
        "t/r",
    )
    .unwrap_or_else(|e| panic!("{expr}: {e}"));
    match policy.evaluate_once(Value::new_object()) {
        Ok(Value::Undefined) | Err(_) => None,
        Ok(v) => Some(v),
    }
}

fn json(text: &str) -> Option<Value> {
    Some(Value::from_json_str(text).unwrap())
}

#[test]
fn range_step_works_on_big_integers_as_opa_does() {
    // OPA's conformance case numbersrangestep/big int step.
    assert_eq!(
        eval("numbers.range_step(0, 10, 99999999999999999999)"),
        json("[0]")
    );
    assert_eq!(
        eval("numbers.range_step(10, 0, 99999999999999999999)"),
        json("[10]")
    );
    assert_eq!(eval("numbers.range_step(10, 0, 3)"), json("[10, 7, 4, 1]"));
    assert_eq!(
        eval("numbers.range_step(0, 10, 2.0)"),
        json("[0, 2, 4, 6, 8, 10]")
    );
    assert_eq!(
        eval(
            "numbers.range_step(99999999999999999990, 99999999999999999999, 4) == \
             [99999999999999999990, 99999999999999999994, 99999999999999999998]"
        ),
        json("true")
    );
    assert_eq!(
        eval(
            "numbers.range_step(9223372036854775807, -9223372036854775808, \
             18446744073709551615) == [9223372036854775807, -9223372036854775808]"
        ),
        json("true")
    );
    // 64-bit bounds and step are counted in 128 bits: no overflow at the ends.
    assert_eq!(
        eval(
            "numbers.range_step(-9223372036854775808, 9223372036854775807, \
             9223372036854775807) == [-9223372036854775808, -1, 9223372036854775806]"
        ),
        json("true")
    );
    // A step of 0 or below, or a non-integer operand, is an error: undefined (regorus 0.14.1
    // panicked on the first two).
    assert_eq!(eval("numbers.range_step(0, 10, 0)"), None);
    assert_eq!(eval("numbers.range_step(0, 10, -2)"), None);
    assert_eq!(eval("numbers.range_step(0, 10, 2.5)"), None);
    assert_eq!(eval("numbers.range(1.5, 3)"), None);
    assert_eq!(
        eval(
            "numbers.range(100000000000000000001, 99999999999999999999) == \
             [100000000000000000001, 100000000000000000000, 99999999999999999999]"
        ),
        json("true")
    );
}

#[test]
fn units_refuse_what_opa_refuses() {
    // OPA's conformance cases units/*: an exponent of more than 6 digits is an error.
    assert_eq!(eval(r#"units.parse("10e10000000Ei")"#), None);
    assert_eq!(eval(r#"units.parse_bytes("10e10000000Ei")"#), None);
    assert_eq!(eval(r#"units.parse("1e0000001")"#), None);
    assert_eq!(eval(r#"units.parse("1e999999") > 0"#), json("true"));
    // Units OPA does not know.
    for unknown in ["1h", "1da", "1n", "1Q", "1Zi", "1Kb", "1_000"] {
        assert_eq!(
            eval(&format!("units.parse({unknown:?})")),
            None,
            "{unknown}"
        );
    }
    assert_eq!(eval(r#"units.parse_bytes("1zib")"#), None);
    assert_eq!(eval(r#"units.parse("1e")"#), json("1000000000000000000"));
}

#[test]
fn units_compute_as_opa_does() {
    // parse_bytes: a 64-bit binary float times the unit, truncated toward zero.
    assert_eq!(
        eval(
            r#"[units.parse_bytes("1.9"), units.parse_bytes("-1.9"), units.parse_bytes("0.001kb"),
                units.parse_bytes("0.3kb"), units.parse_bytes("2.5e1mib"), units.parse_bytes("1.5")]"#
        ),
        json("[1, -1, 0, 300, 26214400, 1]")
    );
    assert_eq!(
        eval(r#"units.parse_bytes("12345678901234567890123") == 12345678901234567889920"#),
        json("true")
    );
    // parse: exact, and 10 decimals when not an integer.
    assert_eq!(
        eval(r#"units.parse("12345678901234567890123") == 12345678901234567890123"#),
        json("true")
    );
    assert_eq!(
        eval(
            r#"[units.parse("1.23456789012345m"), units.parse("1.00000000005"),
                units.parse("1.00000000004"), units.parse("-0.00000000005"), units.parse("2.5m")]"#
        ),
        json("[0.0012345679, 1.0000000001, 1, -1e-10, 0.0025]")
    );
}

#[test]
fn walk_without_an_output_argument_yields_every_pair() {
    // OPA's conformance case walkbuiltin/array path not overwritten (OPA issue 7656).
    assert_eq!(
        eval(
            r#"{path: value | [path, value] := walk({"a": [{"b": [{"c": [{"aa": "AA"}, {"bb": "BB"}, {"cc": "CC"}, {"dd": "DDD"}]}]}]}); count(value) == 2}"#
        ),
        json(
            r#"{"[\"a\",0,\"b\",0,\"c\",0,\"aa\"]": "AA", "[\"a\",0,\"b\",0,\"c\",1,\"bb\"]": "BB", "[\"a\",0,\"b\",0,\"c\",2,\"cc\"]": "CC"}"#
        )
        .map(|v| {
            // The keys are arrays, not strings: rebuild them.
            let mut o = std::collections::BTreeMap::new();
            if let Value::Object(m) = v {
                for (k, val) in m.iter() {
                    o.insert(
                        Value::from_json_str(k.as_string().unwrap()).unwrap(),
                        val.clone(),
                    );
                }
            }
            Value::from(o)
        })
    );
    assert_eq!(
        eval(r#"[v | x := {"a": 1}; [p, v] := walk(x)]"#),
        json(r#"[{"a": 1}, 1]"#)
    );
    // The output-argument form is unchanged.
    assert_eq!(
        eval(r#"[v | walk({"a": 1}, [p, v])]"#),
        json(r#"[{"a": 1}, 1]"#)
    );
    assert_eq!(eval(r#"[true | walk({"a": 1}, [["a"], 2])]"#), json("[]"));
}

/// Patch #10: a JSON number token is read as OPA reads it. An integer token stays exact at any
/// size (OPA keeps a `*big.Int`); any other token is a float, as without `arbitrary_precision`
/// (OPA's `sprintf` hands `2e3` and `1.0` to Go as `float64`).
#[test]
fn json_numbers_keep_integers_exact_and_floats_floats() {
    let big = Value::from_json_str("98765432109876543210").unwrap();
    assert_eq!(big.to_json_str().unwrap(), "98765432109876543210");
    assert_eq!(
        big,
        eval("98765432109876543210").unwrap(),
        "the input's integer equals the policy's literal"
    );
    assert!(
        crate::policy::builtins::sprintf::is_float(&Value::from_json_str("2e3").unwrap()),
        "2e3 stays a float"
    );
    assert!(!crate::policy::builtins::sprintf::is_float(&big));
    assert!(
        Value::from_json_str("1e400").is_err(),
        "beyond a double is refused"
    );
    assert_eq!(
        serde_json::to_string(&Value::from_json_str("[-0, 5, 18446744073709551616]").unwrap())
            .unwrap(),
        "[0,5,18446744073709551616]"
    );
}

/// Patch #11 looks string keys up in an object without building a `Value` for them: on both
/// storage forms (built by insertion: a B-tree; built from entries: a sorted slice), `get_str`
/// must find exactly what `get` with a built string key finds, among keys of every type (which
/// sort around the strings).
#[test]
fn string_key_lookups_agree_with_value_key_lookups() {
    use regorus::value::Object;

    let keys = [
        Value::Null,
        Value::from(false),
        Value::from(true),
        Value::from(-3),
        Value::from(7),
        Value::from(""),
        Value::from("a"),
        Value::from("ab"),
        Value::from("b"),
        Value::from("zz"),
        Value::from_json_str("[\"a\"]").unwrap(),
        Value::from_json_str("{\"a\": 1}").unwrap(),
        Value::from_json_str("[]").unwrap(),
    ];
    let entries: Vec<(Value, Value)> = keys
        .iter()
        .enumerate()
        .map(|(i, key)| (key.clone(), Value::from(i as u64)))
        .collect();
    let mut inserted = Value::new_object();
    let map = inserted.as_object_mut().unwrap();
    for (key, value) in &entries {
        map.insert(key.clone(), value.clone());
    }
    let from_entries = Object::from_entries(entries);
    for object in [inserted.as_object().unwrap(), &from_entries] {
        for probe in [
            "", "a", "ab", "b", "zz", "aa", "c", "zzz", "null", "true", "7",
        ] {
            assert_eq!(
                object.get_str(probe),
                object.get(&Value::from(probe)),
                "get_str({probe:?})"
            );
        }
        assert_eq!(object.get_str("ab"), Some(&Value::from(7u64)));
        assert_eq!(object.get_str("7"), None);
    }
    // Through a policy: an object the policy builds, looked up by field and by string key.
    assert_eq!(
        eval(
            r#"[o.ab, o[""], object.get(o, "b", "none"), object.get(o, "c", "none")] if { o := object.union({k: 0 | some k in ["x", "ab"]}, {"ab": 1, "": 2, "b": 3, 7: 4, true: 5}) }"#
        ),
        json(r#"[1, 2, 3, "none"]"#)
    );
}
