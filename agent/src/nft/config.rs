//! The `blocking:` section: as written in the file, and validated.
//! `crate::config` hands this module its part of the file.

use std::time::Duration;

use remedy_shared::config::{ConfigError, opt_duration};
use serde::Deserialize;

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

/// `blocking:` in the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockingFile {
    enabled: Option<bool>,
    table: Option<String>,
    never_block: Option<Vec<String>>,
    #[serde(default)]
    pod_cidrs: Vec<String>,
    #[serde(default)]
    service_cidrs: Vec<String>,
    max_prefix_v4: Option<u8>,
    max_prefix_v6: Option<u8>,
    #[serde(default, with = "opt_duration")]
    reconcile_interval: Option<Duration>,
    max_bans: Option<usize>,
}

/// Validates the `blocking:` section.
pub fn resolve(source: &str, file: BlockingFile) -> Result<BlockingConfig, ConfigError> {
    let err = |field: &str, message: &str| ConfigError::new(source, format!("blocking.{field}"), message);
    let table = file.table.unwrap_or_else(|| "remedy".to_owned());
    let valid_name = (1..=64).contains(&table.len())
        && table.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        && table.as_bytes()[0].is_ascii_alphabetic();
    if !valid_name {
        return Err(err("table", &format!("`{table}` is not a table name (a letter, then letters, digits, '_', '-')")));
    }
    let cidrs = |field: &str, list: Vec<String>| -> Result<Vec<crate::nft::Cidr>, ConfigError> {
        list.iter()
            .enumerate()
            .map(|(i, text)| text.parse().map_err(|e: String| err(&format!("{field}[{i}]"), &e)))
            .collect()
    };
    let never_block = match file.never_block {
        None => crate::nft::cidr::default_never_block(),
        Some(list) => cidrs("never_block", list)?,
    };
    let pod_cidrs = cidrs("pod_cidrs", file.pod_cidrs)?;
    let service_cidrs = cidrs("service_cidrs", file.service_cidrs)?;
    let max_prefix_v4 = file.max_prefix_v4.unwrap_or(24);
    if !(8..=32).contains(&max_prefix_v4) {
        return Err(err("max_prefix_v4", "must be between 8 and 32"));
    }
    let max_prefix_v6 = file.max_prefix_v6.unwrap_or(64);
    if !(16..=128).contains(&max_prefix_v6) {
        return Err(err("max_prefix_v6", "must be between 16 and 128"));
    }
    let reconcile_interval = file.reconcile_interval.unwrap_or(Duration::from_secs(10));
    if !(Duration::from_millis(100)..=Duration::from_secs(3600)).contains(&reconcile_interval) {
        return Err(err("reconcile_interval", "must be between 100ms and 1h"));
    }
    let max_bans = file.max_bans.unwrap_or(100_000);
    if !(1..=1_000_000).contains(&max_bans) {
        return Err(err("max_bans", "must be between 1 and 1000000"));
    }
    Ok(BlockingConfig {
        enabled: file.enabled.unwrap_or(false),
        table,
        protected: crate::nft::Protected { never_block, pod_cidrs, service_cidrs, max_prefix_v4, max_prefix_v6 },
        reconcile_interval,
        max_bans,
    })
}
