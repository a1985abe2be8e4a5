//! The CRI container log format and the kubelet's directory layout, parsed
//! without I/O.
//!
//! A CRI line is `TIMESTAMP STREAM TAGS MESSAGE`: an RFC 3339 timestamp with
//! nanoseconds, `stdout` or `stderr`, then `P` (partial: the runtime split a
//! long line, the next one continues it) or `F` (full: this one ends it),
//! possibly followed by further `:`-separated tags. The kubelet keeps a
//! container's log at `<root>/<namespace>_<pod>_<uid>/<container>/<N>.log`
//! and rotates it by renaming it to `<N>.log.<timestamp>` (later gzipped).

use crate::time::Timestamp;
use serde::Serialize;

/// The stream a container wrote a line to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// One physical CRI line, borrowed from the read buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CriLine<'a> {
    /// The timestamp as written; parsed only when a logical line starts.
    pub timestamp: &'a [u8],
    /// stdout or stderr.
    pub stream: Stream,
    /// `P`: the next line continues this one.
    pub partial: bool,
    /// The payload, without the line's newline.
    pub message: &'a [u8],
}

/// Parses one physical line (without its newline); `None` when it is not
/// in CRI format.
pub fn parse_line(line: &[u8]) -> Option<CriLine<'_>> {
    let (timestamp, rest) = split_space(line)?;
    let (stream, rest) = split_space(rest)?;
    let stream = match stream {
        b"stdout" => Stream::Stdout,
        b"stderr" => Stream::Stderr,
        _ => return None,
    };
    // An empty message may come without the separating space.
    let (tags, message) = split_space(rest).unwrap_or((rest, &[]));
    let partial = match tags.split(|&b| b == b':').next() {
        Some(b"P") => true,
        Some(b"F") => false,
        _ => return None,
    };
    if timestamp.is_empty() || !timestamp[0].is_ascii_digit() {
        return None;
    }
    Some(CriLine { timestamp, stream, partial, message })
}

fn split_space(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let at = bytes.iter().position(|&b| b == b' ')?;
    Some((&bytes[..at], &bytes[at + 1..]))
}

/// The timestamp of a CRI line, to the millisecond; `None` if unreadable.
/// Allocates nothing: it runs once per logical line.
pub fn parse_timestamp(bytes: &[u8]) -> Option<Timestamp> {
    super::linetime::rfc3339(bytes)
}

/// Namespace, pod and container of a container log, from its directories.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodPath {
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's name.
    pub pod: String,
    /// The pod's UID.
    pub uid: String,
    /// The container's name.
    pub container: String,
}

/// Reads `<namespace>_<pod>_<uid>` and the container directory's name.
/// Namespaces and pod names are DNS labels and subdomains, which cannot
/// contain `_`, so the split is unambiguous.
pub fn parse_pod_dirs(pod_dir: &str, container_dir: &str) -> Option<PodPath> {
    let mut parts = pod_dir.split('_');
    let (namespace, pod, uid) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || [namespace, pod, uid, container_dir].iter().any(|p| p.is_empty()) {
        return None;
    }
    Some(PodPath {
        namespace: namespace.to_owned(),
        pod: pod.to_owned(),
        uid: uid.to_owned(),
        container: container_dir.to_owned(),
    })
}

/// What a file name in a container's directory is to the tailer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileRole {
    /// `<N>.log`: the file the runtime writes to.
    Live,
    /// `<N>.log.<suffix>`, uncompressed: a rotated file, read only to finish
    /// one that was being read before it was renamed.
    Rotated,
}

/// The role of a file in a container's directory; `None` for anything else
/// (compressed rotations, temporary files).
pub fn file_role(name: &str) -> Option<FileRole> {
    let (number, rest) = name.split_once(".log")?;
    if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    match rest.strip_prefix('.') {
        None if rest.is_empty() => Some(FileRole::Live),
        Some(suffix) if !suffix.is_empty() && !is_compressed(suffix) => Some(FileRole::Rotated),
        _ => None,
    }
}

/// Whether a rotated file's suffix names a compressed copy, which is never
/// read (its bytes are not the bytes that were tailed).
pub fn is_compressed(name: &str) -> bool {
    [".gz", ".xz", ".bz2", ".zst", ".lz4", ".zip"].iter().any(|ext| name.ends_with(ext))
        || ["gz", "xz", "bz2", "zst", "lz4", "zip"].contains(&name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_line_splits_into_its_four_fields() {
        let l = parse_line(b"2026-11-27T03:41:27.123456789Z stdout F hello world").unwrap();
        assert_eq!(l.timestamp, b"2026-11-27T03:41:27.123456789Z");
        assert_eq!((l.stream, l.partial), (Stream::Stdout, false));
        assert_eq!(l.message, b"hello world");
    }

    #[test]
    fn partial_lines_extra_tags_and_empty_messages_are_read() {
        let l = parse_line(b"2026-11-27T03:41:27Z stderr P part ").unwrap();
        assert_eq!((l.stream, l.partial, l.message), (Stream::Stderr, true, &b"part "[..]));
        let l = parse_line(b"2026-11-27T03:41:27Z stdout F:x message").unwrap();
        assert_eq!((l.partial, l.message), (false, &b"message"[..]));
        assert_eq!(parse_line(b"2026-11-27T03:41:27Z stdout F").unwrap().message, b"");
        assert_eq!(parse_line(b"2026-11-27T03:41:27Z stdout F ").unwrap().message, b"");
    }

    #[test]
    fn lines_not_in_cri_format_are_refused() {
        for bad in [
            &b"hello world"[..],
            b"",
            b"2026-11-27T03:41:27Z stdin F x",
            b"2026-11-27T03:41:27Z stdout X x",
            b"2026-11-27T03:41:27Z stdout",
            b" stdout F x",
            b"\xff\xfe stdout F x",
        ] {
            assert_eq!(parse_line(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn timestamps_keep_milliseconds_and_offsets() {
        assert_eq!(
            parse_timestamp(b"2026-11-27T03:41:27.123456789Z"),
            Timestamp::parse_rfc3339("2026-11-27T03:41:27.123Z")
        );
        assert!(parse_timestamp(b"2026-11-27T03:41:27.123456789Z").is_some());
        assert_eq!(
            parse_timestamp(b"2016-10-06T00:17:09.669794202-07:00"),
            Timestamp::parse_rfc3339("2016-10-06T07:17:09.669Z")
        );
        assert_eq!(parse_timestamp(b"yesterday"), None);
        assert_eq!(parse_timestamp(b"\xff"), None);
    }

    #[test]
    fn pod_directories_give_namespace_pod_uid_and_container() {
        assert_eq!(
            parse_pod_dirs("kube-system_coredns-5d78c9869d-8xk2p_0b6c1a2e-4f1d-4c3b-9a55-1b2c3d4e5f60", "coredns"),
            Some(PodPath {
                namespace: "kube-system".into(),
                pod: "coredns-5d78c9869d-8xk2p".into(),
                uid: "0b6c1a2e-4f1d-4c3b-9a55-1b2c3d4e5f60".into(),
                container: "coredns".into(),
            })
        );
        assert_eq!(parse_pod_dirs("default_web", "app"), None);
        assert_eq!(parse_pod_dirs("default_web_uid_extra", "app"), None);
        assert_eq!(parse_pod_dirs("default__uid", "app"), None);
        assert_eq!(parse_pod_dirs("default_web_uid", ""), None);
    }

    #[test]
    fn live_rotated_and_other_file_names_are_told_apart() {
        assert_eq!(file_role("0.log"), Some(FileRole::Live));
        assert_eq!(file_role("12.log"), Some(FileRole::Live));
        assert_eq!(file_role("0.log.20261127-034127"), Some(FileRole::Rotated));
        assert_eq!(file_role("0.log.20261127-034127.gz"), None);
        assert_eq!(file_role("0.log.tmp.gz"), None);
        assert_eq!(file_role("0.log."), None);
        assert_eq!(file_role("a.log"), None);
        assert_eq!(file_role(".log"), None);
        assert_eq!(file_role("0.txt"), None);
        assert_eq!(file_role("0.logx"), None);
    }
}
