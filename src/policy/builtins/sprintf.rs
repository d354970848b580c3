//! OPA's `sprintf`, which is Go's `fmt.Sprintf`: the same output for every verb, flag, width,
//! precision and mistake (`%!d(string=x)`, `%!v(MISSING)`, `%!(EXTRA int=2)`).
//!
//! regorus' own `sprintf` departs from Go on the verbs policies use (`%d` of a string prints
//! nothing, `%t` and unknown verbs print nothing, `%q` of a non-string and a missing argument are
//! errors), so tollgate replaces it, on both engines, with this module ([`register`]).
//!
//! OPA hands Go's `fmt` each element of the argument array converted as
//! `topdown/strings.go` does: a number whose text is an integer that fits in 64 bits becomes a
//! Go `int`, a larger integer a `*big.Int`, any other number a `float64`; a string stays a
//! `string`; everything else (booleans, null, arrays, objects, sets) becomes the *string* of its
//! Rego term (`[1, "a"]`, `{"k": 1}`, `{1, 2}`, `set()`, `true`). So `%t` of `true` is
//! `%!t(string=true)` in OPA, and so it is here. What this module cannot know is the source text
//! of a number: regorus reads `1.0` as a float (as OPA does), but an integer beyond 64 bits
//! arrives as a float, where OPA keeps a `*big.Int`.

use std::cmp::Ordering;
use std::fmt::Write as _;

use regorus::Value;
use regorus::value::{Object, Set};

use super::BuiltinError;

/// One argument as Go's `fmt` sees it (OPA's conversion, see the module docs).
#[derive(Debug, Clone, PartialEq)]
pub enum GoArg {
    /// Go `int` (64-bit).
    Int(i64),
    /// Go `*big.Int`: sign and decimal digits of the magnitude.
    Big { negative: bool, digits: String },
    /// Go `float64`.
    Float(f64),
    /// Go `string`.
    Str(String),
}

impl GoArg {
    /// OPA's conversion of one element of `sprintf`'s argument array.
    pub fn from_opa(value: &Value) -> GoArg {
        match value {
            Value::Number(n) if is_float(value) => GoArg::Float(n.as_f64().unwrap_or(f64::NAN)),
            Value::Number(n) => match n.as_i64() {
                Some(i) => GoArg::Int(i),
                None => {
                    let text = n.format_decimal();
                    match text.strip_prefix('-') {
                        Some(digits) => GoArg::Big {
                            negative: true,
                            digits: digits.to_string(),
                        },
                        None => GoArg::Big {
                            negative: false,
                            digits: text,
                        },
                    }
                }
            },
            Value::String(s) => GoArg::Str(s.to_string()),
            other => GoArg::Str(opa_term_string(other)),
        }
    }

    /// Go's `reflect.TypeOf(arg).String()`.
    fn type_name(&self) -> &'static str {
        match self {
            GoArg::Int(_) => "int",
            GoArg::Big { .. } => "*big.Int",
            GoArg::Float(_) => "float64",
            GoArg::Str(_) => "string",
        }
    }
}

/// OPA's `sprintf(format, values)`, registered for both engines by [`super::register`] (which
/// regorus resolves before its own builtin of the same name). Operands of the wrong type make
/// the call undefined, as an operand type error does in OPA's default (non-strict) evaluation.
pub fn call(args: &[Value]) -> Result<Value, BuiltinError> {
    match (args.first(), args.get(1)) {
        (Some(Value::String(format)), Some(Value::Array(items))) => {
            let items: Vec<GoArg> = items.iter().map(GoArg::from_opa).collect();
            Ok(Value::from(sprintf(format, &items)))
        }
        _ => Err(BuiltinError::Undefined(
            "sprintf: operand 1 must be a string and operand 2 an array".to_string(),
        )),
    }
}

/// Go's `fmt.Sprintf(format, args...)`.
pub fn sprintf(format: &str, args: &[GoArg]) -> String {
    let mut p = Printer {
        out: String::with_capacity(format.len() + 16 * args.len()),
        f: Flags::default(),
        last_arg: None,
        reordered: false,
        good_arg_num: true,
    };
    p.do_printf(format.as_bytes(), format, args);
    p.out
}

/// Go's `fmt` flags and sizes for one verb.
#[derive(Debug, Clone, Copy, Default)]
struct Flags {
    plus: bool,
    minus: bool,
    sharp: bool,
    space: bool,
    zero: bool,
    plus_v: bool,
    sharp_v: bool,
    wid: Option<usize>,
    prec: Option<usize>,
}

/// Largest width or precision Go accepts (`tooLarge`).
const TOO_LARGE: usize = 1_000_000;

struct Printer<'a> {
    out: String,
    f: Flags,
    /// The argument printed last (Go's `p.arg`), named by a bad verb that consumes none.
    last_arg: Option<&'a GoArg>,
    reordered: bool,
    good_arg_num: bool,
}

/// Go's `parsenum`: digits at `s[start..end]`, `None` if there are none or too many.
fn parse_num(s: &[u8], start: usize, end: usize) -> (Option<usize>, usize) {
    let mut i = start;
    let mut num: usize = 0;
    let mut found = false;
    while i < end && s[i].is_ascii_digit() {
        if num > TOO_LARGE {
            return (None, end);
        }
        num = num * 10 + usize::from(s[i] - b'0');
        found = true;
        i += 1;
    }
    (found.then_some(num), i)
}

impl<'a> Printer<'a> {
    /// Go's `argNumber`: an explicit `[n]` index at `s[i..]`.
    fn arg_number(
        &mut self,
        arg_num: usize,
        s: &[u8],
        i: usize,
        n_args: usize,
    ) -> (usize, usize, bool) {
        if i >= s.len() || s[i] != b'[' {
            return (arg_num, i, false);
        }
        self.reordered = true;
        // parseArgNumber: at least "[n]", a closing bracket, digits only between.
        let rest = &s[i..];
        let (index, width, ok) = if rest.len() < 3 {
            (0, 1, false)
        } else {
            match rest.iter().position(|b| *b == b']') {
                Some(close) if close >= 1 => {
                    let (num, newi) = parse_num(rest, 1, close);
                    match num {
                        Some(n) if newi == close => (n.wrapping_sub(1), close + 1, true),
                        _ => (0, close + 1, false),
                    }
                }
                _ => (0, 1, false),
            }
        };
        if ok && index < n_args {
            return (index, i + width, true);
        }
        self.good_arg_num = false;
        (arg_num, i + width, ok)
    }

    fn do_printf(&mut self, s: &[u8], text: &str, args: &'a [GoArg]) {
        let end = s.len();
        let mut arg_num = 0usize;
        let mut after_index;
        let mut i = 0usize;
        'format: while i < end {
            self.good_arg_num = true;
            let last = i;
            while i < end && s[i] != b'%' {
                i += 1;
            }
            if i > last {
                self.out.push_str(&text[last..i]);
            }
            if i >= end {
                break;
            }
            i += 1;
            self.f = Flags::default();
            // Flags, and the fast path for a plain lower-case verb.
            while i < end {
                let c = s[i];
                match c {
                    b'#' => self.f.sharp = true,
                    b'0' => self.f.zero = !self.f.minus,
                    b'+' => self.f.plus = true,
                    b'-' => {
                        self.f.minus = true;
                        self.f.zero = false;
                    }
                    b' ' => self.f.space = true,
                    _ => {
                        if c.is_ascii_lowercase() && arg_num < args.len() {
                            if c == b'v' {
                                self.f.sharp_v = self.f.sharp;
                                self.f.sharp = false;
                                self.f.plus_v = self.f.plus;
                                self.f.plus = false;
                            }
                            self.print_arg(&args[arg_num], char::from(c));
                            arg_num += 1;
                            i += 1;
                            continue 'format;
                        }
                        break;
                    }
                }
                i += 1;
            }
            // Argument index, width, precision.
            (arg_num, i, after_index) = self.arg_number(arg_num, s, i, args.len());
            if i < end && s[i] == b'*' {
                i += 1;
                let (num, newarg) = int_from_arg(args, arg_num);
                arg_num = newarg;
                match num {
                    None => self.out.push_str("%!(BADWIDTH)"),
                    Some(n) if n < 0 => {
                        self.f.wid = Some(n.unsigned_abs() as usize);
                        self.f.minus = true;
                        self.f.zero = false;
                    }
                    Some(n) => self.f.wid = Some(n as usize),
                }
                after_index = false;
            } else {
                let (num, newi) = parse_num(s, i, end);
                self.f.wid = num;
                i = newi;
                if after_index && self.f.wid.is_some() {
                    self.good_arg_num = false;
                }
            }
            if i + 1 < end && s[i] == b'.' {
                i += 1;
                if after_index {
                    self.good_arg_num = false;
                }
                (arg_num, i, after_index) = self.arg_number(arg_num, s, i, args.len());
                if i < end && s[i] == b'*' {
                    i += 1;
                    let (num, newarg) = int_from_arg(args, arg_num);
                    arg_num = newarg;
                    match num {
                        Some(n) if n >= 0 => self.f.prec = Some(n as usize),
                        // Go: a negative or non-int precision is absent, and reported.
                        _ => {
                            self.f.prec = None;
                            self.out.push_str("%!(BADPREC)");
                        }
                    }
                    after_index = false;
                } else {
                    let (num, newi) = parse_num(s, i, end);
                    self.f.prec = Some(num.unwrap_or(0));
                    i = newi;
                }
            }
            if !after_index {
                (arg_num, i, _) = self.arg_number(arg_num, s, i, args.len());
            }
            if i >= end {
                self.out.push_str("%!(NOVERB)");
                break;
            }
            let Some(verb) = text[i..].chars().next() else {
                break;
            };
            i += verb.len_utf8();
            if verb == '%' {
                self.out.push('%');
            } else if !self.good_arg_num {
                let _ = write!(self.out, "%!{verb}(BADINDEX)");
            } else if arg_num >= args.len() {
                let _ = write!(self.out, "%!{verb}(MISSING)");
            } else {
                if verb == 'v' {
                    self.f.sharp_v = self.f.sharp;
                    self.f.sharp = false;
                    self.f.plus_v = self.f.plus;
                    self.f.plus = false;
                }
                self.print_arg(&args[arg_num], verb);
                arg_num += 1;
            }
        }
        if !self.reordered && arg_num < args.len() {
            self.f = Flags::default();
            self.out.push_str("%!(EXTRA ");
            for (n, arg) in args[arg_num..].iter().enumerate() {
                if n > 0 {
                    self.out.push_str(", ");
                }
                self.out.push_str(arg.type_name());
                self.out.push('=');
                self.print_arg(arg, 'v');
            }
            self.out.push(')');
        }
    }

    fn print_arg(&mut self, arg: &'a GoArg, verb: char) {
        self.last_arg = Some(arg);
        if verb == 'T' {
            self.fmt_s(arg.type_name());
            return;
        }
        match arg {
            GoArg::Int(i) => self.fmt_int(*i, verb),
            GoArg::Float(x) => self.fmt_float_verb(*x, verb),
            GoArg::Str(s) => self.fmt_string(s, verb),
            GoArg::Big { negative, digits } => self.fmt_big(*negative, digits, verb),
        }
    }

    /// Go's `badVerb`: `%!z(int=5)`, the value printed with `%v` and the current flags.
    fn bad_verb(&mut self, verb: char) {
        let _ = write!(self.out, "%!{verb}(");
        match self.last_arg {
            Some(arg) => {
                self.out.push_str(arg.type_name());
                self.out.push('=');
                self.print_arg(arg, 'v');
            }
            None => self.out.push_str("<nil>"),
        }
        self.out.push(')');
    }

    fn write_padding(&mut self, n: usize) {
        let pad = if self.f.zero { '0' } else { ' ' };
        self.out.extend(std::iter::repeat_n(pad, n));
    }

    /// Go's `pad`: `s` padded to the width with spaces (or zeros), left or right.
    fn pad(&mut self, s: &str) {
        let Some(wid) = self.f.wid.filter(|w| *w > 0) else {
            self.out.push_str(s);
            return;
        };
        let width = wid.saturating_sub(s.chars().count());
        if self.f.minus {
            self.out.push_str(s);
            self.write_padding(width);
        } else {
            self.write_padding(width);
            self.out.push_str(s);
        }
    }

    /// `pad` with the zero flag off (Go does so for numbers already zero-filled, and `%U`).
    fn pad_spaces(&mut self, s: &str) {
        let zero = self.f.zero;
        self.f.zero = false;
        self.pad(s);
        self.f.zero = zero;
    }

    fn truncate<'s>(&self, s: &'s str) -> &'s str {
        match self.f.prec {
            Some(n) => s.char_indices().nth(n).map_or(s, |(at, _)| &s[..at]),
            None => s,
        }
    }

    fn fmt_s(&mut self, s: &str) {
        let s = self.truncate(s);
        self.pad(s);
    }

    fn fmt_string(&mut self, s: &str, verb: char) {
        match verb {
            'v' if self.f.sharp_v => self.fmt_q(s),
            'v' | 's' => self.fmt_s(s),
            'x' => self.fmt_sx(s, false),
            'X' => self.fmt_sx(s, true),
            'q' => self.fmt_q(s),
            _ => self.bad_verb(verb),
        }
    }

    /// `%x` of a string: the hex of its bytes.
    fn fmt_sx(&mut self, s: &str, upper: bool) {
        let digits: &[u8; 17] = if upper {
            b"0123456789ABCDEFX"
        } else {
            b"0123456789abcdefx"
        };
        let bytes = s.as_bytes();
        let length = match self.f.prec {
            Some(p) if p < bytes.len() => p,
            _ => bytes.len(),
        };
        let mut width = 2 * length;
        if width > 0 {
            if self.f.space {
                if self.f.sharp {
                    width *= 2;
                }
                width += length - 1;
            } else if self.f.sharp {
                width += 2;
            }
        } else {
            if let Some(w) = self.f.wid {
                self.write_padding(w);
            }
            return;
        }
        let wid = self.f.wid.unwrap_or(0);
        if wid > width && !self.f.minus {
            self.write_padding(wid - width);
        }
        if self.f.sharp {
            self.out.push('0');
            self.out.push(char::from(digits[16]));
        }
        for (n, byte) in bytes[..length].iter().enumerate() {
            if self.f.space && n > 0 {
                self.out.push(' ');
                if self.f.sharp {
                    self.out.push('0');
                    self.out.push(char::from(digits[16]));
                }
            }
            self.out.push(char::from(digits[usize::from(byte >> 4)]));
            self.out.push(char::from(digits[usize::from(byte & 0xf)]));
        }
        if wid > width && self.f.minus {
            self.write_padding(wid - width);
        }
    }

    fn fmt_q(&mut self, s: &str) {
        let s = self.truncate(s);
        if self.f.sharp && can_backquote(s) {
            let quoted = format!("`{s}`");
            self.pad(&quoted);
            return;
        }
        let quoted = go_quote(s, self.f.plus);
        self.pad(&quoted);
    }

    fn fmt_int(&mut self, i: i64, verb: char) {
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
    fn fmt_integer(&mut self, i: i64, base: u32, verb: char, upper: bool) {
        let negative = i < 0;
        let digits = radix_digits(i.unsigned_abs(), base, upper);
        self.fmt_digits(negative, &digits, base, verb, upper);
    }

    /// The rest of `fmt.fmtInteger`, on the digits of the magnitude.
    fn fmt_digits(&mut self, negative: bool, digits: &str, base: u32, verb: char, upper: bool) {
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
    fn fmt_unicode(&mut self, u: u64) {
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
    fn fmt_big(&mut self, negative: bool, digits: &str, verb: char) {
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

    fn fmt_float_verb(&mut self, v: f64, verb: char) {
        match verb {
            'v' => self.fmt_float(v, 'g', -1),
            'b' | 'g' | 'G' | 'x' | 'X' => self.fmt_float(v, verb, -1),
            'f' | 'e' | 'E' => self.fmt_float(v, verb, 6),
            'F' => self.fmt_float(v, 'f', 6),
            _ => self.bad_verb(verb),
        }
    }

    /// Go's `fmt.fmtFloat`.
    fn fmt_float(&mut self, v: f64, verb: char, default_prec: i64) {
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

/// Go's `intFromArg` for `*` widths and precisions: only an `int` argument counts.
fn int_from_arg(args: &[GoArg], arg_num: usize) -> (Option<i64>, usize) {
    match args.get(arg_num) {
        Some(GoArg::Int(n)) if n.unsigned_abs() <= TOO_LARGE as u64 => (Some(*n), arg_num + 1),
        Some(_) => (None, arg_num + 1),
        None => (None, arg_num),
    }
}

/// An integer as Go's `%c`/`%q` take it: beyond the Unicode range (or a surrogate) it is U+FFFD.
fn rune(u: u64) -> char {
    u32::try_from(u)
        .ok()
        .and_then(char::from_u32)
        .unwrap_or(char::REPLACEMENT_CHARACTER)
}

fn radix_digits(mut u: u64, base: u32, upper: bool) -> String {
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
fn decimal_to_radix(decimal: &str, base: u32) -> String {
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
fn decimal_to_words(decimal: &str) -> String {
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

/// Decimal digits of |v| (no leading or trailing zeros) and the decimal point position, from
/// Rust's exponent formatting, which like Go's `strconv` is exact: shortest round-trip digits
/// when `significant` is `None`, else correctly rounded (ties to even) to that many digits.
fn decimal_digits(v: f64, significant: Option<usize>) -> (Vec<u8>, i64) {
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
fn format_float(v: f64, verb: char, prec: i64) -> String {
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
fn exponential(digits: &[u8], dp: i64, prec: i64, e: char) -> String {
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
fn fixed(digits: &[u8], dp: i64, prec: i64) -> String {
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
fn mantissa_exponent(v: f64) -> (u64, i64) {
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
fn hex_float(v: f64, verb: char, prec: i64) -> String {
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
fn sharp_float(num: &str, verb: char, prec: i64) -> String {
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

/// Go's `strconv.IsPrint`: letters, marks, numbers, punctuation, symbols and U+0020.
fn is_print(c: char) -> bool {
    use unicode_general_category::{GeneralCategory as G, get_general_category};
    if c == ' ' {
        return true;
    }
    !matches!(
        get_general_category(c),
        G::Control
            | G::Format
            | G::Surrogate
            | G::PrivateUse
            | G::Unassigned
            | G::SpaceSeparator
            | G::LineSeparator
            | G::ParagraphSeparator
    )
}

/// Go's `strconv.CanBackquote`.
fn can_backquote(s: &str) -> bool {
    s.chars()
        .all(|c| c != '`' && c != '\u{feff}' && (c == '\t' || !(c < ' ' || c == '\u{7f}')))
}

fn push_escaped(out: &mut String, c: char, quote: char, ascii_only: bool) {
    if c == quote || c == '\\' {
        out.push('\\');
        out.push(c);
        return;
    }
    if ascii_only {
        if c.is_ascii() && is_print(c) {
            out.push(c);
            return;
        }
    } else if is_print(c) {
        out.push(c);
        return;
    }
    match c {
        '\u{7}' => out.push_str("\\a"),
        '\u{8}' => out.push_str("\\b"),
        '\u{c}' => out.push_str("\\f"),
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        '\u{b}' => out.push_str("\\v"),
        c if (c as u32) < 0x20 || c == '\u{7f}' => {
            let _ = write!(out, "\\x{:02x}", c as u32);
        }
        c if (c as u32) < 0x10000 => {
            let _ = write!(out, "\\u{:04x}", c as u32);
        }
        c => {
            let _ = write!(out, "\\U{:08x}", c as u32);
        }
    }
}

/// Go's `strconv.Quote` (or `QuoteToASCII` when `ascii_only`).
pub fn go_quote(s: &str, ascii_only: bool) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        push_escaped(&mut out, c, '"', ascii_only);
    }
    out.push('"');
    out
}

/// Go's `strconv.QuoteRune` (or `QuoteRuneToASCII`).
fn go_quote_rune(c: char, ascii_only: bool) -> String {
    let mut out = String::from("'");
    push_escaped(&mut out, c, '\'', ascii_only);
    out.push('\'');
    out
}

/// Whether a number is a float (its text had a fraction or an exponent: `1.0`, `1e3`), which Go's
/// `fmt` formats as a `float64`. regorus keeps the distinction (`Number::Float`) but does not
/// export the type; of its public methods only `format_decimal_with_width` tells (a float is
/// printed with the fraction digits asked for, an integer without). The unit tests pin it.
pub fn is_float(value: &Value) -> bool {
    matches!(value, Value::Number(n) if n.format_decimal_with_width(1).contains('.'))
}

/// OPA's order of values of different kinds (`sortOrder`): null, boolean, number, string,
/// array, object, set.
fn kind_rank(v: &Value) -> u8 {
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

fn compare_slices(x: &[&Value], y: &[&Value]) -> Ordering {
    for (a, b) in x.iter().zip(y.iter()) {
        let o = opa_compare(a, b);
        if o != Ordering::Equal {
            return o;
        }
    }
    x.len().cmp(&y.len())
}

fn sorted_set(set: &Set) -> Vec<&Value> {
    let mut items: Vec<&Value> = set.iter().collect();
    items.sort_by(|a, b| opa_compare(a, b));
    items
}

fn sorted_object(object: &Object) -> Vec<(&Value, &Value)> {
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

fn write_term(out: &mut String, v: &Value) {
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

#[cfg(test)]
mod tests;
