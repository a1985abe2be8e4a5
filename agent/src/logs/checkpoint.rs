//! Where each tailed file was delivered up to, kept across restarts.
//!
//! The checkpoint is one small JSON document replaced atomically (written
//! to a temporary file, synced, renamed over the old one, directory
//! synced). It is rewritten whole every time: it holds one entry per open
//! file, a few hundred bytes each, and no entry depends on another, so a
//! transactional store would buy nothing over a rename, while a text file
//! can be read and, in an emergency, edited by an operator. It lives beside
//! the spool in the state directory.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Bytes at the start of a file that identify its content.
pub const FINGERPRINT_BYTES: usize = 256;

const VERSION: u32 = 1;

/// A file as the kernel knows it; stable across renames, reused after
/// deletion (which is why a fingerprint goes with it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct FileId {
    /// Device.
    pub dev: u64,
    /// Inode.
    pub ino: u64,
}

/// One file's delivered position.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Where it was last seen (informative: files are matched by identity).
    pub path: PathBuf,
    /// Its identity.
    #[serde(flatten)]
    pub id: FileId,
    /// FNV-1a of its first `fingerprint_len` bytes.
    pub fingerprint: u64,
    /// How many bytes the fingerprint covers (fewer than
    /// [`FINGERPRINT_BYTES`] while the file was shorter).
    pub fingerprint_len: u32,
    /// Everything before this byte was delivered; it is the start of a line.
    pub offset: u64,
    /// Lines delivered from it, for /debug/state.
    pub lines: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct Document {
    version: u32,
    files: Vec<Entry>,
}

/// Reads the checkpoint; `Ok(None)` when there is none yet.
pub fn load(path: &Path) -> Result<Option<Vec<Entry>>, String> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let doc: Document =
        serde_json::from_slice(&bytes).map_err(|e| format!("{} is not a log checkpoint: {e}", path.display()))?;
    if doc.version != VERSION {
        return Err(format!("{} has version {}, this agent reads {VERSION}", path.display(), doc.version));
    }
    Ok(Some(doc.files))
}

/// Replaces the checkpoint with `files`, durably.
pub fn store(path: &Path, files: Vec<Entry>) -> std::io::Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let body = serde_json::to_vec(&Document { version: VERSION, files }).map_err(std::io::Error::other)?;
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = PathBuf::from(tmp_name);
    let mut file = File::create(&tmp)?;
    file.write_all(&body)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path)?;
    // The rename is durable only once the directory is.
    File::open(dir)?.sync_all()
}

/// FNV-1a, 64 bits: stable across releases and platforms, unlike std's
/// hasher, because it is written to disk and compared after an upgrade.
pub fn fingerprint(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h: u64, &b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(offset: u64) -> Entry {
        Entry {
            path: "/var/log/pods/a_b_c/d/0.log".into(),
            id: FileId { dev: 1, ino: 2 },
            fingerprint: fingerprint(b"first line\n"),
            fingerprint_len: 11,
            offset,
            lines: 1,
        }
    }

    #[test]
    fn a_stored_checkpoint_reads_back_and_replaces_the_previous_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/log-checkpoint.json");
        assert_eq!(load(&path).unwrap(), None);
        store(&path, vec![entry(11)]).unwrap();
        store(&path, vec![entry(22)]).unwrap();
        assert_eq!(load(&path).unwrap(), Some(vec![entry(22)]));
        assert!(!dir.path().join("state/log-checkpoint.json.tmp").exists());
    }

    #[test]
    fn a_damaged_checkpoint_is_an_error_not_an_empty_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log-checkpoint.json");
        std::fs::write(&path, b"{\"version\": 1, \"fi").unwrap();
        assert!(load(&path).unwrap_err().contains("not a log checkpoint"));
        std::fs::write(&path, b"{\"version\": 9, \"files\": []}").unwrap();
        assert!(load(&path).unwrap_err().contains("version 9"));
    }

    #[test]
    fn the_fingerprint_is_fnv1a() {
        assert_eq!(fingerprint(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fingerprint(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_ne!(fingerprint(b"line 1\n"), fingerprint(b"line 2\n"));
    }
}
