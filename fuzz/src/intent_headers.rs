//! Fuzz target `intent_headers`: the `X-Agent-*` headers (`tollgate::intent::parse_intent`)
//! and the intent-token header. The input is header lines (`name: value`, one a line); lines
//! that are not a valid HTTP header are skipped, as hyper would refuse them. Properties: no
//! panic; an accepted intent's names pass the name rule, and a task name round-trips.

use http::{HeaderMap, HeaderName, HeaderValue};
use tollgate::intent::{TaskName, intent_token, is_name, parse_intent};

/// One input: see the module documentation.
pub fn run(data: &[u8]) {
    let mut headers = HeaderMap::new();
    for line in data.split(|&b| b == b'\n').take(64) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name),
            HeaderValue::from_bytes(value.trim_ascii()),
        ) else {
            continue;
        };
        headers.append(name, value);
    }
    if let Ok(intent) = parse_intent(&headers) {
        if let Some(name) = &intent.name {
            assert!(is_name(name.as_bytes()), "accepted intent name {name:?}");
        }
        if let Some(task) = &intent.task {
            let again = TaskName::parse(task.as_str()).expect("an accepted task parses again");
            assert_eq!(again.as_str(), task.as_str());
        }
    }
    let _ = intent_token(&headers);
}
