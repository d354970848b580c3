use super::*;

fn eval(source: &str, rule: &str, input: &str) -> String {
    let text = rewrite("t.rego", source).unwrap();
    let mut engine = Engine::new();
    engine.add_policy("t.rego".into(), text.clone()).unwrap();
    engine.set_input_json(input).unwrap();
    match engine.eval_rule(format!("data.t.{rule}")) {
        Ok(regorus::Value::Undefined) => String::new(),
        Ok(v) => v.to_json_str().unwrap_or_default().replace(['\n', ' '], ""),
        Err(e) => panic!("{text}\n{e}"),
    }
}

const POLICY: &str = r#"package t
import rego.v1
b if not startswith(input.x, "r")
c if not input.x
d if not data.m[input.x]
e if not input.x in {"a"}
f if not "a" in input.x
g if not count(input.x) > 0
h if not input.x.y
i if not input[input.k]
j if { not fn(input.x) }
fn(v) if v == 1
k if { not input.x == input.y }
m if { not input.x != "a" }
n if { not [input.x] }
o if { not {"a": input.x}.a }
q if { not input.x + 1 > 2 }
w10 if not input.x == lower("A")
w11 if not lower(input.x) == "a"
w12 if not input.zs[0] == 1
w13 if not data.m[input.x] == 1
w14 if not input.x.y == 1
t if { x := input.s; not startswith(x, "z") }
u if not startswith(input.s, "z")
v if not startswith(input.s, "z") with input.s as "zz"
cmp := [x | some x in input.xs; not startswith(x, input.p)]
"#;

/// OPA v1.20.2's answers for the input `{"s": "abc", "xs": ["a", "b"]}` (no `x`, `k`, `p`).
#[test]
fn negation_over_undefined_operands_decides_as_opa_does() {
    let input = r#"{"s": "abc", "xs": ["a", "b"]}"#;
    let undefined = [
        "b", "d", "e", "f", "g", "i", "j", "m", "n", "o", "q", "w11", "w13", "v",
    ];
    let truthy = ["c", "h", "k", "w10", "w12", "w14", "t", "u"];
    for rule in undefined {
        assert_eq!(eval(POLICY, rule, input), "", "{rule} must be undefined");
    }
    for rule in truthy {
        assert_eq!(eval(POLICY, rule, input), "true", "{rule} must be true");
    }
    // A hoisted operand inside a comprehension: undefined `input.p` drops every element.
    assert_eq!(eval(POLICY, "cmp", input), "[]");
    assert_eq!(
        eval(POLICY, "cmp", r#"{"xs": ["a", "b"], "p": "a"}"#),
        r#"["b"]"#
    );
}

#[test]
fn a_defined_operand_keeps_the_negation() {
    let input = r#"{"x": "abc", "k": "x", "s": "q"}"#;
    assert_eq!(eval(POLICY, "b", input), "true");
    assert_eq!(eval(POLICY, "i", input), "");
    assert_eq!(eval(POLICY, "m", r#"{"x": "a"}"#), "true");
}

#[test]
fn a_module_without_dynamic_negations_is_unchanged() {
    let source = "package t\nimport rego.v1\nr if not input.x\ns if { x := 1; not x == 2 }\n";
    assert_eq!(rewrite("t.rego", source).unwrap(), source);
}

#[test]
fn line_numbers_are_kept() {
    let text = rewrite("t.rego", POLICY).unwrap();
    assert_eq!(text.lines().count(), POLICY.lines().count());
}

#[test]
fn reserved_names_are_refused() {
    let source =
        "package t\nimport rego.v1\n__tollgate_h0__ := 1\nr if not startswith(input.x, \"a\")\n";
    assert!(matches!(
        rewrite("t.rego", source),
        Err(RewriteError::Reserved { .. })
    ));
}

#[test]
fn head_terms_undefined_for_one_iteration_add_nothing() {
    let source = r#"package t
import rego.v1
creds contains r.cred if some r in input.rules
named[r.name] := r.cred if some r in input.rules
braced contains r.cred if {
	some r in input.rules
}
bodiless contains input.x
"#;
    let input = r#"{"rules": [{"name": "a", "cred": "x"}, {"name": "b"}, {}]}"#;
    assert_eq!(eval(source, "creds", input), r#"["x"]"#);
    assert_eq!(eval(source, "named", input), r#"{"a":"x"}"#);
    assert_eq!(eval(source, "braced", input), r#"["x"]"#);
    assert_eq!(eval(source, "bodiless", input), "[]");
    assert_eq!(eval(source, "bodiless", r#"{"x": 1}"#), "[1]");
    let text = rewrite("t.rego", source).unwrap();
    assert_eq!(text.lines().count(), source.lines().count(), "{text}");
}
