//! Expected strings are Go's `fmt.Sprintf` output (checked with Go 1.19's `fmt`), with OPA's
//! argument conversion applied first (see the module docs); each case says why.

use super::*;

fn json(text: &str) -> Value {
    Value::from_json_str(text).unwrap()
}

/// OPA's `sprintf(format, args)` with `args` given as JSON.
fn opa(format: &str, args: &str) -> String {
    let Value::Array(items) = json(args) else {
        panic!("{args} is not an array")
    };
    let items: Vec<GoArg> = items.iter().map(GoArg::from_opa).collect();
    sprintf(format, &items)
}

/// Runs the cases a Go program generated (one JSON object per line: `f` the format, `a` the
/// typed arguments, `out` Go's output) when `TOLLGATE_GO_FMT_CASES` names such a file. Opt-in:
/// Go is not installed in CI; the curated cases below pin the same behaviour.
#[test]
fn agrees_with_go_on_generated_cases_when_given() {
    let Ok(path) = std::env::var("TOLLGATE_GO_FMT_CASES") else {
        eprintln!("skipped: TOLLGATE_GO_FMT_CASES is not set");
        return;
    };
    let text = std::fs::read_to_string(path).unwrap();
    let mut failures = Vec::new();
    let mut total = 0;
    for line in text.lines() {
        let case: serde_json::Value = serde_json::from_str(line).unwrap();
        let format = case["f"].as_str().unwrap();
        let args: Vec<GoArg> = case["a"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|arg| {
                        let v = arg["v"].as_str().unwrap();
                        match arg["t"].as_str().unwrap() {
                            "int" => GoArg::Int(v.parse().unwrap()),
                            "float" => {
                                GoArg::Float(if v == "-0" { -0.0 } else { v.parse().unwrap() })
                            }
                            "big" => match v.strip_prefix('-') {
                                Some(d) => GoArg::Big {
                                    negative: true,
                                    digits: d.to_string(),
                                },
                                None => GoArg::Big {
                                    negative: false,
                                    digits: v.to_string(),
                                },
                            },
                            _ => GoArg::Str(v.to_string()),
                        }
                    })
                    .collect()
            })
            .unwrap_or_default();
        total += 1;
        let got = sprintf(format, &args);
        let want = case["out"].as_str().unwrap();
        if got != want {
            failures.push(format!(
                "{format:?} {args:?}\n  go:   {want:?}\n  ours: {got:?}"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {total} differ:\n{}",
        failures.len(),
        failures
            .iter()
            .take(40)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn formats_the_verbs_policies_use_as_opa_does() {
    // Strings and numbers reach Go as string, int and float64.
    assert_eq!(opa("Hello %v", r#"["world"]"#), "Hello world");
    assert_eq!(opa("%v %v %v", "[1, 2.5, -3]"), "1 2.5 -3");
    // 1.0 is a float64 in OPA (its text has a fraction): %v prints it as %g does.
    assert_eq!(opa("%v", "[1.0]"), "1");
    assert_eq!(opa("%v|%v", "[1e21, 0.000001]"), "1e+21|1e-06");
    // Composite values are the string of their Rego term: strings quoted, keys sorted.
    assert_eq!(opa("%v", r#"[[1, "a", true]]"#), r#"[1, "a", true]"#);
    assert_eq!(
        opa("%v", r#"[{"b": 1, "a": [null]}]"#),
        r#"{"a": [null], "b": 1}"#
    );
    // %q quotes a string Go's way; an int is a rune; a composite's term string is quoted.
    assert_eq!(opa("%q", r#"["x\"y\n"]"#), r#""x\"y\n""#);
    assert_eq!(opa("%q", "[42]"), "'*'");
    assert_eq!(opa("%q", "[[1, 2]]"), r#""[1, 2]""#);
    // %d of a non-integer is Go's bad-verb text, never an error.
    assert_eq!(
        opa("%d|%d|%d|%05d", r#"[42, "x", 1.5, -42]"#),
        "42|%!d(string=x)|%!d(float64=1.5)|-0042"
    );
    // %s of a number is a bad verb; a boolean is already a string ("true").
    assert_eq!(opa("%s|%s", "[5, true]"), "%!s(int=5)|true");
    // %x: hex of an int, of a string's bytes, and a float in hex notation.
    assert_eq!(
        opa("%x|%x|%X|%x", r#"[255, "hi", -255, 1.5]"#),
        "ff|6869|-FF|0x1.8p+00"
    );
    assert_eq!(
        opa("%f|%.2f|%f", "[3.14159, 3.14159, 2]"),
        "3.141590|3.14|%!f(int=2)"
    );
    // %t: OPA passes booleans as strings, so Go reports the verb.
    assert_eq!(opa("%t|%t", "[true, 1]"), "%!t(string=true)|%!t(int=1)");
}

#[test]
fn reports_mistakes_as_go_does() {
    assert_eq!(opa("%z", "[1]"), "%!z(int=1)");
    assert_eq!(opa("%d %d", "[1]"), "1 %!d(MISSING)");
    assert_eq!(opa("%d", "[1, 2]"), "1%!(EXTRA int=2)");
    assert_eq!(opa("%!", "[]"), "%!!(MISSING)");
    assert_eq!(opa("%", "[]"), "%!(NOVERB)");
    assert_eq!(opa("100%%", "[]"), "100%");
    assert_eq!(
        opa("%-8s|%8.3f|%+d", r#"["ab", 0.6666666666666666, 5]"#),
        "ab      |   0.667|+5"
    );
    assert_eq!(opa("%[2]v %[1]v", r#"["a", "b"]"#), "b a");
    assert_eq!(
        opa("%e|%g|%G", "[123456.789, 1e-7, 2.5e10]"),
        "1.234568e+05|1e-07|2.5E+10"
    );
    assert_eq!(
        opa("%c|%U|%#U", "[65, 128512, 128512]"),
        "A|U+1F600|U+1F600 '😀'"
    );
    assert_eq!(opa("%o|%#o|%O|%b", "[8, 8, 8, 5]"), "10|010|0o10|101");
}

#[test]
fn prints_sets_as_opa_terms() {
    let set = crate::policy::wasm::value_text::parse(b"[{2,1},set(),{\"b\":{1}}]").unwrap();
    let Value::Array(items) = set else { panic!() };
    let args: Vec<GoArg> = items.iter().map(GoArg::from_opa).collect();
    assert_eq!(sprintf("%v %v %v", &args), r#"{1, 2} set() {"b": {1}}"#);
}

#[test]
fn the_extension_replaces_regorus_sprintf() {
    let mut engine = regorus::Engine::new();
    crate::policy::builtins::register(&mut engine).unwrap();
    engine
        .add_policy(
            "t.rego".into(),
            "package t\nx := sprintf(\"%d|%t|%q\", [\"s\", true, \"q\"])\ny := sprintf(1, [])\n"
                .into(),
        )
        .unwrap();
    assert_eq!(
        engine.eval_rule("data.t.x".into()).unwrap(),
        Value::from(r#"%!d(string=s)|%!t(string=true)|"q""#)
    );
    // A format that is not a string: undefined, as OPA's non-strict evaluation makes it.
    assert_eq!(
        engine.eval_rule("data.t.y".into()).unwrap(),
        Value::Undefined
    );
}

#[test]
fn integers_beyond_64_bits_and_floats_keep_their_kind() {
    assert!(is_float(&json("1.0")));
    assert!(!is_float(&json("1")));
    assert_eq!(
        GoArg::from_opa(&json("18446744073709551615")),
        GoArg::Big {
            negative: false,
            digits: "18446744073709551615".into()
        }
    );
    assert_eq!(opa("%x", "[18446744073709551615]"), "ffffffffffffffff");
    // Precision past what Rust's formatter takes (u16::MAX) is still Go's output, not a panic.
    assert_eq!(opa("%.70000f", "[0.5]").len(), 70_002);
}
