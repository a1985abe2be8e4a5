//! The `log_cleanup` directive: deletes old files matching globs under the
//! configured roots, and nothing else.
//!
//! Parameters, all strings; any other is refused, naming it:
//!
//! - `roots` (optional): a JSON list in the runbook's form,
//!   `[{"path": "/tmp", "globs": ["*.log"], "older_than": "1d"}]`. Each path
//!   must be a configured root or a directory inside one; a file goes only
//!   if it matches one of the directive's globs and one of the root's
//!   configured globs, and an age younger than the configured `older_than`
//!   is refused. Without it, every configured root as configured.
//! - `emergency` (optional, `true`/`false`): use each root's
//!   `emergency_older_than` instead of its age.
//! - `if_disk_above` (optional, a percent from 1 to 99): emergency for each
//!   root whose filesystem is fuller than this.
//! - `max_files` (optional): at most this many deletions, never more than
//!   `local_actions.log_cleanup.max_files`.
//!
//! Safety: nothing is ever resolved by a full path after the root. The
//! root is opened with `openat2` and `RESOLVE_NO_SYMLINKS`, so neither it
//! nor any directory on its path may be a symlink. Every directory below
//! is opened relative to its parent's handle with `openat2` and
//! `RESOLVE_BENEATH | RESOLVE_NO_XDEV | RESOLVE_NO_SYMLINKS`: the kernel
//! refuses a symlink (to a file or a directory) and any mount crossing
//! while it resolves. Every entry is looked at with `statx` and must be on
//! its directory's mount (same mount id, same device): a tmpfs, a bind
//! mount of the same filesystem or a file bound over a name is never
//! entered nor deleted. A file with another hard link (`st_nlink > 1`) is
//! kept: that other name may be outside the root. A file any process holds
//! open, for reading or writing (every `/proc/PID/fd` link, by device and
//! inode), is kept, and so are the files the agent's own tailer reads; a
//! scan of `/proc` that cannot finish within its bounds keeps every
//! candidate, and processes whose descriptors the agent may not read are
//! counted in the reply. Right before a file is unlinked
//! (relative to its directory's handle) the directory is resolved again
//! from the root the same way and must be the very one held, and the file
//! must still be the same inode on the same mount, a regular file with one
//! link, and old enough.
//!
//! Outcomes: `succeeded` (the run finished, the evidence says what went);
//! `dry_run` (what would go, nothing deleted, nothing of the budget spent);
//! `refused` (a parameter, log cleanup off, the budget or the cooldown).
//! The evidence has `files_deleted`, `bytes_freed`, `files_matched`,
//! `kept` (files kept for safety) and `skipped.<reason>` counts (the
//! reasons of [`Kept`]: `too_young`, `symlink`, `outside_root`, `mount`,
//! `too_deep`, `hard_links`, `tailer`, `open`, `changed`,
//! `open_check_incomplete`, `error`), `root.<i>.*` per root (path, age,
//! emergency, disk percent), and up to [`LISTED`] `file.<path>` entries,
//! each `deleted`, `would_delete` or the reason it was kept.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use nix::dir::Dir;
use nix::fcntl::{OFlag, openat};
use nix::sys::stat::Mode;
use nix::unistd::{UnlinkatFlags, unlinkat};
use remedy_shared::cleanup::Kept;
use rustix::fs::{AtFlags, CWD, FileType, Mode as RawMode, OFlags, ResolveFlags, Statx, StatxFlags, openat2, statx};
use rustix::io::Errno;
use serde::Deserialize;

use super::config::{CleanupConfig, CleanupRoot, plain_absolute, valid_glob};
use remedy_shared::config::opt_duration;

/// `file.<path>` entries in the evidence.
pub const LISTED: usize = 100;
/// File descriptors looked at in one scan of `/proc`.
const MAX_FDS_SCANNED: usize = 500_000;
/// Directory handles held at once by one run.
const MAX_DIRS_HELD: usize = 512;
/// The parameters, as refusals list them.
const PARAMS: &str = "roots, emergency, if_disk_above, max_files";

/// One root of a run, with what applies to it.
#[derive(Debug, Clone, PartialEq)]
pub struct RunRoot {
    /// Where.
    pub path: PathBuf,
    /// The file must match one of these...
    pub globs: Vec<String>,
    /// ...and one of these (the configured root's).
    pub allowed_globs: Vec<String>,
    /// Normal age.
    pub older_than: Duration,
    /// Age in emergency mode.
    pub emergency_older_than: Duration,
}

/// What a `log_cleanup` directive asks for, checked against the
/// configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct CleanupParams {
    /// Roots, each within a configured root.
    pub roots: Vec<RunRoot>,
    /// Emergency for every root.
    pub emergency: bool,
    /// Emergency for roots whose disk is fuller than this percent.
    pub if_disk_above: Option<f64>,
    /// Most deletions.
    pub max_files: usize,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RootParam {
    path: String,
    globs: Option<Vec<String>>,
    #[serde(default, with = "opt_duration")]
    older_than: Option<Duration>,
}

fn human(d: Duration) -> String {
    remedy_shared::config::format_duration(d)
}

/// Reads a `log_cleanup`'s parameters; the error names the parameter at
/// fault and why.
pub fn cleanup_params(params: &HashMap<String, String>, config: &CleanupConfig) -> Result<CleanupParams, String> {
    let mut keys: Vec<&String> = params.keys().collect();
    keys.sort();
    if let Some(unknown) =
        keys.into_iter().find(|k| !matches!(k.as_str(), "roots" | "emergency" | "if_disk_above" | "max_files"))
    {
        return Err(format!("unknown parameter `{unknown}` (log_cleanup takes {PARAMS})"));
    }
    let emergency = match params.get("emergency").map(|s| s.trim()) {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => return Err(format!("emergency: `{other}` is not true or false")),
    };
    let if_disk_above = params
        .get("if_disk_above")
        .map(|t| match t.trim().trim_end_matches('%').parse::<f64>() {
            Ok(p) if (1.0..=99.0).contains(&p) => Ok(p),
            _ => Err(format!("if_disk_above: `{t}` is not a percent from 1 to 99")),
        })
        .transpose()?;
    let max_files = params
        .get("max_files")
        .map(|t| match t.trim().parse::<usize>() {
            Ok(n) if (1..=config.max_files).contains(&n) => Ok(n),
            _ => Err(format!("max_files: `{t}` is not a number from 1 to {}", config.max_files)),
        })
        .transpose()?
        .unwrap_or(config.max_files);
    let roots = match params.get("roots") {
        None => config
            .roots
            .iter()
            .map(|r| RunRoot {
                path: r.path.clone(),
                globs: r.globs.clone(),
                allowed_globs: r.globs.clone(),
                older_than: r.older_than,
                emergency_older_than: r.emergency_older_than,
            })
            .collect(),
        Some(text) => {
            let list: Vec<RootParam> = serde_json::from_str(text)
                .map_err(|e| format!("roots: not a JSON list of {{path, globs, older_than}}: {e}"))?;
            if list.is_empty() {
                return Err("roots: names no root".to_owned());
            }
            let mut roots = Vec::with_capacity(list.len());
            for (i, r) in list.into_iter().enumerate() {
                roots.push(run_root(i, r, &config.roots)?);
            }
            roots
        }
    };
    Ok(CleanupParams { roots, emergency, if_disk_above, max_files })
}

fn run_root(i: usize, r: RootParam, allowed: &[CleanupRoot]) -> Result<RunRoot, String> {
    let path = PathBuf::from(r.path.trim_end_matches('/'));
    if !plain_absolute(&path) {
        return Err(format!("roots[{i}].path: `{}` is outside_root: not an absolute path without `.` or `..`", r.path));
    }
    let Some(root) = allowed.iter().find(|a| contained(&a.path, &path)) else {
        let names: Vec<String> = allowed.iter().map(|a| a.path.display().to_string()).collect();
        return Err(format!(
            "roots[{i}].path: `{}` is outside_root: not within a configured root ({})",
            r.path,
            names.join(", ")
        ));
    };
    let globs = r.globs.unwrap_or_else(|| root.globs.clone());
    if globs.is_empty() {
        return Err(format!("roots[{i}].globs: lists no glob"));
    }
    if let Some(g) = globs.iter().find(|g| !valid_glob(g)) {
        return Err(format!("roots[{i}].globs: `{g}` is not a file name glob (no `/`, not one matching every name)"));
    }
    let older_than = r.older_than.unwrap_or(root.older_than);
    if older_than < root.older_than {
        return Err(format!(
            "roots[{i}].older_than: {} is younger than this agent allows under {} ({}); an emergency run uses {}",
            human(older_than),
            root.path.display(),
            human(root.older_than),
            human(root.emergency_older_than)
        ));
    }
    Ok(RunRoot {
        path,
        globs,
        allowed_globs: root.globs.clone(),
        older_than,
        emergency_older_than: root.emergency_older_than,
    })
}

/// Whether `name` matches `glob`: `*` any run of bytes (a leading `.`
/// too, as `find -name` does), `?` one byte, `[abc]`, `[a-z]`, `[!x]` one
/// of (or none of) a set.
pub fn glob_match(glob: &[u8], name: &[u8]) -> bool {
    let (mut g, mut n) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        if g < glob.len() {
            match glob[g] {
                b'*' => {
                    star = Some((g, n));
                    g += 1;
                    continue;
                }
                b'?' => {
                    g += 1;
                    n += 1;
                    continue;
                }
                b'[' => {
                    if let Some((matched, next)) = class(&glob[g..], name[n]) {
                        if matched {
                            g += next;
                            n += 1;
                            continue;
                        }
                    } else if name[n] == b'[' {
                        g += 1;
                        n += 1;
                        continue;
                    }
                }
                c if c == name[n] => {
                    g += 1;
                    n += 1;
                    continue;
                }
                _ => {}
            }
        }
        match star {
            Some((sg, sn)) => {
                g = sg + 1;
                n = sn + 1;
                star = Some((sg, sn + 1));
            }
            None => return false,
        }
    }
    glob[g..].iter().all(|c| *c == b'*')
}

/// A `[...]` class at the start of `glob`: whether `c` is in it, and its
/// length; `None` when it is not closed.
fn class(glob: &[u8], c: u8) -> Option<(bool, usize)> {
    let mut i = 1;
    let negate = matches!(glob.get(1), Some(b'!' | b'^'));
    if negate {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    while i < glob.len() {
        if glob[i] == b']' && !first {
            return Some((matched != negate, i + 1));
        }
        first = false;
        if glob.get(i + 1) == Some(&b'-') && glob.get(i + 2).is_some_and(|e| *e != b']') {
            if (glob[i]..=glob[i + 2]).contains(&c) {
                matched = true;
            }
            i += 3;
        } else {
            if glob[i] == c {
                matched = true;
            }
            i += 1;
        }
    }
    None
}

/// Whether a file name matches one of `globs`.
pub fn matches_any(globs: &[String], name: &OsStr) -> bool {
    globs.iter().any(|g| glob_match(g.as_bytes(), name.as_bytes()))
}

/// Whether a file last modified at `mtime` is older than `age` at `now`.
pub fn old_enough(mtime: SystemTime, age: Duration, now: SystemTime) -> bool {
    now.duration_since(mtime).is_ok_and(|d| d > age)
}

/// Whether `path` lies within `root` by its components alone (no `..`).
pub fn contained(root: &Path, path: &Path) -> bool {
    path.starts_with(root) && path.components().all(|c| !matches!(c, Component::ParentDir | Component::CurDir))
}

/// An open directory below a root, with the names leading to it and what
/// it was when opened.
#[derive(Debug)]
struct DirHandle {
    fd: OwnedFd,
    root: usize,
    rel: Vec<OsString>,
    dev: u64,
    ino: u64,
    /// Its mount: every entry deleted or entered must be on this one.
    mnt_id: u64,
}

#[derive(Debug)]
struct Candidate {
    dir: Arc<DirHandle>,
    name: OsString,
    path: PathBuf,
    dev: u64,
    ino: u64,
    size: u64,
    age: Duration,
}

/// What a run did, for the reply, metrics and /debug/state.
#[derive(Debug, Default, Clone)]
pub struct Outcome {
    /// Files deleted (or that would be, in a dry run).
    pub deleted: u64,
    /// Bytes freed (or that would be).
    pub bytes: u64,
    /// Files old enough and matching.
    pub matched: u64,
    /// Kept, by reason.
    pub kept: BTreeMap<Kept, u64>,
    /// Why the run stopped early, if it did.
    pub truncated: Option<String>,
    /// Per file, up to [`LISTED`].
    pub files: Vec<(PathBuf, String)>,
    /// Per root evidence.
    pub roots: BTreeMap<String, String>,
    /// Processes whose open files could not be read.
    pub procs_unreadable: u64,
}

impl Outcome {
    fn keep(&mut self, why: Kept, path: &Path) {
        *self.kept.entry(why).or_default() += 1;
        if why.for_safety() {
            self.list(path, why.name());
        }
    }

    fn list(&mut self, path: &Path, what: &str) {
        if self.files.len() < LISTED {
            self.files.push((path.to_path_buf(), what.to_owned()));
        }
    }

    /// `kept 2: 1 has other links, 1 is open by a process`, or `None`.
    pub fn kept_summary(&self) -> Option<String> {
        remedy_shared::cleanup::kept_summary(&self.kept)
    }
}

/// What one look at a directory entry (or an open handle) tells.
#[derive(Debug, Clone, Copy)]
struct Meta {
    kind: FileType,
    dev: u64,
    ino: u64,
    mnt_id: u64,
    nlink: u64,
    size: u64,
    mtime: SystemTime,
}

impl Meta {
    /// Whether `other` is the very same object on the same mount.
    fn same(&self, other: &Meta) -> bool {
        (self.dev, self.ino, self.mnt_id) == (other.dev, other.ino, other.mnt_id)
    }
}

/// What [`look`] asks `statx` for.
const LOOK: StatxFlags = StatxFlags::TYPE
    .union(StatxFlags::MODE)
    .union(StatxFlags::NLINK)
    .union(StatxFlags::INO)
    .union(StatxFlags::SIZE)
    .union(StatxFlags::MTIME)
    .union(StatxFlags::MNT_ID);

fn meta(st: &Statx) -> Result<Meta, Errno> {
    // A kernel older than 5.8 answers without a mount id: without it a
    // bind mount of the same filesystem looks like any directory, so
    // nothing is entered or deleted.
    if !StatxFlags::from_bits_retain(st.stx_mask).contains(StatxFlags::MNT_ID) {
        return Err(Errno::NOSYS);
    }
    let mtime = SystemTime::UNIX_EPOCH
        + Duration::from_secs(st.stx_mtime.tv_sec.max(0) as u64)
        + Duration::from_nanos(u64::from(st.stx_mtime.tv_nsec));
    Ok(Meta {
        kind: FileType::from_raw_mode(u32::from(st.stx_mode)),
        dev: rustix::fs::makedev(st.stx_dev_major, st.stx_dev_minor),
        ino: st.stx_ino,
        mnt_id: st.stx_mnt_id,
        nlink: u64::from(st.stx_nlink),
        size: st.stx_size,
        mtime,
    })
}

/// Looks at `name` in `dir` without following a symlink or triggering an
/// automount. A mount point reads as the root of what is mounted there,
/// with that mount's id.
fn look<Fd: AsFd>(dir: Fd, name: &OsStr) -> Result<Meta, Errno> {
    statx(dir, name, AtFlags::SYMLINK_NOFOLLOW | AtFlags::NO_AUTOMOUNT, LOOK).and_then(|s| meta(&s))
}

/// Looks at what an open handle refers to.
fn look_fd<Fd: AsFd>(fd: Fd) -> Result<Meta, Errno> {
    statx(fd, "", AtFlags::EMPTY_PATH | AtFlags::SYMLINK_NOFOLLOW, LOOK).and_then(|s| meta(&s))
}

/// How every directory below a root is opened: resolved by the kernel
/// beneath the directory handle given, refusing any symlink (magic ones
/// too) and any mount crossing, bind mounts included. The check is done
/// by the kernel while it resolves, so nothing swapped in between a look
/// and the open can lead out of the root.
const BENEATH: ResolveFlags = ResolveFlags::BENEATH
    .union(ResolveFlags::NO_XDEV)
    .union(ResolveFlags::NO_SYMLINKS)
    .union(ResolveFlags::NO_MAGICLINKS);

const DIR_FLAGS: OFlags = OFlags::RDONLY.union(OFlags::DIRECTORY).union(OFlags::NOFOLLOW).union(OFlags::CLOEXEC);

/// Opens the directory `rel` (one name, or names joined by `/`) beneath
/// `dir`.
fn open_beneath<Fd: AsFd>(dir: Fd, rel: &Path) -> Result<OwnedFd, Errno> {
    openat2(dir, rel, DIR_FLAGS, RawMode::empty(), BENEATH)
}

fn names<Fd: AsFd>(dir: Fd) -> nix::Result<Vec<OsString>> {
    let fd = openat(dir, ".", OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty())?;
    let mut d = Dir::from_fd(fd)?;
    let mut out = Vec::new();
    for entry in d.iter() {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            out.push(OsStr::from_bytes(name).to_owned());
        }
    }
    out.sort();
    Ok(out)
}

/// Disk use of the filesystem of `fd`, percent, as `df` counts it.
fn disk_percent<Fd: AsFd>(fd: Fd) -> Option<f64> {
    let s = nix::sys::statvfs::fstatvfs(fd).ok()?;
    let used = s.blocks().saturating_sub(s.blocks_free()) as f64;
    let total = used + s.blocks_available() as f64;
    (total > 0.0).then(|| used / total * 100.0)
}

/// Limits of one run.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most deletions.
    pub max_files: usize,
    /// Deepest level.
    pub max_depth: usize,
    /// When to stop.
    pub deadline: Instant,
}

/// Runs a cleanup: walks, checks, and deletes unless `dry_run`. `tailed` is
/// what the agent's tailer reads, by device and inode.
pub fn run(params: &CleanupParams, limits: Limits, tailed: &HashSet<(u64, u64)>, dry_run: bool) -> Outcome {
    let mut out = Outcome::default();
    let walked = walk(params, limits, &mut out);
    if walked.candidates.is_empty() {
        return out;
    }
    let wanted: HashSet<(u64, u64)> = walked.candidates.iter().map(|c| (c.dev, c.ino)).collect();
    let open = open_files(&wanted, limits.deadline, MAX_FDS_SCANNED);
    out.procs_unreadable = open.unreadable;
    delete(walked, &open, tailed, limits, dry_run, &mut out);
    out
}

/// What the walk found: each root's handle (`None` when it was not
/// entered) and the files that may go.
#[derive(Debug)]
struct Walked {
    roots: Vec<Option<Arc<DirHandle>>>,
    candidates: Vec<Candidate>,
}

fn walk(params: &CleanupParams, limits: Limits, out: &mut Outcome) -> Walked {
    let now = crate::clock::wall();
    let mut candidates: Vec<Candidate> = Vec::new();
    let mut held_dirs = 0usize;
    let mut roots: Vec<Option<Arc<DirHandle>>> = Vec::new();
    for (i, root) in params.roots.iter().enumerate() {
        let key = |k: &str| format!("root.{i}.{k}");
        out.roots.insert(key("path"), root.path.display().to_string());
        let handle = match open_root(&root.path) {
            Ok(h) => h,
            Err((why, message)) => {
                out.roots.insert(key("skipped"), message);
                if let Some(why) = why {
                    out.keep(why, &root.path);
                }
                roots.push(None);
                continue;
            }
        };
        let handle = Arc::new(DirHandle { root: i, ..handle });
        let disk = disk_percent(&handle.fd);
        let emergency = params.emergency || params.if_disk_above.zip(disk).is_some_and(|(limit, d)| d > limit);
        let age = if emergency { root.emergency_older_than.min(root.older_than) } else { root.older_than };
        out.roots.insert(key("emergency"), emergency.to_string());
        out.roots.insert(key("older_than"), human(age));
        if let Some(d) = disk {
            out.roots.insert(key("disk_percent"), format!("{d:.1}"));
        }
        roots.push(Some(handle.clone()));
        let mut stack = vec![handle];
        while let Some(dir) = stack.pop() {
            if out.truncated.is_some() {
                break;
            }
            let list = match names(&dir.fd) {
                Ok(l) => l,
                Err(e) => {
                    out.roots
                        .insert(format!("root.{i}.error"), format!("cannot list {}: {e}", show(&root.path, &dir.rel)));
                    continue;
                }
            };
            let mut has_candidates = false;
            for name in list {
                if Instant::now() >= limits.deadline {
                    out.truncated = Some("max_duration".into());
                    break;
                }
                if candidates.len() >= limits.max_files.saturating_mul(2) {
                    out.truncated = Some("max_files".into());
                    break;
                }
                let path = root.path.join(show_rel(&dir.rel)).join(&name);
                let m = match look(&dir.fd, &name) {
                    Ok(m) => m,
                    Err(Errno::NOENT) => continue,
                    Err(_) => {
                        out.keep(Kept::Error, &path);
                        continue;
                    }
                };
                // A mount point (a tmpfs, a bind mount of this very
                // filesystem, a file bound over a name) has another mount
                // id than its directory, whatever its device number.
                if m.mnt_id != dir.mnt_id || m.dev != dir.dev {
                    out.keep(Kept::Mount, &path);
                    continue;
                }
                match m.kind {
                    FileType::Symlink => out.keep(Kept::Symlink, &path),
                    FileType::Directory if dir.rel.len() + 1 > limits.max_depth => out.keep(Kept::TooDeep, &path),
                    FileType::Directory if held_dirs >= MAX_DIRS_HELD => out.truncated = Some("directories".into()),
                    FileType::Directory => match open_beneath(&dir.fd, Path::new(&name)) {
                        Ok(fd) => match look_fd(&fd) {
                            Ok(opened) if opened.same(&m) => {
                                let mut rel = dir.rel.clone();
                                rel.push(name);
                                held_dirs += 1;
                                stack.push(Arc::new(DirHandle {
                                    fd,
                                    root: i,
                                    rel,
                                    dev: opened.dev,
                                    ino: opened.ino,
                                    mnt_id: opened.mnt_id,
                                }));
                            }
                            _ => out.keep(Kept::Changed, &path),
                        },
                        // Mounted on between the look and the open.
                        Err(Errno::XDEV) => out.keep(Kept::Mount, &path),
                        // Swapped for a symlink (or a file) meanwhile.
                        Err(Errno::LOOP | Errno::NOTDIR) => out.keep(Kept::Symlink, &path),
                        Err(Errno::NOENT) => {}
                        Err(_) => out.keep(Kept::Error, &path),
                    },
                    FileType::RegularFile
                        if matches_any(&root.globs, &name) && matches_any(&root.allowed_globs, &name) =>
                    {
                        if !old_enough(m.mtime, age, now) {
                            out.keep(Kept::TooYoung, &path);
                            continue;
                        }
                        out.matched += 1;
                        // Another name for the same file (maybe outside
                        // the root): deleting this one frees nothing and
                        // would change what that name's owner sees.
                        if m.nlink > 1 {
                            out.keep(Kept::HardLinks, &path);
                            continue;
                        }
                        has_candidates = true;
                        candidates.push(Candidate {
                            dir: dir.clone(),
                            name,
                            path,
                            dev: m.dev,
                            ino: m.ino,
                            size: m.size,
                            age,
                        });
                    }
                    _ => {}
                }
            }
            if !has_candidates && !dir.rel.is_empty() {
                held_dirs = held_dirs.saturating_sub(1);
            }
        }
    }
    Walked { roots, candidates }
}

/// Deletes (or, in a dry run, counts) the candidates that pass every
/// check again right before their unlink.
fn delete(
    walked: Walked,
    open: &OpenFiles,
    tailed: &HashSet<(u64, u64)>,
    limits: Limits,
    dry_run: bool,
    out: &mut Outcome,
) {
    let Walked { roots, candidates } = walked;
    let mut chains: HashMap<*const DirHandle, bool> = HashMap::new();
    for c in candidates {
        if (out.deleted as usize) >= limits.max_files {
            out.truncated.get_or_insert_with(|| "max_files".into());
            break;
        }
        if Instant::now() >= limits.deadline {
            out.truncated.get_or_insert_with(|| "max_duration".into());
            break;
        }
        if tailed.contains(&(c.dev, c.ino)) {
            out.keep(Kept::Tailer, &c.path);
            continue;
        }
        if !open.complete {
            out.keep(Kept::OpenCheckIncomplete, &c.path);
            continue;
        }
        if open.found.contains(&(c.dev, c.ino)) {
            out.keep(Kept::Open, &c.path);
            continue;
        }
        let chain_ok = *chains.entry(Arc::as_ptr(&c.dir)).or_insert_with(|| {
            roots.get(c.dir.root).and_then(|r| r.as_ref()).is_some_and(|root| same_chain(root, &c.dir))
        });
        if !chain_ok {
            out.keep(Kept::Changed, &c.path);
            continue;
        }
        match look(&c.dir.fd, &c.name) {
            Ok(m)
                if m.kind == FileType::RegularFile
                    && (m.dev, m.ino, m.mnt_id) == (c.dev, c.ino, c.dir.mnt_id)
                    && old_enough(m.mtime, c.age, crate::clock::wall()) =>
            {
                if m.nlink > 1 {
                    out.keep(Kept::HardLinks, &c.path);
                    continue;
                }
            }
            _ => {
                out.keep(Kept::Changed, &c.path);
                continue;
            }
        }
        // Relative to the directory's own handle: the name is never
        // resolved from the root again, so a directory swapped for a
        // symlink after the check above cannot redirect the unlink.
        if !dry_run && let Err(e) = unlinkat(&c.dir.fd, c.name.as_os_str(), UnlinkatFlags::NoRemoveDir) {
            if e != nix::errno::Errno::ENOENT {
                out.keep(Kept::Error, &c.path);
            }
            continue;
        }
        out.deleted += 1;
        out.bytes += c.size;
        out.list(&c.path, if dry_run { "would_delete" } else { "deleted" });
    }
}

fn show_rel(rel: &[OsString]) -> PathBuf {
    rel.iter().collect()
}

fn show(root: &Path, rel: &[OsString]) -> String {
    root.join(show_rel(rel)).display().to_string()
}

type RootError = (Option<Kept>, String);

/// Opens a root, refusing one that is or passes through a symlink: the
/// kernel resolves the whole path without following any.
fn open_root(path: &Path) -> Result<DirHandle, RootError> {
    let fd = match openat2(
        CWD,
        path,
        DIR_FLAGS,
        RawMode::empty(),
        ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
    ) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Err((None, "does not exist".into())),
        Err(Errno::LOOP) => {
            return Err((Some(Kept::Symlink), "is a symlink or passes through one: never followed".into()));
        }
        // `O_NOFOLLOW | O_DIRECTORY` on a symlink says "not a directory".
        Err(Errno::NOTDIR) if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) => {
            return Err((Some(Kept::Symlink), "is a symlink: never followed".into()));
        }
        Err(Errno::NOTDIR) => return Err((Some(Kept::Error), "is not a directory".into())),
        Err(Errno::NOSYS) => {
            return Err((
                Some(Kept::Error),
                "this kernel cannot resolve a path without following links (openat2, Linux 5.6): not entered".into(),
            ));
        }
        Err(e) => return Err((Some(Kept::Error), format!("cannot open it: {e}"))),
    };
    let m = match look_fd(&fd) {
        Ok(m) => m,
        Err(Errno::NOSYS) => {
            return Err((
                Some(Kept::Error),
                "this kernel does not tell mounts apart (statx mount ids, Linux 5.8): not entered".into(),
            ));
        }
        Err(e) => return Err((Some(Kept::Error), format!("cannot read it: {e}"))),
    };
    Ok(DirHandle { fd, root: 0, rel: Vec::new(), dev: m.dev, ino: m.ino, mnt_id: m.mnt_id })
}

/// Whether resolving `dir`'s names again from its root, beneath it and
/// without a symlink or a mount crossed, leads to the very directory held:
/// so it was not moved out of the root, replaced, or swapped for a
/// symlink meanwhile.
fn same_chain(root: &DirHandle, dir: &DirHandle) -> bool {
    let found = if dir.rel.is_empty() {
        look_fd(&root.fd)
    } else {
        open_beneath(&root.fd, &show_rel(&dir.rel)).and_then(look_fd)
    };
    found.is_ok_and(|m| (m.dev, m.ino, m.mnt_id) == (dir.dev, dir.ino, dir.mnt_id) && m.nlink > 0)
}

/// Which of the wanted files some process holds open.
#[derive(Debug, Default)]
struct OpenFiles {
    found: HashSet<(u64, u64)>,
    /// The scan went through every process: only then does a file missing
    /// from `found` count as not open.
    complete: bool,
    /// Processes whose descriptors the agent may not read (it lacks
    /// ptrace access to them: another user, more capabilities than it
    /// has). They are counted and said, not waited for: a process the
    /// agent can never read would otherwise stop every cleanup for good.
    unreadable: u64,
}

/// Reads every `/proc/PID/fd/*` link (stat follows it to the open file)
/// and keeps those among `wanted`, by device and inode, whatever the mode
/// they were opened in: a file open for reading frees nothing when
/// unlinked either, and its reader may still need it.
///
/// Bounded by `max_fds` links and `deadline` because a busy node holds
/// hundreds of thousands of descriptors and processes open more while we
/// look: the scan must end, cheaply, within the run's time. A scan cut
/// short, or a process whose descriptors could not be read, proves
/// nothing about the files, so the result is then incomplete and every
/// candidate is kept. A process whose descriptors cannot be read is
/// counted, and the reply says how many (the agent needs ptrace access to
/// every process to see them all). A process that opens a file after the scan is not
/// seen: the kernel offers no way to unlink only if unopened, so the scan
/// runs right before the deletes to keep that window short.
fn open_files(wanted: &HashSet<(u64, u64)>, deadline: Instant, max_fds: usize) -> OpenFiles {
    let mut w = OpenFiles::default();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return w;
    };
    let mut scanned = 0usize;
    let gone = |e: &std::io::Error| matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ESRCH));
    for p in procs.flatten() {
        let pid = p.file_name();
        if !pid.as_bytes().iter().all(u8::is_ascii_digit) {
            continue;
        }
        let fds = match std::fs::read_dir(p.path().join("fd")) {
            Ok(fds) => fds,
            // Exited meanwhile.
            Err(e) if gone(&e) => continue,
            Err(_) => {
                w.unreadable += 1;
                continue;
            }
        };
        for fd in fds {
            let fd = match fd {
                Ok(fd) => fd,
                Err(e) if gone(&e) => break,
                Err(_) => {
                    w.unreadable += 1;
                    break;
                }
            };
            scanned += 1;
            if scanned > max_fds || Instant::now() >= deadline {
                return w;
            }
            match std::fs::metadata(fd.path()) {
                Ok(m) if wanted.contains(&(m.dev(), m.ino())) => {
                    w.found.insert((m.dev(), m.ino()));
                }
                Ok(_) => {}
                // Closed meanwhile, or the process exited.
                Err(e) if gone(&e) => {}
                Err(_) => {
                    w.unreadable += 1;
                    break;
                }
            }
        }
    }
    w.complete = true;
    w
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> CleanupConfig {
        super::super::config::resolve("t", remedy_shared::config::parse_yaml("t", "{}").unwrap()).unwrap().log_cleanup
    }

    fn params(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn globs_match_names_as_find_does() {
        let m = |g: &str, n: &str| glob_match(g.as_bytes(), n.as_bytes());
        assert!(m("*.log", "app.log") && m("*.log", ".hidden.log") && m("*.log", "..log") && m("*.log", ".log"));
        assert!(!m("*.log", "app.log.1") && !m("*.log", "app.logx") && !m("*.log", "applog"));
        assert!(m("*.log.*", "app.log.1") && m("*.log.*", "a.log.2.gz") && !m("*.log.*", "app.log"));
        assert!(m("*.gz", "x.gz") && !m("*.gz", "x.gzip"));
        assert!(m("app-?.log", "app-1.log") && !m("app-?.log", "app-12.log"));
        assert!(m("[ab]*.log", "b1.log") && !m("[ab]*.log", "c1.log") && m("[!ab]*", "c") && m("x[0-9]", "x7"));
        assert!(m("a*b*c", "aXXbYYc") && !m("a*b*c", "aXXbYY"));
    }

    #[test]
    fn age_is_strictly_older_than() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let day = Duration::from_secs(86_400);
        assert!(old_enough(now - day - Duration::from_secs(1), day, now));
        assert!(!old_enough(now - day, day, now));
        assert!(!old_enough(now + day, day, now), "a file from the future is young");
    }

    #[test]
    fn containment_is_by_components() {
        assert!(contained(Path::new("/tmp"), Path::new("/tmp/a/b.log")));
        assert!(!contained(Path::new("/tmp"), Path::new("/tmpx/b.log")));
        assert!(!contained(Path::new("/tmp"), Path::new("/tmp/../etc/passwd")));
        assert!(contained(Path::new("/tmp"), Path::new("/tmp/..hidden.log")));
    }

    #[test]
    fn without_roots_every_configured_root_applies() {
        let p = cleanup_params(&params(&[]), &config()).unwrap();
        assert_eq!(p.roots.len(), 2);
        assert_eq!((p.emergency, p.if_disk_above, p.max_files), (false, None, 1000));
    }

    #[test]
    fn the_runbooks_roots_are_read_and_kept_within_the_configured_ones() {
        let roots = r#"[{"path":"/tmp","globs":["*.log"],"older_than":"1d"},{"path":"/var/log/app/","globs":["*.log"],"older_than":"8d"}]"#;
        let p = cleanup_params(&params(&[("roots", roots), ("if_disk_above", "90")]), &config()).unwrap();
        assert_eq!(p.roots[1].path, Path::new("/var/log/app"));
        assert_eq!(p.roots[1].older_than, Duration::from_secs(8 * 86_400));
        assert_eq!(p.roots[1].allowed_globs, ["*.log", "*.log.*", "*.gz"]);
        assert_eq!(p.if_disk_above, Some(90.0));
    }

    #[test]
    fn refusals_name_the_parameter_and_the_reason() {
        let cases = [
            (params(&[("force", "1")]), "unknown parameter `force` (log_cleanup takes roots"),
            (params(&[("emergency", "yes")]), "emergency: `yes` is not true or false"),
            (params(&[("if_disk_above", "100")]), "if_disk_above: `100` is not a percent"),
            (params(&[("max_files", "0")]), "max_files: `0` is not a number from 1 to 1000"),
            (params(&[("roots", "{}")]), "roots: not a JSON list"),
            (params(&[("roots", "[]")]), "roots: names no root"),
            (params(&[("roots", r#"[{"path":"/etc"}]"#)]), "roots[0].path: `/etc` is outside_root: not within"),
            (params(&[("roots", r#"[{"path":"/tmpx"}]"#)]), "roots[0].path: `/tmpx` is outside_root"),
            (params(&[("roots", r#"[{"path":"/tmp/../etc"}]"#)]), "roots[0].path: `/tmp/../etc` is outside_root"),
            (params(&[("roots", r#"[{"path":"/tmp","globs":["*"]}]"#)]), "roots[0].globs: `*` is not"),
            (params(&[("roots", r#"[{"path":"/tmp","globs":["../*.log"]}]"#)]), "roots[0].globs: `../*.log`"),
            (params(&[("roots", r#"[{"path":"/tmp","older_than":"1h"}]"#)]), "roots[0].older_than: 1h is younger"),
        ];
        for (p, expected) in cases {
            let e = cleanup_params(&p, &config()).unwrap_err();
            assert!(e.starts_with(expected), "{p:?}: {e}");
        }
    }

    #[test]
    fn a_walk_never_follows_symlinks_and_keeps_young_files() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("victim.log"), "x").unwrap();
        std::fs::write(root.join("young.log"), "y").unwrap();
        std::os::unix::fs::symlink(outside.join("victim.log"), root.join("link.log")).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("linked")).unwrap();
        let p = CleanupParams {
            roots: vec![RunRoot {
                path: std::fs::canonicalize(&root).unwrap(),
                globs: vec!["*.log".into()],
                allowed_globs: vec!["*.log".into()],
                older_than: Duration::from_secs(3600),
                emergency_older_than: Duration::from_secs(3600),
            }],
            emergency: false,
            if_disk_above: None,
            max_files: 10,
        };
        let limits = Limits { max_files: 10, max_depth: 4, deadline: Instant::now() + Duration::from_secs(10) };
        let out = run(&p, limits, &HashSet::new(), false);
        assert_eq!(out.deleted, 0);
        assert_eq!(out.kept.get(&Kept::Symlink), Some(&2), "{out:?}");
        assert_eq!(out.kept.get(&Kept::TooYoung), Some(&1), "{out:?}");
        assert!(outside.join("victim.log").exists() && root.join("young.log").exists());
    }

    fn one_root(root: &Path) -> CleanupParams {
        CleanupParams {
            roots: vec![RunRoot {
                path: std::fs::canonicalize(root).unwrap(),
                globs: vec!["*.log".into()],
                allowed_globs: vec!["*.log".into(), "*.gz".into()],
                older_than: Duration::from_secs(86_400),
                emergency_older_than: Duration::from_secs(3600),
            }],
            emergency: false,
            if_disk_above: None,
            max_files: 10,
        }
    }

    fn aged(path: &Path, ago: Duration) {
        let f = std::fs::OpenOptions::new().create(true).truncate(true).write(true).open(path).unwrap();
        std::io::Write::write_all(&mut &f, b"0123456789").unwrap();
        f.set_modified(crate::clock::wall() - ago).unwrap();
    }

    fn limits(max_files: usize) -> Limits {
        Limits { max_files, max_depth: 4, deadline: Instant::now() + Duration::from_secs(10) }
    }

    #[test]
    fn tailed_files_and_the_max_are_kept_and_a_dry_run_deletes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let hour = Duration::from_secs(3600);
        for name in ["a.log", "b.log", "c.log", "tailed.log", "d.gz"] {
            aged(&dir.path().join(name), 48 * hour);
        }
        let tailed = std::fs::metadata(dir.path().join("tailed.log")).unwrap();
        let tailed = HashSet::from([(tailed.dev(), tailed.ino())]);
        let p = one_root(dir.path());
        let out = run(&p, limits(10), &tailed, true);
        assert_eq!((out.deleted, out.bytes, out.kept.get(&Kept::Tailer)), (3, 30, Some(&1)), "{out:?}");
        assert!(dir.path().join("a.log").exists(), "a dry run deletes nothing");
        assert!(out.files.iter().all(|(p, what)| what == "would_delete" || p.ends_with("tailed.log")));
        let out = run(&p, limits(2), &tailed, false);
        assert_eq!((out.deleted, out.truncated.as_deref()), (2, Some("max_files")), "{out:?}");
        assert!(dir.path().join("d.gz").exists(), "only the directive's globs go");
        assert!(dir.path().join("tailed.log").exists());
    }

    #[test]
    fn emergency_lowers_the_age_when_the_disk_is_above_the_threshold() {
        let dir = tempfile::tempdir().unwrap();
        let hour = Duration::from_secs(3600);
        aged(&dir.path().join("mid.log"), 3 * hour);
        aged(&dir.path().join("new.log"), Duration::from_secs(60));
        let mut p = one_root(dir.path());
        let out = run(&p, limits(10), &HashSet::new(), false);
        assert_eq!((out.deleted, out.roots["root.0.emergency"].as_str()), (0, "false"));
        p.if_disk_above = Some(0.0);
        let out = run(&p, limits(10), &HashSet::new(), false);
        assert_eq!((out.deleted, out.roots["root.0.emergency"].as_str()), (1, "true"), "{out:?}");
        assert_eq!(out.roots["root.0.older_than"], "1h");
        assert!(out.roots.contains_key("root.0.disk_percent"));
        assert!(!dir.path().join("mid.log").exists() && dir.path().join("new.log").exists());
    }

    #[test]
    fn a_root_that_is_a_symlink_or_passes_through_one_is_not_entered() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        std::fs::create_dir_all(real.join("logs")).unwrap();
        aged(&real.join("logs/old.log"), Duration::from_secs(48 * 3600));
        std::os::unix::fs::symlink(&real, dir.path().join("via")).unwrap();
        let base = std::fs::canonicalize(dir.path()).unwrap();
        for root in [base.join("via"), base.join("via/logs")] {
            let mut p = one_root(&real);
            p.roots[0].path = root.clone();
            let out = run(&p, limits(10), &HashSet::new(), false);
            assert_eq!(out.deleted, 0, "{root:?}: {out:?}");
            assert!(out.roots["root.0.skipped"].contains("symlink"), "{out:?}");
        }
        assert!(real.join("logs/old.log").exists());
    }

    #[test]
    fn a_directory_moved_out_of_its_root_fails_the_chain_check() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        let handle = |p: &Path, rel: Vec<OsString>| {
            let fd = nix::fcntl::open(p, OFlag::O_RDONLY | OFlag::O_DIRECTORY, Mode::empty()).unwrap();
            let m = look_fd(&fd).unwrap();
            DirHandle { fd, root: 0, rel, dev: m.dev, ino: m.ino, mnt_id: m.mnt_id }
        };
        let root_h = handle(&root, vec![]);
        let sub_h = handle(&root.join("sub"), vec!["sub".into()]);
        assert!(same_chain(&root_h, &sub_h));
        std::fs::rename(root.join("sub"), dir.path().join("moved")).unwrap();
        assert!(!same_chain(&root_h, &sub_h), "moved out of the root");
        std::os::unix::fs::symlink(dir.path().join("moved"), root.join("sub")).unwrap();
        assert!(!same_chain(&root_h, &sub_h), "a symlink put in its place is not followed");
    }

    #[test]
    fn files_with_other_links_or_open_by_a_process_are_kept_and_said_so() {
        let dir = tempfile::tempdir().unwrap();
        let base = std::fs::canonicalize(dir.path()).unwrap();
        let (root, outside) = (base.join("root"), base.join("outside"));
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        let old = Duration::from_secs(48 * 3600);
        for name in ["plain.log", "read.log", "written.log"] {
            aged(&root.join(name), old);
        }
        aged(&outside.join("precious.log"), old);
        std::fs::hard_link(outside.join("precious.log"), root.join("linked.log")).unwrap();
        let _reading = std::fs::File::open(root.join("read.log")).unwrap();
        let _writing = std::fs::OpenOptions::new().append(true).open(root.join("written.log")).unwrap();
        let out = run(&one_root(&root), limits(10), &HashSet::new(), false);
        assert_eq!(out.deleted, 1, "{out:?}");
        assert_eq!((out.kept.get(&Kept::HardLinks), out.kept.get(&Kept::Open)), (Some(&1), Some(&2)), "{out:?}");
        assert_eq!(
            out.kept_summary().as_deref(),
            Some("kept 3: 1 has other links, 2 are open by a process"),
            "{out:?}"
        );
        assert!(!root.join("plain.log").exists());
        for name in ["read.log", "written.log", "linked.log"] {
            assert!(root.join(name).exists(), "{name} was deleted");
        }
        assert_eq!(std::fs::read(outside.join("precious.log")).unwrap(), b"0123456789");
    }

    #[test]
    fn a_directory_swapped_for_a_symlink_after_the_walk_loses_nothing_outside() {
        let dir = tempfile::tempdir().unwrap();
        let base = std::fs::canonicalize(dir.path()).unwrap();
        let (root, outside) = (base.join("root"), base.join("outside"));
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        let old = Duration::from_secs(48 * 3600);
        aged(&root.join("sub/a.log"), old);
        aged(&outside.join("a.log"), old);
        let p = one_root(&root);
        let mut out = Outcome::default();
        let walked = walk(&p, limits(10), &mut out);
        assert_eq!(walked.candidates.len(), 1, "{out:?}");
        // The directory walked goes elsewhere in the root, and a symlink
        // to the outside takes its name.
        std::fs::rename(root.join("sub"), root.join("elsewhere")).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("sub")).unwrap();
        delete(
            walked,
            &OpenFiles { complete: true, ..OpenFiles::default() },
            &HashSet::new(),
            limits(10),
            false,
            &mut out,
        );
        assert_eq!((out.deleted, out.kept.get(&Kept::Changed)), (0, Some(&1)), "{out:?}");
        assert!(outside.join("a.log").exists() && root.join("elsewhere/a.log").exists());
    }

    #[test]
    fn an_open_file_scan_cut_short_proves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        aged(&dir.path().join("x.log"), Duration::from_secs(48 * 3600));
        let m = std::fs::metadata(dir.path().join("x.log")).unwrap();
        let wanted = HashSet::from([(m.dev(), m.ino())]);
        let deadline = Instant::now() + Duration::from_secs(10);
        assert!(!open_files(&wanted, deadline, 0).complete, "no descriptor may be read");
        let _held = std::fs::File::open(dir.path().join("x.log")).unwrap();
        let found = open_files(&wanted, deadline, MAX_FDS_SCANNED);
        assert!(found.complete && found.found.contains(&(m.dev(), m.ino())), "{found:?}");
    }
}
