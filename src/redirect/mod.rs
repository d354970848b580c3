//! `tollgate redirect install|remove`: the sidecar's init step (SPEC §1).
//!
//! It installs the nat `OUTPUT` rules that send every outbound TCP connection of the pod's
//! network namespace to tollgate's transparent listener (`REDIRECT` to the proxy port on
//! loopback), except the proxy's own UID (its upstream connections), loopback, and the excluded
//! destination ports and CIDRs; for IPv4 and, unless told otherwise, IPv6. The rules live in a
//! chain (iptables: `TOLLGATE_OUTPUT` in the nat table) or tables (nft: `ip tollgate`,
//! `ip6 tollgate`) of tollgate's own, so `remove` takes out exactly those and nothing else.
//!
//! Idempotent: the rules are rendered exactly as the firewall lists them; when the listing
//! already matches, nothing is written. A change is applied atomically per family
//! (`iptables-restore --noflush`, `nft -f`).
//!
//! Owns: the rules, the backend choice, the capability check. Does not own: accepting the
//! redirected connections (the transparent listener, `crate::net::original_dst`).

mod backend;
mod caps;
pub mod iptables;
pub mod nft;
pub mod spec;

use std::path::Path;

use ipnet::IpNet;

pub use backend::Backend;
pub use spec::{Ipv6Mode, RedirectSpec, SpecError};

/// An address family with its own rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl Family {
    /// The family of a range.
    pub fn of(net: &IpNet) -> Family {
        match net {
            IpNet::V4(_) => Family::V4,
            IpNet::V6(_) => Family::V6,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Family::V4 => "ipv4",
            Family::V6 => "ipv6",
        }
    }
}

/// Why the init step failed; [`RedirectError::exit_code`] maps it to SPEC §1's codes.
#[derive(Debug, thiserror::Error)]
pub enum RedirectError {
    /// A command-line value is unusable.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// The process lacks a capability the firewall needs.
    #[error(
        "tollgate redirect: needs the {needed} ({why}); this process does not have it \
         (as the init container: runAsUser 0, capabilities add [{add}], drop [ALL])"
    )]
    MissingCapability {
        /// `NET_ADMIN capability` or `NET_ADMIN and NET_RAW capabilities`.
        needed: &'static str,
        /// What the container must add: `NET_ADMIN` or `NET_ADMIN, NET_RAW`.
        add: &'static str,
        /// Which backend needs it.
        why: &'static str,
    },
    /// Neither iptables nor nft is on `PATH`.
    #[error(
        "tollgate redirect: neither iptables nor nft is on PATH; the image needs iptables \
         (nf_tables backend) or nftables"
    )]
    NoTool,
    /// IPv6 was asked for but cannot be handled here.
    #[error("tollgate redirect: --ipv6 {mode}: {reason}")]
    Ipv6Unavailable {
        /// The `--ipv6` value.
        mode: &'static str,
        /// What is missing.
        reason: String,
    },
    /// A firewall command failed.
    #[error("tollgate redirect: `{command}` failed: {detail}")]
    Command {
        /// The command line.
        command: String,
        /// The first line of its stderr.
        detail: String,
    },
}

impl RedirectError {
    /// 2 for usage and environment problems the operator must fix, 1 for a failing command.
    pub fn exit_code(&self) -> u8 {
        match self {
            RedirectError::Command { .. } => 1,
            RedirectError::Spec(_)
            | RedirectError::MissingCapability { .. }
            | RedirectError::NoTool
            | RedirectError::Ipv6Unavailable { .. } => 2,
        }
    }
}

/// Whether this network namespace has IPv6 (the kernel lists its IPv6 addresses here).
fn ipv6_available() -> bool {
    Path::new("/proc/net/if_inet6").exists()
}

/// Installs the rules for `spec` (or, with `dry_run`, only returns them as commands, one per
/// line, without needing any capability). Returns the lines to print.
pub fn install(spec: &RedirectSpec, dry_run: bool) -> Result<Vec<String>, RedirectError> {
    let backend = Backend::detect()?;
    let want_v6 = match spec.ipv6 {
        Ipv6Mode::Off => false,
        Ipv6Mode::On => true,
        Ipv6Mode::Auto => ipv6_available(),
    };
    let families: Vec<Family> = if want_v6 {
        vec![Family::V4, Family::V6]
    } else {
        vec![Family::V4]
    };
    if dry_run {
        return Ok(families
            .iter()
            .flat_map(|family| match &backend {
                Some(Backend::Nft(_)) => nft::dry_run_lines(spec, *family),
                _ => iptables::dry_run_lines(spec, *family),
            })
            .collect());
    }
    let backend = backend.ok_or(RedirectError::NoTool)?;
    require_capabilities(&backend)?;
    if spec.ipv6 == Ipv6Mode::On && !ipv6_available() {
        return Err(RedirectError::Ipv6Unavailable {
            mode: "on",
            reason: "this network namespace has no IPv6 (/proc/net/if_inet6 is missing)".into(),
        });
    }
    let mut report = Vec::new();
    for family in [Family::V4, Family::V6] {
        let outcome = if families.contains(&family) {
            install_family(&backend, spec, family)?
        } else {
            // Converge: rules of an earlier install with IPv6 on are taken out.
            match remove_family(&backend, family)? {
                Outcome::Removed => Outcome::Removed,
                _ => Outcome::Skipped,
            }
        };
        report.push(outcome.report(family, &backend));
    }
    Ok(report)
}

/// Removes exactly tollgate's rules (both families); a second run finds nothing and succeeds.
pub fn remove() -> Result<Vec<String>, RedirectError> {
    let backend = Backend::detect()?.ok_or(RedirectError::NoTool)?;
    require_capabilities(&backend)?;
    let mut report = Vec::new();
    for family in [Family::V4, Family::V6] {
        let outcome = remove_family(&backend, family)?;
        report.push(outcome.report(family, &backend));
    }
    Ok(report)
}

/// What happened to one family's rules.
enum Outcome {
    Installed,
    Unchanged,
    Removed,
    NothingToRemove,
    Skipped,
}

impl Outcome {
    /// The line printed for one family: `ipv4: installed (nft)`.
    fn report(&self, family: Family, backend: &Backend) -> String {
        format!(
            "{}: {} ({})",
            family.label(),
            self.describe(),
            backend.describe()
        )
    }

    fn describe(&self) -> &'static str {
        match self {
            Outcome::Installed => "installed",
            Outcome::Unchanged => "unchanged",
            Outcome::Removed => "removed",
            Outcome::NothingToRemove => "nothing to remove",
            Outcome::Skipped => "not redirected (--ipv6)",
        }
    }
}

fn require_capabilities(backend: &Backend) -> Result<(), RedirectError> {
    let Some(effective) = caps::effective() else {
        return Ok(());
    };
    let legacy = matches!(backend, Backend::IptablesLegacy(_));
    let missing =
        !caps::has(effective, caps::NET_ADMIN) || (legacy && !caps::has(effective, caps::NET_RAW));
    if !missing {
        return Ok(());
    }
    Err(if legacy {
        RedirectError::MissingCapability {
            needed: "NET_ADMIN and NET_RAW capabilities",
            add: "NET_ADMIN, NET_RAW",
            why: "legacy iptables opens a raw socket",
        }
    } else {
        RedirectError::MissingCapability {
            needed: "NET_ADMIN capability",
            add: "NET_ADMIN",
            why: "to change the network namespace's nat rules",
        }
    })
}

/// The iptables programs for one family, or why IPv6 cannot be handled.
fn iptables_programs(
    tools: &backend::Tools,
    family: Family,
) -> Result<(&Path, &Path), RedirectError> {
    match family {
        Family::V4 => Ok((&tools.iptables, &tools.restore)),
        Family::V6 => match (&tools.ip6tables, &tools.restore6) {
            (Some(list), Some(restore)) => Ok((list, restore)),
            _ => Err(RedirectError::Ipv6Unavailable {
                mode: "auto|on",
                reason: "IPv6 is available but ip6tables/ip6tables-restore is not on PATH; \
                         install it, or pass --ipv6 off to leave IPv6 egress unredirected"
                    .into(),
            }),
        },
    }
}

fn install_family(
    backend: &Backend,
    spec: &RedirectSpec,
    family: Family,
) -> Result<Outcome, RedirectError> {
    match backend {
        Backend::IptablesNft(tools) | Backend::IptablesLegacy(tools) => {
            let (list, restore) = iptables_programs(tools, family)?;
            let listing = backend::run(list, &["-w", "5", "-t", "nat", "-S"], None)?;
            let current = iptables::Current::parse(&listing);
            let desired = iptables::chain_rules(spec, family);
            match iptables::install_script(&current, &desired) {
                None => Ok(Outcome::Unchanged),
                Some(script) => {
                    backend::run(restore, &["-w", "5", "--noflush"], Some(&script))?;
                    Ok(Outcome::Installed)
                }
            }
        }
        Backend::Nft(nft_path) => {
            let name = nft::family_name(family);
            let tables = backend::run(nft_path, &["list", "tables"], None)?;
            let current = if nft::present_tables(&tables).contains(&family) {
                Some(backend::run(
                    nft_path,
                    &["list", "table", name, nft::TABLE],
                    None,
                )?)
            } else {
                None
            };
            let desired = nft::table(spec, family);
            match nft::install_script(current.as_deref(), &desired) {
                None => Ok(Outcome::Unchanged),
                Some(script) => {
                    backend::run(nft_path, &["-f", "-"], Some(&script))?;
                    Ok(Outcome::Installed)
                }
            }
        }
    }
}

fn remove_family(backend: &Backend, family: Family) -> Result<Outcome, RedirectError> {
    match backend {
        Backend::IptablesNft(tools) | Backend::IptablesLegacy(tools) => {
            let Ok((list, restore)) = iptables_programs(tools, family) else {
                return Ok(Outcome::NothingToRemove);
            };
            if family == Family::V6 && !ipv6_available() {
                return Ok(Outcome::NothingToRemove);
            }
            let listing = backend::run(list, &["-w", "5", "-t", "nat", "-S"], None)?;
            match iptables::remove_script(&iptables::Current::parse(&listing)) {
                None => Ok(Outcome::NothingToRemove),
                Some(script) => {
                    backend::run(restore, &["-w", "5", "--noflush"], Some(&script))?;
                    Ok(Outcome::Removed)
                }
            }
        }
        Backend::Nft(nft_path) => {
            let tables = backend::run(nft_path, &["list", "tables"], None)?;
            let present: Vec<Family> = nft::present_tables(&tables)
                .into_iter()
                .filter(|f| *f == family)
                .collect();
            match nft::remove_script(&present) {
                None => Ok(Outcome::NothingToRemove),
                Some(script) => {
                    backend::run(nft_path, &["-f", "-"], Some(&script))?;
                    Ok(Outcome::Removed)
                }
            }
        }
    }
}
