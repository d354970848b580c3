//! The Rego term text OPA hands to `fmt` for booleans, null, arrays, objects and sets
//! (`[1, "a"]`, `{"k": 1}`, `set()`), in OPA's order of values.

use std::cmp::Ordering;

use regorus::Value;
use regorus::value::{Object, Set};

use super::quote::go_quote;

/// Whether a number is a float (its text had a fraction or an exponent: `1.0`, `1e3`), which Go's
/// `fmt` formats as a `float64`. regorus keeps the distinction (`Number::Float`) but does not
/// export the type; of its public methods only `format_decimal_with_width` tells (a float is
/// printed with the fraction digits asked for, an integer without). The unit tests pin it.
pub fn is_float(value: &Value) -> bool {
    matches!(value, Value::Number(n) if n.format_decimal_with_width(1).contains('.'))
}

/// OPA's order of values of different kinds (`sortOrder`): null, boolean, number, string,
/// array, object, set.
pub(super) fn kind_rank(v: &Value) -> u8 {
    match v {
        Value::Null => 0,
        Value::Bool(_) => 1,
        Value::Number(_) => 2,
        Value::String(_) => 3,
        Value::Array(_) => 6,
        Value::Object(_) => 7,
        Value::Set(_) => 8,
        Value::Undefined => 9,
    }
}

/// OPA's total order of values (`ast.Compare`), which sorts object keys and set elements when a
/// term is printed.
pub fn opa_compare(a: &Value, b: &Value) -> Ordering {
    let rank = kind_rank(a).cmp(&kind_rank(b));
    if rank != Ordering::Equal {
        return rank;
    }
    match (a, b) {
        (Value::Array(x), Value::Array(y)) => {
            compare_slices(&x.iter().collect::<Vec<_>>(), &y.iter().collect::<Vec<_>>())
        }
        (Value::Set(x), Value::Set(y)) => compare_slices(&sorted_set(x), &sorted_set(y)),
        (Value::Object(x), Value::Object(y)) => {
            let (x, y) = (sorted_object(x), sorted_object(y));
            for ((xk, xv), (yk, yv)) in x.iter().zip(y.iter()) {
                let o = opa_compare(xk, yk).then_with(|| opa_compare(xv, yv));
                if o != Ordering::Equal {
                    return o;
                }
            }
            x.len().cmp(&y.len())
        }
        _ => a.cmp(b),
    }
}

pub(super) fn compare_slices(x: &[&Value], y: &[&Value]) -> Ordering {
    for (a, b) in x.iter().zip(y.iter()) {
        let o = opa_compare(a, b);
        if o != Ordering::Equal {
            return o;
        }
    }
    x.len().cmp(&y.len())
}

pub(super) fn sorted_set(set: &Set) -> Vec<&Value> {
    let mut items: Vec<&Value> = set.iter().collect();
    items.sort_by(|a, b| opa_compare(a, b));
    items
}

pub(super) fn sorted_object(object: &Object) -> Vec<(&Value, &Value)> {
    let mut items: Vec<(&Value, &Value)> = object.iter().collect();
    items.sort_by(|a, b| opa_compare(a.0, b.0));
    items
}

/// The string of a Rego term as OPA prints it (`ast.Term.String()`): strings Go-quoted,
/// `[1, 2]`, `{"a": 1}` with keys sorted, `{1, 2}` and `set()`.
pub fn opa_term_string(v: &Value) -> String {
    let mut out = String::new();
    write_term(&mut out, v);
    out
}

pub(super) fn write_term(out: &mut String, v: &Value) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) if is_float(v) => {
            let f = n.as_f64().unwrap_or(f64::NAN);
            out.push_str(&serde_json::to_string(&f).unwrap_or_else(|_| f.to_string()))
        }
        Value::Number(n) => out.push_str(&n.format_decimal()),
        Value::String(s) => out.push_str(&go_quote(s, false)),
        Value::Array(items) => {
            out.push('[');
            for (n, item) in items.iter().enumerate() {
                if n > 0 {
                    out.push_str(", ");
                }
                write_term(out, item);
            }
            out.push(']');
        }
        Value::Set(set) if set.iter().next().is_none() => out.push_str("set()"),
        Value::Set(set) => {
            out.push('{');
            for (n, item) in sorted_set(set).into_iter().enumerate() {
                if n > 0 {
                    out.push_str(", ");
                }
                write_term(out, item);
            }
            out.push('}');
        }
        Value::Object(object) => {
            out.push('{');
            for (n, (key, value)) in sorted_object(object).into_iter().enumerate() {
                if n > 0 {
                    out.push_str(", ");
                }
                write_term(out, key);
                out.push_str(": ");
                write_term(out, value);
            }
            out.push('}');
        }
        Value::Undefined => out.push_str("undefined"),
    }
}
