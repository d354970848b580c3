//! OPA's semantics for builtins where regorus 0.14.1 answers differently, found by OPA's own
//! conformance cases (docs/POLICY.md, "Conformance"):
//!
//! - `strings.count(search, substring)`: Go's `strings.Count` — non-overlapping matches, and
//!   for an empty substring the number of code points plus one. regorus counts overlapping
//!   windows (`strings.count("11111", "11")` is 4, OPA says 2) and panics on an empty
//!   substring (a policy could turn an input value into a panic on the request path).
//! - `strings.replace_n(patterns, value)`: Go's `strings.NewReplacer` with the pairs in key
//!   order, as OPA builds it: one left-to-right pass, at each position the first key (in
//!   order) that matches is replaced, and the output is never scanned again. regorus replaced
//!   the keys one after the other over the whole string (`strings.replace_n({"a": "b", "b":
//!   "a"}, "ab")` was `"aa"`; OPA says `"ba"`).
//! - `json.is_valid(x)` / `yaml.is_valid(x)`: false for anything that is not a string (regorus
//!   raises a type error); `yaml.is_valid` checks every document of a multi-document string
//!   (`"a: 1\n---\nb: 2\n"` is valid in OPA, regorus says no).
//!
//! regorus looks a call up among an engine's extensions before its own builtins, so adding
//! these as extensions replaces regorus' versions for that engine.
//!
//! [`split_n`] (`strings.split_n`) is one regorus lacks altogether; it is a row of
//! [`super::BUILTINS`], so a bad argument makes the call undefined as for tollgate's other
//! builtins.

use regorus::{Engine, Value};

use super::BuiltinError;
use crate::policy::PolicyLoadError;

/// Adds the replacements to `engine`.
pub fn register(engine: &mut Engine) -> Result<(), PolicyLoadError> {
    let add = |engine: &mut Engine, name: &str, nargs: u8, f: Box<dyn regorus::Extension>| {
        engine
            .add_extension(name.to_string(), nargs, f)
            .map_err(|e| PolicyLoadError::Compile(format!("builtin {name}: {e}")))
    };
    add(engine, "strings.count", 2, Box::new(strings_count))?;
    add(engine, "strings.replace_n", 2, Box::new(strings_replace_n))?;
    add(engine, "json.is_valid", 1, Box::new(json_is_valid))?;
    add(engine, "yaml.is_valid", 1, Box::new(yaml_is_valid))?;
    Ok(())
}

fn string_arg<'a>(args: &'a [Value], i: usize, name: &str) -> anyhow::Result<&'a str> {
    match args.get(i) {
        Some(Value::String(s)) => Ok(s),
        Some(other) => anyhow::bail!(
            "{name}: operand {} must be string but got {}",
            i + 1,
            type_name(other)
        ),
        None => anyhow::bail!("{name}: missing operand {}", i + 1),
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Set(_) => "set",
        Value::Object(_) => "object",
        Value::Undefined => "undefined",
    }
}

/// Go's `strings.Count`.
fn count(search: &str, substring: &str) -> usize {
    if substring.is_empty() {
        search.chars().count() + 1
    } else {
        search.matches(substring).count()
    }
}

fn strings_count(args: Vec<Value>) -> anyhow::Result<Value> {
    let search = string_arg(&args, 0, "strings.count")?;
    let substring = string_arg(&args, 1, "strings.count")?;
    Ok(Value::from(count(search, substring)))
}

/// Go's `strings.NewReplacer(old1, new1, old2, new2, …).Replace(text)`: a single pass; at each
/// position the first pair whose old string starts there wins; an empty old string inserts its
/// new string before every position (once, then the other pairs may still match there) and at
/// the end. (Go steps over bytes; here the empty old string is inserted between code points,
/// where Go would also split a multi-byte code point.)
fn go_replace(text: &str, pairs: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let mut previous_match_empty = false;
    while i <= text.len() {
        let rest = &text[i..];
        let hit = pairs
            .iter()
            .find(|(old, _)| !(old.is_empty() && previous_match_empty) && rest.starts_with(old));
        if let Some((old, new)) = hit {
            out.push_str(new);
            i += old.len();
            previous_match_empty = old.is_empty();
            continue;
        }
        previous_match_empty = false;
        match rest.chars().next() {
            Some(c) => {
                out.push(c);
                i += c.len_utf8();
            }
            None => break,
        }
    }
    out
}

fn strings_replace_n(args: Vec<Value>) -> anyhow::Result<Value> {
    const NAME: &str = "strings.replace_n";
    let Some(Value::Object(patterns)) = args.first() else {
        anyhow::bail!(
            "{NAME}: operand 1 must be object but got {}",
            args.first().map_or("nothing", type_name)
        );
    };
    let text = string_arg(&args, 1, NAME)?;
    let mut pairs = Vec::with_capacity(patterns.len());
    // The object's keys in their order (a string key's order is its bytes').
    for (old, new) in patterns.iter() {
        match (old, new) {
            (Value::String(old), Value::String(new)) => pairs.push((old.as_ref(), new.as_ref())),
            _ => anyhow::bail!("{NAME}: operand 1 must be object[string: string]"),
        }
    }
    Ok(Value::from(go_replace(text, &pairs)))
}

/// Go's `strings.Split`: an empty separator splits after each code point.
fn go_split(text: &str, separator: &str) -> Vec<String> {
    if separator.is_empty() {
        text.chars().map(String::from).collect()
    } else {
        text.split(separator).map(String::from).collect()
    }
}

/// `strings.split_n(text, separator, n)`: the first `n` parts of `split(text, separator)`,
/// the last `-n` when `n` is negative, none when it is 0 (OPA's conformance cases
/// `strings/split_n/*`).
pub(super) fn split_n(args: &[Value]) -> Result<Value, BuiltinError> {
    const NAME: &str = "strings.split_n";
    let undefined = |m: String| BuiltinError::Undefined(format!("{NAME}: {m}"));
    let text = string_arg(args, 0, NAME).map_err(|e| BuiltinError::Undefined(e.to_string()))?;
    let separator =
        string_arg(args, 1, NAME).map_err(|e| BuiltinError::Undefined(e.to_string()))?;
    let n = match args.get(2) {
        Some(Value::Number(n)) => n
            .as_i64()
            .ok_or_else(|| undefined("operand 3 must be integer number".into()))?,
        Some(other) => {
            return Err(undefined(format!(
                "operand 3 must be number but got {}",
                type_name(other)
            )));
        }
        None => return Err(undefined("missing operand 3".into())),
    };
    let parts = go_split(text, separator);
    let wanted = usize::try_from(n.unsigned_abs()).unwrap_or(usize::MAX);
    let kept: Vec<Value> = if n >= 0 {
        parts.into_iter().take(wanted).map(Value::from).collect()
    } else {
        let skip = parts.len().saturating_sub(wanted);
        parts.into_iter().skip(skip).map(Value::from).collect()
    };
    Ok(Value::from(kept))
}

fn json_is_valid(args: Vec<Value>) -> anyhow::Result<Value> {
    let valid = match args.first() {
        Some(Value::String(s)) => serde_json::from_str::<serde::de::IgnoredAny>(s).is_ok(),
        _ => false,
    };
    Ok(Value::from(valid))
}

/// Every document of the string parses as YAML.
fn yaml_documents_valid(text: &str) -> bool {
    use serde::Deserialize;
    serde_yaml::Deserializer::from_str(text)
        .all(|document| serde_yaml::Value::deserialize(document).is_ok())
}

fn yaml_is_valid(args: Vec<Value>) -> anyhow::Result<Value> {
    let valid = match args.first() {
        Some(Value::String(s)) => yaml_documents_valid(s),
        _ => false,
    };
    Ok(Value::from(valid))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eval(query: &str) -> Value {
        let mut engine = Engine::new();
        register(&mut engine).unwrap();
        let results = engine.eval_query(query.to_string(), false).unwrap();
        results.result[0].expressions[0].value.clone()
    }

    #[test]
    fn strings_replace_n_is_one_pass_of_go_strings_replacer() {
        let r = |query: &str| eval(query);
        // OPA's conformance cases replacen/semantics/*.
        assert_eq!(
            r(r#"strings.replace_n({"info": "X", "anotherinfo": "Y"}, "anotherinfo")"#),
            Value::from("Y")
        );
        assert_eq!(
            r(r#"strings.replace_n({"a": "YY", "bba": "bX"}, "bbab")"#),
            Value::from("bXb")
        );
        assert_eq!(
            r(r#"strings.replace_n({"ab": "b", "b": "Y"}, "baaabbbba")"#),
            Value::from("YaabYYYa")
        );
        assert_eq!(
            r(r#"strings.replace_n({"a": "b", "b": "a"}, "abba")"#),
            Value::from("baab")
        );
        assert_eq!(
            r(r#"strings.replace_n({"a": "Xa", "ab": "X", "ba": "bYa", "aaa": "X"}, "aaaaab")"#),
            Value::from("XaXaXaXaXab")
        );
        assert_eq!(
            r(r#"strings.replace_n({"aab": "Y", "a": "", "b": ""}, "bbaab")"#),
            Value::from("")
        );
        assert_eq!(r(r#"strings.replace_n({"": "X"}, "")"#), Value::from("X"));
        assert_eq!(go_replace("aaa", &[("", "-")]), "-a-a-a-");
        assert_eq!(go_replace("ab", &[("", "-"), ("a", "X")]), "-X-b-");
        assert_eq!(go_replace("μx", &[("μ", "m")]), "mx");
        assert_eq!(go_replace("abc", &[]), "abc");
    }

    #[test]
    fn strings_count_is_go_strings_count() {
        assert_eq!(count("cheese", "e"), 3);
        assert_eq!(count("11111", "11"), 2, "non-overlapping");
        assert_eq!(count("dummy", ""), 6, "code points plus one");
        assert_eq!(count("", ""), 1);
        assert_eq!(count("μx", ""), 3, "code points, not bytes");
        assert_eq!(eval(r#"strings.count("11111", "11")"#), Value::from(2));
        assert_eq!(eval(r#"strings.count("dummy", "")"#), Value::from(6));
    }

    #[test]
    fn split_n_keeps_the_first_or_last_parts() {
        let mut engine = Engine::new();
        crate::policy::builtins::register(&mut engine).unwrap();
        let mut split = |query: &str| -> Value {
            let results = engine.eval_query(query.to_string(), false).unwrap();
            results
                .result
                .first()
                .map(|r| r.expressions[0].value.clone())
                .unwrap_or(Value::Undefined)
        };
        let list = |json: &str| Value::from_json_str(json).unwrap();
        // OPA's conformance cases strings/split_n/*.
        assert_eq!(
            split(r#"strings.split_n("a.b.c.d", ".", 2)"#),
            list(r#"["a", "b"]"#)
        );
        assert_eq!(
            split(r#"strings.split_n("a.b.c.d", ".", 10)"#),
            list(r#"["a", "b", "c", "d"]"#)
        );
        assert_eq!(split(r#"strings.split_n("a.b.c.d", ".", 0)"#), list("[]"));
        assert_eq!(
            split(r#"strings.split_n("a.b.c.d", ".", -2)"#),
            list(r#"["c", "d"]"#)
        );
        assert_eq!(
            split(r#"strings.split_n("a.b.c.d", ".", -10)"#),
            list(r#"["a", "b", "c", "d"]"#)
        );
        assert_eq!(split(r#"strings.split_n("", ".", 2)"#), list(r#"[""]"#));
        assert_eq!(
            split(r#"strings.split_n("abc", "", -2)"#),
            list(r#"["b", "c"]"#)
        );
        assert_eq!(
            split(r#"strings.split_n("åäö", "", 2)"#),
            list(r#"["å", "ä"]"#)
        );
        // A bad operand makes the call undefined (OPA's non-strict mode).
        assert_eq!(
            split(r#"strings.split_n("a.b", ".", 1.5)"#),
            Value::Undefined
        );
        assert_eq!(
            split(r#"strings.split_n("a.b", ".", "1")"#),
            Value::Undefined
        );
        assert_eq!(split(r#"strings.split_n(1, ".", 1)"#), Value::Undefined);
    }

    #[test]
    fn is_valid_is_false_for_non_strings_and_checks_every_yaml_document() {
        assert_eq!(eval("json.is_valid(1)"), Value::from(false));
        assert_eq!(eval(r#"json.is_valid("{\"a\": 1}")"#), Value::from(true));
        assert_eq!(eval(r#"json.is_valid("{")"#), Value::from(false));
        assert_eq!(eval("yaml.is_valid(1)"), Value::from(false));
        assert!(yaml_documents_valid("a: 1\n---\nb: 2\n"));
        assert!(!yaml_documents_valid("a: 1\n---\n\tb: 2\n"));
        assert!(!yaml_documents_valid("  test:\ntest1: hello\n"));
    }
}
