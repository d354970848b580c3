// Copyright (c) Microsoft Corporation.
// Licensed under the MIT License.
#![allow(
    clippy::unused_trait_names,
    clippy::arithmetic_side_effects,
    clippy::as_conversions
)]
use alloc::format;
use alloc::string::{String, ToString};
use core::str::FromStr;

use num_bigint::BigInt;
use num_traits::{One, Signed, Zero};

use crate::ast::{Expr, Ref};
use crate::builtins;
use crate::builtins::utils::{ensure_args_count, ensure_string};
use crate::lexer::Span;
use crate::number::Number;
use crate::value::Value;
use crate::*;

use anyhow::{bail, Result};

pub fn register(m: &mut builtins::BuiltinsMap<&'static str, builtins::BuiltinFcn>) {
    m.insert("units.parse", (parse, 1));
    m.insert("units.parse_bytes", (parse_bytes, 1));
}

// tollgate patch (PATCHES.md #9): `units.parse` and `units.parse_bytes` are ports of OPA's
// (`v1/topdown/parse_units.go`, `parse_bytes.go`, v1.20.2). regorus 0.14.1 accepted an exponent
// of any length (`"10e10000000Ei"` computed a huge number where OPA refuses more than 6
// exponent digits), units OPA does not know (`h`, `da`, `n`, `Q`, `Zi`, `yb`, ...), `_` in the
// amount; rounded `units.parse_bytes` to the nearest integer where OPA truncates a 64-bit
// binary float toward zero (`"1.5"` is 1, `"0.001kb"` is 0), and computed `units.parse` in
// doubles where OPA is exact (a big rational, printed with 10 decimals when not an integer).

/// OPA's `maxExponentDigits`: the most digits an amount's decimal exponent may have.
const MAX_EXPONENT_DIGITS: usize = 6;

/// Significant bits of OPA's `big.Float` at its default precision.
const FLOAT_BITS: u64 = 64;

/// Why OPA's `extractNumAndUnit` refuses a string.
struct ExponentTooLarge;

/// OPA's `extractNumAndUnit`: the amount (digits, `.`, and an exponent `e`/`E` with an
/// optional sign) and the unit after it. An `e` not followed by a digit or a sign starts the
/// unit (`"1e"` is 1 with unit `e`). An exponent of more than 6 digits is refused.
fn extract_num_and_unit(s: &str) -> core::result::Result<(&str, &str), ExponentTooLarge> {
    let b = s.as_bytes();
    let mut first_non_num = None;
    let mut idx = 0;
    while idx < b.len() {
        let c = b[idx];
        let is_num = c.is_ascii_digit() || c == b'.';
        if !is_num && c != b'e' && c != b'E' && c != b'+' && c != b'-' {
            first_non_num = Some(idx);
            break;
        }
        if c == b'e' || c == b'E' {
            let next = b.get(idx + 1).copied();
            match next {
                Some(n) if n.is_ascii_digit() || n == b'+' || n == b'-' => {}
                _ => {
                    first_non_num = Some(idx);
                    break;
                }
            }
            if matches!(next, Some(b'+' | b'-')) {
                idx += 1;
            }
            let exp_start = idx + 1;
            let exp_end = exp_start
                + b.get(exp_start..)
                    .unwrap_or_default()
                    .iter()
                    .take_while(|c| c.is_ascii_digit())
                    .count();
            if exp_end - exp_start > MAX_EXPONENT_DIGITS {
                return Err(ExponentTooLarge);
            }
        }
        idx += 1;
    }
    // Every byte before `first_non_num` is ASCII, so both slices are on char boundaries.
    Ok(match first_non_num {
        None => (s, ""),
        Some(0) => ("", s),
        Some(i) => (&s[..i], &s[i..]),
    })
}

/// An exact rational `num / den` (`den > 0`).
struct Ratio {
    num: BigInt,
    den: BigInt,
}

/// The amount as Go's `big.Rat.SetString` reads it: an optional sign, digits with an optional
/// `.` (at least one digit), an optional exponent `e`/`E` with an optional sign and digits.
fn parse_decimal(text: &str) -> Option<Ratio> {
    let (negative, rest) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    let (mantissa, exponent) = match rest.find(['e', 'E']) {
        Some(i) => (&rest[..i], Some(&rest[i + 1..])),
        None => (rest, None),
    };
    let (int_part, frac_part) = match mantissa.find('.') {
        Some(i) => (&mantissa[..i], &mantissa[i + 1..]),
        None => (mantissa, ""),
    };
    let all_digits = |s: &str| s.bytes().all(|c| c.is_ascii_digit());
    if int_part.len() + frac_part.len() == 0 || !all_digits(int_part) || !all_digits(frac_part) {
        return None;
    }
    let mut exp10: i64 = 0;
    if let Some(e) = exponent {
        let (sign, digits) = match e.as_bytes().first() {
            Some(b'-') => (-1, &e[1..]),
            Some(b'+') => (1, &e[1..]),
            _ => (1, e),
        };
        if digits.is_empty() || !all_digits(digits) {
            return None;
        }
        exp10 = sign * digits.parse::<i64>().ok()?;
    }
    exp10 = exp10.checked_sub(i64::try_from(frac_part.len()).ok()?)?;
    let digits = [int_part, frac_part].concat();
    let mut num = BigInt::from_str(&digits).ok()?;
    if negative {
        num = -num;
    }
    let scale = BigInt::from(10u8).pow(u32::try_from(exp10.unsigned_abs()).ok()?);
    Some(if exp10 >= 0 {
        Ratio {
            num: num * scale,
            den: BigInt::one(),
        }
    } else {
        Ratio { num, den: scale }
    })
}

/// The exact value of a double as a ratio (OPA's `big.Rat.SetFloat64`).
fn ratio_of_f64(f: f64) -> Ratio {
    let bits = f.to_bits();
    let exp_bits = i64::try_from((bits >> 52) & 0x7ff).unwrap_or_default();
    let frac = bits & ((1u64 << 52) - 1);
    let (mantissa, exp2) = if exp_bits == 0 {
        (frac, -1074)
    } else {
        (frac | (1u64 << 52), exp_bits - 1075)
    };
    let mut num = BigInt::from(mantissa);
    if bits >> 63 == 1 {
        num = -num;
    }
    if exp2 >= 0 {
        Ratio {
            num: num << usize::try_from(exp2).unwrap_or_default(),
            den: BigInt::one(),
        }
    } else {
        Ratio {
            num,
            den: BigInt::one() << usize::try_from(-exp2).unwrap_or_default(),
        }
    }
}

/// `x / 2^shift` rounded to the nearest integer, ties to even (`x >= 0`).
fn shift_round_even(x: &BigInt, shift: u64) -> BigInt {
    if shift == 0 {
        return x.clone();
    }
    let shift = usize::try_from(shift).unwrap_or(usize::MAX);
    let q: BigInt = x >> shift;
    let rem = x - (&q << shift);
    let half = BigInt::one() << (shift - 1);
    if rem > half || (rem == half && q.bit(0)) {
        q + 1
    } else {
        q
    }
}

/// A binary float `mantissa × 2^exp2` (`|mantissa| < 2^64`), as Go's `big.Float`.
struct BinaryFloat {
    mantissa: BigInt,
    exp2: i64,
}

/// `num / den` rounded to 64 significant bits, to nearest, ties to even (Go's `big.Float` at
/// its default precision and rounding mode).
fn round_to_float(r: &Ratio) -> BinaryFloat {
    let negative = r.num.is_negative();
    let num = r.num.abs();
    if num.is_zero() {
        return BinaryFloat {
            mantissa: BigInt::zero(),
            exp2: 0,
        };
    }
    // Scale so the integer quotient has at least 66 bits, then round its excess bits off
    // together with the (sticky) remainder.
    let num_bits = i64::try_from(num.bits()).unwrap_or(i64::MAX);
    let den_bits = i64::try_from(r.den.bits()).unwrap_or(i64::MAX);
    let scale = (FLOAT_BITS as i64 + 2) - (num_bits - den_bits) + 1;
    let (scaled_num, scaled_den) = if scale >= 0 {
        (
            num << usize::try_from(scale).unwrap_or_default(),
            r.den.clone(),
        )
    } else {
        (num, &r.den << usize::try_from(-scale).unwrap_or_default())
    };
    let q = &scaled_num / &scaled_den;
    let sticky = !(scaled_num - &q * &scaled_den).is_zero();
    // q has FLOAT_BITS + 2 or more bits; one more low bit keeps the remainder's information.
    let q: BigInt = (q << 1usize) + if sticky { 1u8 } else { 0u8 };
    let excess = q.bits().saturating_sub(FLOAT_BITS);
    let mut mantissa = shift_round_even(&q, excess);
    let mut exp2 = i64::try_from(excess).unwrap_or(i64::MAX) - scale - 1;
    if mantissa.bits() > FLOAT_BITS {
        mantissa >>= 1usize;
        exp2 += 1;
    }
    if negative {
        mantissa = -mantissa;
    }
    BinaryFloat { mantissa, exp2 }
}

/// `f × k` rounded to 64 significant bits (Go's `big.Float.Mul`), then its integer part,
/// truncated toward zero (`big.Float.Int`).
fn float_times_int_truncated(f: &BinaryFloat, k: u64) -> BigInt {
    let product = &f.mantissa * BigInt::from(k);
    let negative = product.is_negative();
    let magnitude = product.abs();
    let excess = magnitude.bits().saturating_sub(FLOAT_BITS);
    let mut mantissa = shift_round_even(&magnitude, excess);
    let mut exp2 = f.exp2 + i64::try_from(excess).unwrap_or(i64::MAX);
    if mantissa.bits() > FLOAT_BITS {
        mantissa >>= 1usize;
        exp2 += 1;
    }
    let whole = if exp2 >= 0 {
        mantissa << usize::try_from(exp2).unwrap_or_default()
    } else {
        mantissa >> usize::try_from(-exp2).unwrap_or(usize::MAX)
    };
    if negative {
        -whole
    } else {
        whole
    }
}

/// A ratio printed as Go's `big.Rat.FloatString(10)`: 10 decimals, the last rounded to
/// nearest with halves away from zero.
fn float_string_10(r: &Ratio) -> String {
    let scale = BigInt::from(10u64.pow(10));
    let scaled = r.num.abs() * &scale;
    let mut q = &scaled / &r.den;
    let rem = scaled - &q * &r.den;
    if rem * 2u8 >= r.den {
        q += 1;
    }
    let int_part = &q / &scale;
    let frac_part = &q % &scale;
    let sign = if r.num.is_negative() { "-" } else { "" };
    format!("{sign}{int_part}.{frac_part:0>10}")
}

fn parse(span: &Span, params: &[Ref<Expr>], args: &[Value], _strict: bool) -> Result<Value> {
    let name = "units.parse";
    ensure_args_count(span, name, params, args, 1)?;
    let raw = ensure_string(name, &params[0], &args[0])?;
    let s = raw.replace('"', "");
    if s.contains(' ') {
        bail!(span.error("units.parse: spaces not allowed in resource strings"));
    }
    let Ok((num, unit)) = extract_num_and_unit(&s) else {
        bail!(span.error("units.parse: exponent too large"));
    };
    if num.is_empty() {
        bail!(span.error("units.parse: no amount provided"));
    }
    // Lower case after the first letter, so that `m` and `M` stay apart.
    let mut chars = unit.chars();
    let unit = match chars.next() {
        Some(first) if unit.len() > 1 => format!("{first}{}", chars.as_str().to_lowercase()),
        _ => unit.to_string(),
    };
    let factor: Ratio = match unit.as_str() {
        "m" => ratio_of_f64(0.001),
        other => {
            let k: u64 = match other {
                "" => 1,
                "k" | "K" => 1_000,
                "ki" | "Ki" => 1 << 10,
                "M" => 1_000_000,
                "mi" | "Mi" => 1 << 20,
                "g" | "G" => 1_000_000_000,
                "gi" | "Gi" => 1 << 30,
                "t" | "T" => 1_000_000_000_000,
                "ti" | "Ti" => 1 << 40,
                "p" | "P" => 1_000_000_000_000_000,
                "pi" | "Pi" => 1 << 50,
                "e" | "E" => 1_000_000_000_000_000_000,
                "ei" | "Ei" => 1 << 60,
                _ => bail!(span.error(format!("units.parse: unit {unit} not recognized").as_str())),
            };
            Ratio {
                num: BigInt::from(k),
                den: BigInt::one(),
            }
        }
    };
    let Some(amount) = parse_decimal(num) else {
        bail!(span.error("units.parse: could not parse amount to a number"));
    };
    let value = Ratio {
        num: amount.num * factor.num,
        den: amount.den * factor.den,
    };
    if (&value.num % &value.den).is_zero() {
        return Ok(Value::from(Number::from(value.num / value.den)));
    }
    let text = float_string_10(&value);
    let number = Number::from_str(&text)
        .map_err(|_| span.error("units.parse: could not parse amount to a number"))?;
    Ok(Value::from(number))
}

fn parse_bytes(span: &Span, params: &[Ref<Expr>], args: &[Value], _strict: bool) -> Result<Value> {
    let name = "units.parse_bytes";
    ensure_args_count(span, name, params, args, 1)?;
    let raw = ensure_string(name, &params[0], &args[0])?;
    let s = raw.to_lowercase().replace('"', "");
    if s.contains(' ') {
        bail!(span.error("units.parse_bytes: spaces not allowed in resource strings"));
    }
    let Ok((num, unit)) = extract_num_and_unit(&s) else {
        bail!(span.error("units.parse_bytes: exponent too large"));
    };
    if num.is_empty() {
        bail!(span.error("units.parse_bytes: no byte amount provided"));
    }
    let k: u64 = match unit {
        "" => 1,
        "kb" | "k" => 1_000,
        "kib" | "ki" => 1 << 10,
        "mb" | "m" => 1_000_000,
        "mib" | "mi" => 1 << 20,
        "gb" | "g" => 1_000_000_000,
        "gib" | "gi" => 1 << 30,
        "tb" | "t" => 1_000_000_000_000,
        "tib" | "ti" => 1 << 40,
        "pb" | "p" => 1_000_000_000_000_000,
        "pib" | "pi" => 1 << 50,
        "eb" | "e" => 1_000_000_000_000_000_000,
        "eib" | "ei" => 1 << 60,
        _ => {
            bail!(span.error(format!("units.parse_bytes: byte unit {unit} not recognized").as_str()))
        }
    };
    let Some(amount) = parse_decimal(num) else {
        bail!(span.error("units.parse_bytes: could not parse byte amount to a number"));
    };
    let total = float_times_int_truncated(&round_to_float(&amount), k);
    Ok(Value::from(Number::from(total)))
}
