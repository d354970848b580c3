//! `glob.match` and `regex.match` with their compiled patterns cached per thread.
//!
//! Egress policies call these once per rule on every request (`glob.match("*.github.com",
//! ["."], host)`), with patterns that come from data. Compiling a pattern costs far more than
//! matching it (a profile of a 1,000-agent policy spent a fifth of the proxy's CPU building
//! regex automata), and regorus' own cache is one global `Mutex` around an LRU of 128 globs —
//! a lock every worker takes on every call, and too small for a thousand agents' patterns.
//! Here each worker thread keeps its own bounded cache: no lock, no shared reference count,
//! and a pattern is compiled once per thread.
//!
//! The matching itself is regorus' (and OPA's): globs are translated the way regorus'
//! `glob.match` translates them (delimiters become path separators for `globset`), except
//! that an empty alternative (`{a,}`) is kept, as OPA keeps it; regexes are Rust `regex` with
//! regorus' size limit, so a cached result is the uncached one.

use std::cell::RefCell;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use globset::{GlobBuilder, GlobMatcher};
use quick_cache::Equivalent;
use quick_cache::unsync::Cache;
use regex::{Regex, RegexBuilder};
use regorus::Value;

/// Compiled patterns kept per thread and per kind: enough for the patterns of thousands of
/// agents; beyond it the least recently used are compiled again.
const CACHE_ENTRIES: usize = 16_384;
/// Largest compiled regex (regorus' limit): a pattern that needs more is an error.
const REGEX_SIZE_LIMIT: usize = 100 * 1024;
/// The character that stands for "not a separator" while a glob is translated (regorus' choice).
const PLACEHOLDER: char = '\0';

/// A glob as cached: the pattern and its delimiters (`None` = `null`: no delimiters at all).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct GlobKey {
    pattern: String,
    delimiters: Option<Vec<char>>,
}

/// The borrowed form of [`GlobKey`], so a cache hit allocates nothing.
#[derive(Hash)]
struct GlobKeyRef<'a> {
    pattern: &'a str,
    delimiters: Option<&'a [char]>,
}

impl Equivalent<GlobKey> for GlobKeyRef<'_> {
    fn equivalent(&self, key: &GlobKey) -> bool {
        self.pattern == key.pattern && self.delimiters == key.delimiters.as_deref()
    }
}

// `GlobKeyRef` must hash exactly as `GlobKey` does for the borrowed lookup to find entries.
impl GlobKey {
    fn as_ref(&self) -> GlobKeyRef<'_> {
        GlobKeyRef {
            pattern: &self.pattern,
            delimiters: self.delimiters.as_deref(),
        }
    }
}

thread_local! {
    static GLOBS: RefCell<Cache<GlobKey, Arc<GlobMatcher>>> =
        RefCell::new(Cache::new(CACHE_ENTRIES));
    static REGEXES: RefCell<Cache<String, Arc<Regex>>> = RefCell::new(Cache::new(CACHE_ENTRIES));
}

/// Why a pattern builtin could not answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    /// A wrong argument type or an invalid pattern: OPA's non-strict mode makes the call
    /// undefined.
    #[error("{0}")]
    Invalid(String),
    /// The compiled regex would exceed the size limit: always an error (a limit must never
    /// turn `not regex.match(...)` into true).
    #[error("regex.match: the pattern's compiled size exceeds {REGEX_SIZE_LIMIT} bytes")]
    TooBig,
}

/// `glob.match(pattern, delimiters, value)`.
pub fn glob_match(args: &[Value]) -> Result<Value, PatternError> {
    let [pattern, delimiters, value] = args else {
        return Err(PatternError::Invalid("glob.match takes 3 arguments".into()));
    };
    let pattern = string(pattern, "glob.match: the pattern must be a string")?;
    let value = string(value, "glob.match: the value must be a string")?;
    let delimiters = match delimiters {
        Value::Null => None,
        Value::Array(items) => {
            let mut chars = Vec::with_capacity(items.len().max(1));
            for item in items.iter() {
                let text = string(item, "glob.match: delimiters must be strings")?;
                let mut it = text.chars();
                match (it.next(), it.next()) {
                    (Some(c), None) => chars.push(c),
                    _ => {
                        return Err(PatternError::Invalid(
                            "glob.match: delimiters must be single characters".into(),
                        ));
                    }
                }
            }
            if chars.is_empty() {
                chars.push('.');
            }
            Some(chars)
        }
        _ => {
            return Err(PatternError::Invalid(
                "glob.match: delimiters must be an array of strings or null".into(),
            ));
        }
    };
    let matcher = cached_glob(pattern, delimiters.as_deref())?;
    let subject = translate(value, delimiters.as_deref())?;
    Ok(Value::Bool(matcher.is_match(subject.as_str())))
}

/// `regex.match(pattern, value)`.
pub fn regex_match(args: &[Value]) -> Result<Value, PatternError> {
    let [pattern, value] = args else {
        return Err(PatternError::Invalid(
            "regex.match takes 2 arguments".into(),
        ));
    };
    let pattern = string(pattern, "regex.match: the pattern must be a string")?;
    let value = string(value, "regex.match: the value must be a string")?;
    let regex = cached_regex(pattern)?;
    Ok(Value::Bool(regex.is_match(value)))
}

fn string<'a>(value: &'a Value, message: &str) -> Result<&'a str, PatternError> {
    match value {
        Value::String(s) => Ok(s.as_ref()),
        _ => Err(PatternError::Invalid(message.to_string())),
    }
}

fn cached_glob(
    pattern: &str,
    delimiters: Option<&[char]>,
) -> Result<Arc<GlobMatcher>, PatternError> {
    let lookup = GlobKeyRef {
        pattern,
        delimiters,
    };
    if let Some(found) = GLOBS.with(|cache| cache.borrow_mut().get(&lookup).cloned()) {
        return Ok(found);
    }
    let translated = translate(pattern, delimiters)?;
    // OPA's globs accept an empty alternative (`{a,}`: "a" or nothing); globset drops an
    // empty branch unless told otherwise, so `{**/,}x` would not match "x".
    let matcher = GlobBuilder::new(&translated)
        .literal_separator(true)
        .empty_alternates(true)
        .build()
        .map_err(|e| PatternError::Invalid(format!("glob.match: invalid glob: {e}")))?
        .compile_matcher();
    let matcher = Arc::new(matcher);
    let key = GlobKey {
        pattern: pattern.to_string(),
        delimiters: delimiters.map(<[char]>::to_vec),
    };
    debug_assert!(hash_of(&key.as_ref()) == hash_of(&lookup));
    GLOBS.with(|cache| cache.borrow_mut().insert(key, matcher.clone()));
    Ok(matcher)
}

fn hash_of<T: Hash>(value: &T) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    value.hash(&mut hasher);
    hasher.finish()
}

fn cached_regex(pattern: &str) -> Result<Arc<Regex>, PatternError> {
    if let Some(found) = REGEXES.with(|cache| cache.borrow_mut().get(pattern).cloned()) {
        return Ok(found);
    }
    let regex = RegexBuilder::new(pattern)
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| match e {
            regex::Error::CompiledTooBig(_) => PatternError::TooBig,
            other => PatternError::Invalid(format!("regex.match: invalid regex: {other}")),
        })?;
    let regex = Arc::new(regex);
    REGEXES.with(|cache| {
        cache
            .borrow_mut()
            .insert(pattern.to_string(), regex.clone())
    });
    Ok(regex)
}

/// Rewrites a glob pattern or subject so `globset`'s path separator plays the delimiters'
/// part: `/` stays a separator only when it is a delimiter; `:` becomes a non-separator
/// placeholder; any other delimiter `d` becomes `/d/`. With no delimiters (`null`), `/` is not
/// a separator either.
fn translate(text: &str, delimiters: Option<&[char]>) -> Result<String, PatternError> {
    if text.contains(PLACEHOLDER) {
        return Err(PatternError::Invalid(
            "glob.match: the string contains a NUL character".into(),
        ));
    }
    let delimiters = delimiters.unwrap_or(&[]);
    let slash_is_delimiter = delimiters.contains(&'/');
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if (c == '/' && !slash_is_delimiter) || (c == ':' && delimiters.contains(&':')) {
            out.push(PLACEHOLDER);
        } else if c != '/' && delimiters.contains(&c) {
            out.push('/');
            out.push(c);
            out.push('/');
        } else {
            out.push(c);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn glob(pattern: &str, delimiters: Value, value: &str) -> Result<bool, PatternError> {
        glob_match(&[Value::from(pattern), delimiters, Value::from(value)])
            .map(|v| v == Value::Bool(true))
    }

    fn dots() -> Value {
        Value::from_json_str(r#"["."]"#).unwrap()
    }

    #[test]
    fn star_matches_one_label_only() {
        assert!(glob("*.github.com", dots(), "api.github.com").unwrap());
        assert!(!glob("*.github.com", dots(), "a.b.github.com").unwrap());
        assert!(glob("**.github.com", dots(), "a.b.github.com").unwrap());
        assert!(!glob("*.github.com", dots(), "github.com").unwrap());
    }

    #[test]
    fn empty_delimiters_mean_dot_and_null_means_none() {
        let empty = Value::from_json_str("[]").unwrap();
        assert!(!glob("*.com", empty, "a.b.com").unwrap());
        assert!(glob("*.com", Value::Null, "a.b.com").unwrap());
        assert!(glob("/repos/*", Value::Null, "/repos/a/b").unwrap());
        let slash = Value::from_json_str(r#"["/"]"#).unwrap();
        assert!(!glob("/repos/*", slash.clone(), "/repos/a/b").unwrap());
        assert!(glob("/repos/**", slash, "/repos/a/b").unwrap());
    }

    #[test]
    fn classes_alternatives_and_question_marks() {
        assert!(glob("api.{github,gitlab}.com", dots(), "api.gitlab.com").unwrap());
        assert!(glob("v[0-9].example.org", dots(), "v7.example.org").unwrap());
        assert!(!glob("v[!0-9].example.org", dots(), "v7.example.org").unwrap());
        assert!(glob("h?st", dots(), "host").unwrap());
    }

    #[test]
    fn an_empty_alternative_matches_nothing_as_opa_does() {
        // OPA's conformance case globmatch/empty pattern alternative.
        assert!(glob("{**/,}x", Value::Null, "x").unwrap());
        assert!(glob("{**/,}x", Value::Null, "a/x").unwrap());
        assert!(glob("api.{,eu.}example.com", dots(), "api.example.com").unwrap());
        assert!(glob("api.{,eu.}example.com", dots(), "api.eu.example.com").unwrap());
        assert!(!glob("api.{,eu.}example.com", dots(), "api.us.example.com").unwrap());
    }

    #[test]
    fn a_cached_pattern_decides_as_a_fresh_one() {
        for _ in 0..3 {
            assert!(glob("*.openai.com", dots(), "api.openai.com").unwrap());
            assert!(!glob("*.openai.com", dots(), "api.openai.com.evil").unwrap());
        }
        // Same pattern, other delimiters: another entry.
        assert!(glob("*.openai.com", Value::Null, "x.y.openai.com").unwrap());
    }

    #[test]
    fn rejects_bad_arguments_and_patterns() {
        assert!(matches!(
            glob("[", dots(), "a"),
            Err(PatternError::Invalid(_))
        ));
        assert!(matches!(
            glob_match(&[Value::from(1), dots(), Value::from("a")]),
            Err(PatternError::Invalid(_))
        ));
        let two = Value::from_json_str(r#"[".."]"#).unwrap();
        assert!(matches!(glob("*", two, "a"), Err(PatternError::Invalid(_))));
    }

    #[test]
    fn regex_matches_unanchored_and_caches() {
        let m = |p: &str, v: &str| {
            regex_match(&[Value::from(p), Value::from(v)]).map(|r| r == Value::Bool(true))
        };
        for _ in 0..2 {
            assert!(m("^/v1/", "/v1/chat").unwrap());
            assert!(m("chat", "/v1/chat/completions").unwrap());
            assert!(!m("^chat$", "/v1/chat").unwrap());
        }
        assert!(matches!(m("(", "x"), Err(PatternError::Invalid(_))));
        assert!(matches!(
            m("\\w{1000}{1000}", "x"),
            Err(PatternError::TooBig)
        ));
    }
}
