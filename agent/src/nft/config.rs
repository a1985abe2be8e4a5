//! The `blocking:` section, validated. `crate::config` reads the file into
//! it.

use std::time::Duration;

use super::cidr::Protected;

/// IP blocking with nftables, in this agent's own table.
#[derive(Debug, Clone, PartialEq)]
pub struct BlockingConfig {
    /// Off by default: it needs root (CAP_NET_ADMIN) and the nft program.
    pub enabled: bool,
    /// The `inet` table's name.
    pub table: String,
    /// What no ban may cover, and how wide a ban may be.
    pub protected: Protected,
    /// How often the table is checked and put back.
    pub reconcile_interval: Duration,
    /// Most bans held.
    pub max_bans: usize,
}
