//! The rules as iptables writes them (`iptables -t nat -S`), and the `iptables-restore
//! --noflush` scripts that install or remove them atomically per family.
//!
//! Everything lives in the nat table's own chain [`CHAIN`], entered from `OUTPUT` by one jump
//! for TCP; `remove` deletes that chain and every rule that jumps to it, nothing else. The rules
//! are rendered exactly as `iptables -S` prints them, so comparing the two tells whether an
//! install would change anything (if a version of iptables prints them differently, install
//! rewrites the chain with the same rules: still correct, just not a no-op).

use super::Family;
use super::spec::{PortRange, RedirectSpec};

/// tollgate's own chain in the nat table.
pub const CHAIN: &str = "TOLLGATE_OUTPUT";

/// The jump from `OUTPUT` into [`CHAIN`], as `iptables -S` prints it.
const JUMP: &str = "-A OUTPUT -p tcp -j TOLLGATE_OUTPUT";

/// iptables' multiport match takes at most 15 ports, a range counting as two.
const MULTIPORT_SLOTS: usize = 15;

/// The rules of [`CHAIN`] for one family, in `iptables -S` form, in order.
pub fn chain_rules(spec: &RedirectSpec, family: Family) -> Vec<String> {
    let mut rules = vec![
        // The proxy's own connections are the way out; redirecting them would loop.
        format!(
            "-A {CHAIN} -m owner --uid-owner {} -j RETURN",
            spec.proxy_uid
        ),
        // Loopback (and the pod's own addresses, which route over lo) stays local.
        format!("-A {CHAIN} -o lo -j RETURN"),
    ];
    for net in spec.cidrs(family) {
        rules.push(format!("-A {CHAIN} -d {net} -j RETURN"));
    }
    for group in port_groups(&spec.exclude_ports) {
        rules.push(format!(
            "-A {CHAIN} -p tcp -m multiport --dports {group} -j RETURN"
        ));
    }
    rules.push(format!(
        "-A {CHAIN} -p tcp -j REDIRECT --to-ports {}",
        spec.proxy_port
    ));
    rules
}

/// Splits port ranges into multiport lists of at most [`MULTIPORT_SLOTS`] slots.
fn port_groups(ranges: &[PortRange]) -> Vec<String> {
    let mut groups = Vec::new();
    let mut current: Vec<String> = Vec::new();
    let mut slots = 0;
    for range in ranges {
        let (item, cost) = if range.first == range.last {
            (range.first.to_string(), 1)
        } else {
            (format!("{}:{}", range.first, range.last), 2)
        };
        if slots + cost > MULTIPORT_SLOTS {
            groups.push(current.join(","));
            current.clear();
            slots = 0;
        }
        current.push(item);
        slots += cost;
    }
    if !current.is_empty() {
        groups.push(current.join(","));
    }
    groups
}

/// What `iptables -t nat -S` shows of tollgate's rules.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Current {
    /// Whether [`CHAIN`] exists.
    pub chain_exists: bool,
    /// The rules of [`CHAIN`], in order.
    pub chain_rules: Vec<String>,
    /// Every rule in another chain that jumps to [`CHAIN`].
    pub jumps: Vec<String>,
}

impl Current {
    /// Reads tollgate's part of `iptables -t nat -S` output.
    pub fn parse(listing: &str) -> Current {
        let mut current = Current::default();
        let own_rule = format!("-A {CHAIN} ");
        let jump_suffix = format!(" -j {CHAIN}");
        for line in listing.lines().map(str::trim) {
            if line == format!("-N {CHAIN}") {
                current.chain_exists = true;
            } else if line.starts_with(&own_rule) {
                current.chain_rules.push(line.to_string());
            } else if line.starts_with("-A ") && line.ends_with(&jump_suffix) {
                current.jumps.push(line.to_string());
            }
        }
        current
    }
}

/// The `iptables-restore --noflush` script that turns `current` into `desired`, or `None` when
/// nothing would change.
pub fn install_script(current: &Current, desired: &[String]) -> Option<String> {
    let jump_ok = current.jumps.len() == 1 && current.jumps[0] == JUMP;
    if current.chain_exists && current.chain_rules == desired && jump_ok {
        return None;
    }
    let mut script = String::from("*nat\n");
    // Declaring the chain creates it, or flushes it when it exists (with --noflush only it).
    script.push_str(&format!(":{CHAIN} - [0:0]\n"));
    for rule in desired {
        script.push_str(rule);
        script.push('\n');
    }
    let mut kept_jump = false;
    for jump in &current.jumps {
        if jump == JUMP && !kept_jump {
            kept_jump = true;
        } else {
            script.push_str(&delete_form(jump));
            script.push('\n');
        }
    }
    if !kept_jump {
        // First in OUTPUT: a rule of someone else's that accepts earlier must not let
        // connections bypass the proxy.
        script.push_str("-I OUTPUT 1 -p tcp -j TOLLGATE_OUTPUT\n");
    }
    script.push_str("COMMIT\n");
    Some(script)
}

/// The `iptables-restore --noflush` script that removes the chain and every jump to it, or
/// `None` when there is nothing of tollgate's.
pub fn remove_script(current: &Current) -> Option<String> {
    if !current.chain_exists && current.jumps.is_empty() {
        return None;
    }
    let mut script = String::from("*nat\n");
    for jump in &current.jumps {
        script.push_str(&delete_form(jump));
        script.push('\n');
    }
    if current.chain_exists {
        script.push_str(&format!(":{CHAIN} - [0:0]\n-X {CHAIN}\n"));
    }
    script.push_str("COMMIT\n");
    Some(script)
}

/// `-A CHAIN rest` → `-D CHAIN rest`.
fn delete_form(rule: &str) -> String {
    match rule.strip_prefix("-A ") {
        Some(rest) => format!("-D {rest}"),
        None => rule.to_string(),
    }
}

/// The commands an install runs, one per line, for `--dry-run`.
pub fn dry_run_lines(spec: &RedirectSpec, family: Family) -> Vec<String> {
    let program = match family {
        Family::V4 => "iptables",
        Family::V6 => "ip6tables",
    };
    let mut lines = vec![format!("{program} -t nat -N {CHAIN}")];
    for rule in chain_rules(spec, family) {
        lines.push(format!("{program} -t nat {rule}"));
    }
    lines.push(format!("{program} -t nat -I OUTPUT 1 -p tcp -j {CHAIN}"));
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redirect::spec::test_spec as spec;

    #[test]
    fn renders_rules_per_family_in_iptables_save_form() {
        let s = spec("22,8080-8090", "10.0.0.0/8,fd00::/8,192.0.2.7");
        assert_eq!(
            chain_rules(&s, Family::V4),
            vec![
                "-A TOLLGATE_OUTPUT -m owner --uid-owner 1337 -j RETURN",
                "-A TOLLGATE_OUTPUT -o lo -j RETURN",
                "-A TOLLGATE_OUTPUT -d 10.0.0.0/8 -j RETURN",
                "-A TOLLGATE_OUTPUT -d 192.0.2.7/32 -j RETURN",
                "-A TOLLGATE_OUTPUT -p tcp -m multiport --dports 22,8080:8090 -j RETURN",
                "-A TOLLGATE_OUTPUT -p tcp -j REDIRECT --to-ports 15001",
            ]
        );
        let v6 = chain_rules(&s, Family::V6);
        assert_eq!(v6[2], "-A TOLLGATE_OUTPUT -d fd00::/8 -j RETURN");
        assert_eq!(v6.len(), 5);
    }

    #[test]
    fn splits_long_port_lists_at_fifteen_slots() {
        let ports: Vec<String> = (1..=20).map(|p| (p * 2).to_string()).collect();
        let groups = port_groups(&spec(&ports.join(","), "").exclude_ports);
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[0].split(',').count(), 15);
        assert_eq!(groups[1], "32,34,36,38,40");
    }

    #[test]
    fn second_install_plans_nothing() {
        let s = spec("22", "");
        let desired = chain_rules(&s, Family::V4);
        let listing = format!(
            "-P OUTPUT ACCEPT\n-N TOLLGATE_OUTPUT\n{JUMP}\n{}\n",
            desired.join("\n")
        );
        assert_eq!(install_script(&Current::parse(&listing), &desired), None);
    }

    #[test]
    fn changed_rules_rewrite_the_chain_and_drop_duplicate_jumps() {
        let desired = chain_rules(&spec("", ""), Family::V4);
        let listing = format!(
            "-N TOLLGATE_OUTPUT\n{JUMP}\n{JUMP}\n-A OUTPUT -j TOLLGATE_OUTPUT\n\
             -A TOLLGATE_OUTPUT -o lo -j RETURN\n-A OUTPUT -d 192.0.2.1/32 -j ACCEPT\n"
        );
        let script = install_script(&Current::parse(&listing), &desired).unwrap();
        assert!(script.starts_with("*nat\n:TOLLGATE_OUTPUT - [0:0]\n"));
        assert!(script.contains("-D OUTPUT -p tcp -j TOLLGATE_OUTPUT\n"));
        assert!(script.contains("-D OUTPUT -j TOLLGATE_OUTPUT\n"));
        assert!(!script.contains("-I OUTPUT"), "one jump is kept: {script}");
        assert!(!script.contains("192.0.2.1"), "unrelated rules untouched");
        assert!(script.ends_with("COMMIT\n"));
    }

    #[test]
    fn remove_touches_only_the_chain_and_its_jumps() {
        let listing = "-N TOLLGATE_OUTPUT\n-N OTHER\n-A OUTPUT -p tcp -j TOLLGATE_OUTPUT\n\
                       -A OUTPUT -j OTHER\n-A TOLLGATE_OUTPUT -o lo -j RETURN\n";
        let script = remove_script(&Current::parse(listing)).unwrap();
        assert_eq!(
            script,
            "*nat\n-D OUTPUT -p tcp -j TOLLGATE_OUTPUT\n:TOLLGATE_OUTPUT - [0:0]\n\
             -X TOLLGATE_OUTPUT\nCOMMIT\n"
        );
        assert_eq!(remove_script(&Current::parse("-N OTHER\n")), None);
    }
}
