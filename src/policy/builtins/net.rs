//! The `net.cidr_*` builtins regorus lacks: `net.cidr_intersects`, `net.cidr_merge` and
//! `net.cidr_contains_matches` (regorus has `net.cidr_contains`, `net.cidr_expand` and
//! `net.cidr_is_valid`). Egress policies use them to reason about destination addresses.
//! Semantics follow OPA's `topdown/cidr.go`; addresses are parsed by the `ipnet` crate.

use std::net::IpAddr;

use ipnet::IpNet;
use regorus::Value;

use super::BuiltinError;

fn undefined(message: impl Into<String>) -> BuiltinError {
    BuiltinError::Undefined(message.into())
}

fn text<'a>(name: &str, value: &'a Value, operand: usize) -> Result<&'a str, BuiltinError> {
    match value {
        Value::String(s) => Ok(s.as_ref()),
        _ => Err(undefined(format!(
            "{name}: operand {operand} must be a string"
        ))),
    }
}

/// A CIDR (`10.0.0.0/8`); a bare address is not one.
fn cidr(name: &str, text: &str) -> Result<IpNet, BuiltinError> {
    text.parse::<IpNet>()
        .map_err(|_| undefined(format!("{name}: invalid CIDR {text:?}")))
}

/// A CIDR or a bare address (taken as /32 or /128): the second operand of
/// `net.cidr_contains_matches`, which OPA parses as an address first and a CIDR second.
fn cidr_or_ip(name: &str, text: &str) -> Result<IpNet, BuiltinError> {
    if let Ok(net) = text.parse::<IpNet>() {
        return Ok(net);
    }
    text.parse::<IpAddr>()
        .map(IpNet::from)
        .map_err(|_| undefined(format!("{name}: invalid CIDR or IP {text:?}")))
}

/// `net.cidr_intersects(cidr1, cidr2)`: whether the two ranges share an address.
pub fn cidr_intersects(args: &[Value]) -> Result<Value, BuiltinError> {
    const NAME: &str = "net.cidr_intersects";
    let [a, b] = args else {
        return Err(undefined(format!("{NAME} takes 2 arguments")));
    };
    let a = cidr(NAME, text(NAME, a, 1)?)?.trunc();
    let b = cidr(NAME, text(NAME, b, 2)?)?.trunc();
    Ok(Value::Bool(
        a.contains(&b.network()) || b.contains(&a.network()),
    ))
}

/// `net.cidr_merge(addrs)`: the smallest set of CIDRs covering exactly the given addresses and
/// ranges (an array or set of strings), IPv4 and IPv6 merged separately.
pub fn cidr_merge(args: &[Value]) -> Result<Value, BuiltinError> {
    const NAME: &str = "net.cidr_merge";
    let items: Vec<&Value> = match args {
        [Value::Array(items)] => items.iter().collect(),
        [Value::Set(items)] => items.iter().collect(),
        _ => {
            return Err(undefined(format!(
                "{NAME}: operand 1 must be an array or a set of strings"
            )));
        }
    };
    let mut nets = Vec::with_capacity(items.len());
    for item in items {
        nets.push(merge_element(text(NAME, item, 1)?)?);
    }
    let merged = IpNet::aggregate(&nets);
    let merged: std::collections::BTreeSet<Value> = merged
        .into_iter()
        .map(|net| Value::from(net.to_string()))
        .collect();
    Ok(Value::from(merged))
}

/// One element of `net.cidr_merge`'s operand. A bare IPv6 address has no prefix length, which
/// OPA refuses ("IPv6 invalid: needs prefix length"; OPA's conformance cases
/// `netcidrmerge/cidr ipv6 without prefix*`), so the call is undefined. A bare IPv4 address is
/// taken as /32; OPA gives it the classful default mask instead (docs/POLICY.md,
/// "Conformance").
fn merge_element(text: &str) -> Result<IpNet, BuiltinError> {
    const NAME: &str = "net.cidr_merge";
    if let Ok(net) = text.parse::<IpNet>() {
        return Ok(net);
    }
    match text.parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) => Ok(IpNet::from(IpAddr::V4(ip))),
        Ok(IpAddr::V6(_)) => Err(undefined(format!(
            "{NAME}: IPv6 invalid: needs prefix length: {text:?}"
        ))),
        Err(_) => Err(undefined(format!("{NAME}: invalid CIDR or IP {text:?}"))),
    }
}

/// The (key, address) pairs of one operand of `net.cidr_contains_matches`: a string is its own
/// key; an array is keyed by index and a set by element; an object by its keys. An element
/// may be an array whose first item is the address (so callers can attach data to it). The
/// first operand holds ranges, so each of its elements must be a CIDR (OPA parses it with
/// `net.ParseCIDR`); the second may hold bare addresses too.
fn keyed(name: &str, value: &Value, operand: usize) -> Result<Vec<(Value, IpNet)>, BuiltinError> {
    let element = |v: &Value| -> Result<IpNet, BuiltinError> {
        let address = match v {
            Value::Array(items) => items.first().unwrap_or(&Value::Undefined),
            other => other,
        };
        let address = text(name, address, operand)?;
        if operand == 1 {
            cidr(name, address)
        } else {
            cidr_or_ip(name, address)
        }
    };
    match value {
        Value::String(_) => Ok(vec![(value.clone(), element(value)?)]),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, v)| Ok((Value::from(i), element(v)?)))
            .collect(),
        Value::Set(items) => items.iter().map(|v| Ok((v.clone(), element(v)?))).collect(),
        Value::Object(fields) => fields
            .iter()
            .map(|(k, v)| Ok((k.clone(), element(v)?)))
            .collect(),
        _ => Err(undefined(format!(
            "{name}: operand {operand} must be a string, array, set or object"
        ))),
    }
}

/// `net.cidr_contains_matches(cidrs, cidrs_or_ips)`: the set of `[key1, key2]` pairs where the
/// range keyed `key1` in the first operand contains the address or range keyed `key2` in the
/// second.
pub fn cidr_contains_matches(args: &[Value]) -> Result<Value, BuiltinError> {
    const NAME: &str = "net.cidr_contains_matches";
    let [a, b] = args else {
        return Err(undefined(format!("{NAME} takes 2 arguments")));
    };
    let ranges = keyed(NAME, a, 1)?;
    let candidates = keyed(NAME, b, 2)?;
    let mut matches = std::collections::BTreeSet::new();
    for (range_key, range) in &ranges {
        for (key, candidate) in &candidates {
            if range.contains(candidate) {
                matches.insert(Value::from(vec![range_key.clone(), key.clone()]));
            }
        }
    }
    Ok(Value::from(matches))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(text: &str) -> Value {
        Value::from_json_str(text).unwrap()
    }

    fn s(text: &str) -> Value {
        Value::from(text)
    }

    // Expected values are the examples of OPA's documentation for each builtin.
    #[test]
    fn intersects() {
        let yes = cidr_intersects(&[s("192.168.0.0/16"), s("192.168.1.0/24")]).unwrap();
        assert_eq!(yes, Value::Bool(true));
        let no = cidr_intersects(&[s("10.0.0.0/8"), s("192.168.1.0/24")]).unwrap();
        assert_eq!(no, Value::Bool(false));
        assert_eq!(
            cidr_intersects(&[
                s("fd1e:5bfe:8af3:9ddc::/64"),
                s("fd1e:5bfe:8af3:9ddc::1/128")
            ])
            .unwrap(),
            Value::Bool(true)
        );
        assert!(matches!(
            cidr_intersects(&[s("10.0.0.1"), s("10.0.0.0/8")]),
            Err(BuiltinError::Undefined(_))
        ));
    }

    #[test]
    fn merges_adjacent_and_contained_ranges() {
        let one: std::collections::BTreeSet<Value> = [s("192.0.128.0/23")].into_iter().collect();
        assert_eq!(
            cidr_merge(&[json(r#"["192.0.128.0/24", "192.0.129.0/24"]"#)]).unwrap(),
            Value::from(one)
        );
        let merged = cidr_merge(&[json(
            r#"["10.0.0.1", "10.0.0.0/24", "2001:db8::1/128", "2001:db8::/127"]"#,
        )])
        .unwrap();
        let expected: std::collections::BTreeSet<Value> = [s("10.0.0.0/24"), s("2001:db8::/127")]
            .into_iter()
            .collect();
        assert_eq!(merged, Value::from(expected));
        assert!(matches!(
            cidr_merge(&[json(r#"["nope"]"#)]),
            Err(BuiltinError::Undefined(_))
        ));
    }

    #[test]
    fn merge_refuses_a_bare_ipv6_address_as_opa_does() {
        // OPA's conformance cases netcidrmerge/cidr ipv6 with(out) prefix*.
        let one: std::collections::BTreeSet<Value> =
            [s("2601:600:8a80:207e:a57d:7567:e2c9:e7b3/128")]
                .into_iter()
                .collect();
        assert_eq!(
            cidr_merge(&[json(r#"["2601:600:8a80:207e:a57d:7567:e2c9:e7b3/128"]"#)]).unwrap(),
            Value::from(one)
        );
        let wide: std::collections::BTreeSet<Value> =
            [s("2601:600:8a80:207e::/64")].into_iter().collect();
        assert_eq!(
            cidr_merge(&[json(
                r#"["2601:600:8a80:207e:a57d:7567:e2c9:e7b3/64", "2601:600:8a80:207e:a57d:7567:e2c9:e7b3/128"]"#
            )])
            .unwrap(),
            Value::from(wide)
        );
        for bare in [
            r#"["2601:600:8a80:207e:a57d:7567:e2c9:e7b3"]"#,
            r#"["2601:600:8a80:207e:a57d:7567:e2c9:e7b3", "2601:600:8a80:207e:a57d:7567:e2c9:e7b3"]"#,
        ] {
            assert!(matches!(
                cidr_merge(&[json(bare)]),
                Err(BuiltinError::Undefined(_))
            ));
        }
    }

    #[test]
    fn contains_matches_wants_ranges_in_its_first_operand() {
        // OPA parses each element of the first operand with net.ParseCIDR: a bare address is
        // an error there (undefined), and stays fine in the second operand.
        assert!(matches!(
            cidr_contains_matches(&[json(r#"["1.1.1.1"]"#), s("1.1.1.1")]),
            Err(BuiltinError::Undefined(_))
        ));
        assert!(matches!(
            cidr_contains_matches(&[s("1.1.1.1"), s("1.1.1.1")]),
            Err(BuiltinError::Undefined(_))
        ));
        // OPA's conformance cases netcidrcontainsmatches/arrays, arrays of tuples, sets of strings.
        let pairs = |text: &str| -> Value {
            let set: std::collections::BTreeSet<Value> = match json(text) {
                Value::Array(items) => items.iter().cloned().collect(),
                _ => unreachable!(),
            };
            Value::from(set)
        };
        assert_eq!(
            cidr_contains_matches(&[
                json(r#"["1.1.2.0/24", "1.1.1.0/24"]"#),
                json(r#"["1.1.1.1", "1.1.2.1"]"#)
            ])
            .unwrap(),
            pairs("[[0, 1], [1, 0]]")
        );
        assert_eq!(
            cidr_contains_matches(&[
                json(r#"[["1.1.2.0/24", 1], "1.1.1.0/24"]"#),
                json(r#"["1.1.1.1", "1.1.2.1"]"#)
            ])
            .unwrap(),
            pairs("[[0, 1], [1, 0]]")
        );
        let sets = cidr_contains_matches(&[
            Value::from_json_str(r#"["1.1.1.0/24", "1.1.2.0/24"]"#)
                .map(|v| match v {
                    Value::Array(items) => Value::from(
                        items
                            .iter()
                            .cloned()
                            .collect::<std::collections::BTreeSet<Value>>(),
                    ),
                    other => other,
                })
                .unwrap(),
            Value::from(
                [s("1.1.1.1"), s("1.1.2.1")]
                    .into_iter()
                    .collect::<std::collections::BTreeSet<Value>>(),
            ),
        ])
        .unwrap();
        assert_eq!(
            sets,
            pairs(r#"[["1.1.1.0/24", "1.1.1.1"], ["1.1.2.0/24", "1.1.2.1"]]"#)
        );
    }

    #[test]
    fn contains_matches_keys_by_string_index_set_element_and_object_key() {
        let result = cidr_contains_matches(&[s("1.1.1.0/24"), s("1.1.1.128")]).unwrap();
        let expected: std::collections::BTreeSet<Value> = [json(r#"["1.1.1.0/24", "1.1.1.128"]"#)]
            .into_iter()
            .collect();
        assert_eq!(result, Value::from(expected));
        let result = cidr_contains_matches(&[
            json(r#"[["1.1.0.0/16", "foo"], "1.1.2.0/24"]"#),
            json(r#"{"x": "1.1.1.128", "y": ["1.1.254.254", "bar"]}"#),
        ])
        .unwrap();
        let expected: std::collections::BTreeSet<Value> =
            [json(r#"[0, "x"]"#), json(r#"[0, "y"]"#)]
                .into_iter()
                .collect();
        assert_eq!(result, Value::from(expected));
    }
}
