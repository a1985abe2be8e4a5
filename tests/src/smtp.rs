//! A real SMTP relay for the email channel's tests: Exim from Debian's
//! `exim4-daemon-light`, which `scripts/deps.sh` installs, started by the
//! test as a plain foreground process (`exim4 -C <config> -bdf`) with a
//! configuration, spool, logs and mailbox of its own under the test's
//! directory, on a free loopback port. The package's own service is never
//! used.
//!
//! The relay offers STARTTLS (or not) with a certificate a CA made for the
//! test signed, accepts AUTH PLAIN and LOGIN against a credentials file,
//! relays nothing, and delivers mail for `@example.test` into a maildir the
//! test reads. Exim gives up root for the configured `Debian-exim` user, so
//! everything under its directory belongs to that user. Its main log names
//! the SMTP commands of every connection that sent no mail
//! (`+smtp_no_mail`), which is how a test proves no `AUTH` was sent.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::io::AsyncReadExt;

use crate::procs::{eventually, free_addr};

/// The Exim binary `exim4-daemon-light` installs.
pub const EXIM: &str = "/usr/sbin/exim4";
/// The user Exim gives up root for (the package creates it).
const EXIM_USER: &str = "Debian-exim";
/// The domain whose mail the relay keeps.
pub const MAIL_DOMAIN: &str = "example.test";

/// How a test relay is set up.
#[derive(Debug, Clone)]
pub struct SmtpSetup {
    /// Offer STARTTLS. AUTH is offered either way, so that a client that
    /// would authenticate in clear text could.
    pub starttls: bool,
    /// Accepted user names and passwords.
    pub users: Vec<(String, String)>,
}

/// A CA made for a test and a serving certificate it signed, PEM files.
#[derive(Debug, Clone)]
pub struct SmtpTlsFiles {
    /// The CA certificate.
    pub ca: PathBuf,
    /// The serving certificate and key.
    pub server: (PathBuf, PathBuf),
}

impl SmtpTlsFiles {
    /// A new CA named `name` under `dir`, and a serving certificate it
    /// signed for `server_names` (DNS names or IP addresses).
    pub fn generate(dir: &Path, name: &str, server_names: &[&str]) -> SmtpTlsFiles {
        use remedy_proto::pki::{Authority, Leaf};
        let dir = dir.join(format!("smtp-tls-{name}"));
        std::fs::create_dir_all(&dir).expect("create the certificate directory");
        let authority = Authority::generate(&format!("{name} test CA")).expect("generate a CA");
        let ca = dir.join("ca.crt");
        std::fs::write(&ca, &authority.certificate().cert_pem).expect("write the CA");
        let names = server_names.iter().map(|n| (*n).to_owned()).collect();
        let server = authority
            .issue(&Leaf::Server(names), Duration::from_secs(24 * 3600))
            .expect("issue the serving certificate");
        SmtpTlsFiles { ca, server: server.write(&dir, "server").expect("write the serving certificate") }
    }
}

/// One mail as the relay stored it.
#[derive(Debug, Clone)]
pub struct StoredMail {
    /// The file as stored (line ends `\n`).
    pub raw: String,
    /// The header fields in order, folded lines joined.
    pub headers: Vec<(String, String)>,
    /// The body decoded by its `Content-Transfer-Encoding`, line ends `\n`.
    pub body: String,
}

impl StoredMail {
    fn parse(raw: String) -> StoredMail {
        let (head, body) = raw.split_once("\n\n").unwrap_or((raw.as_str(), ""));
        let mut headers: Vec<(String, String)> = Vec::new();
        for line in head.lines() {
            if line.starts_with([' ', '\t']) {
                if let Some(last) = headers.last_mut() {
                    last.1.push(' ');
                    last.1.push_str(line.trim());
                }
            } else if let Some((name, value)) = line.split_once(':') {
                headers.push((name.to_owned(), value.trim().to_owned()));
            }
        }
        let encoding = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("Content-Transfer-Encoding"))
            .map(|(_, v)| v.to_ascii_lowercase());
        let bytes = match encoding.as_deref() {
            Some("quoted-printable") => decode_quoted_printable(body),
            Some("base64") => decode_base64(body),
            _ => body.as_bytes().to_vec(),
        };
        let body = String::from_utf8(bytes).expect("a UTF-8 body").replace("\r\n", "\n");
        StoredMail { headers, body, raw }
    }

    /// Every value of the header field `name`.
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str()).collect()
    }

    /// The one value of `name`; panics when it is there more than once.
    pub fn header(&self, name: &str) -> Option<&str> {
        let all = self.all(name);
        assert!(all.len() <= 1, "{name} {} times in\n{}", all.len(), self.raw);
        all.first().copied()
    }
}

fn decode_quoted_printable(text: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let bytes = text.replace("\r\n", "\n").into_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'=' if bytes.get(i + 1) == Some(&b'\n') => i += 2,
            b'=' => {
                let hex = std::str::from_utf8(&bytes[i + 1..(i + 3).min(bytes.len())]).expect("ASCII");
                out.push(u8::from_str_radix(hex, 16).unwrap_or_else(|_| panic!("bad quoted-printable `={hex}`")));
                i += 3;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

fn decode_base64(text: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text.bytes().filter(|c| !c.is_ascii_whitespace() && *c != b'=') {
        let v = ALPHABET.iter().position(|a| *a == c).unwrap_or_else(|| panic!("bad base64 byte {c}"));
        acc = (acc << 6) | v as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

/// A running Exim relay; stopped when dropped.
#[derive(Debug)]
pub struct Smtp {
    /// Where it listens (plain SMTP, STARTTLS when offered).
    pub addr: SocketAddr,
    root: PathBuf,
    child: Option<Child>,
}

impl Smtp {
    /// Starts Exim under `dir/<name>`, serving `tls`'s certificate when
    /// `setup.starttls`. Panics, naming the fix, when Exim is not installed.
    pub async fn start(dir: &Path, name: &str, tls: &SmtpTlsFiles, setup: &SmtpSetup) -> Smtp {
        assert!(Path::new(EXIM).exists(), "no {EXIM}: run scripts/deps.sh (Debian package `exim4-daemon-light`)");
        let addr = free_addr();
        let root = dir.join(format!("smtp-{name}"));
        for sub in ["spool", "log", "mail"] {
            std::fs::create_dir_all(root.join(sub)).expect("create the relay's directories");
        }
        let (cert, key) = (root.join("server.crt"), root.join("server.key"));
        std::fs::copy(&tls.server.0, &cert).expect("copy the certificate");
        std::fs::copy(&tls.server.1, &key).expect("copy the key");
        let passwd = root.join("passwd");
        let lines: String = setup.users.iter().map(|(u, p)| format!("{u}: {p}\n")).collect();
        std::fs::write(&passwd, lines).expect("write the credentials file");
        give_to_exim(&root);
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("key mode");
        std::fs::set_permissions(&passwd, std::fs::Permissions::from_mode(0o600)).expect("credentials mode");
        // The configuration stays root's: Exim refuses one others may write.
        let config = root.join("exim.conf");
        std::fs::write(&config, configuration(&root, addr, setup.starttls)).expect("write the configuration");
        let out = std::fs::File::create(root.join("exim.out")).expect("create the output file");
        let err = out.try_clone().expect("clone the output handle");
        let child = Command::new(EXIM)
            .arg("-C")
            .arg(&config)
            .arg("-bdf")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {EXIM}: {e}"));
        let mut smtp = Smtp { addr, root, child: Some(child) };
        eventually(&format!("exim {name} greeting on {addr}"), Duration::from_secs(30), || {
            let exited = smtp.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
            let out = smtp.output();
            async move {
                assert!(exited.is_none(), "exim exited at start ({exited:?}):\n{out}");
                let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
                let mut greeting = [0u8; 4];
                tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut greeting)).await.ok()?.ok()?;
                (&greeting == b"220 ").then_some(())
            }
        })
        .await;
        smtp
    }

    /// Exim's main log so far (every event once; the reject log repeats
    /// some).
    pub fn log(&self) -> String {
        self.log_file("mainlog")
    }

    fn log_file(&self, name: &str) -> String {
        std::fs::read_to_string(self.root.join("log").join(name)).unwrap_or_default()
    }

    fn output(&self) -> String {
        std::fs::read_to_string(self.root.join("exim.out")).unwrap_or_default()
    }

    /// The mails delivered so far, in no particular order.
    pub fn mails(&self) -> Vec<StoredMail> {
        let mut mails = Vec::new();
        for sub in ["new", "cur"] {
            let Ok(entries) = std::fs::read_dir(self.root.join("mail").join(sub)) else { continue };
            for entry in entries.flatten() {
                let raw = std::fs::read_to_string(entry.path()).expect("read a stored mail");
                mails.push(StoredMail::parse(raw));
            }
        }
        mails
    }

    /// Waits until `count` mails are delivered, and returns them.
    pub async fn wait_for_mails(&self, count: usize) -> Vec<StoredMail> {
        eventually(&format!("{count} mails in the relay's mailbox"), Duration::from_secs(30), || {
            let mails = self.mails();
            async move { (mails.len() >= count).then_some(mails) }
        })
        .await
    }

    /// Waits until the main log has a line containing `text`, and returns it.
    pub async fn wait_for_log(&self, text: &str) -> String {
        eventually(&format!("`{text}` in the relay's log"), Duration::from_secs(30), || {
            let line = self.log().lines().find(|l| l.contains(text)).map(str::to_owned);
            async move { line }
        })
        .await
    }
}

impl Drop for Smtp {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- exim log ({}) ----\n{}{}{}",
                self.root.display(),
                self.log(),
                self.log_file("paniclog"),
                self.output()
            );
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Makes `dir` belong to the Exim user, and its parents up to the test's
/// temporary directory passable by it.
fn give_to_exim(dir: &Path) {
    let mut parent = dir.parent();
    while let Some(p) = parent {
        if p == Path::new("/") || p == Path::new("/tmp") {
            break;
        }
        if let Ok(meta) = std::fs::metadata(p) {
            let mut perms = meta.permissions();
            perms.set_mode(perms.mode() | 0o711);
            let _ = std::fs::set_permissions(p, perms);
        }
        parent = p.parent();
    }
    let out =
        Command::new("chown").arg("-R").arg(format!("{EXIM_USER}:{EXIM_USER}")).arg(dir).output().expect("run chown");
    assert!(
        out.status.success(),
        "chown to {EXIM_USER} failed (is `exim4-daemon-light` installed? run scripts/deps.sh): {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The relay's whole configuration.
fn configuration(root: &Path, addr: SocketAddr, starttls: bool) -> String {
    let root = root.display();
    let port = addr.port();
    let ip = addr.ip();
    let tls_hosts = if starttls { "*" } else { "" };
    format!(
        r#"# A test relay: loopback only, mail for {MAIL_DOMAIN} kept in a maildir.
primary_hostname = relay.test
qualify_domain = relay.test
exim_user = {EXIM_USER}
exim_group = {EXIM_USER}
spool_directory = {root}/spool
log_file_path = {root}/log/%slog
pid_file_path = {root}/exim.pid
daemon_smtp_ports = {port}
local_interfaces = {ip}
host_lookup =
rfc1413_hosts =
keep_environment =
tls_advertise_hosts = {tls_hosts}
tls_certificate = {root}/server.crt
tls_privatekey = {root}/server.key
auth_advertise_hosts = *
acl_smtp_rcpt = acl_rcpt
log_selector = +smtp_connection +smtp_no_mail +smtp_protocol_error +tls_cipher +received_recipients
domainlist local_domains = {MAIL_DOMAIN}

begin acl
acl_rcpt:
  accept authenticated = *
         domains = +local_domains
  deny message = authentication required, and only {MAIL_DOMAIN} is served

begin routers
mailbox:
  driver = accept
  domains = +local_domains
  transport = maildir

begin transports
maildir:
  driver = appendfile
  directory = {root}/mail
  maildir_format
  create_directory
  user = {EXIM_USER}
  group = {EXIM_USER}
  envelope_to_add
  return_path_add

begin retry
* * F,1m,1m

begin authenticators
plain:
  driver = plaintext
  public_name = PLAIN
  server_prompts = :
  server_condition = ${{if eq{{$auth3}}{{${{lookup{{$auth2}}lsearch{{{root}/passwd}}{{$value}}fail}}}}}}
  server_set_id = $auth2
login:
  driver = plaintext
  public_name = LOGIN
  server_prompts = Username:: : Password::
  server_condition = ${{if eq{{$auth2}}{{${{lookup{{$auth1}}lsearch{{{root}/passwd}}{{$value}}fail}}}}}}
  server_set_id = $auth1
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_decode() {
        assert_eq!(decode_quoted_printable("St=C3=B6rung: a=\nb=3D\n"), "Störung: ab=\n".as_bytes());
        assert_eq!(decode_base64("U3TDtnJ1\nbmc="), "Störung".as_bytes());
    }
}
