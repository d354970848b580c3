//! OPA's value text: how a Wasm module's `opa_value_dump` writes a value and `opa_value_parse`
//! reads one (OPA's `wasm/src/json.c`). It is JSON plus two things JSON lacks: sets (`{1,2}`,
//! the empty set `set()`) and object keys that are not strings (`{1:"a"}`). Host builtin
//! arguments and results cross the ABI in this form, as OPA's Go SDK passes them, so a set stays
//! a set (`sprintf("%v", [{1, 2}])` prints `{1, 2}`, as in OPA).
//!
//! Scalars are read with serde_json (a string or a number token as JSON has it); only the
//! structure is read here. Nesting is bounded ([`MAX_DEPTH`]) so a hostile module cannot
//! exhaust the host's stack.

use std::collections::{BTreeMap, BTreeSet};

use regorus::Value;

/// Deepest nesting accepted in either direction.
pub const MAX_DEPTH: usize = 512;

/// Why a value text was not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("value text at byte {at}: {message}")]
pub struct ValueTextError {
    /// Byte offset of the problem.
    pub at: usize,
    /// What was wrong there.
    pub message: String,
}

/// Parses one value text (surrounding whitespace allowed, nothing after it).
pub fn parse(text: &[u8]) -> Result<Value, ValueTextError> {
    let mut parser = Parser { text, at: 0 };
    let value = parser.value(0)?;
    parser.skip_space();
    if parser.at != text.len() {
        return Err(parser.error("unexpected text after the value"));
    }
    Ok(value)
}

struct Parser<'a> {
    text: &'a [u8],
    at: usize,
}

impl Parser<'_> {
    fn error(&self, message: &str) -> ValueTextError {
        ValueTextError {
            at: self.at,
            message: message.to_string(),
        }
    }

    fn skip_space(&mut self) {
        while self
            .text
            .get(self.at)
            .is_some_and(|b| b.is_ascii_whitespace())
        {
            self.at += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.skip_space();
        self.text.get(self.at).copied()
    }

    fn expect(&mut self, byte: u8) -> Result<(), ValueTextError> {
        if self.peek() == Some(byte) {
            self.at += 1;
            Ok(())
        } else {
            Err(self.error(&format!("expected `{}`", char::from(byte))))
        }
    }

    fn value(&mut self, depth: usize) -> Result<Value, ValueTextError> {
        if depth > MAX_DEPTH {
            return Err(self.error("nested too deeply"));
        }
        match self.peek() {
            Some(b'[') => {
                self.at += 1;
                let mut items = Vec::new();
                if self.peek() == Some(b']') {
                    self.at += 1;
                    return Ok(Value::from(items));
                }
                loop {
                    items.push(self.value(depth + 1)?);
                    match self.peek() {
                        Some(b',') => self.at += 1,
                        Some(b']') => {
                            self.at += 1;
                            return Ok(Value::from(items));
                        }
                        _ => return Err(self.error("expected `,` or `]`")),
                    }
                }
            }
            Some(b'{') => {
                self.at += 1;
                if self.peek() == Some(b'}') {
                    self.at += 1;
                    return Ok(Value::from(BTreeMap::new()));
                }
                let first = self.value(depth + 1)?;
                match self.peek() {
                    Some(b':') => {
                        self.at += 1;
                        let mut object = BTreeMap::new();
                        let value = self.value(depth + 1)?;
                        object.insert(first, value);
                        loop {
                            match self.peek() {
                                Some(b',') => self.at += 1,
                                Some(b'}') => {
                                    self.at += 1;
                                    return Ok(Value::from(object));
                                }
                                _ => return Err(self.error("expected `,` or `}`")),
                            }
                            let key = self.value(depth + 1)?;
                            self.expect(b':')?;
                            let value = self.value(depth + 1)?;
                            object.insert(key, value);
                        }
                    }
                    _ => {
                        let mut set = BTreeSet::new();
                        set.insert(first);
                        loop {
                            match self.peek() {
                                Some(b',') => self.at += 1,
                                Some(b'}') => {
                                    self.at += 1;
                                    return Ok(Value::from(set));
                                }
                                _ => return Err(self.error("expected `,`, `:` or `}`")),
                            }
                            set.insert(self.value(depth + 1)?);
                        }
                    }
                }
            }
            Some(b's') => {
                if self.text[self.at..].starts_with(b"set(") {
                    self.at += 4;
                    self.expect(b')')?;
                    Ok(Value::from(BTreeSet::new()))
                } else {
                    Err(self.error("not a value"))
                }
            }
            Some(_) => self.scalar(),
            None => Err(self.error("no value")),
        }
    }

    /// A string, number, `true`, `false` or `null`, read as JSON.
    fn scalar(&mut self) -> Result<Value, ValueTextError> {
        let rest = &self.text[self.at..];
        let mut stream =
            serde_json::Deserializer::from_slice(rest).into_iter::<serde_json::Value>();
        match stream.next() {
            Some(Ok(json)) if !json.is_array() && !json.is_object() => {
                let used = stream.byte_offset();
                let token =
                    std::str::from_utf8(&rest[..used]).map_err(|_| self.error("not UTF-8"))?;
                let value = Value::from_json_str(token)
                    .map_err(|e| self.error(&format!("not a usable scalar: {e}")))?;
                self.at += used;
                Ok(value)
            }
            _ => Err(self.error("not a value")),
        }
    }
}

/// Writes `value` as value text (sets and non-string keys kept); `None` for `undefined` inside
/// it or nesting beyond [`MAX_DEPTH`].
pub fn write(value: &Value) -> Option<String> {
    let mut out = String::new();
    write_into(&mut out, value, 0)?;
    Some(out)
}

fn write_into(out: &mut String, value: &Value, depth: usize) -> Option<()> {
    if depth > MAX_DEPTH {
        return None;
    }
    match value {
        Value::Null | Value::Bool(_) | Value::Number(_) | Value::String(_) => {
            out.push_str(&value.to_json_str().ok()?);
        }
        Value::Array(items) => {
            out.push('[');
            for (n, item) in items.iter().enumerate() {
                if n > 0 {
                    out.push(',');
                }
                write_into(out, item, depth + 1)?;
            }
            out.push(']');
        }
        Value::Set(set) if set.iter().next().is_none() => out.push_str("set()"),
        Value::Set(set) => {
            out.push('{');
            for (n, item) in set.iter().enumerate() {
                if n > 0 {
                    out.push(',');
                }
                write_into(out, item, depth + 1)?;
            }
            out.push('}');
        }
        Value::Object(object) => {
            out.push('{');
            for (n, (key, item)) in object.iter().enumerate() {
                if n > 0 {
                    out.push(',');
                }
                write_into(out, key, depth + 1)?;
                out.push(':');
                write_into(out, item, depth + 1)?;
            }
            out.push('}');
        }
        Value::Undefined => return None,
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(text: &str) -> Value {
        Value::from_json_str(text).unwrap()
    }

    #[test]
    fn reads_json_sets_and_non_string_keys() {
        assert_eq!(
            parse(br#" {"a": [1, 2.5, "x\n"], "b": null} "#).unwrap(),
            json(r#"{"a": [1, 2.5, "x\n"], "b": null}"#)
        );
        let set = parse(b"{1,\"a\",[true]}").unwrap();
        let expected: BTreeSet<Value> = [Value::from(1i64), Value::from("a"), json("[true]")]
            .into_iter()
            .collect();
        assert_eq!(set, Value::from(expected));
        assert_eq!(parse(b"set( )").unwrap(), Value::from(BTreeSet::new()));
        assert_eq!(parse(b"{}").unwrap(), Value::new_object());
        let object = parse(b"{1:\"one\",{2}:false}").unwrap();
        let Value::Object(map) = &object else {
            panic!("{object}")
        };
        assert_eq!(map.iter().count(), 2);
        assert_eq!(object[&Value::from(1i64)], Value::from("one"));
    }

    #[test]
    fn a_float_stays_a_float() {
        use crate::policy::builtins::sprintf::is_float;
        assert!(is_float(&parse(b"1.0").unwrap()));
        assert!(is_float(&parse(b"2e3").unwrap()));
        assert!(!is_float(&parse(b"[7]").unwrap()[0]));
    }

    #[test]
    fn rejects_broken_text_and_deep_nesting() {
        for bad in [
            &b"{1:}"[..],
            b"[1,",
            b"{1 2}",
            b"sets()",
            b"1 2",
            b"",
            b"tru",
            b"{\"a\"}x",
        ] {
            assert!(parse(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        let deep = "[".repeat(MAX_DEPTH + 2) + &"]".repeat(MAX_DEPTH + 2);
        assert!(parse(deep.as_bytes()).is_err());
    }

    #[test]
    fn writes_what_it_reads() {
        for text in [
            r#"{"a":[1,2.5,"x\"y"],"b":{1,2},"c":set(),"d":{3:null}}"#,
            "[]",
            "\"\\u0001\"",
        ] {
            let value = parse(text.as_bytes()).unwrap();
            let written = write(&value).unwrap();
            assert_eq!(parse(written.as_bytes()).unwrap(), value, "{written}");
        }
        assert_eq!(
            write(&json(r#"{"k": [true, null]}"#)).unwrap(),
            r#"{"k":[true,null]}"#
        );
        assert_eq!(write(&Value::Undefined), None);
    }
}
