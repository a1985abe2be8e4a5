//! Addresses and prefixes, and the ranges a ban may never cover.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// An IPv4 or IPv6 prefix with no host bits set; a single address is a
/// /32 or a /128.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr {
    addr: IpAddr,
    len: u8,
}

impl Cidr {
    /// `addr/len`; IPv4-mapped IPv6 addresses become IPv4, so that
    /// `::ffff:10.0.0.1` is judged as the address it is.
    pub fn new(addr: IpAddr, len: u8) -> Result<Cidr, String> {
        let (addr, len) = match addr {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) if len >= 96 => (IpAddr::V4(v4), len - 96),
                _ => (addr, len),
            },
            IpAddr::V4(_) => (addr, len),
        };
        let max = max_len(&addr);
        if len > max {
            return Err(format!("/{len} is longer than an {} address (at most /{max})", family(&addr)));
        }
        let c = Cidr { addr, len };
        if c.network_bits() != bits(&addr) {
            return Err(format!(
                "{addr}/{len} has host bits set; the network is {}",
                Cidr { addr: from_bits(&addr, c.network_bits()), len }
            ));
        }
        Ok(c)
    }

    /// The single address `addr`.
    pub fn host(addr: IpAddr) -> Cidr {
        let len = max_len(&addr);
        Cidr::new(addr, len).unwrap_or(Cidr { addr, len })
    }

    /// The network address.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix_len(&self) -> u8 {
        self.len
    }

    /// Whether this is an IPv4 prefix.
    pub fn is_v4(&self) -> bool {
        self.addr.is_ipv4()
    }

    /// Whether this names one address.
    pub fn is_host(&self) -> bool {
        self.len == max_len(&self.addr)
    }

    fn network_bits(&self) -> u128 {
        bits(&self.addr) & mask(&self.addr, self.len)
    }

    /// Whether the two share any address.
    pub fn overlaps(&self, other: &Cidr) -> bool {
        if self.is_v4() != other.is_v4() {
            return false;
        }
        let shorter = self.len.min(other.len);
        let m = mask(&self.addr, shorter);
        bits(&self.addr) & m == bits(&other.addr) & m
    }

    /// Whether `ip` is in this prefix.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.overlaps(&Cidr::host(ip))
    }
}

fn family(addr: &IpAddr) -> &'static str {
    if addr.is_ipv4() { "IPv4" } else { "IPv6" }
}

fn max_len(addr: &IpAddr) -> u8 {
    if addr.is_ipv4() { 32 } else { 128 }
}

fn bits(addr: &IpAddr) -> u128 {
    match addr {
        IpAddr::V4(a) => u128::from(u32::from(*a)),
        IpAddr::V6(a) => u128::from(*a),
    }
}

fn from_bits(like: &IpAddr, bits: u128) -> IpAddr {
    match like {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::from(bits as u32)),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::from(bits)),
    }
}

fn mask(addr: &IpAddr, len: u8) -> u128 {
    let width = u32::from(max_len(addr));
    let len = u32::from(len).min(width);
    if len == 0 {
        return 0;
    }
    let ones = if width == 128 { u128::MAX } else { (1u128 << width) - 1 };
    ones & !ones.checked_shr(len).unwrap_or(0)
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(text: &str) -> Result<Cidr, String> {
        let text = text.trim();
        if text.is_empty() {
            return Err("empty; name an address or a CIDR".into());
        }
        let (addr_text, len_text) = match text.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (text, None),
        };
        let addr: IpAddr = addr_text.parse().map_err(|_| format!("`{text}` is not an IPv4 or IPv6 address or CIDR"))?;
        let len = match len_text {
            None => max_len(&addr),
            Some(l) => l.parse::<u8>().map_err(|_| format!("`{text}` has no valid prefix length after '/'"))?,
        };
        Cidr::new(addr, len).map_err(|e| format!("`{text}`: {e}"))
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_host() { write!(f, "{}", self.addr) } else { write!(f, "{}/{}", self.addr, self.len) }
    }
}

impl serde::Serialize for Cidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Cidr, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Why a ban is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// It covers loopback.
    Loopback,
    /// It covers link-local addresses.
    LinkLocal,
    /// It covers an address of this node.
    NodeAddress(IpAddr),
    /// It overlaps a configured pod range.
    PodRange(Cidr),
    /// It overlaps a configured service range.
    ServiceRange(Cidr),
    /// It overlaps a configured `never_block` range.
    NeverBlock(Cidr),
    /// It overlaps Remedy's own infrastructure as the coordinator sent it
    /// (another node, the API server, the coordinator).
    Infrastructure {
        /// The range it overlaps.
        range: String,
        /// Whose it is.
        owner: String,
    },
    /// It is wider than the configured maximum.
    TooWide {
        /// The prefix asked for.
        len: u8,
        /// The widest allowed without approval.
        max: u8,
    },
    /// It overlaps another ban without being the same prefix.
    Overlaps(Cidr),
    /// The configured number of bans is reached.
    TooMany(usize),
}

impl Refusal {
    /// A stable word for metrics and evidence.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::Loopback => "loopback",
            Refusal::LinkLocal => "link_local",
            Refusal::NodeAddress(_) => "node_address",
            Refusal::PodRange(_) => "pod_cidr",
            Refusal::ServiceRange(_) => "service_cidr",
            Refusal::NeverBlock(_) => "never_block",
            Refusal::Infrastructure { .. } => "own_infrastructure",
            Refusal::TooWide { .. } => "needs_approval",
            Refusal::Overlaps(_) => "overlaps_ban",
            Refusal::TooMany(_) => "max_bans",
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Loopback => write!(f, "it covers loopback addresses"),
            Refusal::LinkLocal => write!(f, "it covers link-local addresses"),
            Refusal::NodeAddress(ip) => write!(f, "it covers {ip}, an address of this node"),
            Refusal::PodRange(c) => write!(f, "it overlaps the pod range {c} (blocking.pod_cidrs)"),
            Refusal::ServiceRange(c) => write!(f, "it overlaps the service range {c} (blocking.service_cidrs)"),
            Refusal::NeverBlock(c) => write!(f, "it overlaps {c}, which is never blocked (blocking.never_block)"),
            Refusal::Infrastructure { range, owner } => write!(f, "it covers {range}, {owner}"),
            Refusal::TooWide { len, max } => write!(
                f,
                "a /{len} is wider than /{max} (blocking.max_prefix): it needs an approval, which the agent cannot give"
            ),
            Refusal::Overlaps(c) => write!(f, "it overlaps the ban of {c}; unblock that one first"),
            Refusal::TooMany(max) => write!(f, "this agent already holds {max} bans (blocking.max_bans)"),
        }
    }
}

/// What a ban may never cover, from the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Protected {
    /// Never blocked, whatever asks.
    pub never_block: Vec<Cidr>,
    /// This cluster's pod ranges.
    pub pod_cidrs: Vec<Cidr>,
    /// This cluster's service ranges.
    pub service_cidrs: Vec<Cidr>,
    /// The widest IPv4 prefix allowed without approval.
    pub max_prefix_v4: u8,
    /// The widest IPv6 prefix allowed without approval.
    pub max_prefix_v6: u8,
}

/// Loopback, built in: configuration cannot unprotect it.
const LOOPBACK: [(IpAddr, u8); 2] =
    [(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 0)), 8), (IpAddr::V6(Ipv6Addr::LOCALHOST), 128)];
/// Link-local, built in.
const LINK_LOCAL: [(IpAddr, u8); 2] =
    [(IpAddr::V4(Ipv4Addr::new(169, 254, 0, 0)), 16), (IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0)), 10)];

fn built_in(list: &[(IpAddr, u8)]) -> impl Iterator<Item = Cidr> + '_ {
    list.iter().map(|(a, l)| Cidr { addr: *a, len: *l })
}

/// The defaults of `blocking.never_block`.
pub fn default_never_block() -> Vec<Cidr> {
    built_in(&LOOPBACK).chain(built_in(&LINK_LOCAL)).collect()
}

impl Protected {
    /// Whether `ban` may be set on a node with addresses `node`; absolute
    /// protections are judged before the width, so a refusal says the
    /// reason no approval could lift.
    pub fn check(&self, ban: &Cidr, node: &[IpAddr]) -> Result<(), Refusal> {
        if built_in(&LOOPBACK).any(|c| c.overlaps(ban)) {
            return Err(Refusal::Loopback);
        }
        if built_in(&LINK_LOCAL).any(|c| c.overlaps(ban)) {
            return Err(Refusal::LinkLocal);
        }
        if let Some(ip) = node.iter().find(|ip| ban.contains(**ip)) {
            return Err(Refusal::NodeAddress(*ip));
        }
        if let Some(c) = self.pod_cidrs.iter().find(|c| c.overlaps(ban)) {
            return Err(Refusal::PodRange(*c));
        }
        if let Some(c) = self.service_cidrs.iter().find(|c| c.overlaps(ban)) {
            return Err(Refusal::ServiceRange(*c));
        }
        if let Some(c) = self.never_block.iter().find(|c| c.overlaps(ban)) {
            return Err(Refusal::NeverBlock(*c));
        }
        let max = if ban.is_v4() { self.max_prefix_v4 } else { self.max_prefix_v6 };
        if ban.prefix_len() < max {
            return Err(Refusal::TooWide { len: ban.prefix_len(), max });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(text: &str) -> Cidr {
        text.parse().unwrap()
    }

    fn protected() -> Protected {
        Protected {
            never_block: vec![c("203.0.113.7")],
            pod_cidrs: vec![c("10.244.0.0/16"), c("fd00:244::/56")],
            service_cidrs: vec![c("10.96.0.0/12")],
            max_prefix_v4: 24,
            max_prefix_v6: 64,
        }
    }

    #[test]
    fn addresses_and_prefixes_are_read_and_printed_back() {
        assert_eq!(c("10.0.0.2").to_string(), "10.0.0.2");
        assert_eq!(c(" 10.0.0.2/32 ").to_string(), "10.0.0.2");
        assert_eq!(c("10.1.2.0/24").to_string(), "10.1.2.0/24");
        assert_eq!(c("2001:db8::/48").to_string(), "2001:db8::/48");
        assert_eq!(c("::ffff:10.0.0.9").to_string(), "10.0.0.9", "an IPv4-mapped address is IPv4");
        assert!(c("fd00::1").is_host() && !c("fd00::1").is_v4());
        for (bad, says) in [
            ("", "empty"),
            ("10.0.0", "is not an IPv4 or IPv6 address"),
            ("10.0.0.1/33", "longer than an IPv4 address"),
            ("10.0.0.1/x", "no valid prefix length"),
            ("10.1.2.3/24", "host bits set; the network is 10.1.2.0/24"),
            ("example.com", "is not an IPv4"),
        ] {
            let e = bad.parse::<Cidr>().unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn overlap_is_judged_within_a_family() {
        assert!(c("10.0.0.0/8").overlaps(&c("10.1.2.3")));
        assert!(c("10.1.2.3").overlaps(&c("10.0.0.0/8")));
        assert!(!c("10.0.0.0/8").overlaps(&c("11.0.0.1")));
        assert!(c("0.0.0.0/0").overlaps(&c("192.0.2.1")));
        assert!(!c("0.0.0.0/0").overlaps(&c("::1")));
        assert!(c("fd00::/8").contains("fd12::1".parse().unwrap()));
        assert!(c("::/0").overlaps(&c("fe80::1")));
    }

    #[test]
    fn protected_ranges_are_refused_with_their_reason() {
        let p = protected();
        let node: Vec<IpAddr> = vec!["192.0.2.10".parse().unwrap(), "2001:db8::10".parse().unwrap()];
        let cases = [
            ("127.0.0.1", "loopback"),
            ("::1", "loopback"),
            ("0.0.0.0/0", "loopback"),
            ("169.254.169.254", "link_local"),
            ("fe80::1", "link_local"),
            ("192.0.2.10", "node_address"),
            ("192.0.2.0/24", "node_address"),
            ("2001:db8::10", "node_address"),
            ("10.244.3.7", "pod_cidr"),
            ("10.244.0.0/24", "pod_cidr"),
            ("fd00:244::5", "pod_cidr"),
            ("10.96.0.10", "service_cidr"),
            ("203.0.113.7", "never_block"),
            ("11.0.0.0/8", "needs_approval"),
            ("2001:db9::/48", "needs_approval"),
        ];
        for (ban, reason) in cases {
            let refusal = p.check(&c(ban), &node).unwrap_err();
            assert_eq!(refusal.reason(), reason, "{ban}: {refusal}");
        }
        assert!(p.check(&c("198.51.100.0/24"), &node).is_ok());
        assert!(p.check(&c("198.51.100.7"), &node).is_ok());
        assert!(p.check(&c("2001:db9::/64"), &node).is_ok());
        assert_eq!(
            p.check(&c("11.0.0.0/8"), &node).unwrap_err().to_string(),
            "a /8 is wider than /24 (blocking.max_prefix): it needs an approval, which the agent cannot give"
        );
        assert_eq!(
            p.check(&c("10.244.3.7"), &node).unwrap_err().to_string(),
            "it overlaps the pod range 10.244.0.0/16 (blocking.pod_cidrs)"
        );
    }
}
