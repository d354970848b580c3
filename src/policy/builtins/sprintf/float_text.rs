//! Go's `strconv.FormatFloat` for the float verbs: shortest and fixed-precision decimal
//! digits, `%e`/`%f`/`%g` layouts, hexadecimal floats and the `#` flag.

use std::fmt::Write as _;

/// Decimal digits of |v| (no leading or trailing zeros) and the decimal point position, from
/// Rust's exponent formatting, which like Go's `strconv` is exact: shortest round-trip digits
/// when `significant` is `None`, else correctly rounded (ties to even) to that many digits.
pub(super) fn decimal_digits(v: f64, significant: Option<usize>) -> (Vec<u8>, i64) {
    let abs = v.abs();
    if abs == 0.0 {
        return (Vec::new(), 0);
    }
    let text = match significant {
        None => format!("{abs:e}"),
        // An f64's exact decimal expansion has at most 767 significant digits: more precision
        // only adds zeros (trimmed below), and Rust's formatter takes at most u16::MAX.
        Some(n) => format!("{abs:.*e}", n.clamp(1, 800) - 1),
    };
    let (mantissa, exponent) = text.split_once('e').unwrap_or((&text, "0"));
    let exponent: i64 = exponent.parse().unwrap_or(0);
    let mut digits: Vec<u8> = mantissa.bytes().filter(u8::is_ascii_digit).collect();
    while digits.last() == Some(&b'0') {
        digits.pop();
    }
    if digits.is_empty() {
        return (Vec::new(), 0);
    }
    (digits, exponent + 1)
}

/// Go's `strconv.FormatFloat(v, fmt, prec, 64)`.
pub(super) fn format_float(v: f64, verb: char, prec: i64) -> String {
    let negative = v.is_sign_negative();
    let sign = if negative { "-" } else { "" };
    match verb {
        'b' => {
            let (mant, exp) = mantissa_exponent(v);
            let exp = exp - 52;
            let exp_sign = if exp >= 0 { "+" } else { "" };
            format!("{sign}{mant}p{exp_sign}{exp}")
        }
        'x' | 'X' => format!("{sign}{}", hex_float(v.abs(), verb, prec)),
        'f' => {
            if prec < 0 {
                let (digits, dp) = decimal_digits(v, None);
                let frac = (digits.len() as i64 - dp).max(0);
                format!("{sign}{}", fixed(&digits, dp, frac))
            } else {
                // Past 1,074 fraction digits an f64 has only zeros; Rust formats at most
                // u16::MAX, Go up to a million.
                let exact = (prec as usize).min(1100);
                let mut text = format!("{sign}{:.*}", exact, v.abs());
                text.extend(std::iter::repeat_n('0', prec as usize - exact));
                text
            }
        }
        'e' | 'E' => {
            let (digits, dp, prec) = if prec < 0 {
                let (d, dp) = decimal_digits(v, None);
                let p = (d.len() as i64 - 1).max(0);
                (d, dp, p)
            } else {
                let (d, dp) = decimal_digits(v, Some(prec as usize + 1));
                (d, dp, prec)
            };
            format!("{sign}{}", exponential(&digits, dp, prec, verb))
        }
        _ => {
            // 'g' / 'G'
            let shortest = prec < 0;
            let (digits, dp, prec) = if shortest {
                let (d, dp) = decimal_digits(v, None);
                let n = d.len() as i64;
                (d, dp, n)
            } else {
                let p = prec.max(1);
                let (d, dp) = decimal_digits(v, Some(p as usize));
                (d, dp, p)
            };
            let nd = digits.len() as i64;
            let mut eprec = prec;
            if eprec > nd && nd >= dp {
                eprec = nd;
            }
            if shortest {
                eprec = 6;
            }
            let exp = dp - 1;
            let e = if verb == 'G' { 'E' } else { 'e' };
            let mut prec = prec;
            if exp < -4 || exp >= eprec {
                if prec > nd {
                    prec = nd;
                }
                format!("{sign}{}", exponential(&digits, dp, (prec - 1).max(0), e))
            } else {
                if prec > dp {
                    prec = nd;
                }
                format!("{sign}{}", fixed(&digits, dp, (prec - dp).max(0)))
            }
        }
    }
}

/// Go's `fmtE`: d.ddddde±dd.
pub(super) fn exponential(digits: &[u8], dp: i64, prec: i64, e: char) -> String {
    let mut s = String::new();
    s.push(char::from(*digits.first().unwrap_or(&b'0')));
    if prec > 0 {
        s.push('.');
        let mut i = 1usize;
        let stop = digits.len().min(prec as usize + 1);
        while i < stop {
            s.push(char::from(digits[i]));
            i += 1;
        }
        while (i as i64) <= prec {
            s.push('0');
            i += 1;
        }
    }
    s.push(e);
    let exp = if digits.is_empty() { 0 } else { dp - 1 };
    s.push(if exp < 0 { '-' } else { '+' });
    let exp = exp.unsigned_abs();
    if exp < 10 {
        s.push('0');
    }
    let _ = write!(s, "{exp}");
    s
}

/// Go's `fmtF`: ddd.ddd with `prec` fraction digits.
pub(super) fn fixed(digits: &[u8], dp: i64, prec: i64) -> String {
    let mut s = String::new();
    if dp > 0 {
        let m = (dp as usize).min(digits.len());
        s.extend(digits[..m].iter().map(|b| char::from(*b)));
        s.extend(std::iter::repeat_n('0', dp as usize - m));
    } else {
        s.push('0');
    }
    if prec > 0 {
        s.push('.');
        for i in 1..=prec {
            let j = dp + i - 1;
            let c = if j >= 0 && (j as usize) < digits.len() {
                char::from(digits[j as usize])
            } else {
                '0'
            };
            s.push(c);
        }
    }
    s
}

/// An f64's integer mantissa (with the implicit bit) and unbiased exponent, as Go's `strconv`
/// takes them apart.
pub(super) fn mantissa_exponent(v: f64) -> (u64, i64) {
    let bits = v.to_bits();
    let mut exp = ((bits >> 52) & 0x7ff) as i64;
    let mut mant = bits & ((1u64 << 52) - 1);
    if exp == 0 {
        exp += 1;
    } else {
        mant |= 1u64 << 52;
    }
    (mant, exp - 1023)
}

/// Go's `fmtX`: -0x1.yyyyp±dd (of |v|; the caller adds the sign).
pub(super) fn hex_float(v: f64, verb: char, prec: i64) -> String {
    let (mut mant, mut exp) = mantissa_exponent(v);
    if mant == 0 {
        exp = 0;
    }
    mant <<= 60 - 52;
    while mant != 0 && mant & (1u64 << 60) == 0 {
        mant <<= 1;
        exp -= 1;
    }
    if (0..15).contains(&prec) {
        let shift = (prec * 4) as u32;
        let extra = (mant << shift) & ((1u64 << 60) - 1);
        mant >>= 60 - shift;
        if extra | (mant & 1) > 1u64 << 59 {
            mant += 1;
        }
        mant <<= 60 - shift;
        if mant & (1u64 << 61) != 0 {
            mant >>= 1;
            exp += 1;
        }
    }
    let hex: &[u8; 16] = if verb == 'X' {
        b"0123456789ABCDEF"
    } else {
        b"0123456789abcdef"
    };
    let mut s = String::from("0");
    s.push(verb);
    s.push(char::from(b'0' + ((mant >> 60) & 1) as u8));
    mant <<= 4;
    if prec < 0 && mant != 0 {
        s.push('.');
        while mant != 0 {
            s.push(char::from(hex[((mant >> 60) & 15) as usize]));
            mant <<= 4;
        }
    } else if prec > 0 {
        s.push('.');
        for _ in 0..prec {
            s.push(char::from(hex[((mant >> 60) & 15) as usize]));
            mant <<= 4;
        }
    }
    s.push(if verb == 'X' { 'P' } else { 'p' });
    s.push(if exp < 0 { '-' } else { '+' });
    let exp = exp.unsigned_abs();
    if exp < 10 {
        s.push('0');
    }
    let _ = write!(s, "{exp}");
    s
}

/// Go's `#` flag on floats: keep a decimal point, and for `%g`/`%x` trailing zeros up to the
/// precision (`num` starts with its sign).
pub(super) fn sharp_float(num: &str, verb: char, prec: i64) -> String {
    let mut digits: i64 = match verb {
        'v' | 'g' | 'G' | 'x' => {
            if prec == -1 {
                6
            } else {
                prec
            }
        }
        _ => 0,
    };
    let bytes = num.as_bytes();
    let mut body_end = bytes.len();
    let mut has_point = false;
    let mut saw_nonzero = false;
    for (i, b) in bytes.iter().enumerate().skip(1) {
        match b {
            b'.' => has_point = true,
            b'p' | b'P' => {
                body_end = i;
                break;
            }
            b'e' | b'E' if verb != 'x' && verb != 'X' => {
                body_end = i;
                break;
            }
            _ => {
                if *b != b'0' {
                    saw_nonzero = true;
                }
                if saw_nonzero {
                    digits -= 1;
                }
            }
        }
    }
    let (body, tail) = num.split_at(body_end);
    let mut out = body.to_string();
    if !has_point {
        if body.len() == 2 && body.as_bytes()[1] == b'0' {
            digits -= 1;
        }
        out.push('.');
    }
    while digits > 0 {
        out.push('0');
        digits -= 1;
    }
    out.push_str(tail);
    out
}
