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

/// `net.cidr_merge(addrs)`: the smallest set of CIDRs covering the given addresses and ranges
/// (an array or set of strings), as OPA's `builtinNetCIDRMerge` (`v1/topdown/cidr.go`, with
/// Cilium's merge in `internal/cidr/merge`) computes it. OPA merges IPv4 and IPv6 in one
/// 128-bit space, IPv4 as `::ffff:a.b.c.d`, so `::/0` absorbs any IPv4 range; a block that is
/// merged with no other is printed as it was given (a bare IPv4 address with its classful
/// mask, unmasked: `10.0.0.1` alone gives `10.0.0.1/8`), a merged range as its CIDRs.
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
    let mut blocks = Vec::with_capacity(items.len());
    for item in items {
        blocks.push(merge_element(text(NAME, item, 1)?)?);
    }
    let mut merged = std::collections::BTreeSet::new();
    for block in merge_blocks(blocks) {
        match block.text {
            Some(text) => {
                merged.insert(Value::from(text));
            }
            None => merged.extend(range_to_cidrs(block.first, block.last).map(Value::from)),
        }
    }
    Ok(Value::from(merged))
}

/// Where OPA's merge puts IPv4 addresses in its one 128-bit space: `::ffff:0:0/96`.
const V4_MAPPED: u128 = 0xffff_0000_0000;

/// One range of `net.cidr_merge`: its first and last address in the 128-bit space, and how
/// OPA prints it if it is merged with no other (`None` once merged).
struct Block {
    first: u128,
    last: u128,
    text: Option<String>,
}

/// One element of `net.cidr_merge`'s operand, as OPA's `generateIPNet` reads it: an address
/// first, a CIDR second. A bare IPv4 address (or an IPv4-mapped IPv6 one, which Go's
/// `To4` takes as IPv4) gets Go's classful default mask (`IP.DefaultMask`: /8 below
/// 128.0.0.0, /16 below 192.0.0.0, /24 for every other, classes D and E included), kept
/// unmasked as OPA keeps it. A bare IPv6 address has no prefix length, which OPA refuses
/// ("IPv6 invalid: needs prefix length"), so the call is undefined.
fn merge_element(text: &str) -> Result<Block, BuiltinError> {
    const NAME: &str = "net.cidr_merge";
    if let Ok(ip) = text.parse::<IpAddr>() {
        let v4 = match ip {
            IpAddr::V4(v4) => v4,
            IpAddr::V6(v6) => v6.to_ipv4_mapped().ok_or_else(|| {
                undefined(format!(
                    "{NAME}: IPv6 invalid: needs prefix length: {text:?}"
                ))
            })?,
        };
        let prefix: u32 = match v4.octets()[0] {
            0..0x80 => 8,
            0x80..0xc0 => 16,
            _ => 24,
        };
        let host_bits = u32::MAX >> prefix;
        let first = V4_MAPPED | u128::from(u32::from(v4) & !host_bits);
        return Ok(Block {
            first,
            last: first | u128::from(host_bits),
            text: Some(format!("{v4}/{prefix}")),
        });
    }
    let net = cidr(NAME, text)?.trunc();
    let (first, last) = match net {
        IpNet::V4(n) => (
            V4_MAPPED | u128::from(u32::from(n.network())),
            V4_MAPPED | u128::from(u32::from(n.broadcast())),
        ),
        IpNet::V6(n) => (u128::from(n.network()), u128::from(n.broadcast())),
    };
    Ok(Block {
        first,
        last,
        text: Some(net.to_string()),
    })
}

/// OPA's `mergeCIDRs`: sorted by last then first address, each range merged into the one
/// before it when the address before its first (OPA's `GetPreviousIP`, which stays at `::`
/// and at `0.0.0.0`) is within that one. One pass from the end (OPA's order), linear in the
/// count: the operand can come from the input.
fn merge_blocks(mut blocks: Vec<Block>) -> Vec<Block> {
    blocks.sort_by_key(|b| (b.last, b.first));
    let previous = |ip: u128| {
        if ip == 0 || ip == V4_MAPPED {
            ip
        } else {
            ip - 1
        }
    };
    let mut kept: Vec<Block> = Vec::with_capacity(blocks.len());
    for before in blocks.into_iter().rev() {
        match kept.last_mut() {
            Some(after) if previous(after.first) <= before.last => {
                after.first = after.first.min(before.first);
                after.text = None;
            }
            _ => kept.push(before),
        }
    }
    kept.reverse();
    kept
}

/// The fewest CIDRs that cover `first..=last` exactly (OPA's `RangeToCIDRs`), a block inside
/// `::ffff:0:0/96` printed as IPv4, as Go prints it. At most 2 × 128 blocks.
fn range_to_cidrs(first: u128, last: u128) -> impl Iterator<Item = String> {
    let mut start = Some(first);
    std::iter::from_fn(move || {
        let at = start?;
        // The largest aligned block at `at` that does not pass `last`.
        let mut size_bits = if at == 0 { 128 } else { at.trailing_zeros() };
        while size_bits > 0 && block_end(at, size_bits) > last {
            size_bits -= 1;
        }
        let end = block_end(at, size_bits);
        start = if end >= last { None } else { Some(end + 1) };
        let prefix = 128 - size_bits;
        Some(if prefix >= 96 && at & !0xffff_ffff == V4_MAPPED {
            let v4 = std::net::Ipv4Addr::from(u32::try_from(at & 0xffff_ffff).unwrap_or(0));
            format!("{v4}/{}", prefix - 96)
        } else {
            format!("{}/{prefix}", std::net::Ipv6Addr::from(at))
        })
    })
}

/// The last address of the block of `2^size_bits` addresses starting at `at`.
fn block_end(at: u128, size_bits: u32) -> u128 {
    if size_bits >= 128 {
        u128::MAX
    } else {
        at | ((1u128 << size_bits) - 1)
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
            r#"["10.0.0.0/24", "10.0.1.0/24", "10.0.2.0/24", "2001:db8::1/128", "2001:db8::/127"]"#,
        )])
        .unwrap();
        let expected: std::collections::BTreeSet<Value> =
            [s("10.0.0.0/23"), s("10.0.2.0/24"), s("2001:db8::/127")]
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

    fn merged(items: &str) -> Vec<String> {
        match cidr_merge(&[json(items)]).unwrap() {
            Value::Set(set) => set
                .iter()
                .map(|v| v.as_string().unwrap().to_string())
                .collect(),
            other => panic!("not a set: {other}"),
        }
    }

    #[test]
    fn merge_gives_a_bare_ipv4_address_its_classful_mask_as_opa_does() {
        // Each answer was checked against OPA v1.20.2 (tests/traps/builtins.yaml holds the
        // first as a trap case).
        assert_eq!(merged(r#"["10.0.0.1", "10.0.0.0/24"]"#), ["10.0.0.0/8"]);
        // Alone, the address keeps its host bits, as Go prints the IPNet OPA builds.
        assert_eq!(merged(r#"["10.0.0.1"]"#), ["10.0.0.1/8"]);
        assert_eq!(merged(r#"["172.16.5.4"]"#), ["172.16.5.4/16"]);
        assert_eq!(merged(r#"["192.168.1.7"]"#), ["192.168.1.7/24"]);
        // Classes D and E get Go's class C mask.
        assert_eq!(merged(r#"["224.1.2.3"]"#), ["224.1.2.3/24"]);
        assert_eq!(merged(r#"["255.255.255.255"]"#), ["255.255.255.255/24"]);
        // An IPv4-mapped IPv6 address is IPv4 to Go.
        assert_eq!(merged(r#"["::ffff:10.0.0.1"]"#), ["10.0.0.1/8"]);
        // Two equal blocks merge into a range, printed masked.
        assert_eq!(merged(r#"["10.1.2.3", "10.1.2.3"]"#), ["10.0.0.0/8"]);
        assert_eq!(merged(r#"["10.0.0.1", "11.0.0.0/8"]"#), ["10.0.0.0/7"]);
        assert_eq!(
            merged(r#"["127.0.0.1", "128.0.0.1"]"#),
            ["127.0.0.0/8", "128.0.0.0/16"]
        );
    }

    #[test]
    fn merge_puts_ipv4_and_ipv6_in_one_space_as_opa_does() {
        // OPA maps IPv4 to ::ffff:a.b.c.d before merging: ::/0 absorbs IPv4 ranges.
        assert_eq!(merged(r#"["10.0.0.0/8", "::/0"]"#), ["::/0"]);
        assert_eq!(merged(r#"["10.0.0.1", "::/0"]"#), ["::/0"]);
        // The address before ::ffff:0.0.0.0 is not looked at (OPA's GetPreviousIP).
        assert_eq!(
            merged(r#"["::fffe:ffff:ffff/128", "0.0.0.0/0"]"#),
            ["0.0.0.0/0", "::fffe:ffff:ffff/128"]
        );
        assert_eq!(
            merged(
                r#"["1.2.3.5/32", "1.2.3.6/32", "1.2.3.7/32", "1.2.3.8/32", "1.2.3.9/32", "1.2.3.10/32"]"#
            ),
            ["1.2.3.10/32", "1.2.3.5/32", "1.2.3.6/31", "1.2.3.8/31"]
        );
        assert_eq!(merged(r#"["0.0.0.0/1", "128.0.0.0/1"]"#), ["0.0.0.0/0"]);
        assert_eq!(merged(r#"["::/1", "8000::/1"]"#), ["::/0"]);
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
