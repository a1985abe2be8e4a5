//! A small certificate authority for a local installation and for tests:
//! a CA, the coordinator's server certificate, and client certificates
//! carrying Remedy identities (`remedy://agent/NODE`, `remedy://user/NAME`).
//! Production clusters use their own issuer (cert-manager); the files
//! written here have the same shape.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SanType,
};
use remedy_shared::auth::Identity;

/// A certificate and its key, PEM.
#[derive(Clone)]
pub struct Issued {
    /// Certificate (PEM).
    pub cert_pem: String,
    /// Private key (PEM).
    pub key_pem: String,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Issued { .. }")
    }
}

impl Issued {
    /// Writes `NAME.crt` and `NAME.key` (the key readable by its owner only).
    pub fn write(&self, dir: &Path, name: &str) -> std::io::Result<(PathBuf, PathBuf)> {
        let (cert, key) = (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")));
        write_private(&key, &self.key_pem)?;
        std::fs::write(&cert, &self.cert_pem)?;
        Ok((cert, key))
    }
}

fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    file.write_all(contents.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(tmp, path)
}

/// What a certificate is for.
#[derive(Debug, Clone)]
pub enum Leaf {
    /// The coordinator: DNS names and IP addresses clients connect to.
    Server(Vec<String>),
    /// A client with a Remedy identity.
    Client(Identity),
}

/// A certificate authority that can sign leaves.
pub struct Authority {
    issued: Issued,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Authority { .. }")
    }
}

fn pki_error(e: impl std::fmt::Display) -> String {
    format!("certificate generation failed: {e}")
}

impl Authority {
    /// A new self-signed CA named `common_name`, valid for ten years.
    pub fn generate(common_name: &str) -> Result<Authority, String> {
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(pki_error)?;
        params.distinguished_name.push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        params.not_before = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
        params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(3650);
        let key = KeyPair::generate().map_err(pki_error)?;
        let cert = params.self_signed(&key).map_err(pki_error)?;
        let issued = Issued { cert_pem: cert.pem(), key_pem: key.serialize_pem() };
        Ok(Authority { issued, issuer: Issuer::new(params, key) })
    }

    /// A CA from its PEM certificate and key.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Authority, String> {
        let key = KeyPair::from_pem(key_pem).map_err(pki_error)?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key).map_err(pki_error)?;
        let key_pem = key_pem.to_owned();
        Ok(Authority { issued: Issued { cert_pem: cert_pem.to_owned(), key_pem }, issuer })
    }

    /// The CA's own certificate and key.
    pub fn certificate(&self) -> &Issued {
        &self.issued
    }

    /// Signs a leaf valid from an hour ago for `valid_for`.
    #[allow(
        clippy::disallowed_methods,
        reason = "a certificate's validity is checked by its peers against the real time, so it is dated by it"
    )]
    pub fn issue(&self, leaf: &Leaf, valid_for: Duration) -> Result<Issued, String> {
        let now = SystemTime::now();
        self.issue_between(leaf, now - Duration::from_secs(3600), now + valid_for)
    }

    /// Signs a leaf valid between two instants (tests make expired ones).
    pub fn issue_between(&self, leaf: &Leaf, not_before: SystemTime, not_after: SystemTime) -> Result<Issued, String> {
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(pki_error)?;
        match leaf {
            Leaf::Server(names) => {
                params.distinguished_name.push(DnType::CommonName, names.first().cloned().unwrap_or_default());
                for name in names {
                    params.subject_alt_names.push(match name.parse::<std::net::IpAddr>() {
                        Ok(ip) => SanType::IpAddress(ip),
                        Err(_) => SanType::DnsName(name.clone().try_into().map_err(pki_error)?),
                    });
                }
                params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            }
            Leaf::Client(identity) => {
                params.distinguished_name.push(DnType::CommonName, identity.to_string());
                params.subject_alt_names.push(SanType::URI(identity.to_uri().try_into().map_err(pki_error)?));
                params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            }
        }
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.not_before = not_before.into();
        params.not_after = not_after.into();
        let key = KeyPair::generate().map_err(pki_error)?;
        let cert = params.signed_by(&key, &self.issuer).map_err(pki_error)?;
        Ok(Issued { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }
}

/// The names a local coordinator's certificate carries.
pub const LOCAL_SERVER_NAMES: [&str; 4] = ["localhost", "127.0.0.1", "::1", "remedy-coordinator"];

/// Validity of the certificates [`init_local`] writes.
pub const LOCAL_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);

/// The files of a local installation under one directory.
#[derive(Debug, Clone)]
pub struct LocalPki {
    /// `ca.crt`.
    pub ca: PathBuf,
    /// `coordinator.crt` / `.key`.
    pub coordinator: (PathBuf, PathBuf),
    /// `agent-NODE.crt` / `.key`.
    pub agent: (PathBuf, PathBuf),
    /// `user-NAME.crt` / `.key`.
    pub user: (PathBuf, PathBuf),
}

/// Creates, under `dir`, a CA and certificates for a coordinator, the
/// agent of `node` and the user `user`, keeping whatever already exists
/// (so a second `make run` reuses them). Returns the paths.
pub fn init_local(dir: &Path, node: &str, user: &str) -> Result<LocalPki, String> {
    let io = |e: std::io::Error| format!("{}: {e}", dir.display());
    std::fs::create_dir_all(dir).map_err(io)?;
    let (ca_cert, ca_key) = (dir.join("ca.crt"), dir.join("ca.key"));
    let authority = if ca_cert.exists() && ca_key.exists() {
        let read = |p: &Path| std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()));
        Authority::from_pem(&read(&ca_cert)?, &read(&ca_key)?)?
    } else {
        let ca = Authority::generate("Remedy local CA")?;
        ca.certificate().write(dir, "ca").map_err(io)?;
        ca
    };
    let leaf = |name: &str, leaf: Leaf| -> Result<(PathBuf, PathBuf), String> {
        let (cert, key) = (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")));
        if cert.exists() && key.exists() {
            return Ok((cert, key));
        }
        authority.issue(&leaf, LOCAL_VALIDITY)?.write(dir, name).map_err(io)
    };
    let coordinator = leaf("coordinator", Leaf::Server(LOCAL_SERVER_NAMES.iter().map(|s| s.to_string()).collect()))?;
    let agent_identity = Identity::parse(&format!("agent:{node}"))?;
    let agent = leaf(&format!("agent-{node}"), Leaf::Client(agent_identity))?;
    let user_identity = Identity::parse(&format!("user:{user}"))?;
    let user = leaf(&format!("user-{user}"), Leaf::Client(user_identity))?;
    Ok(LocalPki { ca: ca_cert, coordinator, agent, user })
}
