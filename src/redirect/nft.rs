//! The rules as nftables lists them: one table of tollgate's own per family ([`TABLE`] in `ip`
//! and `ip6`), with one nat chain on the output hook, so `remove` deletes exactly those tables.
//!
//! The table is rendered exactly as `nft list table` prints it, so comparing the two tells
//! whether an install would change anything; a change replaces the table in one transaction
//! (`nft -f`: declare, delete, recreate), so no connection ever sees half the rules.

use super::Family;
use super::spec::RedirectSpec;

/// The name of tollgate's tables (`ip tollgate`, `ip6 tollgate`).
pub const TABLE: &str = "tollgate";

/// The nft family keyword.
pub fn family_name(family: Family) -> &'static str {
    match family {
        Family::V4 => "ip",
        Family::V6 => "ip6",
    }
}

/// The rules of the output chain, as `nft list` prints them.
fn rules(spec: &RedirectSpec, family: Family) -> Vec<String> {
    let mut rules = vec![
        // The proxy's own connections are the way out; redirecting them would loop.
        format!("meta skuid {} return", spec.proxy_uid),
        // Loopback (and the pod's own addresses, which route over lo) stays local.
        "oifname \"lo\" return".to_string(),
    ];
    let nets: Vec<String> = spec
        .cidrs(family)
        .map(|net| {
            // nft prints a host without its prefix length.
            if net.prefix_len() == net.max_prefix_len() {
                net.addr().to_string()
            } else {
                net.to_string()
            }
        })
        .collect();
    if !nets.is_empty() {
        let keyword = family_name(family);
        rules.push(format!("{keyword} daddr {} return", set(&nets)));
    }
    let ports: Vec<String> = spec.exclude_ports.iter().map(|r| r.to_string()).collect();
    if !ports.is_empty() {
        rules.push(format!("tcp dport {} return", set(&ports)));
    }
    rules.push(format!("meta l4proto tcp redirect to :{}", spec.proxy_port));
    rules
}

/// One element bare, several as an anonymous set (as nft prints them).
fn set(items: &[String]) -> String {
    match items {
        [one] => one.clone(),
        many => format!("{{ {} }}", many.join(", ")),
    }
}

/// The table for one family exactly as `nft list table <family> tollgate` prints it.
pub fn table(spec: &RedirectSpec, family: Family) -> String {
    let mut text = format!(
        "table {} {TABLE} {{\n\tchain output {{\n\t\ttype nat hook output priority -100; policy accept;\n",
        family_name(family)
    );
    for rule in rules(spec, family) {
        text.push_str("\t\t");
        text.push_str(&rule);
        text.push('\n');
    }
    text.push_str("\t}\n}\n");
    text
}

/// The `nft -f` script that replaces (or creates) tollgate's table of one family, or `None`
/// when `current` (the `nft list table` output, `None` if the table is absent) already equals it.
pub fn install_script(current: Option<&str>, desired: &str) -> Option<String> {
    if current.is_some_and(|c| c.trim_end() == desired.trim_end()) {
        return None;
    }
    let family = desired.split_whitespace().nth(1).unwrap_or("ip");
    // `table X` first makes the delete valid whether or not the table exists; all three
    // commands are one transaction.
    Some(format!(
        "table {family} {TABLE}\ndelete table {family} {TABLE}\n{desired}"
    ))
}

/// The `nft -f` script that deletes tollgate's table of each family in `present`, or `None`.
pub fn remove_script(present: &[Family]) -> Option<String> {
    if present.is_empty() {
        return None;
    }
    let lines: Vec<String> = present
        .iter()
        .map(|family| format!("delete table {} {TABLE}\n", family_name(*family)))
        .collect();
    Some(lines.concat())
}

/// Which of tollgate's tables `nft list tables` shows.
pub fn present_tables(listing: &str) -> Vec<Family> {
    let mut present = Vec::new();
    for line in listing.lines().map(str::trim) {
        match line.split_whitespace().collect::<Vec<_>>()[..] {
            ["table", "ip", TABLE] => present.push(Family::V4),
            ["table", "ip6", TABLE] => present.push(Family::V6),
            _ => {}
        }
    }
    present
}

/// The commands an install runs, one per line, for `--dry-run`.
pub fn dry_run_lines(spec: &RedirectSpec, family: Family) -> Vec<String> {
    let name = family_name(family);
    let mut lines = vec![
        format!("nft add table {name} {TABLE}"),
        format!(
            "nft 'add chain {name} {TABLE} output {{ type nat hook output priority -100; policy accept; }}'"
        ),
    ];
    for rule in rules(spec, family) {
        lines.push(format!("nft 'add rule {name} {TABLE} output {rule}'"));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redirect::spec::test_spec as spec;

    #[test]
    fn renders_the_table_as_nft_lists_it() {
        let s = spec("22,8080-8090", "10.0.0.0/8,192.0.2.7,2001:db8::/32");
        assert_eq!(
            table(&s, Family::V4),
            "table ip tollgate {\n\tchain output {\n\t\ttype nat hook output priority -100; policy accept;\n\
             \t\tmeta skuid 1337 return\n\t\toifname \"lo\" return\n\
             \t\tip daddr { 10.0.0.0/8, 192.0.2.7 } return\n\
             \t\ttcp dport { 22, 8080-8090 } return\n\
             \t\tmeta l4proto tcp redirect to :15001\n\t}\n}\n"
        );
        let v6 = table(&s, Family::V6);
        assert!(v6.contains("\t\tip6 daddr 2001:db8::/32 return\n"), "{v6}");
    }

    #[test]
    fn install_is_a_no_op_when_the_listing_matches() {
        let desired = table(&spec("", ""), Family::V6);
        assert_eq!(install_script(Some(&desired), &desired), None);
        let script = install_script(None, &desired).unwrap();
        assert!(script.starts_with("table ip6 tollgate\ndelete table ip6 tollgate\ntable ip6"));
    }

    #[test]
    fn finds_only_its_own_tables() {
        let listing = "table ip nat\ntable ip tollgate\ntable inet tollgate\ntable ip6 tollgate\n";
        assert_eq!(present_tables(listing), vec![Family::V4, Family::V6]);
        assert_eq!(
            remove_script(&[Family::V4]).unwrap(),
            "delete table ip tollgate\n"
        );
        assert_eq!(remove_script(&[]), None);
    }
}
