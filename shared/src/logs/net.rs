//! Addresses: CIDR ranges, peers written with ports, and who the client is
//! behind proxies.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An address range such as `10.0.0.0/8` or `fe80::/10`; a bare address is
/// the range of that address alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// The range of `prefix` leading bits of `addr`; `None` if the prefix is
    /// longer than the address.
    pub fn new(addr: IpAddr, prefix: u8) -> Option<Cidr> {
        let addr = addr.to_canonical();
        let max = if addr.is_ipv4() { 32 } else { 128 };
        (prefix <= max).then(|| Cidr { addr: mask(addr, prefix), prefix })
    }

    /// Whether `ip` lies in the range. IPv4-mapped IPv6 addresses count as
    /// their IPv4 address, as a dual-stack socket reports them.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        ip.is_ipv4() == self.addr.is_ipv4() && mask(ip, self.prefix) == self.addr
    }
}

fn mask(addr: IpAddr, prefix: u8) -> IpAddr {
    match addr {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let m = if prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(prefix)) };
            IpAddr::V4((bits & m).into())
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let m = if prefix == 0 { 0 } else { u128::MAX << (128 - u32::from(prefix)) };
            IpAddr::V6((bits & m).into())
        }
    }
}

/// Why a CIDR was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not an address or a CIDR range (like 10.0.0.0/8 or fe80::/10)")]
pub struct InvalidCidr(pub String);

impl FromStr for Cidr {
    type Err = InvalidCidr;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || InvalidCidr(s.to_owned());
        let (addr, prefix) = match s.trim().split_once('/') {
            Some((a, p)) => {
                let addr: IpAddr = a.parse().map_err(|_| bad())?;
                let digits_only = !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
                let prefix: u8 = p.parse().ok().filter(|_| digits_only).ok_or_else(bad)?;
                // A range of IPv4-mapped IPv6 addresses is kept as the IPv4
                // range it stands for.
                match addr {
                    IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some() => {
                        (addr.to_canonical(), prefix.checked_sub(96).ok_or_else(bad)?)
                    }
                    _ => (addr, prefix),
                }
            }
            None => {
                let addr = s.trim().parse::<IpAddr>().map_err(|_| bad())?.to_canonical();
                (addr, if addr.is_ipv4() { 32 } else { 128 })
            }
        };
        Cidr::new(addr, prefix).ok_or_else(bad)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        let text = String::deserialize(de)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl Serialize for Cidr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Whether any range of `ranges` contains `ip`.
pub fn any_contains(ranges: &[Cidr], ip: IpAddr) -> bool {
    ranges.iter().any(|c| c.contains(ip))
}

/// Parses an address as logs write it: `1.2.3.4`, `2001:db8::1`,
/// `1.2.3.4:5678`, `[2001:db8::1]:443`, `[2001:db8::1]`. IPv4-mapped IPv6
/// addresses come back as IPv4.
pub fn parse_addr(text: &str) -> Option<IpAddr> {
    let text = text.trim();
    if text.is_empty() || text.len() > 64 {
        return None;
    }
    let ip = text
        .parse::<IpAddr>()
        .ok()
        .or_else(|| text.parse::<SocketAddr>().ok().map(|s| s.ip()))
        .or_else(|| text.strip_prefix('[')?.strip_suffix(']')?.parse::<IpAddr>().ok())?;
    Some(ip.to_canonical())
}

/// The address of one hop of a forwarding header: an `X-Forwarded-For`
/// entry as it is, or the `for=` parameter of an RFC 7239 `Forwarded`
/// element (`for=192.0.2.60;proto=http`, `for="[2001:db8::17]:4711"`).
fn hop_addr(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    let Some(start) = entry.to_ascii_lowercase().find("for=") else {
        return parse_addr(entry);
    };
    let value = entry[start + 4..].split(';').next().unwrap_or_default();
    parse_addr(value.trim().trim_matches('"'))
}

/// Who the client is, given the direct peer and the forwarding header the
/// peer sent (`X-Forwarded-For`, or RFC 7239 `Forwarded`).
///
/// The header is believed only when the peer is a trusted proxy: anyone
/// else can write any address there. Behind trusted proxies the client is
/// the right-most address that is not itself a trusted proxy, since each
/// proxy appends the address it saw and only the right-hand part was
/// written by proxies we trust; the walk stops at the first untrusted hop.
/// `None` when the header, read this far, has an entry that is not an
/// address: the client cannot be known.
pub fn client_addr(peer: IpAddr, forwarded_for: Option<&str>, trusted: &[Cidr]) -> Option<IpAddr> {
    if !any_contains(trusted, peer) {
        return Some(peer);
    }
    let Some(header) = forwarded_for.map(str::trim).filter(|h| !h.is_empty() && *h != "-") else {
        return Some(peer);
    };
    let mut client = peer;
    for entry in header.rsplit(',') {
        let ip = hop_addr(entry)?;
        client = ip;
        if !any_contains(trusted, ip) {
            return Some(ip);
        }
    }
    Some(client)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidrs(list: &[&str]) -> Vec<Cidr> {
        list.iter().map(|s| s.parse().unwrap_or_else(|e| panic!("{e}"))).collect()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn ranges_contain_their_addresses_in_both_families() {
        let c = cidrs(&["10.0.0.0/8", "fe80::/10", "192.0.2.7", "::ffff:198.51.100.0/120"]);
        assert!(any_contains(&c, ip("10.200.3.4")));
        assert!(!any_contains(&c, ip("11.0.0.1")));
        assert!(any_contains(&c, ip("fe80::1")));
        assert!(!any_contains(&c, ip("2001:db8::1")));
        assert!(any_contains(&c, ip("192.0.2.7")));
        assert!(!any_contains(&c, ip("192.0.2.8")));
        assert!(any_contains(&c, ip("::ffff:10.1.1.1")), "mapped addresses count as IPv4");
        assert!(any_contains(&c, ip("198.51.100.9")));
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("10.0.0.0/+8".parse::<Cidr>().is_err());
        assert!("bogus".parse::<Cidr>().is_err());
        assert_eq!("10.1.2.3/8".parse::<Cidr>().map(|c| c.to_string()), Ok("10.0.0.0/8".to_owned()));
    }

    #[test]
    fn addresses_parse_with_and_without_ports() {
        assert_eq!(parse_addr("203.0.113.9"), Some(ip("203.0.113.9")));
        assert_eq!(parse_addr("203.0.113.9:4431"), Some(ip("203.0.113.9")));
        assert_eq!(parse_addr("[2001:db8::5]:443"), Some(ip("2001:db8::5")));
        assert_eq!(parse_addr(" 2001:db8::5 "), Some(ip("2001:db8::5")));
        assert_eq!(parse_addr("::ffff:203.0.113.9"), Some(ip("203.0.113.9")));
        assert_eq!(parse_addr("999.1.1.1"), None);
        assert_eq!(parse_addr("unknown"), None);
    }

    #[test]
    fn forwarded_for_is_believed_from_trusted_proxies_only() {
        let trusted = cidrs(&["10.0.0.0/8"]);
        // An untrusted peer writing the header: the peer is the client.
        assert_eq!(client_addr(ip("198.51.100.1"), Some("1.1.1.1"), &trusted), Some(ip("198.51.100.1")));
        // A trusted proxy: the right-most untrusted address, skipping a
        // client-written left part and the chain of trusted proxies.
        assert_eq!(
            client_addr(ip("10.0.0.2"), Some("6.6.6.6, 203.0.113.5, 10.0.0.9"), &trusted),
            Some(ip("203.0.113.5"))
        );
        assert_eq!(client_addr(ip("10.0.0.2"), None, &trusted), Some(ip("10.0.0.2")));
        assert_eq!(client_addr(ip("10.0.0.2"), Some("garbage, 10.0.0.9"), &trusted), None);
        // A client-written entry left of the first untrusted hop is never read.
        assert_eq!(client_addr(ip("10.0.0.2"), Some("garbage, 203.0.113.5"), &trusted), Some(ip("203.0.113.5")));
        // RFC 7239 `Forwarded`, the same walk.
        assert_eq!(
            client_addr(
                ip("10.0.0.2"),
                Some("for=6.6.6.6, for=\"[2001:db8::17]:4711\";proto=https, for=10.0.0.9"),
                &trusted
            ),
            Some(ip("2001:db8::17"))
        );
        assert_eq!(client_addr(ip("198.51.100.1"), Some("for=1.1.1.1"), &trusted), Some(ip("198.51.100.1")));
    }
}
