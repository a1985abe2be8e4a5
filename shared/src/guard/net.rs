//! IP networks for the address rail: a block must never cover an
//! allow-listed address (loopback, the node, pod and service ranges,
//! configured addresses).
//!
//! A small CIDR type is enough here and keeps the domain free of another
//! dependency: parse, normalise, test containment and overlap.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// An IP network: an address and a prefix length, host bits cleared.
///
/// Written as `10.0.0.0/8`, `2001:db8::/32`, or a bare address (a /32 or
/// /128). IPv4-mapped IPv6 addresses (`::ffff:192.0.2.1`) are read as IPv4,
/// so a block cannot slip past the allow-list by changing notation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    /// The network of `addr` with `prefix` bits; `None` when the prefix is
    /// longer than the address. An IPv4-mapped IPv6 network of /96 or
    /// longer becomes the IPv4 network it names.
    pub fn new(addr: IpAddr, prefix: u8) -> Option<Self> {
        let (addr, prefix) = match addr {
            IpAddr::V6(v6) if prefix >= 96 => match v6.to_ipv4_mapped() {
                Some(v4) => (IpAddr::V4(v4), prefix - 96),
                None => (addr, prefix),
            },
            _ => (addr, prefix),
        };
        if prefix > max_prefix(addr) {
            return None;
        }
        Some(IpNet { addr: mask(addr, prefix), prefix })
    }

    /// The network address (host bits cleared).
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Whether this is an IPv4 network.
    pub fn is_ipv4(&self) -> bool {
        self.addr.is_ipv4()
    }

    /// Whether `addr` lies inside this network.
    pub fn contains(&self, addr: IpAddr) -> bool {
        let addr = canonical(addr);
        addr.is_ipv4() == self.addr.is_ipv4() && mask(addr, self.prefix) == self.addr
    }

    /// Whether the two networks share at least one address.
    pub fn overlaps(&self, other: &IpNet) -> bool {
        if self.addr.is_ipv4() != other.addr.is_ipv4() {
            return false;
        }
        let shorter = self.prefix.min(other.prefix);
        mask(self.addr, shorter) == mask(other.addr, shorter)
    }
}

/// IPv4-mapped IPv6 addresses read as IPv4.
fn canonical(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

fn max_prefix(addr: IpAddr) -> u8 {
    if addr.is_ipv4() { 32 } else { 128 }
}

fn mask(addr: IpAddr, prefix: u8) -> IpAddr {
    match addr {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let m = u32::MAX.checked_shl(32u32.saturating_sub(u32::from(prefix))).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(bits & m))
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let m = u128::MAX.checked_shl(128u32.saturating_sub(u32::from(prefix))).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(bits & m))
        }
    }
}

impl FromStr for IpNet {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let text = s.trim();
        let (addr_text, prefix_text) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let raw: IpAddr =
            addr_text.parse().map_err(|_| format!("`{s}` is not an IP address or network (e.g. 10.0.0.0/8)"))?;
        let prefix = match prefix_text {
            None => max_prefix(raw),
            Some(p) => p.parse::<u8>().map_err(|_| format!("`{s}` has an invalid prefix length"))?,
        };
        if prefix > max_prefix(raw) {
            return Err(format!("`{s}` has a prefix longer than the address ({} bits)", max_prefix(raw)));
        }
        IpNet::new(raw, prefix).ok_or_else(|| format!("`{s}` is not a valid network"))
    }
}

/// The single address: a /32 or /128 (an IPv4-mapped address becomes the
/// IPv4 /32 it names).
impl From<IpAddr> for IpNet {
    fn from(addr: IpAddr) -> Self {
        let prefix = max_prefix(addr);
        // A full-length prefix always fits its own address.
        IpNet::new(addr, prefix).unwrap_or(IpNet { addr, prefix })
    }
}

impl TryFrom<String> for IpNet {
    type Error = String;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        value.parse()
    }
}

impl From<IpNet> for String {
    fn from(net: IpNet) -> Self {
        net.to_string()
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn parses_and_normalises() {
        assert_eq!(net("10.1.2.3/8").to_string(), "10.0.0.0/8");
        assert_eq!(net("192.0.2.7").to_string(), "192.0.2.7/32");
        assert_eq!(net("2001:db8::1/32").to_string(), "2001:db8::/32");
        assert_eq!(net("::ffff:192.0.2.1").to_string(), "192.0.2.1/32");
        assert_eq!(net("::ffff:10.0.0.0/104").to_string(), "10.0.0.0/8");
        assert_eq!(net("0.0.0.0/0").prefix(), 0);
    }

    #[test]
    fn refuses_nonsense() {
        for bad in ["", "10.0.0.0/33", "::/129", "10.0.0/8", "host.example", "10.0.0.0/x", "10.0.0.0/-1"] {
            assert!(bad.parse::<IpNet>().is_err(), "{bad} should not parse");
        }
    }

    #[test]
    fn containment_and_overlap() {
        let lo = net("127.0.0.0/8");
        assert!(lo.contains("127.0.0.1".parse().unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))));
        assert!(lo.overlaps(&net("0.0.0.0/0")));
        assert!(net("0.0.0.0/0").overlaps(&lo));
        assert!(!lo.overlaps(&net("128.0.0.0/1")));
        assert!(!lo.overlaps(&net("::/0")));
        assert!(net("10.0.0.0/16").overlaps(&net("10.0.3.4")));
        assert!(!net("10.0.0.0/16").overlaps(&net("10.1.0.0/16")));
    }

    #[test]
    fn serde_round_trip() {
        let n = net("10.2.0.0/16");
        let json = serde_json::to_string(&n).unwrap_or_default();
        assert_eq!(json, "\"10.2.0.0/16\"");
        let back: Result<IpNet, _> = serde_json::from_str(&json);
        assert_eq!(back.ok(), Some(n));
        assert!(serde_json::from_str::<IpNet>("\"10.0.0.0/40\"").is_err());
    }
}
