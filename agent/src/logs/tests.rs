//! The tailer against real files in temporary directories: rotation,
//! truncation, restarts and recreated files, each line counted.
//!
//! Waiting is always for a condition, bounded by a deadline.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::LogMetrics;
use super::checkpoint::{self, Entry, FileId};
use super::tailer::to_message;
use super::*;

/// Collects lines; refuses once it holds `limit` of them.
#[derive(Clone)]
struct Collect {
    lines: Arc<Mutex<Vec<LogLine>>>,
    limit: Arc<AtomicUsize>,
}

impl Collect {
    fn new() -> Self {
        Self::limited(usize::MAX)
    }

    fn limited(limit: usize) -> Self {
        Collect { lines: Arc::default(), limit: Arc::new(AtomicUsize::new(limit)) }
    }

    fn len(&self) -> usize {
        self.lines.lock().unwrap().len()
    }

    fn lines(&self) -> Vec<LogLine> {
        self.lines.lock().unwrap().clone()
    }

    fn open(&self) {
        self.limit.store(usize::MAX, Ordering::SeqCst);
    }
}

impl LineSink for Collect {
    fn accept(&mut self, line: LogLine) -> Result<(), LogLine> {
        let mut lines = self.lines.lock().unwrap();
        if lines.len() >= self.limit.load(Ordering::SeqCst) {
            return Err(line);
        }
        lines.push(line);
        Ok(())
    }
}

struct Running {
    handle: TailerHandle,
    status: Arc<Mutex<LogsStatus>>,
    metrics: LogMetrics,
}

impl Running {
    fn status(&self) -> LogsStatus {
        self.status.lock().unwrap().clone()
    }

    fn stop(self) -> LogMetrics {
        self.handle.stop().unwrap();
        self.metrics
    }
}

fn config(dir: &Path) -> TailerConfig {
    TailerConfig {
        cri_root: Some(dir.join("pods")),
        plain_files: Vec::new(),
        max_line_bytes: 64 * 1024,
        discover_interval: Duration::from_millis(20),
        poll_interval: Duration::from_millis(5),
        checkpoint_interval: Duration::from_millis(50),
        checkpoint_path: dir.join("state/log-checkpoint.json"),
        first_start: StartAt::Beginning,
    }
}

fn start(config: TailerConfig, sink: Collect) -> Running {
    let status = Arc::new(Mutex::new(LogsStatus::default()));
    let published = status.clone();
    let metrics = LogMetrics::default();
    let handle =
        spawn(config, sink, metrics.clone(), Box::new(move |s| *published.lock().unwrap() = s)).expect("start");
    Running { handle, status, metrics }
}

fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ok() {
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

const POD_DIR: &str = "shop_checkout-7d9f8b6c5-x2x4q_4b1f0c2e-8d7a-4a51-9a2e-1c3d5e7f9a0b";

fn container_dir(dir: &Path) -> PathBuf {
    let d = dir.join("pods").join(POD_DIR).join("api");
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// CRI lines `line NNNNNN`; some are split by the runtime into partial
/// lines, as long lines are.
fn cri(numbers: std::ops::Range<u64>) -> String {
    let mut out = String::new();
    for n in numbers {
        let ts = "2026-11-27T03:41:27.123456789Z";
        if n % 7 == 3 {
            out.push_str(&format!(
                "{ts} stdout P line \n{ts} stdout P {:03}\n{ts} stdout F {:03}\n",
                n / 1000,
                n % 1000
            ));
        } else {
            out.push_str(&format!("{ts} stdout F line {n:06}\n"));
        }
    }
    out
}

fn plain(numbers: std::ops::Range<u64>) -> String {
    numbers.map(|n| format!("line {n:06}\n")).collect()
}

fn append(path: &Path) -> File {
    OpenOptions::new().create(true).append(true).open(path).unwrap()
}

/// Every number in `want` exactly once: no duplicates, no gaps.
fn assert_once(lines: &[LogLine], want: impl IntoIterator<Item = u64>) {
    let mut got: Vec<u64> = lines
        .iter()
        .map(|l| {
            l.message
                .strip_prefix("line ")
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("unexpected line {:?}", l.message))
        })
        .collect();
    got.sort_unstable();
    let dups: Vec<u64> = got.windows(2).filter(|w| w[0] == w[1]).map(|w| w[0]).collect();
    assert!(dups.is_empty(), "read more than once: {dups:?}");
    let want: Vec<u64> = want.into_iter().collect();
    let missing: Vec<u64> = want.iter().filter(|n| got.binary_search(n).is_err()).copied().collect();
    assert!(missing.is_empty(), "never read: {missing:?}");
    assert_eq!(got.len(), want.len(), "lines that were never written");
}

#[test]
fn rotation_by_rename_while_writing_reads_every_line_once() {
    let dir = tempfile::tempdir().unwrap();
    let logs = container_dir(dir.path());
    let sink = Collect::new();
    let tailer = start(config(dir.path()), sink.clone());
    let live = logs.join("0.log");
    let mut writer = append(&live);
    let mut next = 0;
    for rotation in 0..3 {
        let before = next as usize;
        writer.write_all(cri(next..next + 150).as_bytes()).unwrap();
        next += 150;
        // Renamed while the tailer is reading it, not before it saw it.
        wait_until("the live file being read", || sink.len() > before);
        std::fs::rename(&live, logs.join(format!("0.log.2026112703412{rotation}"))).unwrap();
        // The runtime writes to the old file until it reopens the new one.
        writer.write_all(cri(next..next + 50).as_bytes()).unwrap();
        next += 50;
        writer = append(&live);
    }
    writer.write_all(cri(next..next + 100).as_bytes()).unwrap();
    next += 100;
    wait_until("every line", || sink.len() >= next as usize);
    wait_until("rotated files closed", || tailer.status().files.len() == 1);
    assert_once(&sink.lines(), 0..next);
    let metrics = tailer.stop();
    assert_eq!(metrics.rotations.get(), 3);
    assert_eq!(metrics.truncations.get(), 0);
    assert_eq!(metrics.lines_read.get(), next);
}

#[test]
fn files_rotated_faster_than_the_scan_are_still_read_once() {
    let dir = tempfile::tempdir().unwrap();
    let logs = container_dir(dir.path());
    let live = logs.join("0.log");
    let sink = Collect::new();
    let tailer = start(config(dir.path()), sink.clone());
    wait_until("the first scan", || tailer.status().checkpoint.last_written.is_some());
    let mut next = 0;
    for rotation in 0..5 {
        append(&live).write_all(cri(next..next + 40).as_bytes()).unwrap();
        next += 40;
        std::fs::rename(&live, logs.join(format!("0.log.2026112703413{rotation}"))).unwrap();
    }
    wait_until("every line", || sink.len() >= next as usize);
    wait_until("the rotated files closed", || tailer.status().files.is_empty());
    assert_once(&sink.lines(), 0..next);
    tailer.stop();
}

#[test]
fn copytruncate_while_writing_reads_every_line_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.log");
    let mut cfg = config(dir.path());
    cfg.plain_files = vec![path.clone()];
    let sink = Collect::new();
    let tailer = start(cfg, sink.clone());
    let mut writer = append(&path);
    let mut next = 0;
    for round in 1..=3u64 {
        writer.write_all(plain(next..next + 200).as_bytes()).unwrap();
        next += 200;
        // logrotate copies, then truncates; lines written in between are lost
        // by copytruncate itself, so the copy is taken once they were read.
        wait_until("the lines before the copy", || sink.len() >= next as usize);
        std::fs::copy(&path, dir.path().join("app.log.1")).unwrap();
        writer.set_len(0).unwrap();
        // Longer than what was there: the offset alone cannot tell.
        writer.write_all(plain(next..next + 300).as_bytes()).unwrap();
        next += 300;
        wait_until("the lines after the truncation", || sink.len() >= next as usize);
        assert_eq!(tailer.metrics.truncations.get(), round);
    }
    assert_once(&sink.lines(), 0..next);
    let metrics = tailer.stop();
    assert_eq!(metrics.rotations.get(), 0);
}

#[test]
fn a_file_rewritten_past_the_offset_while_the_sink_is_full_is_read_from_its_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.log");
    let mut cfg = config(dir.path());
    cfg.plain_files = vec![path.clone()];
    let sink = Collect::limited(100);
    let tailer = start(cfg, sink.clone());
    let mut writer = append(&path);
    writer.write_all(plain(0..150).as_bytes()).unwrap();
    wait_until("a full sink", || {
        sink.len() == 100 && tailer.status().files.first().is_some_and(|f| f.waiting_for_sink)
    });
    writer.set_len(0).unwrap();
    writer.write_all(plain(1000..1400).as_bytes()).unwrap();
    // Only the fingerprint can see this: the file is longer than the offset.
    wait_until("the rewrite noticed", || tailer.metrics.truncations.get() == 1);
    sink.open();
    wait_until("the new content", || sink.len() >= 501);
    let lines = sink.lines();
    // Line 100 was read before the truncation and waited for the sink;
    // 101..150 went to logrotate's copy.
    assert_once(&lines, (0..=100).chain(1000..1400));
    tailer.stop();
}

#[test]
fn a_clean_restart_continues_exactly_where_the_last_one_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let logs = container_dir(dir.path());
    let live = logs.join("0.log");
    let mut writer = append(&live);
    writer.write_all(cri(0..500).as_bytes()).unwrap();
    // Stopped in the middle of the file, with a line waiting for the sink
    // and partial lines read but not finished.
    let first = Collect::limited(203);
    let tailer = start(config(dir.path()), first.clone());
    wait_until("the first 203 lines", || first.len() == 203);
    tailer.stop();
    let saved = checkpoint::load(&dir.path().join("state/log-checkpoint.json")).unwrap().unwrap();
    assert_eq!(saved.len(), 1);
    assert_eq!(saved[0].lines, 203);

    // While the agent is down: more lines, then a rotation and a new file.
    writer.write_all(cri(500..600).as_bytes()).unwrap();
    std::fs::rename(&live, logs.join("0.log.20261127-034127")).unwrap();
    let mut writer = append(&live);
    writer.write_all(cri(600..700).as_bytes()).unwrap();

    let second = Collect::new();
    let tailer = start(config(dir.path()), second.clone());
    wait_until("the rest", || second.len() >= 497);
    writer.write_all(cri(700..800).as_bytes()).unwrap();
    wait_until("lines written after the restart", || second.len() >= 597);
    let mut all = first.lines();
    all.extend(second.lines());
    assert_once(&all, 0..800);
    wait_until("the rotated file closed", || tailer.status().files.len() == 1);
    tailer.stop();
}

#[test]
fn a_deleted_and_recreated_file_is_a_new_file() {
    let dir = tempfile::tempdir().unwrap();
    let logs = container_dir(dir.path());
    let live = logs.join("0.log");
    let sink = Collect::new();
    let tailer = start(config(dir.path()), sink.clone());
    append(&live).write_all(cri(0..100).as_bytes()).unwrap();
    wait_until("the first file", || sink.len() == 100);
    std::fs::remove_file(&live).unwrap();
    append(&live).write_all(cri(100..150).as_bytes()).unwrap();
    wait_until("the recreated file", || sink.len() >= 150);
    wait_until("the deleted file closed", || tailer.status().files.len() == 1);
    tailer.stop();

    // Deleted and recreated while stopped: whether or not the inode is
    // reused, the content is new.
    std::fs::remove_file(&live).unwrap();
    append(&live).write_all(cri(150..400).as_bytes()).unwrap();
    let tailer = start(config(dir.path()), sink.clone());
    wait_until("the file recreated while stopped", || sink.len() >= 400);
    assert_once(&sink.lines(), 0..400);
    tailer.stop();
}

#[test]
fn a_reused_inode_with_other_content_is_read_from_its_start() {
    let dir = tempfile::tempdir().unwrap();
    let logs = container_dir(dir.path());
    let live = logs.join("0.log");
    append(&live).write_all(cri(0..50).as_bytes()).unwrap();
    let meta = std::fs::metadata(&live).unwrap();
    let id =
        FileId { dev: std::os::unix::fs::MetadataExt::dev(&meta), ino: std::os::unix::fs::MetadataExt::ino(&meta) };
    // What the previous file at this inode left behind: its own fingerprint
    // and an offset in the middle of this file.
    let stale = Entry {
        path: live.clone(),
        id,
        fingerprint: checkpoint::fingerprint(b"another file's first bytes"),
        fingerprint_len: 26,
        offset: 1024,
        lines: 7,
    };
    checkpoint::store(&dir.path().join("state/log-checkpoint.json"), vec![stale]).unwrap();
    let sink = Collect::new();
    let tailer = start(config(dir.path()), sink.clone());
    wait_until("the file", || sink.len() >= 50);
    assert_once(&sink.lines(), 0..50);
    tailer.stop();
}

#[test]
fn partial_lines_are_joined_and_the_path_names_namespace_pod_and_container() {
    let dir = tempfile::tempdir().unwrap();
    let logs = container_dir(dir.path());
    let sink = Collect::new();
    let tailer = start(config(dir.path()), sink.clone());
    let mut w = append(&logs.join("0.log"));
    w.write_all(b"2026-11-27T03:41:27.100000000Z stderr P first \n").unwrap();
    w.write_all(b"2026-11-27T03:41:27.200000000Z stderr P second ").unwrap();
    // The rest of the line arrives later, as runtimes write it.
    wait_until("the partial line read", || tailer.metrics.bytes_read.get() > 0);
    w.write_all(b"half \n2026-11-27T03:41:27.300000000Z stderr F third\n").unwrap();
    w.write_all(b"not a CRI line\n2026-11-27T03:41:28Z stdout F \n").unwrap();
    wait_until("three lines", || sink.len() >= 3);
    let lines = sink.lines();
    assert_eq!(lines.len(), 3);
    let l = &lines[0];
    assert_eq!(l.message, "first second half third");
    assert_eq!(l.stream, Some(Stream::Stderr));
    assert_eq!(l.timestamp, remedy_shared::Timestamp::parse_rfc3339("2026-11-27T03:41:27.100Z"));
    assert!(!l.cut);
    assert_eq!(l.source.kind, SourceKind::Cri);
    assert_eq!(l.source.namespace.as_deref(), Some("shop"));
    assert_eq!(l.source.pod.as_deref(), Some("checkout-7d9f8b6c5-x2x4q"));
    assert_eq!(l.source.container.as_deref(), Some("api"));
    assert_eq!((lines[1].message.as_str(), lines[1].stream, lines[1].timestamp), ("not a CRI line", None, None));
    assert_eq!((lines[2].message.as_str(), lines[2].stream), ("", Some(Stream::Stdout)));
    let status = tailer.status();
    assert_eq!(status.files.len(), 1);
    assert_eq!(status.files[0].namespace.as_deref(), Some("shop"));
    tailer.stop();
}

#[test]
fn a_ten_mib_line_is_cut_and_the_next_line_still_read() {
    let dir = tempfile::tempdir().unwrap();
    let logs = container_dir(dir.path());
    let plain_path = dir.path().join("app.log");
    let mut cfg = config(dir.path());
    cfg.plain_files = vec![plain_path.clone()];
    let sink = Collect::new();
    let tailer = start(cfg, sink.clone());
    let mut cri_writer = append(&logs.join("0.log"));
    let mut plain_writer = append(&plain_path);
    cri_writer.write_all(b"2026-11-27T03:41:27Z stdout F ").unwrap();
    let mib = vec![b'x'; 1024 * 1024];
    for _ in 0..10 {
        cri_writer.write_all(&mib).unwrap();
        plain_writer.write_all(&mib).unwrap();
    }
    cri_writer.write_all(b"\n2026-11-27T03:41:28Z stdout F after\n").unwrap();
    plain_writer.write_all(b"\nafter\n").unwrap();
    wait_until("four lines", || sink.len() >= 4);
    let lines = sink.lines();
    assert_eq!(lines.len(), 4);
    for kind in [SourceKind::Cri, SourceKind::Plain] {
        let of: Vec<&LogLine> = lines.iter().filter(|l| l.source.kind == kind).collect();
        assert_eq!(of.len(), 2, "{kind:?}");
        assert!(of[0].cut, "{kind:?}");
        assert_eq!(of[0].message.len(), 64 * 1024, "{kind:?}");
        assert!(of[0].message.bytes().all(|b| b == b'x'));
        assert_eq!((of[1].message.as_str(), of[1].cut), ("after", false), "{kind:?}");
    }
    let metrics = tailer.stop();
    assert_eq!(metrics.lines_cut.get(), 2);
    assert!(metrics.bytes_read.get() > 20 * 1024 * 1024);
}

#[test]
fn invalid_utf8_and_binary_garbage_are_passed_on_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.log");
    let mut cfg = config(dir.path());
    cfg.plain_files = vec![path.clone()];
    let sink = Collect::new();
    let tailer = start(cfg, sink.clone());
    let mut w = append(&path);
    w.write_all(b"user \xff\xfe logged in\r\n").unwrap();
    let garbage: Vec<u8> = (0..200_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    w.write_all(&garbage).unwrap();
    w.write_all(b"\nstill here\n").unwrap();
    wait_until("the line after the garbage", || sink.lines().iter().any(|l| l.message == "still here"));
    let lines = sink.lines();
    assert_eq!(lines[0].message, "user \u{fffd}\u{fffd} logged in");
    assert!(tailer.metrics.invalid_utf8_lines.get() >= 1);
    assert!(lines.iter().all(|l| l.message.len() <= 64 * 1024 * 3));
    tailer.stop();
}

#[test]
fn a_full_sink_stops_the_reading_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let logs = container_dir(dir.path());
    let sink = Collect::limited(10);
    let tailer = start(config(dir.path()), sink.clone());
    append(&logs.join("0.log")).write_all(cri(0..1000).as_bytes()).unwrap();
    wait_until("the tailer waiting for the sink", || {
        tailer.status().files.first().is_some_and(|f| f.waiting_for_sink && f.lines == 10)
    });
    wait_until("blocked time counted", || tailer.metrics.sink_blocked_seconds.get() > 0.0);
    assert_eq!(sink.len(), 10);
    sink.open();
    wait_until("every line", || sink.len() >= 1000);
    assert_once(&sink.lines(), 0..1000);
    tailer.stop();
}

#[test]
fn a_missing_root_is_reported_and_picked_up_when_it_appears() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Collect::new();
    let tailer = start(config(dir.path()), sink.clone());
    wait_until("the missing root reported", || {
        tailer.status().unreadable.iter().any(|u| u.path == dir.path().join("pods"))
    });
    let logs = container_dir(dir.path());
    append(&logs.join("0.log")).write_all(cri(0..20).as_bytes()).unwrap();
    wait_until("the file", || sink.len() >= 20);
    assert!(tailer.status().unreadable.is_empty());
    assert_once(&sink.lines(), 0..20);
    tailer.stop();
}

#[test]
fn the_first_start_on_a_node_begins_at_the_end_of_existing_files() {
    let dir = tempfile::tempdir().unwrap();
    let logs = container_dir(dir.path());
    let mut w = append(&logs.join("0.log"));
    w.write_all(cri(0..100).as_bytes()).unwrap();
    let mut cfg = config(dir.path());
    cfg.first_start = StartAt::End;
    let sink = Collect::new();
    let tailer = start(cfg.clone(), sink.clone());
    wait_until("the file opened", || tailer.status().files.len() == 1);
    w.write_all(cri(100..150).as_bytes()).unwrap();
    wait_until("the new lines", || sink.len() >= 50);
    assert_once(&sink.lines(), 100..150);
    tailer.stop();
    // Once there is a checkpoint, a file it does not know was created while
    // the agent was down: read from its start.
    let other = dir.path().join("pods").join(POD_DIR).join("sidecar");
    std::fs::create_dir_all(&other).unwrap();
    append(&other.join("0.log")).write_all(cri(150..170).as_bytes()).unwrap();
    let tailer = start(cfg, sink.clone());
    wait_until("the new file", || sink.len() >= 70);
    assert_once(&sink.lines(), 100..170);
    tailer.stop();
}

#[test]
fn a_cut_through_a_multibyte_character_is_not_invalid_utf8() {
    assert_eq!(to_message("aé".as_bytes(), false, 2), ("a".to_owned(), true, false));
    assert_eq!(to_message(b"ab\xff", false, 2), ("ab".to_owned(), true, false));
    assert_eq!(to_message(b"a\xffb", false, 8), ("a\u{fffd}b".to_owned(), false, true));
    assert_eq!(to_message(b"abc", true, 8), ("abc".to_owned(), true, false));
}
