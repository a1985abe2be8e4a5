//! OpenSSH's and PAM's authentication messages, read where sshd writes the
//! address.
//!
//! Each message has fields a client writes (the user name, a client's
//! disconnect reason, the method name it asked for) and fields sshd
//! writes (the address, the port, the fixed text). The client's fields may
//! hold anything, spaces and `from 192.0.2.1 port 22` included, so a
//! message is never searched for an address: each shape is read from the
//! end sshd writes. `Failed password for U from H port N ssh2` ends with
//! sshd's own text, so the address is the one in the last `from H port N
//! ssh2` that reaches the end of the line; `Received disconnect from H
//! port N:3: REASON` starts with it, so the address is the first token.
//! Where a shape leaves two readings with different addresses (a
//! `publickey` failure has sshd's key details after the address, and a
//! client can write a `from ... port ...` into its user name) the line is
//! not counted at all.

use std::net::IpAddr;

use super::net::parse_addr;

/// What an sshd message says about an authentication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sshd<'a> {
    /// A failed authentication from `addr` (as written: an address, or a
    /// host name when sshd resolves names).
    Failure {
        /// The address as sshd wrote it.
        addr: &'a str,
        /// The account, when the message names one.
        user: Option<&'a str>,
        /// Which message it is.
        shape: Shape,
    },
    /// A message about an authentication that is not a failed attempt to
    /// guess one.
    NotFailure(&'static str),
    /// Two readings of the message name different addresses.
    Ambiguous,
}

/// The failure messages, for counting and for `remedyctl rules test`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// `Failed METHOD for [invalid user ]U from H port N ssh2`.
    Failed,
    /// `Failed publickey ...`, counted only with `count_publickey`.
    FailedPublickey,
    /// `Invalid user U from H [port N]` (or `Illegal user`).
    InvalidUser,
    /// `User U from H not allowed because ...` (AllowUsers, DenyUsers,
    /// AllowGroups, DenyGroups).
    NotAllowed,
    /// `ROOT LOGIN REFUSED FROM H [port N]`.
    RootRefused,
    /// `refused connect from NAME (H)` (TCP wrappers).
    RefusedConnect,
    /// `error: PAM: Authentication failure for U from H`, and the other
    /// PAM errors sshd logs.
    PamError,
    /// `pam_unix(sshd:auth): authentication failure; ... rhost=H`.
    PamModule,
    /// `maximum authentication attempts exceeded for U from H port N ssh2`.
    MaxAttempts,
    /// `Disconnecting invalid user U H port N: Change of username or
    /// service not allowed ...`.
    ChangeOfUser,
    /// `Received disconnect from H port N:3: ...: Auth fail`.
    AuthFailDisconnect,
}

impl Shape {
    /// A short name.
    pub fn as_str(self) -> &'static str {
        match self {
            Shape::Failed => "failed",
            Shape::FailedPublickey => "failed-publickey",
            Shape::InvalidUser => "invalid-user",
            Shape::NotAllowed => "not-allowed",
            Shape::RootRefused => "root-refused",
            Shape::RefusedConnect => "refused-connect",
            Shape::PamError => "pam-error",
            Shape::PamModule => "pam-auth-failure",
            Shape::MaxAttempts => "max-attempts",
            Shape::ChangeOfUser => "change-of-user",
            Shape::AuthFailDisconnect => "auth-fail-disconnect",
        }
    }

    /// Whether PAM and sshd both log one attempt with this message: PAM's
    /// line comes first, and sshd's `Failed ...` for the same connection
    /// follows (see the detector's pairing).
    pub fn is_pam(self) -> bool {
        matches!(self, Shape::PamError | Shape::PamModule)
    }
}

/// Literals one of which every failure message contains: the detector's
/// prefilter.
pub const LITERALS: &[&str] = &[
    "Failed ",
    "nvalid user ",
    "llegal user ",
    " not allowed because ",
    "LOGIN REFUSED",
    "refused connect from ",
    "PAM: ",
    "): authentication failure;",
    "maximum authentication attempts",
    "Change of username",
    "Auth fail",
];

/// Programs whose messages are sshd's: the daemon, and the per-connection
/// processes of OpenSSH 9.8 and later.
pub fn is_sshd(program: &str) -> bool {
    matches!(program, "sshd" | "sshd-session" | "sshd-auth")
}

/// Methods after whose address sshd writes details (`: RSA SHA256:...`),
/// which may hold client text (a certificate's key id, a GSSAPI name, a
/// hostbased client's user and host).
const METHODS_WITH_DETAILS: &[&str] = &["publickey", "hostbased", "gssapi-with-mic", "gssapi-keyex"];

/// Reads one of sshd's messages (without its syslog envelope); `None` when
/// it is none of the authentication messages.
pub fn read(message: &str) -> Option<Sshd<'_>> {
    let m = message.trim_end();
    let m = m.strip_suffix(" [preauth]").or_else(|| m.strip_suffix(" [net]")).unwrap_or(m).trim_end();
    let m = m.strip_prefix("error: ").or_else(|| m.strip_prefix("fatal: ")).unwrap_or(m);
    if let Some(rest) = m.strip_prefix("Failed ") {
        return failed(rest);
    }
    if let Some(rest) = m.strip_prefix("Invalid user ").or_else(|| m.strip_prefix("Illegal user ")) {
        return with_user_then_from(rest, Shape::InvalidUser, port_only);
    }
    if let Some(rest) = m.strip_prefix("User ") {
        return not_allowed(rest);
    }
    if let Some(rest) = m.strip_prefix("ROOT LOGIN REFUSED FROM ") {
        let (addr, tail) = rest.split_once(' ').unwrap_or((rest, ""));
        return port_only(tail).then_some(Sshd::Failure { addr, user: Some("root"), shape: Shape::RootRefused });
    }
    if let Some(rest) = m.strip_prefix("refused connect from ") {
        // `refused connect from CLIENT (ADDR)`: CLIENT may carry an ident
        // answer, written by the client; the address is in the last
        // parentheses, at the end.
        let inner = rest.strip_suffix(')')?;
        let (_, addr) = inner.rsplit_once(" (")?;
        return Some(Sshd::Failure { addr, user: None, shape: Shape::RefusedConnect });
    }
    if let Some(rest) = m.strip_prefix("PAM: ") {
        return pam_error(rest);
    }
    if m.starts_with("pam_") {
        return pam_module(m);
    }
    if let Some(rest) = m.strip_prefix("maximum authentication attempts exceeded for ") {
        let rest = rest.strip_prefix("invalid user ").unwrap_or(rest);
        return with_user_then_from(rest, Shape::MaxAttempts, port_and_protocol);
    }
    if let Some(rest) = m.strip_prefix("Disconnecting ") {
        return change_of_user(rest);
    }
    if let Some(rest) = m.strip_prefix("Received disconnect from ") {
        return auth_fail_disconnect(rest);
    }
    None
}

/// ` port N`, or nothing.
fn port_only(tail: &str) -> bool {
    tail.is_empty() || tail.strip_prefix("port ").is_some_and(is_number)
}

/// ` port N sshV`, ` port N`, or nothing (older releases).
fn port_and_protocol(tail: &str) -> bool {
    let Some(rest) = tail.strip_prefix("port ") else { return tail.is_empty() };
    match rest.split_once(' ') {
        None => is_number(rest),
        Some((port, proto)) => is_number(port) && is_protocol(proto),
    }
}

fn is_number(s: &str) -> bool {
    !s.is_empty() && s.len() <= 5 && s.bytes().all(|b| b.is_ascii_digit())
}

fn is_protocol(s: &str) -> bool {
    matches!(s, "ssh1" | "ssh2")
}

/// `USER from ADDR TAIL`, where the user name is the client's: the address
/// is in the last ` from `, and what follows it must be sshd's `tail`.
fn with_user_then_from<'a>(rest: &'a str, shape: Shape, tail: fn(&str) -> bool) -> Option<Sshd<'a>> {
    let (user, after) = last_from(rest)?;
    let (addr, t) = after.split_once(' ').unwrap_or((after, ""));
    tail(t).then_some(Sshd::Failure { addr, user: Some(user), shape })
}

/// Splits at the last ` from `; the user part may be empty (sshd writes
/// `Invalid user  from H` for an empty name).
fn last_from(rest: &str) -> Option<(&str, &str)> {
    rest.rsplit_once(" from ")
}

/// `User U from H not allowed because REASON`: U is an existing account
/// and REASON one of sshd's.
fn not_allowed(rest: &str) -> Option<Sshd<'_>> {
    const REASONS: &[&str] = &[
        "not listed in AllowUsers",
        "listed in DenyUsers",
        "not in any group",
        "a group is listed in DenyGroups",
        "none of user's groups are listed in AllowGroups",
    ];
    let (head, reason) = rest.rsplit_once(" not allowed because ")?;
    if !REASONS.contains(&reason) {
        // Locked accounts, missing shells: refused without an address.
        return None;
    }
    let (user, addr) = head.rsplit_once(" from ")?;
    (!addr.contains(' ')).then_some(Sshd::Failure { addr, user: Some(user), shape: Shape::NotAllowed })
}

/// `PAM: MESSAGE for [illegal user ]U from H[ via LOCAL]`, where H is the
/// client's address (or name) and LOCAL the server's on macOS.
fn pam_error(rest: &str) -> Option<Sshd<'_>> {
    const MESSAGES: &[&str] = &[
        "Authentication failure for ",
        "authentication failure for ",
        "Authentication error for ",
        "authentication error for ",
        "User not known to the underlying authentication module for ",
    ];
    let rest = MESSAGES.iter().find_map(|m| rest.strip_prefix(m))?;
    let rest = rest.strip_prefix("illegal user ").unwrap_or(rest);
    let (user, after) = last_from(rest)?;
    let (addr, tail) = after.split_once(' ').unwrap_or((after, ""));
    let via_ok = tail.is_empty() || tail.strip_prefix("via ").is_some_and(|v| !v.is_empty() && !v.contains(' '));
    via_ok.then_some(Sshd::Failure { addr, user: Some(user), shape: Shape::PamError })
}

/// `pam_MODULE(sshd:auth): authentication failure; logname= uid=0 euid=0
/// tty=ssh ruser= rhost=H  user=U`: the fields are PAM's, in this order,
/// and only `user=` (the client's) comes after the address.
fn pam_module(m: &str) -> Option<Sshd<'_>> {
    let (module, rest) = m.split_once("(sshd:auth): ")?;
    if !module.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return None;
    }
    let rest = rest.strip_prefix("authentication failure;")?;
    let mut fields = rest.split(' ').filter(|f| !f.is_empty());
    for key in ["logname=", "uid=", "euid=", "tty=", "ruser="] {
        fields.next()?.strip_prefix(key)?;
    }
    let addr = fields.next()?.strip_prefix("rhost=")?;
    // Whatever follows is `user=` and the client's name, spaces and all.
    let user = rest.split_once(" user=").map(|(_, u)| u);
    if addr.is_empty() {
        return Some(Sshd::NotFailure("PAM names no remote host"));
    }
    Some(Sshd::Failure { addr, user, shape: Shape::PamModule })
}

/// `Disconnecting invalid user U H port N: Change of username or service
/// not allowed: (U,S) -> (U2,S2)`. The user names on both sides of the
/// address are the client's: every reading whose user name is the one
/// repeated after `: (` is a candidate, and they must agree.
fn change_of_user(rest: &str) -> Option<Sshd<'_>> {
    const WHO: &[&str] = &["invalid user ", "authenticating user ", "user "];
    const REASON: &str = ": Change of username or service not allowed: (";
    let rest = WHO.iter().find_map(|w| rest.strip_prefix(w))?;
    let mut found: Option<&str> = None;
    for (at, _) in rest.match_indices(REASON) {
        let head = &rest[..at];
        let after = &rest[at + REASON.len()..];
        let Some((before_port, port)) = head.rsplit_once(" port ") else { continue };
        let Some((user, addr)) = before_port.rsplit_once(' ') else { continue };
        if !is_number(port) || !after.starts_with(user) || !after[user.len()..].starts_with(',') {
            continue;
        }
        match found {
            Some(a) if a != addr => return Some(Sshd::Ambiguous),
            _ => found = Some(addr),
        }
    }
    let addr = found?;
    let user = rest.split_once(' ').map(|(u, _)| u);
    Some(Sshd::Failure { addr, user, shape: Shape::ChangeOfUser })
}

/// `Received disconnect from H port N:CODE: REASON` (or `from H: CODE:
/// REASON` in older releases). H comes first, before anything the client
/// wrote; the reason is the client's, and code 3 with `Auth fail` is how
/// JSch-based clients give up after a refused login.
fn auth_fail_disconnect(rest: &str) -> Option<Sshd<'_>> {
    let (addr, after) = match rest.split_once(' ') {
        Some((addr, tail)) if tail.starts_with("port ") => {
            let (_, after_port) = tail.split_once(':')?;
            (addr, after_port)
        }
        // The older form: the address runs to the first `: ` (an IPv6
        // address has colons but no spaces).
        _ => {
            let (head, after) = rest.split_once(": ")?;
            (head.strip_suffix(':').unwrap_or(head), after)
        }
    };
    let (code, reason) = after.trim_start().split_once(':')?;
    if code.trim() != "3" || !reason.trim_end().ends_with("Auth fail") {
        return Some(Sshd::NotFailure("a disconnect that is not a refused login"));
    }
    Some(Sshd::Failure { addr, user: None, shape: Shape::AuthFailDisconnect })
}

/// An address sshd wrote after ` from `, with what follows it.
struct Candidate<'a> {
    /// Where ` from ` starts in the text after `for `.
    at: usize,
    addr: &'a str,
    /// Followed by ` port N sshV`.
    modern: bool,
    /// Reaches the end of the message.
    at_end: bool,
}

/// The ` from H[ port N[ sshV]]` at `at`, if what follows is the end of the
/// message or, in the modern form, `: ` and sshd's details.
fn candidate(text: &str, at: usize) -> Option<Candidate<'_>> {
    let after = &text[at + " from ".len()..];
    let (addr, tail) = after.split_once(' ').unwrap_or((after, ""));
    if addr.is_empty() {
        return None;
    }
    if tail.is_empty() {
        return Some(Candidate { at, addr, modern: false, at_end: true });
    }
    let rest = tail.strip_prefix("port ")?;
    let (port, rest) = rest.split_once(' ').unwrap_or((rest, ""));
    if !is_number(port) {
        return None;
    }
    if rest.is_empty() {
        return Some(Candidate { at, addr, modern: false, at_end: true });
    }
    let proto = rest.get(..4)?;
    if !is_protocol(proto) {
        return None;
    }
    match &rest[4..] {
        "" => Some(Candidate { at, addr, modern: true, at_end: true }),
        details if details.starts_with(": ") => Some(Candidate { at, addr, modern: true, at_end: false }),
        _ => None,
    }
}

/// `Failed METHOD for [invalid user ]U from H port N ssh2[: DETAILS]`.
fn failed(rest: &str) -> Option<Sshd<'_>> {
    let (method, after_for) = rest.split_once(" for ")?;
    let after_user = after_for.strip_prefix("invalid user ").unwrap_or(after_for);
    let candidates: Vec<Candidate<'_>> =
        after_user.match_indices(" from ").filter_map(|(at, _)| candidate(after_user, at)).collect();
    let chosen = if METHODS_WITH_DETAILS.contains(&method) {
        // Details may follow the address, and hold text a client chose:
        // every reading in the modern form must name the same address.
        let modern: Vec<&Candidate<'_>> = candidates.iter().filter(|c| c.modern).collect();
        let pool: Vec<&Candidate<'_>> = if modern.is_empty() { candidates.iter().collect() } else { modern };
        let first = pool.first()?;
        if pool.iter().any(|c| c.addr != first.addr) {
            return Some(Sshd::Ambiguous);
        }
        *first
    } else {
        // No details follow other methods in the modern form: sshd's text
        // runs to the end, and the address is in the last ` from ` that
        // reaches it. A last reading without the protocol (the oldest
        // releases wrote none) beside a modern one followed by details is
        // either form: unless they agree, the line is not counted.
        let last = candidates.iter().rev().find(|c| c.at_end)?;
        if !last.modern && candidates.iter().any(|c| c.modern && c.addr != last.addr) {
            return Some(Sshd::Ambiguous);
        }
        last
    };
    let user = &after_user[..chosen.at];
    let shape = match method {
        "publickey" => Shape::FailedPublickey,
        // Every client asks `none` first to learn the methods offered.
        "none" => return Some(Sshd::NotFailure("the client's first request, which asks for the methods offered")),
        _ => Shape::Failed,
    };
    Some(Sshd::Failure { addr: chosen.addr, user: Some(user), shape })
}

/// The address of a failure, parsed; `None` for a host name.
pub fn address(addr: &str) -> Option<IpAddr> {
    parse_addr(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(message: &str) -> Option<(String, Option<String>, Shape)> {
        match read(message)? {
            Sshd::Failure { addr, user, shape } => Some((addr.to_owned(), user.map(str::to_owned), shape)),
            _ => None,
        }
    }

    fn addr(message: &str) -> Option<String> {
        failure(message).map(|f| f.0)
    }

    #[test]
    fn each_failure_message_is_read_with_its_address_and_user() {
        let cases: &[(&str, &str, Option<&str>, Shape)] = &[
            ("Failed password for root from 192.0.2.1 port 22 ssh2", "192.0.2.1", Some("root"), Shape::Failed),
            (
                "Failed password for invalid user ROOT from 2001:db8::1 port 50273 ssh2",
                "2001:db8::1",
                Some("ROOT"),
                Shape::Failed,
            ),
            (
                "Failed password for invalid user ROOT from 192.0.2.2 port 12345",
                "192.0.2.2",
                Some("ROOT"),
                Shape::Failed,
            ),
            ("Failed password for invalid user ROOT from 2001:db8::2", "2001:db8::2", Some("ROOT"), Shape::Failed),
            (
                "Failed keyboard-interactive for <invalid username> from 192.0.2.3 port 42742 ssh2",
                "192.0.2.3",
                Some("<invalid username>"),
                Shape::Failed,
            ),
            (
                "Failed keyboard-interactive/pam for invalid user jamedds from 192.0.2.4 port 33723 ssh2",
                "192.0.2.4",
                Some("jamedds"),
                Shape::Failed,
            ),
            (
                "Failed unknown for invalid user redmond from 192.0.2.5 port 59197 ssh2",
                "192.0.2.5",
                Some("redmond"),
                Shape::Failed,
            ),
            ("Failed password for dan from 192.0.2.6 port 45416 ssh1", "192.0.2.6", Some("dan"), Shape::Failed),
            (
                "Failed hostbased for dan from 192.0.2.7 port 45785 ssh2: RSA 8c:e3, client user \"dan\", client host \"localhost\"",
                "192.0.2.7",
                Some("dan"),
                Shape::Failed,
            ),
            (
                "Failed publickey for invalid user graysky from 192.0.2.8 port 37954 ssh2: RSA SHA256:v3dp",
                "192.0.2.8",
                Some("graysky"),
                Shape::FailedPublickey,
            ),
            ("Invalid user ftp from 192.0.2.9", "192.0.2.9", Some("ftp"), Shape::InvalidUser),
            ("Invalid user ftp from 192.0.2.10 port 37220", "192.0.2.10", Some("ftp"), Shape::InvalidUser),
            ("Invalid user  from 192.0.2.11 port 34916", "192.0.2.11", Some(""), Shape::InvalidUser),
            ("Illegal user test from 192.0.2.12", "192.0.2.12", Some("test"), Shape::InvalidUser),
            (
                "User root from 192.0.2.13 not allowed because not listed in AllowUsers",
                "192.0.2.13",
                Some("root"),
                Shape::NotAllowed,
            ),
            (
                "User root from 192.0.2.14 not allowed because listed in DenyUsers",
                "192.0.2.14",
                Some("root"),
                Shape::NotAllowed,
            ),
            (
                "User allena from 192.0.2.15 not allowed because not in any group",
                "192.0.2.15",
                Some("allena"),
                Shape::NotAllowed,
            ),
            (
                "User root from 192.0.2.16 not allowed because a group is listed in DenyGroups",
                "192.0.2.16",
                Some("root"),
                Shape::NotAllowed,
            ),
            (
                "User root from 192.0.2.17 not allowed because none of user's groups are listed in AllowGroups",
                "192.0.2.17",
                Some("root"),
                Shape::NotAllowed,
            ),
            ("ROOT LOGIN REFUSED FROM 192.0.2.18", "192.0.2.18", Some("root"), Shape::RootRefused),
            ("ROOT LOGIN REFUSED FROM 192.0.2.19 port 12345 [preauth]", "192.0.2.19", Some("root"), Shape::RootRefused),
            ("ROOT LOGIN REFUSED FROM ::ffff:192.0.2.20", "::ffff:192.0.2.20", Some("root"), Shape::RootRefused),
            (
                "refused connect from _U2Fsd=_@::ffff:192.0.2.21 (::ffff:192.0.2.21)",
                "::ffff:192.0.2.21",
                None,
                Shape::RefusedConnect,
            ),
            (
                "error: PAM: Authentication failure for myhlj1374 from 192.0.2.22",
                "192.0.2.22",
                Some("myhlj1374"),
                Shape::PamError,
            ),
            (
                "error: PAM: authentication error for james from 192.0.2.23 via 192.168.1.201",
                "192.0.2.23",
                Some("james"),
                Shape::PamError,
            ),
            (
                "error: PAM: User not known to the underlying authentication module for illegal user kernel from 192.0.2.24 ",
                "192.0.2.24",
                Some("kernel"),
                Shape::PamError,
            ),
            (
                "pam_unix(sshd:auth): authentication failure; logname= uid=0 euid=0 tty=ssh ruser= rhost=192.0.2.25  user=root",
                "192.0.2.25",
                Some("root"),
                Shape::PamModule,
            ),
            (
                "pam_sss(sshd:auth): authentication failure; logname= uid=0 euid=0 tty=ssh ruser= rhost=192.0.2.26",
                "192.0.2.26",
                None,
                Shape::PamModule,
            ),
            (
                "error: maximum authentication attempts exceeded for root from 192.0.2.27 port 49940 ssh2 [preauth]",
                "192.0.2.27",
                Some("root"),
                Shape::MaxAttempts,
            ),
            (
                "maximum authentication attempts exceeded for invalid user admin from 192.0.2.28 port 4 ssh2 [preauth]",
                "192.0.2.28",
                Some("admin"),
                Shape::MaxAttempts,
            ),
            (
                "Disconnecting invalid user admin 192.0.2.29 port 44004: Change of username or service not allowed: (admin,ssh-connection) -> (user,ssh-connection) [preauth]",
                "192.0.2.29",
                Some("admin"),
                Shape::ChangeOfUser,
            ),
            (
                "Received disconnect from 192.0.2.30 port 7736:3: com.jcraft.jsch.JSchException: Auth fail [preauth]",
                "192.0.2.30",
                None,
                Shape::AuthFailDisconnect,
            ),
            (
                "error: Received disconnect from 192.0.2.31: 3: com.jcraft.jsch.JSchException: Auth fail [preauth]",
                "192.0.2.31",
                None,
                Shape::AuthFailDisconnect,
            ),
            (
                "Received disconnect from 2001:db8::32: 3: Ha ha, suckers!: Auth fail",
                "2001:db8::32",
                None,
                Shape::AuthFailDisconnect,
            ),
        ];
        for (message, want_addr, want_user, want_shape) in cases {
            let got = failure(message).unwrap_or_else(|| panic!("not read: {message}"));
            assert_eq!((got.0.as_str(), got.1.as_deref(), got.2), (*want_addr, *want_user, *want_shape), "{message}");
        }
    }

    #[test]
    fn messages_that_are_not_failed_attempts_are_not_counted() {
        for message in [
            "Failed none for invalid user x from 192.0.2.1 port 1 ssh2",
            "Accepted publickey for git from 192.0.2.1 port 57904 ssh2: DSA 36:48",
            "Received disconnect from 192.0.2.1 port 58846:11: Bye Bye [preauth]",
            "pam_unix(sshd:auth): authentication failure; logname= uid=0 euid=0 tty=ssh ruser= rhost=",
            "User root not allowed because account is locked",
            "input_userauth_request: invalid user root [preauth]",
            "Disconnecting: Too many authentication failures for root [preauth]",
            "Connection closed by authenticating user root 192.0.2.10 port 46038 [preauth]",
            "Did not receive identification string from 192.0.2.1",
            "Address 1.2.3.4 maps to x.example.com, but this does not map back to the address - POSSIBLE BREAK-IN ATTEMPT!",
            "pam_unix(sshd:session): session opened for user deploy(uid=1000) by (uid=0)",
        ] {
            assert_eq!(failure(message), None, "{message}");
        }
    }

    /// Address syntax in every field a client writes: user names, a
    /// method name, a disconnect reason, an ident answer, the details of a
    /// key. The address read is always sshd's, or the line is not counted.
    #[test]
    fn address_syntax_in_client_fields_never_moves_the_address() {
        let real = "203.0.113.9";
        let decoys = [
            "192.0.2.66",
            "from 192.0.2.66",
            "x from 192.0.2.66 port 22 ssh2",
            "x from 192.0.2.66 port 22 ssh2:",
            "x from 192.0.2.66 port 22 ssh2: y",
            "x from 192.0.2.66 port 2",
            "from 192.0.2.66 via 10.0.0.1",
            "x 192.0.2.66 port 22: Change of username or service not allowed: (x",
            "root rhost=192.0.2.66",
        ];
        for decoy in decoys {
            for message in [
                format!("Failed password for {decoy} from {real} port 22 ssh2"),
                format!("Failed password for invalid user {decoy} from {real} port 22 ssh2"),
                format!("Failed keyboard-interactive/pam for invalid user {decoy} from {real} port 22 ssh2"),
                format!("Failed password for invalid user {decoy} from {real}"),
                format!("Invalid user {decoy} from {real} port 22"),
                format!("Invalid user {decoy} from {real}"),
                format!("error: PAM: Authentication failure for illegal user {decoy} from {real}"),
                format!("error: PAM: Authentication failure for {decoy} from {real} via 10.0.0.1"),
                format!(
                    "pam_unix(sshd:auth): authentication failure; logname= uid=0 euid=0 tty=ssh ruser= rhost={real}  user={decoy}"
                ),
                format!(
                    "maximum authentication attempts exceeded for invalid user {decoy} from {real} port 22 ssh2 [preauth]"
                ),
                format!("Received disconnect from {real} port 22:3: {decoy}: Auth fail [preauth]"),
                format!("refused connect from {decoy}@{real} ({real})"),
                format!("Failed {decoy} for root from {real} port 22 ssh2"),
                format!(
                    "Disconnecting invalid user {decoy} {real} port 22: Change of username or service not allowed: ({decoy},ssh-connection) -> (y,ssh-connection) [preauth]"
                ),
            ] {
                match read(&message) {
                    Some(Sshd::Failure { addr, .. }) => assert_eq!(addr, real, "{message}"),
                    Some(Sshd::Ambiguous) | Some(Sshd::NotFailure(_)) | None => {}
                }
            }
        }
        // The two cases from fail2ban's tests, and the real one is read.
        assert_eq!(
            addr("Failed password for invalid user test from 10.10.1.2 port 55555 ssh2 from 127.0.0.1 port 58946 ssh2"),
            Some("127.0.0.1".into())
        );
        assert_eq!(
            addr("Failed password for invalid user from 10.10.1.1 from 127.0.0.1 port 58946 ssh2"),
            Some("127.0.0.1".into())
        );
        // Details after a publickey or hostbased address may hold a
        // client's text: readings that disagree are not counted.
        assert_eq!(
            read(
                "Failed hostbased for x from 192.0.2.66 port 1 ssh2: y from 203.0.113.9 port 22 ssh2: RSA SHA256:x, client user \"a\", client host \"b\""
            ),
            Some(Sshd::Ambiguous)
        );
        assert_eq!(
            read(
                "Failed hostbased for dan from 203.0.113.9 port 22 ssh2: RSA 8c, client user \"a from 192.0.2.66 port 1 ssh2: b\", client host \"h\""
            ),
            Some(Sshd::Ambiguous)
        );
        assert_eq!(
            addr(
                "Failed hostbased for dan from 203.0.113.9 port 22 ssh2: RSA 8c, client user \"a from 192.0.2.66 port 1 ssh2\", client host \"h\""
            ),
            Some(real.into())
        );
        // Protocol-1 details after the address, or an old release's line
        // with a user name holding `from ... ssh1: ruser`: not counted.
        assert_eq!(
            read("Failed password for user from 127.0.0.1 port 20000 ssh1: ruser from 1.2.3.4"),
            Some(Sshd::Ambiguous)
        );
    }
}
