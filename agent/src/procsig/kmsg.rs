//! Reading the kernel log: `/dev/kmsg` (one record per read, non-blocking,
//! from its end unless told otherwise), or a plain file of kernel lines
//! (appended lines, like `tail -F`). Never fails the agent: what cannot be
//! read is said in /debug/state and tried again later.

use std::fs::File;
use std::io::{ErrorKind, Read, Seek, SeekFrom};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use remedy_shared::Timestamp;
use serde::Serialize;

/// A `/dev/kmsg` record is at most about 8 KiB; a smaller buffer makes the
/// read fail with EINVAL.
const RECORD_BUFFER: usize = 16 * 1024;
/// Most records or lines taken per read, so a storm is spread over reads.
const MAX_PER_READ: usize = 4_096;
/// Most bytes of a plain file taken per read.
const MAX_FILE_BYTES: usize = 1024 * 1024;
/// Longest line kept from a plain file; the rest is dropped.
const MAX_LINE: usize = 16 * 1024;
/// How long after a failure the source is opened again.
const REOPEN_AFTER: Duration = Duration::from_secs(30);

/// The kernel log source, for /debug/state.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct KernelLogStatus {
    /// What is read.
    pub source: PathBuf,
    /// `kmsg` or `file`.
    pub mode: String,
    /// Open and read without error last time.
    pub readable: bool,
    /// Why not, when not.
    pub error: Option<String>,
    /// Records (or lines) read since start.
    pub records: u64,
    /// Records the kernel overwrote before they were read.
    pub lost: u64,
}

enum Open {
    Kmsg(File),
    Plain { file: File, offset: u64, partial: Vec<u8> },
}

/// The kernel log, read a batch at a time.
pub struct KernelLog {
    path: PathBuf,
    from_beginning: bool,
    /// After the first successful open, a reopened source is read from
    /// where it stands, never from its beginning again.
    opened_once: bool,
    open: Option<Open>,
    retry_at: Option<Timestamp>,
    status: KernelLogStatus,
}

impl std::fmt::Debug for KernelLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelLog").field("status", &self.status).finish()
    }
}

impl KernelLog {
    /// A source at `path`, opened at the first read.
    pub fn new(path: &Path, from_beginning: bool) -> Self {
        KernelLog {
            path: path.to_path_buf(),
            from_beginning,
            opened_once: false,
            open: None,
            retry_at: None,
            status: KernelLogStatus { source: path.to_path_buf(), ..KernelLogStatus::default() },
        }
    }

    /// Where it stands.
    pub fn status(&self) -> &KernelLogStatus {
        &self.status
    }

    fn fail(&mut self, what: &str, e: &std::io::Error, now: Timestamp) {
        let message = format!("cannot {what} {}: {e}", self.path.display());
        if self.status.error.as_deref() != Some(message.as_str()) {
            tracing::warn!(source = %self.path.display(), error = %e, "kernel log unreadable: OOM kills are not seen");
        }
        self.status.readable = false;
        self.status.error = Some(message);
        self.open = None;
        self.retry_at = Some(now.plus(REOPEN_AFTER));
    }

    fn try_open(&mut self, now: Timestamp) -> bool {
        if self.open.is_some() {
            return true;
        }
        if self.retry_at.is_some_and(|at| now < at) {
            return false;
        }
        let start_at_end = !self.from_beginning || self.opened_once;
        let opened = (|| -> std::io::Result<Open> {
            let meta = std::fs::metadata(&self.path)?;
            if meta.file_type().is_char_device() {
                let mut file =
                    std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(&self.path)?;
                if start_at_end {
                    file.seek(SeekFrom::End(0))?;
                }
                Ok(Open::Kmsg(file))
            } else {
                let mut file = File::open(&self.path)?;
                let offset = if start_at_end { file.seek(SeekFrom::End(0))? } else { 0 };
                Ok(Open::Plain { file, offset, partial: Vec::new() })
            }
        })();
        match opened {
            Ok(open) => {
                self.status.mode = match open {
                    Open::Kmsg(_) => "kmsg",
                    Open::Plain { .. } => "file",
                }
                .to_owned();
                self.open = Some(open);
                self.opened_once = true;
                self.status.readable = true;
                self.status.error = None;
                true
            }
            Err(e) => {
                self.fail("open", &e, now);
                false
            }
        }
    }

    /// The records that arrived since the last read.
    pub fn read(&mut self, now: Timestamp) -> Vec<String> {
        if !self.try_open(now) {
            return Vec::new();
        }
        let result = match self.open.as_mut() {
            Some(Open::Kmsg(file)) => read_kmsg(file, &mut self.status.lost),
            Some(Open::Plain { file, offset, partial }) => read_plain(&self.path, file, offset, partial),
            None => Ok(Vec::new()),
        };
        match result {
            Ok(records) => {
                self.status.records += records.len() as u64;
                records
            }
            Err(e) => {
                self.fail("read", &e, now);
                Vec::new()
            }
        }
    }
}

fn read_kmsg(file: &mut File, lost: &mut u64) -> std::io::Result<Vec<String>> {
    let mut buf = vec![0u8; RECORD_BUFFER];
    let mut out = Vec::new();
    while out.len() < MAX_PER_READ {
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.push(String::from_utf8_lossy(&buf[..n]).into_owned()),
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            // The ring buffer wrapped past us; the next read continues with
            // the oldest record still there.
            Err(e) if e.kind() == ErrorKind::BrokenPipe => *lost += 1,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

fn read_plain(path: &Path, file: &mut File, offset: &mut u64, partial: &mut Vec<u8>) -> std::io::Result<Vec<String>> {
    let len = std::fs::metadata(path)?.len();
    let current = file.metadata()?.len();
    if len < *offset || current < *offset {
        // Truncated or replaced: start over on what is there now.
        *file = File::open(path)?;
        *offset = 0;
        partial.clear();
    }
    file.seek(SeekFrom::Start(*offset))?;
    let mut chunk = Vec::new();
    file.by_ref().take(MAX_FILE_BYTES as u64).read_to_end(&mut chunk)?;
    *offset += chunk.len() as u64;
    let mut out = Vec::new();
    for byte in chunk {
        if byte == b'\n' {
            out.push(String::from_utf8_lossy(partial).into_owned());
            partial.clear();
        } else if partial.len() < MAX_LINE {
            partial.push(byte);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn a_plain_file_is_read_from_its_end_and_then_line_by_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kern.log");
        std::fs::write(&path, "old line\n").unwrap();
        let mut log = KernelLog::new(&path, false);
        assert!(log.read(Timestamp::from_millis(0)).is_empty());
        assert_eq!((log.status().mode.as_str(), log.status().readable), ("file", true));
        let mut f = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"first\nsecond half").unwrap();
        assert_eq!(log.read(Timestamp::from_millis(1)), ["first"]);
        f.write_all(b" done\n").unwrap();
        assert_eq!(log.read(Timestamp::from_millis(2)), ["second half done"]);
        std::fs::write(&path, "after truncation\n").unwrap();
        assert_eq!(log.read(Timestamp::from_millis(3)), ["after truncation"]);
        assert_eq!(log.status().records, 3);
        let mut from_start = KernelLog::new(&path, true);
        assert_eq!(from_start.read(Timestamp::from_millis(0)), ["after truncation"]);
    }

    #[test]
    fn a_missing_source_is_reported_and_tried_again_later() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kmsg");
        let mut log = KernelLog::new(&path, true);
        assert!(log.read(Timestamp::from_millis(0)).is_empty());
        assert!(!log.status().readable);
        assert!(log.status().error.as_deref().is_some_and(|e| e.contains("cannot open")), "{:?}", log.status());
        std::fs::write(&path, "x\n").unwrap();
        assert!(log.read(Timestamp::from_millis(1_000)).is_empty(), "not before the retry time");
        assert_eq!(log.read(Timestamp::from_millis(31_000)), ["x"]);
        assert!(log.status().readable);
    }
}
