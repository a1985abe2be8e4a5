//! Log cleanup as both ends read it: why a file was kept, how kept files
//! read on a timeline, and what one node's run did. The agent deletes and
//! names why it kept each file; the coordinator adds up what its nodes
//! answered. One vocabulary, so a reason means the same thing in the
//! agent's metrics, in its evidence and on the incident's timeline.

use std::collections::BTreeMap;

/// Evidence key: files deleted by a live run.
pub const FILES_DELETED: &str = "files_deleted";
/// Evidence key: files a dry run would delete.
pub const FILES_WOULD_DELETE: &str = "files_would_delete";
/// Evidence key: bytes freed by a live run.
pub const BYTES_FREED: &str = "bytes_freed";
/// Evidence key: bytes a dry run would free.
pub const BYTES_WOULD_FREE: &str = "bytes_would_free";
/// Evidence key: processes whose open files the agent could not read, so
/// files only they hold open were not seen.
pub const UNREADABLE_PROCESSES: &str = "open_check.unreadable_processes";
/// Evidence key prefix of the count of files kept for one reason
/// (`skipped.open`).
pub const SKIPPED_PREFIX: &str = "skipped.";

/// Why log cleanup kept a file (or did not enter a directory) that it met
/// under a root.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kept {
    /// Not old enough: the age rule at work, not a safety keep.
    TooYoung,
    /// A symlink: never followed, never deleted.
    Symlink,
    /// A root outside the allowed ones, or one reached through a symlink.
    OutsideRoot,
    /// On another mount than its root (a mount point, a bind mount of the
    /// same filesystem, a tmpfs): never entered, never deleted.
    Mount,
    /// Deeper than the configured depth.
    TooDeep,
    /// Another hard link names the same file, maybe outside the root:
    /// deleting this name would free nothing and reach past the root.
    HardLinks,
    /// The agent's own log tailer reads it.
    Tailer,
    /// A process holds it open (for reading or writing): deleting it
    /// would free nothing until that process closes it.
    Open,
    /// It, or a directory on its way from the root, changed between the
    /// walk and the delete (moved, replaced, swapped for a symlink).
    Changed,
    /// The scan of open files could not finish or could not read every
    /// process, so no file could be proven unopened.
    OpenCheckIncomplete,
    /// Reading or deleting it failed.
    Error,
}

impl Kept {
    /// Every reason, in the order summaries list them.
    pub const ALL: [Kept; 11] = [
        Kept::TooYoung,
        Kept::Symlink,
        Kept::OutsideRoot,
        Kept::Mount,
        Kept::TooDeep,
        Kept::HardLinks,
        Kept::Tailer,
        Kept::Open,
        Kept::Changed,
        Kept::OpenCheckIncomplete,
        Kept::Error,
    ];

    /// As evidence and metrics name it.
    pub fn name(self) -> &'static str {
        match self {
            Kept::TooYoung => "too_young",
            Kept::Symlink => "symlink",
            Kept::OutsideRoot => "outside_root",
            Kept::Mount => "mount",
            Kept::TooDeep => "too_deep",
            Kept::HardLinks => "hard_links",
            Kept::Tailer => "tailer",
            Kept::Open => "open",
            Kept::Changed => "changed",
            Kept::OpenCheckIncomplete => "open_check_incomplete",
            Kept::Error => "error",
        }
    }

    /// The reason `name` names.
    pub fn from_name(name: &str) -> Option<Kept> {
        Kept::ALL.into_iter().find(|k| k.name() == name)
    }

    /// Whether it was kept to stay safe, rather than by the age rule.
    pub fn for_safety(self) -> bool {
        self != Kept::TooYoung
    }

    /// How `n` such files read after their count.
    fn phrase(self, n: u64) -> &'static str {
        let one = n == 1;
        match self {
            Kept::TooYoung if one => "is too young",
            Kept::TooYoung => "are too young",
            Kept::Symlink if one => "is a symlink",
            Kept::Symlink => "are symlinks",
            Kept::OutsideRoot if one => "is outside the allowed roots",
            Kept::OutsideRoot => "are outside the allowed roots",
            Kept::Mount if one => "is on another mount",
            Kept::Mount => "are on other mounts",
            Kept::TooDeep if one => "is too deep",
            Kept::TooDeep => "are too deep",
            Kept::HardLinks if one => "has other links",
            Kept::HardLinks => "have other links",
            Kept::Tailer if one => "is read by the agent's tailer",
            Kept::Tailer => "are read by the agent's tailer",
            Kept::Open if one => "is open by a process",
            Kept::Open => "are open by a process",
            Kept::Changed if one => "changed during the run",
            Kept::Changed => "changed during the run",
            Kept::OpenCheckIncomplete if one => "could not be checked for open handles",
            Kept::OpenCheckIncomplete => "could not be checked for open handles",
            Kept::Error if one => "could not be read or deleted",
            Kept::Error => "could not be read or deleted",
        }
    }
}

/// `kept 2: 1 has other links, 1 is open by a process`: the files kept
/// for safety, by reason; `None` when there were none. Files too young
/// are left out: they are the age rule working, not something to explain.
pub fn kept_summary(kept: &BTreeMap<Kept, u64>) -> Option<String> {
    let parts: Vec<String> =
        kept.iter().filter(|(k, n)| k.for_safety() && **n > 0).map(|(k, n)| format!("{n} {}", k.phrase(*n))).collect();
    let total: u64 = kept.iter().filter(|(k, _)| k.for_safety()).map(|(_, n)| n).sum();
    (total > 0).then(|| format!("kept {total}: {}", parts.join(", ")))
}

/// What one node's cleanup did (or, in a dry run, would do).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    /// Files deleted.
    pub deleted: u64,
    /// Bytes freed.
    pub bytes: u64,
    /// Files kept, by reason.
    pub kept: BTreeMap<Kept, u64>,
}

impl Tally {
    /// Reads an agent's `log_cleanup` evidence: the deletion count and
    /// bytes (live or dry-run keys) and `skipped.<reason>` counts. `None`
    /// when it has no deletion count, so it is not a cleanup's answer.
    /// Reasons this release does not know are counted as errors, so a
    /// kept file is never lost from the sum.
    pub fn from_evidence(evidence: &BTreeMap<String, String>) -> Option<Tally> {
        let number = |key: &str| evidence.get(key).and_then(|v| v.trim().parse::<u64>().ok());
        let deleted = number(FILES_DELETED).or_else(|| number(FILES_WOULD_DELETE))?;
        let bytes = number(BYTES_FREED).or_else(|| number(BYTES_WOULD_FREE)).unwrap_or(0);
        let mut kept = BTreeMap::new();
        for (key, value) in evidence {
            let Some(reason) = key.strip_prefix(SKIPPED_PREFIX) else { continue };
            let Ok(n) = value.trim().parse::<u64>() else { continue };
            let reason = Kept::from_name(reason).unwrap_or(Kept::Error);
            let slot: &mut u64 = kept.entry(reason).or_default();
            *slot = slot.saturating_add(n);
        }
        Some(Tally { deleted, bytes, kept })
    }

    /// Adds another node's tally to this one.
    pub fn add(&mut self, other: &Tally) {
        self.deleted = self.deleted.saturating_add(other.deleted);
        self.bytes = self.bytes.saturating_add(other.bytes);
        for (k, n) in &other.kept {
            let slot = self.kept.entry(*k).or_default();
            *slot = slot.saturating_add(*n);
        }
    }

    /// Files kept for safety (not counting those too young).
    pub fn kept_for_safety(&self) -> u64 {
        self.kept.iter().filter(|(k, _)| k.for_safety()).map(|(_, n)| n).fold(0, |a, n| a.saturating_add(*n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn evidence(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn names_round_trip() {
        for k in Kept::ALL {
            assert_eq!(Kept::from_name(k.name()), Some(k));
        }
        assert_eq!(Kept::from_name("open_for_writing"), None);
    }

    #[test]
    fn the_summary_says_what_was_kept_and_why_without_the_young() {
        let kept = BTreeMap::from([(Kept::HardLinks, 1), (Kept::Open, 1), (Kept::TooYoung, 7)]);
        assert_eq!(kept_summary(&kept).as_deref(), Some("kept 2: 1 has other links, 1 is open by a process"));
        let kept = BTreeMap::from([(Kept::Mount, 2), (Kept::Symlink, 3)]);
        assert_eq!(kept_summary(&kept).as_deref(), Some("kept 5: 3 are symlinks, 2 are on other mounts"));
        assert_eq!(kept_summary(&BTreeMap::from([(Kept::TooYoung, 4)])), None);
        assert_eq!(kept_summary(&BTreeMap::new()), None);
    }

    #[test]
    fn a_tally_reads_live_and_dry_run_evidence_and_adds_up() {
        let live = evidence(&[
            ("files_deleted", "3"),
            ("bytes_freed", "54"),
            ("skipped.open", "1"),
            ("skipped.hard_links", "2"),
            ("skipped.something_new", "1"),
            ("skipped.too_young", "5"),
            ("root.0.path", "/tmp"),
        ]);
        let mut t = Tally::from_evidence(&live).unwrap();
        assert_eq!((t.deleted, t.bytes, t.kept_for_safety()), (3, 54, 4));
        assert_eq!(t.kept[&Kept::Error], 1, "an unknown reason still counts");
        let dry = Tally::from_evidence(&evidence(&[("files_would_delete", "2"), ("bytes_would_free", "10")])).unwrap();
        t.add(&dry);
        assert_eq!((t.deleted, t.bytes), (5, 64));
        assert_eq!(Tally::from_evidence(&evidence(&[("pods", "3")])), None, "not a cleanup's answer");
    }
}
