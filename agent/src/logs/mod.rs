//! Log tailing: container logs in CRI format under the kubelet's pod log
//! directory, and plain files, read line by line into a [`LineSink`].
//!
//! Files are followed by identity (device, inode and a fingerprint of their
//! first bytes), not by path, so rotation by rename, copytruncate and a file
//! deleted and recreated are each read once. What was delivered is
//! checkpointed in the state directory (see [`checkpoint`] and
//! [`tailer`] for the exact guarantee).

pub mod checkpoint;
pub mod detect;
pub mod tailer;

#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use remedy_shared::Timestamp;
use serde::Serialize;

pub use remedy_shared::logs::cri::Stream;
pub use tailer::{TailerHandle, spawn};

/// What kind of source a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    /// A container log in CRI format under the pod log directory.
    Cri,
    /// A configured file, one message per line.
    Plain,
}

/// Where lines come from; shared by every line of one file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LogSource {
    /// CRI or plain.
    pub kind: SourceKind,
    /// The path the file had when it was first opened (a rotated file keeps
    /// its source).
    pub path: PathBuf,
    /// The pod's namespace (CRI only).
    pub namespace: Option<String>,
    /// The pod (CRI only).
    pub pod: Option<String>,
    /// The container (CRI only).
    pub container: Option<String>,
}

/// One logical line: CRI partial lines joined, the newline removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// Its file.
    pub source: Arc<LogSource>,
    /// When the runtime wrote it (CRI only), to the millisecond.
    pub timestamp: Option<Timestamp>,
    /// stdout or stderr (CRI only).
    pub stream: Option<Stream>,
    /// The text; bytes that are not UTF-8 are replaced by U+FFFD.
    pub message: String,
    /// The line was longer than `max_line_bytes`; `message` is its start.
    pub cut: bool,
}

/// Where the tailer delivers lines, in file order.
///
/// A line is delivered, and its file's offset may be checkpointed past it,
/// once `accept` returns `Ok`. A sink that cannot take a line now returns
/// it in `Err`: the tailer keeps it, stops reading, and offers the same line
/// again later, so a slow consumer bounds the tailer's memory instead of
/// growing it.
pub trait LineSink: Send {
    /// Takes `line`, or hands it back when full.
    fn accept(&mut self, line: LogLine) -> Result<(), LogLine>;
}

/// Where the tailer starts in files it finds at its very first scan, when
/// the state directory holds no checkpoint (the agent never ran here).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StartAt {
    /// From their first byte: everything already logged is read.
    Beginning,
    /// After their last complete line: only what is written from now on.
    End,
}

/// What the tailer reads and how.
#[derive(Debug, Clone, PartialEq)]
pub struct TailerConfig {
    /// The pod log directory (`/var/log/pods`); `None` reads no container
    /// logs.
    pub cri_root: Option<PathBuf>,
    /// Plain files, one message per line.
    pub plain_files: Vec<PathBuf>,
    /// Longest logical line kept, bytes; the rest of a longer one is
    /// skipped and the line marked cut.
    pub max_line_bytes: usize,
    /// How often the directory tree is listed for new, rotated and deleted
    /// files.
    pub discover_interval: Duration,
    /// How long the tailer waits after finding nothing new to read.
    pub poll_interval: Duration,
    /// How often delivered offsets are written (and at a clean stop).
    pub checkpoint_interval: Duration,
    /// The checkpoint file.
    pub checkpoint_path: PathBuf,
    /// Where files found at the first scan start without a checkpoint.
    pub first_start: StartAt,
}

/// The tailer as /debug/state shows it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LogsStatus {
    /// Whether the tailer runs.
    pub enabled: bool,
    /// The pod log directory.
    pub root: Option<PathBuf>,
    /// Configured plain files.
    pub plain_files: Vec<PathBuf>,
    /// Files open now.
    pub files: Vec<FileStatus>,
    /// Sources that cannot be read, and why; retried at every scan.
    pub unreadable: Vec<Unreadable>,
    /// The checkpoint.
    pub checkpoint: CheckpointStatus,
    /// Sources this agent does not read (and why).
    pub not_read: Vec<Unreadable>,
}

/// One open file.
#[derive(Debug, Clone, Serialize)]
pub struct FileStatus {
    /// Its current path (a rotated file's new name).
    pub path: PathBuf,
    /// CRI or plain.
    pub kind: SourceKind,
    /// Namespace, pod and container (CRI only).
    pub namespace: Option<String>,
    /// Pod.
    pub pod: Option<String>,
    /// Container.
    pub container: Option<String>,
    /// Device.
    pub dev: u64,
    /// Inode.
    pub ino: u64,
    /// FNV-1a of the first `fingerprint_len` bytes, hex.
    pub fingerprint: String,
    /// Bytes the fingerprint covers.
    pub fingerprint_len: u32,
    /// Delivered up to this byte.
    pub offset: u64,
    /// Read up to this byte (beyond `offset`: a partial line, or a line the
    /// sink has not taken yet).
    pub read_offset: u64,
    /// Size at the last scan.
    pub size: u64,
    /// Lines delivered.
    pub lines: u64,
    /// Still the file the writer appends to; false once renamed or deleted
    /// (it is read to its end, then closed).
    pub live: bool,
    /// A line waits for the sink.
    pub waiting_for_sink: bool,
}

/// A source that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Unreadable {
    /// The path.
    pub path: PathBuf,
    /// Why.
    pub reason: String,
}

/// The checkpoint's state.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CheckpointStatus {
    /// Its file.
    pub path: Option<PathBuf>,
    /// When it was last written.
    pub last_written: Option<Timestamp>,
    /// The last failure to read or write it, if the latest attempt failed.
    pub last_error: Option<String>,
}
