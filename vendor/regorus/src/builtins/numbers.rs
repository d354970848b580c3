// Copyright (c) Microsoft Corporation.
// Licensed under the MIT License.

#![allow(
    clippy::unseparated_literal_suffix,
    clippy::as_conversions,
    clippy::unused_trait_names,
    clippy::pattern_type_mismatch
)]

use crate::ast::{ArithOp, Expr, Ref};
use crate::builtins;
use crate::builtins::utils::{enforce_limit, ensure_args_count, ensure_numeric};
use crate::lexer::Span;
use crate::number::Number;
use crate::value::Value;
use crate::*;

use anyhow::{bail, Result};

#[cfg(feature = "std")]
use rand::RngExt;

pub fn register(m: &mut builtins::BuiltinsMap<&'static str, builtins::BuiltinFcn>) {
    m.insert("abs", (abs, 1));
    m.insert("ceil", (ceil, 1));
    m.insert("floor", (floor, 1));
    m.insert("numbers.range", (range, 2));
    m.insert("numbers.range_step", (range_step, 3));
    #[cfg(feature = "std")]
    m.insert("rand.intn", (intn, 2));
    m.insert("round", (round, 1));
}

pub fn arithmetic_operation(
    span: &Span,
    op: &ArithOp,
    expr1: &Expr,
    expr2: &Expr,
    v1: Value,
    v2: Value,
    strict: bool,
) -> Result<Value> {
    let op_name = format!("{op:?}").to_lowercase();
    let v1 = ensure_numeric(op_name.as_str(), expr1, &v1)?;
    let v2 = ensure_numeric(op_name.as_str(), expr2, &v2)?;

    Ok(Value::from(match op {
        ArithOp::Add => v1.add(&v2)?,
        ArithOp::Sub => v1.sub(&v2)?,
        ArithOp::Mul => v1.mul(&v2)?,
        ArithOp::Div if strict && v2 == Number::from(0u64) => bail!(span.error("divide by zero")),
        ArithOp::Div if v2 == Number::from(0u64) => return Ok(Value::Undefined),
        ArithOp::Div => v1.divide(&v2)?,
        ArithOp::Mod if strict && v2 == Number::from(0u64) => bail!(span.error("modulo by zero")),
        ArithOp::Mod if v2 == Number::from(0u64) => return Ok(Value::Undefined),
        ArithOp::Mod if !v1.is_integer() || !v2.is_integer() => {
            bail!(span.error("modulo on floating-point number"))
        }
        ArithOp::Mod => v1.modulo(&v2)?,
    }))
}

fn abs(span: &Span, params: &[Ref<Expr>], args: &[Value], _strict: bool) -> Result<Value> {
    ensure_args_count(span, "abs", params, args, 1)?;
    Ok(Value::from(
        ensure_numeric("abs", &params[0], &args[0])?.abs(),
    ))
}

fn ceil(span: &Span, params: &[Ref<Expr>], args: &[Value], _strict: bool) -> Result<Value> {
    ensure_args_count(span, "ceil", params, args, 1)?;
    Ok(Value::from(
        ensure_numeric("ceil", &params[0], &args[0])?.ceil(),
    ))
}

fn floor(span: &Span, params: &[Ref<Expr>], args: &[Value], _strict: bool) -> Result<Value> {
    ensure_args_count(span, "floor", params, args, 1)?;
    Ok(Value::from(
        ensure_numeric("floor", &params[0], &args[0])?.floor(),
    ))
}

// tollgate patch (PATCHES.md #7): `numbers.range` and `numbers.range_step` work on
// arbitrary-precision integers, as OPA's (`v1/topdown/numbers.go`, `generateRange` on
// `big.Int`). regorus 0.14.1 took the bounds' difference and the step as 64-bit integers: a
// step beyond 64 bits gave undefined where OPA gives `[start]`, a step of 0 divided by zero
// and a negative step overflowed a capacity (both panics). As in OPA, an operand that is not
// an integer is an error (undefined in the default non-strict mode), a step that is not
// positive is an error, the range runs down from `a` to `b` when `a > b`, and it includes
// `b` when a step lands on it.

/// The exact integer value of a number: integers as they are, a float only when it holds an
/// integer (`2.0`, `1e20`), as OPA's `BigIntOperand` takes them.
fn exact_integer(n: &Number) -> Option<num_bigint::BigInt> {
    use num_traits::FromPrimitive;
    if let Some(big) = n.as_big() {
        return Some((*big).clone());
    }
    match n {
        Number::Float(f) if f.is_finite() && f.fract() == 0.0 => num_bigint::BigInt::from_f64(*f),
        _ => None,
    }
}

/// The operand at `index` as an exact integer, or OPA's error for it.
fn integer_operand(
    name: &str,
    params: &[Ref<Expr>],
    args: &[Value],
    index: usize,
) -> Result<num_bigint::BigInt> {
    let n = ensure_numeric(name, &params[index], &args[index])?;
    match exact_integer(&n) {
        Some(i) => Ok(i),
        None => bail!(params[index]
            .span()
            .error(format!("{name}: operand {} must be integer number", index + 1).as_str())),
    }
}

/// OPA's `generateRange`: from `x` to `y` (down when `x > y`) by `step` (positive), both ends
/// included when reached. Bounded by `|y - x| / step + 1` elements; the memory limit guards
/// every push. Bounds and step that fit in 64 bits are counted in 128-bit integers (no big
/// integer per element, as OPA's `generateCheapRange`); others in big integers.
fn generate_range(
    x: num_bigint::BigInt,
    y: &num_bigint::BigInt,
    step: &num_bigint::BigInt,
) -> Result<Value> {
    use num_traits::ToPrimitive;
    let descending = x > *y;
    if let (Some(x), Some(y), Some(step)) = (x.to_i64(), y.to_i64(), step.to_i64()) {
        let (x, y, step) = (i128::from(x), i128::from(y), i128::from(step));
        // At most 2^64 / step + 1 elements; reserve no more than a bounded first block.
        let count = (y - x).unsigned_abs() / step.unsigned_abs() + 1;
        let mut values = Vec::with_capacity(usize::try_from(count.min(1 << 16)).unwrap_or(0));
        let mut i = x;
        while (descending && i >= y) || (!descending && i <= y) {
            // In range: `i` is between `x` and `y`, both 64-bit.
            values.push(Value::from(i64::try_from(i).unwrap_or_default()));
            // Guard vector growth while we enumerate the range.
            enforce_limit()?;
            if descending {
                i -= step;
            } else {
                i += step;
            }
        }
        return Ok(Value::from_array(values));
    }
    let mut values = Vec::new();
    let mut i = x;
    while (descending && i >= *y) || (!descending && i <= *y) {
        values.push(Value::from(Number::from(i.clone())));
        // Guard vector growth while we enumerate the range.
        enforce_limit()?;
        if descending {
            i -= step;
        } else {
            i += step;
        }
    }
    Ok(Value::from_array(values))
}

fn range(span: &Span, params: &[Ref<Expr>], args: &[Value], _strict: bool) -> Result<Value> {
    let name = "numbers.range";
    ensure_args_count(span, name, params, args, 2)?;
    let x = integer_operand(name, params, args, 0)?;
    let y = integer_operand(name, params, args, 1)?;
    generate_range(x, &y, &num_bigint::BigInt::from(1u8))
}

fn range_step(span: &Span, params: &[Ref<Expr>], args: &[Value], _strict: bool) -> Result<Value> {
    let name = "numbers.range_step";
    ensure_args_count(span, name, params, args, 3)?;
    let x = integer_operand(name, params, args, 0)?;
    let y = integer_operand(name, params, args, 1)?;
    let step = integer_operand(name, params, args, 2)?;
    if step <= num_bigint::BigInt::from(0u8) {
        bail!(params[2].span().error("step must be a positive integer"))
    }
    generate_range(x, &y, &step)
}

fn round(span: &Span, params: &[Ref<Expr>], args: &[Value], _strict: bool) -> Result<Value> {
    let name = "round";
    ensure_args_count(span, name, params, args, 1)?;
    Ok(Value::from(
        ensure_numeric(name, &params[0], &args[0])?.round(),
    ))
}

#[cfg(feature = "std")]
fn intn(span: &Span, params: &[Ref<Expr>], args: &[Value], _strict: bool) -> Result<Value> {
    let fcn = "rand.intn";
    ensure_args_count(span, fcn, params, args, 2)?;
    let _ = crate::builtins::utils::ensure_string(fcn, &params[0], &args[0])?;
    let n = ensure_numeric(fcn, &params[0], &args[1])?;

    Ok(match n.as_u64() {
        Some(0) => Value::from(0u64),
        Some(n) => {
            // TODO: bounds checking; arbitrary precision
            let v = rand::rng().random_range(0..n);
            Value::from(v)
        }
        _ => Value::Undefined,
    })
}
