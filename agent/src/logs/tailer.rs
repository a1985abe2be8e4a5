//! The tailer: one thread that discovers files, reads them in bounded
//! chunks, assembles lines and hands them to a [`LineSink`].
//!
//! # Delivery
//!
//! Each file has two offsets: how far it was read, and how far it was
//! delivered (the byte after the last logical line the sink accepted). Only
//! the delivered offset is checkpointed, and it always sits at the start of
//! a line: bytes read but not delivered (a partial CRI line waiting for its
//! `F`, a line the sink refused) are read again after a restart.
//!
//! - A clean stop writes the checkpoint after the last accepted line, so the
//!   next tailer continues exactly there: every line once.
//! - After a crash, the lines accepted since the last checkpoint (at most
//!   `checkpoint_interval` of them) are delivered again; nothing is
//!   skipped, provided the file still exists when the agent comes back.
//! - Files are matched to checkpoint entries by device and inode, and only
//!   if their first bytes still hash to the recorded fingerprint: a reused
//!   inode is a new file, read from its start.
//! - When there is no checkpoint at all (first run on this node), files
//!   found at the first scan start where [`StartAt`] says; files that appear
//!   later are always read from their first byte.
//!
//! # Rotation
//!
//! A live file (`N.log`, or a configured plain path) that is renamed or
//! deleted stays open and is read to its end; it is closed once it has
//! stopped growing for a whole scan interval, and stays in the checkpoint
//! (at its end) while it exists. A rotated container log (`N.log.<time>`)
//! that is neither open nor in the checkpoint was created and rotated
//! while nobody looked, and is read from its start (at the very first
//! start, [`StartAt`] applies to it as to live files). A plain file's
//! rotated siblings (`auth.log.1`) are read only to finish one the
//! checkpoint says was being read: they may be copytruncate's copies. A file
//! that shrinks below the read offset, or whose first bytes change
//! (copytruncate, then rewritten past the old offset), is read again from
//! the start. Lines written between logrotate's copy and its truncation,
//! which copytruncate itself loses, cannot be recovered.
//!
//! # Memory
//!
//! One 64 KiB read buffer for all files; per file at most one physical line
//! (`max_line_bytes` plus the CRI header) and one logical line
//! (`max_line_bytes`) are kept; beyond that bytes are counted and skipped.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::time::Instant;

use remedy_shared::Timestamp;
use remedy_shared::logs::cri::{self, FileRole, Stream};

use super::LogMetrics;
use super::checkpoint::{self, Entry, FINGERPRINT_BYTES, FileId};
use super::{
    CheckpointStatus, FileStatus, LineSink, LogLine, LogSource, LogsStatus, SourceKind, StartAt, TailerConfig,
    Unreadable,
};
use crate::clock::now;

/// Bytes read from a file at a time.
const CHUNK: usize = 64 * 1024;
/// Room for a CRI line's timestamp, stream and tags beyond the message.
const HEADER_ROOM: usize = 64;
/// Longest wait for a full sink before offering the line again.
const MAX_BACKOFF: Duration = Duration::from_millis(50);

/// Receives the tailer's status after every scan.
pub type Publish = Box<dyn FnMut(LogsStatus) + Send>;

/// A running tailer.
#[derive(Debug)]
pub struct TailerHandle {
    stop: Sender<()>,
    thread: JoinHandle<Result<(), String>>,
}

impl TailerHandle {
    /// Stops the tailer and waits for it; lines already accepted are
    /// checkpointed. The error is the final checkpoint's.
    pub fn stop(self) -> Result<(), String> {
        let _ = self.stop.send(());
        self.thread.join().map_err(|_| "the log tailer panicked".to_owned())?
    }
}

/// Starts a tailer on its own thread.
pub fn spawn<S: LineSink + 'static>(
    config: TailerConfig,
    sink: S,
    metrics: LogMetrics,
    publish: Publish,
) -> std::io::Result<TailerHandle> {
    let (stop, stopped) = mpsc::channel();
    let thread = std::thread::Builder::new()
        .name("log-tailer".into())
        .spawn(move || Tailer::new(config, sink, metrics, publish).run(stopped))?;
    Ok(TailerHandle { stop, thread })
}

/// A line the sink refused, offered again before anything else of its file.
struct Held {
    line: LogLine,
    /// The delivered offset once it is accepted.
    end: u64,
    /// The file's truncation count when it was read: after a truncation its
    /// offset means nothing.
    epoch: u64,
}

/// CRI partial lines joined so far.
struct Pending {
    message: Vec<u8>,
    timestamp: Option<Timestamp>,
    stream: Stream,
    cut: bool,
}

/// One open file.
struct Tracked {
    source: Arc<LogSource>,
    path: PathBuf,
    file: File,
    id: FileId,
    live: bool,
    fingerprint: u64,
    fingerprint_len: usize,
    read_offset: u64,
    delivered: u64,
    lines: u64,
    /// The physical line being read, capped; `physical_cut` once bytes were
    /// dropped from it.
    physical: Vec<u8>,
    physical_cut: bool,
    /// Where the physical line being read started.
    physical_start: u64,
    pending: Option<Pending>,
    held: Option<Held>,
    epoch: u64,
    at_eof: bool,
    size: u64,
    last_scan_size: u64,
}

enum Pump {
    Data,
    Idle,
    Blocked,
}

/// What a file's first bytes say about it.
enum Prefix {
    Same,
    Replaced,
}

/// Everything a file's lines go through on their way to the sink.
struct Out<S> {
    sink: S,
    metrics: LogMetrics,
    max_line: usize,
}

struct Tailer<S> {
    config: TailerConfig,
    out: Out<S>,
    publish: Publish,
    files: BTreeMap<FileId, Tracked>,
    /// Rotated files read to their end, kept in the checkpoint while they
    /// exist so that a restart does not take them for new ones.
    known: BTreeMap<FileId, Entry>,
    /// The previous run's entries, consulted at the first scan.
    restore: Vec<Entry>,
    had_checkpoint: bool,
    scanned: bool,
    unreadable: Vec<Unreadable>,
    checkpoint: CheckpointStatus,
    last_stored: Option<Vec<Entry>>,
    buf: Vec<u8>,
    start_from: usize,
}

impl<S: LineSink> Tailer<S> {
    fn new(config: TailerConfig, sink: S, metrics: LogMetrics, publish: Publish) -> Self {
        let mut status = CheckpointStatus { path: Some(config.checkpoint_path.clone()), ..Default::default() };
        let (restore, had_checkpoint) = match checkpoint::load(&config.checkpoint_path) {
            Ok(Some(entries)) => (entries, true),
            Ok(None) => (Vec::new(), false),
            Err(e) => {
                // Unknown offsets: reading again beats skipping.
                tracing::warn!(error = %e, "log checkpoint unusable; files will be read from their start");
                status.last_error = Some(e);
                (Vec::new(), true)
            }
        };
        let max_line = config.max_line_bytes.max(1);
        Tailer {
            config,
            out: Out { sink, metrics, max_line },
            publish,
            files: BTreeMap::new(),
            known: BTreeMap::new(),
            restore,
            had_checkpoint,
            scanned: false,
            unreadable: Vec::new(),
            checkpoint: status,
            last_stored: None,
            buf: vec![0; CHUNK],
            start_from: 0,
        }
    }

    fn run(mut self, stop: Receiver<()>) -> Result<(), String> {
        let mut next_scan = Instant::now();
        let mut next_checkpoint = Instant::now() + self.config.checkpoint_interval;
        let mut backoff = Duration::ZERO;
        loop {
            let now = Instant::now();
            if now >= next_scan {
                let first = !self.scanned;
                self.scan();
                next_scan = now + self.config.discover_interval;
                if first {
                    // Written at once, so that a crash before the first interval
                    // does not make the next start look like the first ever.
                    let _ = self.store_checkpoint();
                    next_checkpoint = now + self.config.checkpoint_interval;
                }
                self.publish_status();
            }
            if now >= next_checkpoint {
                let _ = self.store_checkpoint();
                next_checkpoint = now + self.config.checkpoint_interval;
            }
            let (wait, blocked) = match self.pump_all() {
                Pump::Data => {
                    backoff = Duration::ZERO;
                    match stop.try_recv() {
                        Err(TryRecvError::Empty) => continue,
                        Ok(()) | Err(TryRecvError::Disconnected) => break,
                    }
                }
                Pump::Blocked => {
                    backoff = (backoff * 2).clamp(Duration::from_millis(1), MAX_BACKOFF);
                    (backoff, true)
                }
                Pump::Idle => {
                    backoff = Duration::ZERO;
                    (self.config.poll_interval, false)
                }
            };
            let deadline = next_scan.min(next_checkpoint);
            let wait = wait.min(deadline.saturating_duration_since(Instant::now()));
            let started = Instant::now();
            let woke = stop.recv_timeout(wait);
            if blocked {
                self.out.metrics.sink_blocked_seconds.inc_by(started.elapsed().as_secs_f64());
            }
            match woke {
                Err(RecvTimeoutError::Timeout) => {}
                Ok(()) | Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        let result = self.store_checkpoint();
        self.publish_status();
        self.out.metrics.files_open.set(0);
        result
    }

    /// One chunk from every file, starting with a different one each round
    /// so that a busy file cannot starve the others.
    fn pump_all(&mut self) -> Pump {
        let mut result = Pump::Idle;
        let n = self.files.len();
        if n == 0 {
            return result;
        }
        let start = self.start_from % n;
        self.start_from = self.start_from.wrapping_add(1);
        for (from, to) in [(start, n), (0, start)] {
            for t in self.files.values_mut().skip(from).take(to - from) {
                match pump(t, &mut self.buf, &mut self.out) {
                    Pump::Blocked => return Pump::Blocked,
                    Pump::Data => result = Pump::Data,
                    Pump::Idle => {}
                }
            }
        }
        result
    }

    fn scan(&mut self) {
        let mut found = BTreeMap::new();
        let mut unreadable = Vec::new();
        if let Some(root) = &self.config.cri_root {
            scan_cri(root, &mut found, &mut unreadable);
        }
        for path in &self.config.plain_files {
            scan_plain(path, &mut found, &mut unreadable);
        }
        self.reconcile(found, &mut unreadable);
        self.unreadable = unreadable;
        self.scanned = true;
        self.restore = Vec::new();
        self.out.metrics.files_open.set(self.files.len() as i64);
    }

    fn reconcile(&mut self, found: BTreeMap<FileId, Candidate>, unreadable: &mut Vec<Unreadable>) {
        for (id, t) in &mut self.files {
            let live = found.get(id).is_some_and(|c| c.live);
            if t.live && !live {
                self.out.metrics.rotations.inc();
                tracing::debug!(path = %t.path.display(), "log file rotated; reading it to its end");
            }
            t.live = live;
            if let Some(c) = found.get(id) {
                t.path.clone_from(&c.path);
            }
        }
        let first = !self.scanned;
        self.known.retain(|id, _| found.contains_key(id));
        for (id, candidate) in found {
            if self.files.contains_key(&id) || self.known.contains_key(&id) {
                continue;
            }
            let restored = self.restore.iter().find(|e| e.id == id);
            // A rotated container log that is neither open nor known was
            // created and renamed while nobody looked (between two scans, or
            // while the agent was down): read like any new file. A plain
            // file's sibling may be copytruncate's copy: only finished.
            if !candidate.live && restored.is_none() && !candidate.adopt {
                continue;
            }
            match self.open(id, &candidate, restored, first) {
                Ok(Some(t)) => {
                    self.files.insert(id, t);
                }
                Ok(None) => {}
                Err(e) => {
                    self.out.metrics.read_errors.inc();
                    unreadable.push(Unreadable { path: candidate.path.clone(), reason: e.to_string() });
                }
            }
        }
        let mut done = Vec::new();
        for (id, t) in &mut self.files {
            match t.file.metadata() {
                Ok(m) => t.size = m.len(),
                Err(e) => {
                    self.out.metrics.read_errors.inc();
                    unreadable.push(Unreadable { path: t.path.clone(), reason: e.to_string() });
                    continue;
                }
            }
            if t.size < t.read_offset || matches!(t.check_prefix(), Ok(Prefix::Replaced)) {
                t.truncated(&self.out.metrics);
            }
            let quiet = t.size == t.last_scan_size;
            t.last_scan_size = t.size;
            if !t.live && quiet && t.at_eof && t.read_offset >= t.size && t.held.is_none() {
                // A partial line the writer never finished is still a line.
                if flush_pending(t, &mut self.out, t.read_offset) {
                    done.push(*id);
                }
            }
        }
        for id in done {
            if let Some(t) = self.files.remove(&id) {
                self.known.insert(id, t.entry());
                tracing::debug!(path = %t.path.display(), lines = t.lines, "finished a rotated log file");
            }
        }
    }

    fn open(
        &self,
        id: FileId,
        candidate: &Candidate,
        restored: Option<&Entry>,
        first: bool,
    ) -> std::io::Result<Option<Tracked>> {
        let file = File::open(&candidate.path)?;
        let meta = file.metadata()?;
        if file_id(&meta) != id {
            // Renamed between the listing and the open: the next scan sees it.
            return Ok(None);
        }
        let size = meta.len();
        let mut t = Tracked {
            source: Arc::new(candidate.source.clone()),
            path: candidate.path.clone(),
            file,
            id,
            live: candidate.live,
            fingerprint: checkpoint::fingerprint(&[]),
            fingerprint_len: 0,
            read_offset: 0,
            delivered: 0,
            lines: 0,
            physical: Vec::new(),
            physical_cut: false,
            physical_start: 0,
            pending: None,
            held: None,
            epoch: 0,
            at_eof: false,
            size,
            last_scan_size: size,
        };
        let start = match restored {
            Some(e) => {
                let same = e.fingerprint_len as usize <= FINGERPRINT_BYTES && {
                    let (prefix, got) = read_prefix(&t.file)?;
                    got >= e.fingerprint_len as usize
                        && checkpoint::fingerprint(&prefix[..e.fingerprint_len as usize]) == e.fingerprint
                };
                if !same {
                    if !candidate.live && !candidate.adopt {
                        return Ok(None);
                    }
                    0
                } else if e.offset > size {
                    self.out.metrics.truncations.inc();
                    0
                } else {
                    t.lines = e.lines;
                    e.offset
                }
            }
            None if first && !self.had_checkpoint && self.config.first_start == StartAt::End => {
                last_line_end(&t.file, size)?
            }
            None => 0,
        };
        t.read_offset = start;
        t.delivered = start;
        t.physical_start = start;
        t.check_prefix()?;
        Ok(Some(t))
    }

    fn entries(&self) -> Vec<Entry> {
        self.files.values().map(Tracked::entry).chain(self.known.values().cloned()).collect()
    }

    fn store_checkpoint(&mut self) -> Result<(), String> {
        let entries = self.entries();
        if self.last_stored.as_ref() == Some(&entries) {
            return Ok(());
        }
        match checkpoint::store(&self.config.checkpoint_path, entries.clone()) {
            Ok(()) => {
                self.last_stored = Some(entries);
                self.checkpoint.last_written = Some(now());
                self.checkpoint.last_error = None;
                Ok(())
            }
            Err(e) => {
                let e = format!("cannot write {}: {e}", self.config.checkpoint_path.display());
                self.out.metrics.checkpoint_errors.inc();
                tracing::warn!(error = %e, "log checkpoint not written");
                self.checkpoint.last_error = Some(e.clone());
                Err(e)
            }
        }
    }

    fn publish_status(&mut self) {
        let files = self
            .files
            .values()
            .map(|t| FileStatus {
                path: t.path.clone(),
                kind: t.source.kind,
                namespace: t.source.namespace.clone(),
                pod: t.source.pod.clone(),
                container: t.source.container.clone(),
                dev: t.id.dev,
                ino: t.id.ino,
                fingerprint: format!("{:016x}", t.fingerprint),
                fingerprint_len: t.fingerprint_len as u32,
                offset: t.delivered,
                read_offset: t.read_offset,
                size: t.size,
                lines: t.lines,
                live: t.live,
                waiting_for_sink: t.held.is_some(),
            })
            .collect();
        let status = LogsStatus {
            enabled: true,
            root: self.config.cri_root.clone(),
            plain_files: self.config.plain_files.clone(),
            files,
            unreadable: self.unreadable.clone(),
            checkpoint: self.checkpoint.clone(),
            not_read: vec![Unreadable {
                path: "/dev/kmsg".into(),
                reason: "the kernel log is not read by this release".into(),
            }],
        };
        (self.publish)(status);
    }
}

impl Tracked {
    fn entry(&self) -> Entry {
        Entry {
            path: self.path.clone(),
            id: self.id,
            fingerprint: self.fingerprint,
            fingerprint_len: self.fingerprint_len as u32,
            offset: self.delivered,
            lines: self.lines,
        }
    }

    /// Compares the file's first bytes with the fingerprint, and extends the
    /// fingerprint while the file is shorter than what it may cover.
    fn check_prefix(&mut self) -> std::io::Result<Prefix> {
        let (prefix, got) = read_prefix(&self.file)?;
        if got < self.fingerprint_len || checkpoint::fingerprint(&prefix[..self.fingerprint_len]) != self.fingerprint {
            return Ok(Prefix::Replaced);
        }
        if got > self.fingerprint_len {
            self.fingerprint_len = got;
            self.fingerprint = checkpoint::fingerprint(&prefix[..got]);
        }
        Ok(Prefix::Same)
    }

    /// Starts over from the first byte: the file was truncated or rewritten.
    fn truncated(&mut self, metrics: &LogMetrics) {
        metrics.truncations.inc();
        tracing::debug!(path = %self.path.display(), "log file truncated; reading it from the start");
        self.read_offset = 0;
        self.delivered = 0;
        self.physical_start = 0;
        self.physical.clear();
        self.physical_cut = false;
        self.pending = None;
        self.epoch += 1;
        self.at_eof = false;
        self.fingerprint_len = 0;
        self.fingerprint = checkpoint::fingerprint(&[]);
        let _ = self.check_prefix();
    }
}

fn read_prefix(file: &File) -> std::io::Result<([u8; FINGERPRINT_BYTES], usize)> {
    let mut prefix = [0u8; FINGERPRINT_BYTES];
    let mut got = 0;
    while got < FINGERPRINT_BYTES {
        match file.read_at(&mut prefix[got..], got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok((prefix, got))
}

/// The offset after the last newline before `size` (within one chunk), so
/// that starting at the end never starts in the middle of a line.
fn last_line_end(file: &File, size: u64) -> std::io::Result<u64> {
    let from = size.saturating_sub(CHUNK as u64);
    let mut tail = vec![0u8; (size - from) as usize];
    let n = file.read_at(&mut tail, from)?;
    Ok(tail[..n].iter().rposition(|&b| b == b'\n').map_or(size, |i| from + i as u64 + 1))
}

/// Reads one chunk of `t` and delivers the lines it completes.
fn pump<S: LineSink>(t: &mut Tracked, buf: &mut [u8], out: &mut Out<S>) -> Pump {
    if let Some(held) = t.held.take() {
        match out.sink.accept(held.line) {
            Ok(()) => {
                if held.epoch == t.epoch {
                    t.delivered = held.end;
                }
                t.lines += 1;
                out.metrics.lines_read.inc();
            }
            Err(line) => {
                t.held = Some(Held { line, ..held });
                return Pump::Blocked;
            }
        }
    }
    let n = match t.file.read_at(buf, t.read_offset) {
        Ok(n) => n,
        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => return Pump::Data,
        Err(e) => {
            out.metrics.read_errors.inc();
            tracing::debug!(path = %t.path.display(), error = %e, "cannot read a log file");
            return Pump::Idle;
        }
    };
    if n == 0 {
        if t.file.metadata().is_ok_and(|m| m.len() < t.read_offset) {
            t.truncated(&out.metrics);
            return Pump::Data;
        }
        t.at_eof = true;
        return Pump::Idle;
    }
    if t.at_eof || t.fingerprint_len < FINGERPRINT_BYTES {
        // Growth after a pause is where a copytruncate that was rewritten
        // past our offset shows: check the first bytes before trusting it.
        match t.check_prefix() {
            Ok(Prefix::Same) => {}
            Ok(Prefix::Replaced) => {
                t.truncated(&out.metrics);
                return Pump::Data;
            }
            Err(_) => {
                out.metrics.read_errors.inc();
            }
        }
    }
    t.at_eof = false;
    let before = t.read_offset;
    let blocked = consume(t, &buf[..n], out);
    out.metrics.bytes_read.inc_by(t.read_offset - before);
    if blocked { Pump::Blocked } else { Pump::Data }
}

/// Splits `data` (read at `t.read_offset`) into physical lines; returns true
/// when the sink refused a line, with `t.read_offset` just after it.
fn consume<S: LineSink>(t: &mut Tracked, data: &[u8], out: &mut Out<S>) -> bool {
    let base = t.read_offset;
    let cap = out.max_line + HEADER_ROOM;
    let mut pos = 0;
    while pos < data.len() {
        let rest = &data[pos..];
        let Some(i) = rest.iter().position(|&b| b == b'\n') else {
            append_capped(&mut t.physical, &mut t.physical_cut, rest, cap);
            t.read_offset = base + data.len() as u64;
            return false;
        };
        let end = base + (pos + i + 1) as u64;
        let resume = if t.physical.is_empty() && !t.physical_cut {
            on_physical(t, out, &rest[..i], false, end)
        } else {
            append_capped(&mut t.physical, &mut t.physical_cut, &rest[..i], cap);
            let mut physical = std::mem::take(&mut t.physical);
            let cut = std::mem::replace(&mut t.physical_cut, false);
            let resume = on_physical(t, out, &physical, cut, end);
            physical.clear();
            if physical.capacity() <= 2 * CHUNK {
                t.physical = physical;
            }
            resume
        };
        if let Some(at) = resume {
            t.read_offset = at;
            t.physical_start = at;
            return true;
        }
        t.read_offset = end;
        t.physical_start = end;
        pos += i + 1;
    }
    false
}

fn append_capped(buf: &mut Vec<u8>, cut: &mut bool, bytes: &[u8], cap: usize) {
    let room = cap.saturating_sub(buf.len());
    if bytes.len() > room {
        *cut = true;
    }
    buf.extend_from_slice(&bytes[..bytes.len().min(room)]);
}

/// Handles one physical line ending at `end`; `Some(offset)` when the sink
/// refused a line and reading must resume at `offset`.
fn on_physical<S: LineSink>(t: &mut Tracked, out: &mut Out<S>, line: &[u8], cut: bool, end: u64) -> Option<u64> {
    if t.source.kind == SourceKind::Plain {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        return (!emit(t, out, line, None, None, cut, end)).then_some(end);
    }
    let Some(cri) = cri::parse_line(line) else {
        // Not CRI: passed on whole rather than lost. A partial line before
        // it ends here, so that offsets stay at line starts.
        let start = t.physical_start;
        if !flush_pending(t, out, start) {
            return Some(start);
        }
        return (!emit(t, out, line, None, None, cut, end)).then_some(end);
    };
    if t.pending.is_none() && !cri.partial {
        let ts = cri::parse_timestamp(cri.timestamp);
        return (!emit(t, out, cri.message, ts, Some(cri.stream), cut, end)).then_some(end);
    }
    let max = out.max_line;
    let pending = t.pending.get_or_insert_with(|| Pending {
        message: Vec::new(),
        timestamp: cri::parse_timestamp(cri.timestamp),
        stream: cri.stream,
        cut: false,
    });
    let mut pending_cut = pending.cut || cut;
    append_capped(&mut pending.message, &mut pending_cut, cri.message, max);
    pending.cut = pending_cut;
    if cri.partial {
        return None;
    }
    (!flush_pending(t, out, end)).then_some(end)
}

/// Delivers the joined partial line, if any, as ending at `end`; false when
/// the sink refused it (it is then held).
fn flush_pending<S: LineSink>(t: &mut Tracked, out: &mut Out<S>, end: u64) -> bool {
    let Some(p) = t.pending.take() else { return true };
    emit(t, out, &p.message, p.timestamp, Some(p.stream), p.cut, end)
}

/// Builds a line and offers it to the sink; false when refused (it is then
/// held, to be offered again before anything else of this file).
fn emit<S: LineSink>(
    t: &mut Tracked,
    out: &mut Out<S>,
    bytes: &[u8],
    timestamp: Option<Timestamp>,
    stream: Option<Stream>,
    cut: bool,
    end: u64,
) -> bool {
    let (message, cut, invalid) = to_message(bytes, cut, out.max_line);
    if cut {
        out.metrics.lines_cut.inc();
    }
    if invalid {
        out.metrics.invalid_utf8_lines.inc();
    }
    let line = LogLine { source: t.source.clone(), timestamp, stream, message, cut };
    match out.sink.accept(line) {
        Ok(()) => {
            t.delivered = end;
            t.lines += 1;
            out.metrics.lines_read.inc();
            true
        }
        Err(line) => {
            t.held = Some(Held { line, end, epoch: t.epoch });
            false
        }
    }
}

/// The message as text, at most `max` bytes: (text, cut, had invalid
/// UTF-8). A multi-byte character split by the cut is dropped, not counted
/// as invalid.
pub fn to_message(bytes: &[u8], cut: bool, max: usize) -> (String, bool, bool) {
    let (bytes, cut) = if bytes.len() > max { (&bytes[..max], true) } else { (bytes, cut) };
    match std::str::from_utf8(bytes) {
        Ok(s) => (s.to_owned(), cut, false),
        Err(e) if cut && e.error_len().is_none() => {
            (String::from_utf8_lossy(&bytes[..e.valid_up_to()]).into_owned(), cut, false)
        }
        Err(_) => (String::from_utf8_lossy(bytes).into_owned(), cut, true),
    }
}

/// A file found by a scan.
struct Candidate {
    path: PathBuf,
    /// The file the writer appends to, rather than a rotated one.
    live: bool,
    /// Read a rotated file never seen live: it can only be one renamed
    /// between two scans.
    adopt: bool,
    source: LogSource,
}

fn file_id(meta: &std::fs::Metadata) -> FileId {
    FileId { dev: meta.dev(), ino: meta.ino() }
}

fn add(found: &mut BTreeMap<FileId, Candidate>, id: FileId, candidate: Candidate) {
    // During a rename both names may show; the live one wins.
    match found.get(&id) {
        Some(c) if c.live => {}
        _ => {
            found.insert(id, candidate);
        }
    }
}

fn scan_cri(root: &Path, found: &mut BTreeMap<FileId, Candidate>, unreadable: &mut Vec<Unreadable>) {
    let pods = match std::fs::read_dir(root) {
        Ok(d) => d,
        Err(e) => {
            unreadable.push(Unreadable { path: root.to_path_buf(), reason: e.to_string() });
            return;
        }
    };
    for pod_dir in pods.flatten() {
        let pod_name = pod_dir.file_name();
        let Some(pod_name) = pod_name.to_str() else { continue };
        let Ok(containers) = list(&pod_dir.path(), unreadable) else { continue };
        for container_dir in containers {
            let container_name = container_dir.file_name();
            let Some(pod) = container_name.to_str().and_then(|c| cri::parse_pod_dirs(pod_name, c)) else {
                continue;
            };
            let Ok(files) = list(&container_dir.path(), unreadable) else { continue };
            for file in files {
                let name = file.file_name();
                let Some(role) = name.to_str().and_then(cri::file_role) else { continue };
                let path = file.path();
                let Ok(meta) = std::fs::metadata(&path) else { continue };
                if !meta.is_file() {
                    continue;
                }
                let source = LogSource {
                    kind: SourceKind::Cri,
                    path: path.clone(),
                    namespace: Some(pod.namespace.clone()),
                    pod: Some(pod.pod.clone()),
                    container: Some(pod.container.clone()),
                };
                add(found, file_id(&meta), Candidate { path, live: role == FileRole::Live, adopt: true, source });
            }
        }
    }
}

/// The entries of a directory; a directory that vanished is empty, one that
/// cannot be read is reported.
fn list(dir: &Path, unreadable: &mut Vec<Unreadable>) -> Result<Vec<std::fs::DirEntry>, ()> {
    match std::fs::read_dir(dir) {
        Ok(d) => Ok(d.flatten().collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => Err(()),
        Err(e) => {
            unreadable.push(Unreadable { path: dir.to_path_buf(), reason: e.to_string() });
            Err(())
        }
    }
}

fn scan_plain(path: &Path, found: &mut BTreeMap<FileId, Candidate>, unreadable: &mut Vec<Unreadable>) {
    let source = |p: &Path| LogSource {
        kind: SourceKind::Plain,
        path: p.to_path_buf(),
        namespace: None,
        pod: None,
        container: None,
    };
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_file() => add(
            found,
            file_id(&meta),
            Candidate { path: path.to_path_buf(), live: true, adopt: false, source: source(path) },
        ),
        Ok(_) => unreadable.push(Unreadable { path: path.to_path_buf(), reason: "not a regular file".into() }),
        Err(e) => unreadable.push(Unreadable { path: path.to_path_buf(), reason: e.to_string() }),
    }
    // Rotated siblings (`auth.log.1`), needed only to finish one that was
    // being read when the agent stopped.
    let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str())) else { return };
    let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let prefix = format!("{name}.");
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(rotated) = file_name.to_str().and_then(|n| n.strip_prefix(&prefix)) else { continue };
        if rotated.is_empty() || cri::is_compressed(rotated) {
            continue;
        }
        let p = entry.path();
        if let Ok(meta) = std::fs::metadata(&p)
            && meta.is_file()
        {
            add(found, file_id(&meta), Candidate { path: p, live: false, adopt: false, source: source(path) });
        }
    }
}
