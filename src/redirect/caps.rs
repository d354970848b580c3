//! The capabilities this process holds, from `/proc/self/status` (`CapEff`), so a missing
//! NET_ADMIN is reported as such before any firewall command fails with a vaguer message.

/// `CAP_NET_ADMIN` (linux/capability.h).
pub const NET_ADMIN: u32 = 12;
/// `CAP_NET_RAW` (linux/capability.h).
pub const NET_RAW: u32 = 13;

/// The effective capability set, or `None` when `/proc/self/status` cannot be read or parsed
/// (then the firewall command's own error decides).
pub fn effective() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_cap_eff(&status)
}

fn parse_cap_eff(status: &str) -> Option<u64> {
    let value = status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))?;
    u64::from_str_radix(value.trim(), 16).ok()
}

/// Whether capability number `cap` is in the set `caps`.
pub fn has(caps: u64, cap: u32) -> bool {
    caps & (1u64 << cap) != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_effective_set() {
        let status = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t0000000000001000\n";
        let caps = parse_cap_eff(status).unwrap();
        assert!(has(caps, NET_ADMIN));
        assert!(!has(caps, NET_RAW));
        assert_eq!(parse_cap_eff("Name: x\n"), None);
    }
}
