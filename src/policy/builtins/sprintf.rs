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

use std::fmt::Write as _;

use regorus::Value;

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
}

/// Go's `intFromArg` for `*` widths and precisions: only an `int` argument counts.
fn int_from_arg(args: &[GoArg], arg_num: usize) -> (Option<i64>, usize) {
    match args.get(arg_num) {
        Some(GoArg::Int(n)) if n.unsigned_abs() <= TOO_LARGE as u64 => (Some(*n), arg_num + 1),
        Some(_) => (None, arg_num + 1),
        None => (None, arg_num),
    }
}

mod float_text;
mod number_verbs;
mod quote;
mod term;

use quote::can_backquote;
pub use quote::go_quote;
pub use term::{is_float, opa_compare, opa_term_string};

#[cfg(test)]
mod tests;
