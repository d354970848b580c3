//! The integer and float verbs of Go's `fmt` (`%d %b %o %O %x %X %c %q %U` and
//! `%e %E %f %F %g %G %x %X`) as [`Printer`](super::Printer) methods, and the digit helpers
//! they share.

use super::float_text::{format_float, sharp_float};
use super::quote::{go_quote_rune, is_print};
use std::fmt::Write as _;

use super::Printer;

impl Printer<'_> {
    pub(super) fn fmt_int(&mut self, i: i64, verb: char) {
        let u = i as u64;
        match verb {
            'v' | 'd' => self.fmt_integer(i, 10, verb, false),
            'b' => self.fmt_integer(i, 2, verb, false),
            'o' | 'O' => self.fmt_integer(i, 8, verb, false),
            'x' => self.fmt_integer(i, 16, verb, false),
            'X' => self.fmt_integer(i, 16, verb, true),
            'c' => {
                let c = rune(u);
                self.pad(c.encode_utf8(&mut [0; 4]));
            }
            'q' => {
                let quoted = go_quote_rune(rune(u), self.f.plus);
                self.pad(&quoted);
            }
            'U' => self.fmt_unicode(u),
            _ => self.bad_verb(verb),
        }
    }

    /// Go's `fmt.fmtInteger` for a signed 64-bit value.
    pub(super) fn fmt_integer(&mut self, i: i64, base: u32, verb: char, upper: bool) {
        let negative = i < 0;
        let digits = radix_digits(i.unsigned_abs(), base, upper);
        self.fmt_digits(negative, &digits, base, verb, upper);
    }

    /// The rest of `fmt.fmtInteger`, on the digits of the magnitude.
    pub(super) fn fmt_digits(
        &mut self,
        negative: bool,
        digits: &str,
        base: u32,
        verb: char,
        upper: bool,
    ) {
        let mut prec = 0usize;
        if let Some(p) = self.f.prec {
            prec = p;
            if p == 0 && digits == "0" {
                let zero = self.f.zero;
                self.f.zero = false;
                self.write_padding(self.f.wid.unwrap_or(0));
                self.f.zero = zero;
                return;
            }
        } else if self.f.zero
            && let Some(w) = self.f.wid
        {
            prec = w;
            if negative || self.f.plus || self.f.space {
                prec = prec.saturating_sub(1);
            }
        }
        let mut num = String::with_capacity(prec.max(digits.len()) + 4);
        if negative {
            num.push('-');
        } else if self.f.plus {
            num.push('+');
        } else if self.f.space {
            num.push(' ');
        }
        if verb == 'O' {
            num.push_str("0o");
        }
        if self.f.sharp {
            match base {
                2 => num.push_str("0b"),
                16 => num.push_str(if upper { "0X" } else { "0x" }),
                _ => {}
            }
        }
        let zeros = prec.saturating_sub(digits.len());
        // Go's octal `#` adds a leading 0 unless the digits (zero-filled) already start with one.
        if self.f.sharp && base == 8 && zeros == 0 && !digits.starts_with('0') {
            num.push('0');
        }
        num.extend(std::iter::repeat_n('0', zeros));
        num.push_str(digits);
        // Go writes "0o" after the sign and before `#`'s prefix: reorder to match.
        self.pad_spaces(&num);
    }

    /// Go's `fmtUnicode`: `U+0041`, with `#` also `U+0041 'A'`.
    pub(super) fn fmt_unicode(&mut self, u: u64) {
        let prec = match self.f.prec {
            Some(p) if p > 4 => p,
            _ => 4,
        };
        let hex = radix_digits(u, 16, true);
        let mut s = String::from("U+");
        s.extend(std::iter::repeat_n('0', prec.saturating_sub(hex.len())));
        s.push_str(&hex);
        if self.f.sharp
            && let Some(c) = u32::try_from(u).ok().and_then(char::from_u32)
            && is_print(c)
        {
            s.push_str(" '");
            s.push(c);
            s.push('\'');
        }
        self.pad_spaces(&s);
    }

    /// `*big.Int`'s own `Format`.
    pub(super) fn fmt_big(&mut self, negative: bool, digits: &str, verb: char) {
        let base = match verb {
            'b' => 2,
            'o' | 'O' => 8,
            'd' | 's' | 'v' => 10,
            'x' | 'X' => 16,
            'w' => {
                // Go checks `%w` before calling the value's Format, and prints the bad verb's
                // value by reflection: big.Int's fields, the magnitude as 64-bit words.
                let _ = write!(
                    self.out,
                    "%!w(*big.Int=&{{{negative} [{}]}})",
                    decimal_to_words(digits)
                );
                return;
            }
            _ => {
                let sign = if negative { "-" } else { "" };
                let _ = write!(self.out, "%!{verb}(big.Int={sign}{digits})");
                return;
            }
        };
        let sign = if negative {
            "-"
        } else if self.f.plus || self.f.plus_v {
            "+"
        } else if self.f.space {
            " "
        } else {
            ""
        };
        let mut prefix = "";
        if self.f.sharp || self.f.sharp_v {
            prefix = match verb {
                'b' => "0b",
                'o' => "0",
                'x' => "0x",
                'X' => "0X",
                _ => "",
            };
        }
        if verb == 'O' {
            prefix = "0o";
        }
        let mut body = decimal_to_radix(digits, base);
        if verb == 'X' {
            body = body.to_ascii_uppercase();
        }
        let mut zeros = 0;
        if let Some(p) = self.f.prec {
            if body.len() < p {
                zeros = p - body.len();
            } else if body == "0" && p == 0 {
                return;
            }
        }
        let length = sign.len() + prefix.len() + zeros + body.len();
        let (mut left, mut right) = (0, 0);
        if let Some(w) = self.f.wid
            && length < w
        {
            let d = w - length;
            if self.f.minus {
                right = d;
            } else if self.f.zero && self.f.prec.is_none() {
                zeros = d;
            } else {
                left = d;
            }
        }
        self.out.extend(std::iter::repeat_n(' ', left));
        self.out.push_str(sign);
        self.out.push_str(prefix);
        self.out.extend(std::iter::repeat_n('0', zeros));
        self.out.push_str(&body);
        self.out.extend(std::iter::repeat_n(' ', right));
    }

    pub(super) fn fmt_float_verb(&mut self, v: f64, verb: char) {
        match verb {
            'v' => self.fmt_float(v, 'g', -1),
            'b' | 'g' | 'G' | 'x' | 'X' => self.fmt_float(v, verb, -1),
            'f' | 'e' | 'E' => self.fmt_float(v, verb, 6),
            'F' => self.fmt_float(v, 'f', 6),
            _ => self.bad_verb(verb),
        }
    }

    /// Go's `fmt.fmtFloat`.
    pub(super) fn fmt_float(&mut self, v: f64, verb: char, default_prec: i64) {
        let prec = match self.f.prec {
            Some(p) => p as i64,
            None => default_prec,
        };
        let mut num = format_float(v, verb, prec);
        // A leading sign, always present here, dropped or kept below.
        if !(num.starts_with('-') || num.starts_with('+')) {
            num.insert(0, '+');
        }
        if self.f.space && num.starts_with('+') && !self.f.plus {
            num.replace_range(0..1, " ");
        }
        if self.f.sharp && verb != 'b' {
            num = sharp_float(&num, verb, prec);
        }
        if self.f.plus || !num.starts_with('+') {
            if self.f.zero
                && let Some(w) = self.f.wid
                && w > num.chars().count()
            {
                let (sign, rest) = num.split_at(1);
                self.out.push_str(sign);
                self.write_padding(w - num.chars().count());
                self.out.push_str(rest);
                return;
            }
            self.pad(&num);
            return;
        }
        let unsigned = num[1..].to_string();
        self.pad(&unsigned);
    }
}

/// An integer as Go's `%c`/`%q` take it: beyond the Unicode range (or a surrogate) it is U+FFFD.
pub(super) fn rune(u: u64) -> char {
    u32::try_from(u)
        .ok()
        .and_then(char::from_u32)
        .unwrap_or(char::REPLACEMENT_CHARACTER)
}

pub(super) fn radix_digits(mut u: u64, base: u32, upper: bool) -> String {
    let table: &[u8; 16] = if upper {
        b"0123456789ABCDEF"
    } else {
        b"0123456789abcdef"
    };
    let base = u64::from(base);
    let mut buf = Vec::with_capacity(64);
    loop {
        buf.push(table[(u % base) as usize]);
        u /= base;
        if u == 0 {
            break;
        }
    }
    buf.reverse();
    String::from_utf8(buf).unwrap_or_default()
}

/// The decimal digits of a non-negative integer, written in `base` (lower case).
pub(super) fn decimal_to_radix(decimal: &str, base: u32) -> String {
    if base == 10 {
        return decimal.to_string();
    }
    let mut number: Vec<u32> = decimal.bytes().map(|b| u32::from(b - b'0')).collect();
    let mut out = Vec::new();
    while number.iter().any(|d| *d != 0) {
        let mut remainder = 0u32;
        for digit in number.iter_mut() {
            let acc = remainder * 10 + *digit;
            *digit = acc / base;
            remainder = acc % base;
        }
        out.push(b"0123456789abcdef"[remainder as usize]);
    }
    if out.is_empty() {
        out.push(b'0');
    }
    out.reverse();
    String::from_utf8(out).unwrap_or_default()
}

/// A non-negative decimal integer as Go's `big.nat`: 64-bit words, least significant first.
pub(super) fn decimal_to_words(decimal: &str) -> String {
    let mut number: Vec<u128> = decimal.bytes().map(|b| u128::from(b - b'0')).collect();
    let mut words = Vec::new();
    while number.iter().any(|d| *d != 0) {
        let mut remainder = 0u128;
        for digit in number.iter_mut() {
            let acc = remainder * 10 + *digit;
            *digit = acc >> 64;
            remainder = acc & u128::from(u64::MAX);
        }
        words.push(remainder.to_string());
    }
    words.join(" ")
}
