//! Array builtins of OPA's that regorus 0.14.1 lacks, found by OPA's own conformance cases
//! (docs/POLICY.md, "Conformance").

use regorus::Value;

use super::BuiltinError;

/// `array.flatten(arr)`: `arr` with each element that is an array replaced by its elements,
/// one level deep (OPA's conformance cases `array/flatten *`). Anything but an array makes
/// the call undefined.
pub fn flatten(args: &[Value]) -> Result<Value, BuiltinError> {
    let items = match args.first() {
        Some(Value::Array(items)) => items,
        Some(_) => {
            return Err(BuiltinError::Undefined(
                "array.flatten: operand 1 must be array".into(),
            ));
        }
        None => {
            return Err(BuiltinError::Undefined(
                "array.flatten: missing operand 1".into(),
            ));
        }
    };
    let mut out = Vec::with_capacity(items.len());
    for item in items.iter() {
        match item {
            Value::Array(inner) => out.extend(inner.iter().cloned()),
            other => out.push(other.clone()),
        }
    }
    Ok(Value::from(out))
}

#[cfg(test)]
mod tests {
    use regorus::Engine;

    use super::*;

    fn eval(query: &str) -> Value {
        let mut engine = Engine::new();
        crate::policy::builtins::register(&mut engine).unwrap();
        let results = engine.eval_query(query.to_string(), false).unwrap();
        results
            .result
            .first()
            .map(|r| r.expressions[0].value.clone())
            .unwrap_or(Value::Undefined)
    }

    fn json(text: &str) -> Value {
        Value::from_json_str(text).unwrap()
    }

    #[test]
    fn flatten_splices_one_level() {
        // OPA's conformance cases array/flatten *.
        assert_eq!(eval("array.flatten([])"), json("[]"));
        assert_eq!(
            eval("array.flatten([[1, 2], [3, 4], [5]])"),
            json("[1, 2, 3, 4, 5]")
        );
        assert_eq!(
            eval("array.flatten([[[1], [2, 3, []]], [[4, 5]]])"),
            json("[[1], [2, 3, []], [4, 5]]")
        );
        assert_eq!(
            eval(r#"array.flatten([[1, 2], "string", [3, {"a": "b"}], 4.5, [6, [7, 8]]])"#),
            json(r#"[1, 2, "string", 3, {"a": "b"}, 4.5, 6, [7, 8]]"#)
        );
        // Not an array: undefined (OPA's non-strict mode).
        assert_eq!(eval("array.flatten(42)"), Value::Undefined);
        assert_eq!(eval("array.flatten({1, 2})"), Value::Undefined);
    }
}
