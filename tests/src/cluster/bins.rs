//! Where the control-plane binaries built by `tests/cluster/build.sh` live.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// The versions file that `build.sh` reads, so both sides agree on the cache
/// directory without a second copy of the version numbers.
const VERSIONS_ENV: &str = include_str!("../../cluster/versions.env");

/// Binaries every cluster needs, whatever its options.
pub(crate) const REQUIRED: &[&str] =
    &["etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl", "kwok"];

fn version_of(key: &str) -> &'static str {
    VERSIONS_ENV
        .lines()
        .filter_map(|line| line.trim().strip_prefix(key)?.strip_prefix('='))
        .map(str::trim)
        .next()
        .unwrap_or_else(|| panic!("tests/cluster/versions.env has no {key}="))
}

/// The Kubernetes version the harness runs (`K8S_VERSION` in versions.env).
pub fn k8s_version() -> &'static str {
    version_of("K8S_VERSION")
}

/// The etcd version the harness runs.
pub fn etcd_version() -> &'static str {
    version_of("ETCD_VERSION")
}

/// The kwok version the harness runs.
pub fn kwok_version() -> &'static str {
    version_of("KWOK_VERSION")
}

/// The cache root: `$REMEDY_CLUSTER_BIN_DIR`, else
/// `$HOME/.cache/remedy/cluster-bins` (the same rule as build.sh).
pub fn bin_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("REMEDY_CLUSTER_BIN_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    Path::new(&home).join(".cache/remedy/cluster-bins")
}

/// The directory holding one version's binaries and kwok stage files.
#[derive(Debug, Clone)]
pub struct Binaries {
    dir: PathBuf,
}

impl Binaries {
    /// Finds the binaries for the pinned versions, or explains how to build
    /// them.
    pub fn locate() -> Result<Self> {
        let dir = bin_root().join(k8s_version());
        let missing: Vec<&str> = REQUIRED.iter().copied().filter(|b| !dir.join(b).is_file()).collect();
        if !missing.is_empty() {
            bail!(
                "control-plane binaries missing in {} ({}): run `make cluster-bins`",
                dir.display(),
                missing.join(", ")
            );
        }
        let stamp = std::fs::read_to_string(dir.join("STAMP"))
            .with_context(|| format!("no STAMP in {}: run `make cluster-bins`", dir.display()))?;
        for (name, version) in [("etcd", etcd_version()), ("kwok", kwok_version())] {
            if !stamp.split_whitespace().any(|w| w == format!("{name}={version}")) {
                bail!(
                    "binaries in {} were built for other versions ({}): run `make cluster-bins`",
                    dir.display(),
                    stamp.trim()
                );
            }
        }
        let this = Self { dir };
        if this.kwok_stages()?.is_empty() {
            bail!("no kwok stage files in {}/kwok-stages: run `make cluster-bins`", this.dir.display());
        }
        Ok(this)
    }

    /// The directory itself.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The path of one binary.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The kwok Stage files (node-fast, node heartbeat with lease, pod-fast),
    /// sorted by name.
    pub fn kwok_stages(&self) -> Result<Vec<PathBuf>> {
        let stage_dir = self.dir.join("kwok-stages");
        let mut files = Vec::new();
        for entry in std::fs::read_dir(&stage_dir).with_context(|| format!("reading {}", stage_dir.display()))? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "yaml") {
                files.push(path);
            }
        }
        files.sort();
        Ok(files)
    }
}
