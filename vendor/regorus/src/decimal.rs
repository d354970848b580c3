// tollgate patch (PATCHES.md #3): decimal arithmetic for non-integer numbers, as OPA does.
//
// OPA keeps numbers as decimal text and computes with arbitrary-precision floats, so
// `0.1 + 0.2 == 0.3` holds there; regorus 0.14.1 adds the IEEE-754 doubles
// (0.30000000000000004). Here each operand is taken at its shortest decimal form (the one
// Rust prints, which reads back as the same double), the operation is done exactly on those
// decimals, and the exact result is rounded once to the nearest double. For results of up to
// about 19 significant digits this is the number OPA prints.
#![allow(clippy::arithmetic_side_effects, clippy::as_conversions)]

use alloc::format;
use alloc::string::ToString;

use num_bigint::BigInt;
use num_traits::{Signed, Zero};

use crate::number::Number;

/// Significant digits kept for a quotient that does not terminate: more than a double holds,
/// so the final rounding to a double is (all but) correctly rounded.
const QUOTIENT_DIGITS: u32 = 40;

/// A decimal: `mantissa × 10^exponent`.
struct Decimal {
    mantissa: BigInt,
    exponent: i64,
}

impl Decimal {
    fn of(n: &Number) -> Option<Decimal> {
        let text = match n {
            Number::Float(f) if !f.is_finite() => return None,
            // `{:e}` prints the shortest digits that read back as the same double.
            Number::Float(f) => format!("{f:e}"),
            Number::UInt(v) => v.to_string(),
            Number::Int(v) => v.to_string(),
            Number::BigInt(v) => v.to_string(),
        };
        let (digits, exp) = match text.split_once('e') {
            Some((d, e)) => (d, e.parse::<i64>().ok()?),
            None => (text.as_str(), 0),
        };
        let (int_part, frac_part) = digits.split_once('.').unwrap_or((digits, ""));
        let mantissa: BigInt = format!("{int_part}{frac_part}").parse().ok()?;
        Some(Decimal {
            mantissa,
            exponent: exp - frac_part.len() as i64,
        })
    }

    /// Both mantissas at the smaller exponent.
    fn aligned(a: Decimal, b: Decimal) -> Option<(BigInt, BigInt, i64)> {
        let exponent = a.exponent.min(b.exponent);
        let scale = |d: Decimal| -> Option<BigInt> {
            let shift = u32::try_from(d.exponent - exponent).ok()?;
            Some(d.mantissa * BigInt::from(10u8).pow(shift))
        };
        Some((scale(a)?, scale(b)?, exponent))
    }

    fn to_f64(&self) -> Option<f64> {
        format!("{}e{}", self.mantissa, self.exponent)
            .parse::<f64>()
            .ok()
    }
}

/// The operation decimal arithmetic is asked for.
#[derive(Clone, Copy)]
pub(crate) enum Op {
    Add,
    Sub,
    Mul,
    Div,
}

/// `a op b` computed on decimals and rounded once to a double; `None` when an operand is not
/// finite, the divisor is zero, or the exponents are out of any double's range (the caller then
/// falls back to double arithmetic, which reports the overflow).
pub(crate) fn compute(a: &Number, b: &Number, op: Op) -> Option<f64> {
    let (x, y) = (Decimal::of(a)?, Decimal::of(b)?);
    // Doubles span 10^-324 ..= 10^308; beyond that, alignment would only build huge numbers.
    if x.exponent.abs() > 400 || y.exponent.abs() > 400 {
        return None;
    }
    let exact = match op {
        Op::Add | Op::Sub => {
            let (m, n, exponent) = Decimal::aligned(x, y)?;
            let mantissa = if matches!(op, Op::Add) { m + n } else { m - n };
            Decimal { mantissa, exponent }
        }
        Op::Mul => Decimal {
            mantissa: x.mantissa * y.mantissa,
            exponent: x.exponent + y.exponent,
        },
        Op::Div => {
            if y.mantissa.is_zero() {
                return None;
            }
            let digits = |m: &BigInt| m.abs().to_string().len() as u32;
            let shift = QUOTIENT_DIGITS + digits(&y.mantissa);
            let shift = shift.saturating_sub(digits(&x.mantissa));
            let numerator = x.mantissa * BigInt::from(10u8).pow(shift);
            Decimal {
                mantissa: numerator / y.mantissa,
                exponent: x.exponent - y.exponent - i64::from(shift),
            }
        }
    };
    exact.to_f64().filter(|f| f.is_finite())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(x: f64) -> Number {
        Number::Float(x)
    }

    #[test]
    fn decimal_results_are_the_nearest_double_of_the_exact_decimal() {
        assert_eq!(compute(&f(0.1), &f(0.2), Op::Add), Some(0.3));
        assert_eq!(compute(&f(0.3), &f(0.1), Op::Sub), Some(0.2));
        assert_eq!(compute(&f(0.1), &Number::Int(3), Op::Mul), Some(0.3));
        assert_eq!(compute(&f(0.3), &f(0.1), Op::Div), Some(3.0));
        assert_eq!(compute(&f(1.1), &f(1.1), Op::Mul), Some(1.21));
        assert_eq!(compute(&Number::Int(1), &Number::Int(3), Op::Div), Some(1.0 / 3.0));
        assert_eq!(compute(&f(1e300), &f(1e-300), Op::Add), Some(1e300));
        assert_eq!(compute(&f(-2.5e-7), &f(2.5e-7), Op::Add), Some(0.0));
        assert_eq!(compute(&f(1.0), &Number::Int(0), Op::Div), None);
        assert_eq!(compute(&f(f64::NAN), &f(1.0), Op::Add), None);
        assert_eq!(compute(&f(1e308), &f(10.0), Op::Mul), None);
    }
}
