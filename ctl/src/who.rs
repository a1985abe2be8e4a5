//! Who gives a command. Every change is written on an incident's timeline
//! (or the automation record) with a name, so remedyctl settles on one
//! before sending anything and never sends an empty one: `--as NAME`, else
//! `REMEDY_USER`, else `USER`, else the operating system's name for the
//! user running it.

use anyhow::bail;

/// The name to send as `requested_by`, from the sources in order of
/// precedence. An explicit `--as` must be usable itself (it is never
/// silently replaced); the environment's empty values are skipped, as a
/// shell's `REMEDY_USER=` means "not set".
pub fn resolve(
    flag: Option<&str>,
    remedy_user: Option<&str>,
    user: Option<&str>,
    os_user: impl FnOnce() -> Option<String>,
) -> anyhow::Result<String> {
    if let Some(name) = flag {
        return usable(name, "--as");
    }
    for (value, source) in [(remedy_user, "REMEDY_USER"), (user, "USER")] {
        if let Some(name) = value.filter(|v| !v.trim().is_empty()) {
            return usable(name, source);
        }
    }
    match os_user() {
        Some(name) if !name.trim().is_empty() => usable(&name, "the operating system's user name"),
        _ => bail!(
            "cannot tell who is giving this command: pass --as NAME or set REMEDY_USER \
             (commands are recorded with who gave them)"
        ),
    }
}

fn usable(name: &str, source: &str) -> anyhow::Result<String> {
    let name = name.trim();
    if name.is_empty() {
        bail!("{source} is empty: commands are recorded with who gave them, so name someone");
    }
    if name.chars().any(char::is_control) {
        bail!("{source} `{}` contains control characters; use a plain name", name.escape_debug());
    }
    Ok(name.to_owned())
}

/// `requested_by` for this process: `--as`, then the environment, then the
/// OS user.
pub fn requested_by(flag: Option<&str>) -> anyhow::Result<String> {
    let env = |k: &str| std::env::var(k).ok();
    let (remedy_user, user) = (env("REMEDY_USER"), env("USER"));
    resolve(flag, remedy_user.as_deref(), user.as_deref(), os_user_name)
}

/// The name of the user this process runs as, from the password database;
/// `LOGNAME` where that cannot be read.
fn os_user_name() -> Option<String> {
    uid_name().or_else(|| std::env::var("LOGNAME").ok())
}

#[cfg(unix)]
fn uid_name() -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    // `/proc/self` belongs to the process's user: no unsafe getuid needed.
    let uid = std::fs::metadata("/proc/self").ok()?.uid();
    passwd_name(&std::fs::read_to_string("/etc/passwd").ok()?, uid)
}

#[cfg(not(unix))]
fn uid_name() -> Option<String> {
    None
}

/// The login name of `uid` in a passwd(5) file.
fn passwd_name(passwd: &str, uid: u32) -> Option<String> {
    passwd.lines().filter(|l| !l.starts_with('#')).find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        let found: u32 = fields.nth(1)?.trim().parse().ok()?;
        (found == uid && !name.is_empty()).then(|| name.to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn none() -> Option<String> {
        None
    }

    #[test]
    fn the_flag_wins_then_remedy_user_then_user_then_the_os() {
        let os = || Some("osname".to_owned());
        assert_eq!(resolve(Some("alice"), Some("bob"), Some("carol"), os).unwrap(), "alice");
        assert_eq!(resolve(None, Some("bob"), Some("carol"), os).unwrap(), "bob");
        assert_eq!(resolve(None, None, Some("carol"), os).unwrap(), "carol");
        assert_eq!(resolve(None, None, None, os).unwrap(), "osname");
        assert_eq!(resolve(None, Some("  bob "), None, none).unwrap(), "bob", "trimmed");
    }

    #[test]
    fn empty_environment_values_are_skipped() {
        assert_eq!(resolve(None, Some(""), Some("carol"), none).unwrap(), "carol");
        assert_eq!(resolve(None, Some(" "), Some(""), || Some("root".into())).unwrap(), "root");
    }

    #[test]
    fn nobody_is_refused_and_never_sent_empty() {
        let err = resolve(None, Some(""), Some(""), none).unwrap_err().to_string();
        assert!(err.contains("--as NAME") && err.contains("REMEDY_USER"), "{err}");
        assert!(resolve(None, None, None, || Some("  ".into())).is_err());
        // An explicit but empty --as is a mistake, not a reason to guess.
        let err = resolve(Some(" "), Some("bob"), None, none).unwrap_err().to_string();
        assert!(err.contains("--as is empty"), "{err}");
        assert!(resolve(Some("a\nb"), None, None, none).is_err());
    }

    #[test]
    fn passwd_lines_give_the_name_of_a_uid() {
        let passwd = "# comment\nroot:x:0:0:root:/root:/bin/bash\nbroken\nalice:x:1000:1000::/home/alice:/bin/sh\n";
        assert_eq!(passwd_name(passwd, 0).as_deref(), Some("root"));
        assert_eq!(passwd_name(passwd, 1000).as_deref(), Some("alice"));
        assert_eq!(passwd_name(passwd, 42), None);
        assert_eq!(passwd_name("", 0), None);
    }
}
