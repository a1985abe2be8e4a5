//! The addresses of this host (or of the network namespace the process
//! runs in): what an agent announces as its node's and never blocks, and
//! what the coordinator counts as its own, so neither is ever banned.
//!
//! Read from /proc rather than through an ioctl: IPv4 from the local
//! routing table (every address the kernel answers for, secondary ones
//! included), IPv6 from the interfaces' list.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Every address of this network namespace, loopback and link-local
/// included, sorted and without repeats. An unreadable file is an error,
/// so that a ban is never judged against a partial list.
pub fn local_addresses() -> Result<Vec<IpAddr>, String> {
    let v4 =
        std::fs::read_to_string("/proc/net/fib_trie").map_err(|e| format!("cannot read /proc/net/fib_trie: {e}"))?;
    let mut out = local_v4(&v4);
    // A kernel without IPv6 has no such file, and no IPv6 address either.
    match std::fs::read_to_string("/proc/net/if_inet6") {
        Ok(v6) => out.extend(local_v6(&v6)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("cannot read /proc/net/if_inet6: {e}")),
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// The addresses `/proc/net/fib_trie` marks `/32 host LOCAL`.
pub fn local_v4(fib_trie: &str) -> Vec<IpAddr> {
    let mut last: Option<Ipv4Addr> = None;
    let mut out = Vec::new();
    for line in fib_trie.lines() {
        let t = line.trim();
        if let Some(a) = t.strip_prefix("|-- ") {
            last = a.trim().parse().ok();
        } else if t.starts_with("/32 host LOCAL")
            && let Some(a) = last
        {
            out.push(IpAddr::V4(a));
        }
    }
    out
}

/// The addresses of `/proc/net/if_inet6` (32 hex digits first on a line).
pub fn local_v6(if_inet6: &str) -> Vec<IpAddr> {
    if_inet6
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|hex| hex.len() == 32)
        .filter_map(|hex| u128::from_str_radix(hex, 16).ok())
        .map(|b| IpAddr::V6(Ipv6Addr::from(b)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_addresses_come_from_proc() {
        let fib = "Main:\n  +-- 0.0.0.0/0 3 0 5\n     |-- 0.0.0.0\n        /0 universe UNICAST\n     +-- 127.0.0.0/8 2 0 2\n        +-- 127.0.0.0/31 1 0 0\n           |-- 127.0.0.0\n              /8 host LOCAL\n           |-- 127.0.0.1\n              /32 host LOCAL\n     |-- 192.0.2.0\n        /24 link UNICAST\n     |-- 192.0.2.2\n        /32 host LOCAL\n";
        assert_eq!(local_v4(fib), vec![IpAddr::from([127, 0, 0, 1]), IpAddr::from([192, 0, 2, 2])]);
        let inet6 = "00000000000000000000000000000001 01 80 10 80       lo\nfd000000000000000000000000000002 04 40 00 82     eth0\n";
        let expected: Vec<IpAddr> = ["::1", "fd00::2"].iter().filter_map(|a| a.parse().ok()).collect();
        assert_eq!(local_v6(inet6), expected);
        let here = local_addresses().unwrap_or_else(|e| panic!("{e}"));
        assert!(here.contains(&IpAddr::from([127, 0, 0, 1])), "{here:?}");
    }
}
