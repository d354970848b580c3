//! What `tollgate redirect install` is asked to install: the proxy's UID and port and the
//! exclusions, parsed from the command line's lists and normalised (sorted, merged), so the
//! same request always renders the same rules — the basis of idempotency.

use std::net::IpAddr;

use ipnet::IpNet;

/// Whether to redirect IPv6 as well as IPv4.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ipv6Mode {
    /// IPv6 rules when the kernel offers IPv6 in this network namespace (the safe default: a pod
    /// that can speak IPv6 but has no IPv6 rules would bypass the proxy).
    Auto,
    /// IPv6 rules always; failing to install them is an error.
    On,
    /// No IPv6 rules (IPv6 egress is then not intercepted: a deliberate choice).
    Off,
}

impl Ipv6Mode {
    /// Parses `auto`, `on` or `off`.
    pub fn parse(text: &str) -> Result<Ipv6Mode, SpecError> {
        match text {
            "auto" => Ok(Ipv6Mode::Auto),
            "on" => Ok(Ipv6Mode::On),
            "off" => Ok(Ipv6Mode::Off),
            other => Err(SpecError::new(
                "--ipv6",
                format!("`{other}` is not one of auto, on, off"),
            )),
        }
    }
}

/// An inclusive range of destination ports (`22` is `22..=22`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct PortRange {
    /// First port of the range.
    pub first: u16,
    /// Last port of the range (equal to `first` for one port).
    pub last: u16,
}

impl std::fmt::Display for PortRange {
    /// `22` or `8000-8100`: the command line's form, and nft's.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

/// The redirect rules' parameters, validated and normalised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedirectSpec {
    /// The proxy's UID: its own connections are never redirected (they are the way out).
    pub proxy_uid: u32,
    /// The transparent listener's port on loopback, where redirected connections land.
    pub proxy_port: u16,
    /// Destination ports never redirected, sorted, overlapping and adjacent ranges merged.
    pub exclude_ports: Vec<PortRange>,
    /// Destination ranges never redirected, aggregated (overlaps merged), both families.
    pub exclude_cidrs: Vec<IpNet>,
    /// IPv6 handling.
    pub ipv6: Ipv6Mode,
}

/// A command-line value that cannot be used; names the flag and the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{flag}: {message}")]
pub struct SpecError {
    flag: &'static str,
    message: String,
}

impl SpecError {
    fn new(flag: &'static str, message: impl Into<String>) -> SpecError {
        SpecError {
            flag,
            message: message.into(),
        }
    }
}

impl RedirectSpec {
    /// Builds a spec from the command line's values: `exclude_ports` is a comma-separated list
    /// of ports and `FIRST-LAST` ranges, `exclude_cidrs` a comma-separated list of CIDRs or
    /// addresses (either family). Empty lists and empty items are allowed (Helm renders
    /// `--exclude-ports=` for an empty value).
    pub fn new(
        proxy_uid: u32,
        proxy_port: u16,
        exclude_ports: Option<&str>,
        exclude_cidrs: Option<&str>,
        ipv6: Ipv6Mode,
    ) -> Result<RedirectSpec, SpecError> {
        if proxy_port == 0 {
            return Err(SpecError::new("--proxy-port", "must be 1..65535"));
        }
        let exclude_ports = parse_ports(exclude_ports.unwrap_or(""))?;
        let exclude_cidrs = parse_cidrs(exclude_cidrs.unwrap_or(""))?;
        if ipv6 == Ipv6Mode::Off
            && let Some(v6) = exclude_cidrs.iter().find(|net| matches!(net, IpNet::V6(_)))
        {
            return Err(SpecError::new(
                "--exclude-cidrs",
                format!("{v6} is an IPv6 range, but --ipv6 is off"),
            ));
        }
        Ok(RedirectSpec {
            proxy_uid,
            proxy_port,
            exclude_ports,
            exclude_cidrs,
            ipv6,
        })
    }

    /// `--exclude-ports` in normal form (sorted, merged), or `None` when empty.
    pub fn ports_arg(&self) -> Option<String> {
        let ports: Vec<String> = self.exclude_ports.iter().map(|r| r.to_string()).collect();
        (!ports.is_empty()).then(|| ports.join(","))
    }

    /// `--exclude-cidrs` in normal form (aggregated), or `None` when empty.
    pub fn cidrs_arg(&self) -> Option<String> {
        let cidrs: Vec<String> = self.exclude_cidrs.iter().map(|n| n.to_string()).collect();
        (!cidrs.is_empty()).then(|| cidrs.join(","))
    }

    /// The excluded ranges of one family.
    pub fn cidrs(&self, family: super::Family) -> impl Iterator<Item = &IpNet> {
        self.exclude_cidrs
            .iter()
            .filter(move |net| super::Family::of(net) == family)
    }
}

fn parse_ports(list: &str) -> Result<Vec<PortRange>, SpecError> {
    let mut ranges = Vec::new();
    for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (first, last) = match item.split_once('-') {
            Some((a, b)) => (parse_port(a, item)?, parse_port(b, item)?),
            None => {
                let port = parse_port(item, item)?;
                (port, port)
            }
        };
        if first > last {
            return Err(SpecError::new(
                "--exclude-ports",
                format!("`{item}`: the range runs backwards"),
            ));
        }
        ranges.push(PortRange { first, last });
    }
    ranges.sort();
    let mut merged: Vec<PortRange> = Vec::with_capacity(ranges.len());
    for range in ranges {
        match merged.last_mut() {
            Some(prev) if u32::from(range.first) <= u32::from(prev.last) + 1 => {
                prev.last = prev.last.max(range.last);
            }
            _ => merged.push(range),
        }
    }
    Ok(merged)
}

fn parse_port(text: &str, item: &str) -> Result<u16, SpecError> {
    match text.trim().parse::<u16>() {
        Ok(port) if port > 0 => Ok(port),
        _ => Err(SpecError::new(
            "--exclude-ports",
            format!("`{item}` is not a port 1..65535 or a range FIRST-LAST"),
        )),
    }
}

fn parse_cidrs(list: &str) -> Result<Vec<IpNet>, SpecError> {
    let mut nets = Vec::new();
    for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let net = match item.parse::<IpNet>() {
            Ok(net) => net,
            Err(_) => match item.parse::<IpAddr>() {
                Ok(addr) => IpNet::from(addr),
                Err(_) => {
                    return Err(SpecError::new(
                        "--exclude-cidrs",
                        format!("`{item}` is not a CIDR (10.0.0.0/8, fd00::/8) or an address"),
                    ));
                }
            },
        };
        nets.push(net.trunc());
    }
    // aggregate() sorts and merges overlapping and adjacent ranges: the same set of addresses
    // always gives the same list.
    Ok(IpNet::aggregate(&nets))
}

/// A spec for the renderers' tests: proxy UID 1337, port 15001, IPv6 auto.
#[cfg(test)]
pub(crate) fn test_spec(ports: &str, cidrs: &str) -> RedirectSpec {
    RedirectSpec::new(1337, 15001, Some(ports), Some(cidrs), Ipv6Mode::Auto)
        .expect("a valid test spec")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(ports: &str, cidrs: &str, ipv6: Ipv6Mode) -> Result<RedirectSpec, SpecError> {
        RedirectSpec::new(1337, 15001, Some(ports), Some(cidrs), ipv6)
    }

    #[test]
    fn merges_and_sorts_port_ranges() {
        let s = spec("8080-8090, 22,8085, 23,443", "", Ipv6Mode::Auto).unwrap();
        let got: Vec<(u16, u16)> = s.exclude_ports.iter().map(|r| (r.first, r.last)).collect();
        assert_eq!(got, vec![(22, 23), (443, 443), (8080, 8090)]);
    }

    #[test]
    fn accepts_empty_lists() {
        let s = spec("", " , ", Ipv6Mode::On).unwrap();
        assert!(s.exclude_ports.is_empty() && s.exclude_cidrs.is_empty());
    }

    #[test]
    fn rejects_port_zero_backwards_ranges_and_words() {
        for bad in ["0", "90-80", "http", "70000", "1-"] {
            let err = spec(bad, "", Ipv6Mode::Auto).unwrap_err().to_string();
            assert!(err.starts_with("--exclude-ports: "), "{bad}: {err}");
        }
        let err = RedirectSpec::new(1, 0, None, None, Ipv6Mode::Auto).unwrap_err();
        assert_eq!(err.to_string(), "--proxy-port: must be 1..65535");
    }

    #[test]
    fn normalises_cidrs_and_addresses() {
        let s = spec(
            "",
            "10.1.2.3, 10.0.0.0/8, 192.168.1.7/24, 2001:DB8::1",
            Ipv6Mode::Auto,
        )
        .unwrap();
        let got: Vec<String> = s.exclude_cidrs.iter().map(|n| n.to_string()).collect();
        assert_eq!(got, vec!["10.0.0.0/8", "192.168.1.0/24", "2001:db8::1/128"]);
    }

    #[test]
    fn rejects_bad_cidrs_and_ipv6_ranges_with_ipv6_off() {
        let err = spec("", "10.0.0.0/33", Ipv6Mode::Auto).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("--exclude-cidrs: `10.0.0.0/33`")
        );
        let err = spec("", "fd00::/8", Ipv6Mode::Off).unwrap_err();
        assert_eq!(
            err.to_string(),
            "--exclude-cidrs: fd00::/8 is an IPv6 range, but --ipv6 is off"
        );
        assert!(Ipv6Mode::parse("yes").is_err());
    }
}
