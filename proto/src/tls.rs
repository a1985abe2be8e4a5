//! Mutual TLS on every gRPC connection (rustls with the ring provider),
//! with certificates and CAs that reload from disk without a restart.
//!
//! Why not tonic's own TLS: its configuration is fixed when the server
//! starts, while cert-manager rotates certificates under a running pod.
//! Here every new connection takes the newest material; connections
//! already open keep theirs, so a rotation drops nothing.
//!
//! The server asks for a client certificate but also lets a client without
//! one finish the handshake, so that such a client gets a gRPC
//! UNAUTHENTICATED naming what is missing instead of a bare TLS alert (and
//! may still present a bearer token on the admin API). A certificate that
//! is presented must verify: another CA or an expired certificate fails the
//! handshake, and the refusal is logged with its reason.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use remedy_shared::auth::Identity;
use remedy_shared::sync;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::net::{TcpListener, TcpStream};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::listen::{self, Activity, Gate, Guarded, Handshake, HandshakeFuture};

/// Why TLS material could not be used. The message names the file.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TlsError(String);

/// The crypto provider, the same everywhere: ring.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Installs ring as the process's default provider; called at the top of
/// each `main` so that no other TLS user (kube, reqwest) picks another.
pub fn install_default_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Where one side's certificate, key and trusted CAs are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// Certificate chain (PEM), leaf first. Optional for a client that
    /// authenticates with a token instead.
    pub cert: Option<PathBuf>,
    /// Private key (PEM).
    pub key: Option<PathBuf>,
    /// CAs trusted to sign the other side (PEM bundle).
    pub ca: PathBuf,
}

/// The files' contents, compared by value to notice a rotation (cert-manager
/// swaps a symlink, so modification times are not reliable).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Material {
    cert: Option<Vec<u8>>,
    key: Option<Vec<u8>>,
    ca: Vec<u8>,
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError(format!("cannot read {}: {e}", path.display())))
}

impl TlsFiles {
    fn read(&self) -> Result<Material, TlsError> {
        if self.cert.is_some() != self.key.is_some() {
            return Err(TlsError("a certificate and its key go together: give both or neither".into()));
        }
        Ok(Material {
            cert: self.cert.as_deref().map(read).transpose()?,
            key: self.key.as_deref().map(read).transpose()?,
            ca: read(&self.ca)?,
        })
    }

    fn cert_name(&self) -> String {
        self.cert.as_ref().map(|p| p.display().to_string()).unwrap_or_default()
    }
}

fn certificates(pem: &[u8], name: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError(format!("{name}: not a PEM certificate: {e}")))?;
    if certs.is_empty() {
        return Err(TlsError(format!("{name}: holds no certificate")));
    }
    Ok(certs)
}

fn private_key(pem: &[u8], name: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| TlsError(format!("{name}: not a PEM private key: {e}")))
}

fn roots(pem: &[u8], name: &str) -> Result<Arc<RootCertStore>, TlsError> {
    let mut store = RootCertStore::empty();
    for cert in certificates(pem, name)? {
        store.add(cert).map_err(|e| TlsError(format!("{name}: not a usable CA certificate: {e}")))?;
    }
    Ok(Arc::new(store))
}

fn server_config(files: &TlsFiles, m: &Material) -> Result<ServerConfig, TlsError> {
    let (Some(cert), Some(key)) = (&m.cert, &m.key) else {
        return Err(TlsError("the server needs a certificate and a key".into()));
    };
    let cert_name = files.cert_name();
    let key_name = files.key.as_ref().map(|p| p.display().to_string()).unwrap_or_default();
    let ca_name = files.ca.display().to_string();
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(&m.ca, &ca_name)?, provider())
        .allow_unauthenticated()
        .build()
        .map_err(|e| TlsError(format!("{ca_name}: {e}")))?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certificates(cert, &cert_name)?, private_key(key, &key_name)?)
        .map_err(|e| TlsError(format!("{cert_name} and {key_name} do not make a usable pair: {e}")))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

fn client_config(files: &TlsFiles, m: &Material) -> Result<ClientConfig, TlsError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError(e.to_string()))?
        .with_root_certificates(roots(&m.ca, &files.ca.display().to_string())?);
    let mut config = match (&m.cert, &m.key) {
        (Some(cert), Some(key)) => {
            let cert_name = files.cert_name();
            builder
                .with_client_auth_cert(certificates(cert, &cert_name)?, private_key(key, &cert_name)?)
                .map_err(|e| TlsError(format!("{cert_name} and its key do not make a usable pair: {e}")))?
        }
        _ => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// A TLS configuration rebuilt whenever its files change.
#[derive(Debug)]
pub struct Reloading<C> {
    files: TlsFiles,
    build: fn(&TlsFiles, &Material) -> Result<C, TlsError>,
    current: RwLock<Arc<C>>,
    material: Mutex<Material>,
}

impl<C> Reloading<C> {
    fn load(files: TlsFiles, build: fn(&TlsFiles, &Material) -> Result<C, TlsError>) -> Result<Self, TlsError> {
        let material = files.read()?;
        let config = build(&files, &material)?;
        Ok(Reloading { files, build, current: RwLock::new(Arc::new(config)), material: Mutex::new(material) })
    }

    /// The configuration new connections use.
    pub fn current(&self) -> Arc<C> {
        sync::read(&self.current).clone()
    }

    /// Reads the files again and, when they changed and make a usable
    /// configuration, switches to it. Unusable new material (a certificate
    /// written before its key, say) keeps the old configuration serving.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let material = self.files.read()?;
        let mut last = sync::lock(&self.material);
        if *last == material {
            return Ok(false);
        }
        let config = (self.build)(&self.files, &material)?;
        *sync::write(&self.current) = Arc::new(config);
        *last = material;
        Ok(true)
    }

    /// Checks the files every `every` until `stop` resolves.
    pub async fn keep_reloading(self: Arc<Self>, every: Duration, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = &mut stop => return,
                _ = tick.tick() => match self.reload_if_changed() {
                    Ok(true) => tracing::info!(cert = %self.files.cert_name(), ca = %self.files.ca.display(),
                        "TLS certificates reloaded: new connections use them"),
                    Ok(false) => {}
                    Err(e) => tracing::warn!(error = %e, "TLS files changed but cannot be used yet; still serving the previous ones"),
                },
            }
        }
    }
}

/// Says `what` at start and every minute until `stop`: plaintext must never
/// go unnoticed (`--insecure` on the coordinator or an agent).
pub async fn warn_plaintext_every_minute(what: String, stop: impl std::future::Future<Output = ()>) {
    tokio::pin!(stop);
    let mut every = tokio::time::interval(Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = every.tick() => tracing::warn!("INSECURE: {what}"),
        }
    }
}

/// The server side: certificate, key and the CAs that sign clients.
pub type ServerTls = Reloading<ServerConfig>;
/// The client side: the CAs that sign the coordinator, and optionally a
/// client certificate.
pub type ClientTls = Reloading<ClientConfig>;

/// Loads the server's material.
pub fn server(files: TlsFiles) -> Result<Arc<ServerTls>, TlsError> {
    Reloading::load(files, server_config).map(Arc::new)
}

/// Loads a client's material.
pub fn client(files: TlsFiles) -> Result<Arc<ClientTls>, TlsError> {
    Reloading::load(files, client_config).map(Arc::new)
}

/// Who is on the other end of a TLS connection, as its certificate says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    /// The peer's address.
    pub remote: Option<SocketAddr>,
    /// The certificate's Remedy identity; `None` when the peer presented
    /// no certificate, one without a `remedy://` URI name, or one whose
    /// names are refused (`refused`).
    pub identity: Option<Identity>,
    /// Whether a (verified) certificate was presented at all.
    pub presented_certificate: bool,
    /// Why the certificate names nobody although it carries `remedy://`
    /// names (more than one); callers are refused with this reason.
    pub refused: Option<String>,
    /// The connection's requests, which keep it from being closed as idle.
    pub activity: Activity,
}

impl PeerInfo {
    /// A peer known by its address only (plaintext, or before the handshake).
    pub fn address(remote: SocketAddr) -> Self {
        PeerInfo {
            remote: Some(remote),
            identity: None,
            presented_certificate: false,
            refused: None,
            activity: Activity::default(),
        }
    }
}

/// A certificate whose `remedy://` names do not name one identity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the client certificate carries {} remedy:// URI names ({}); a certificate must name exactly one identity",
    .0.len(),
    .0.join(", ")
)]
pub struct AmbiguousIdentity(pub Vec<String>);

/// The Remedy identity in a DER certificate's URI names, if any. A
/// certificate with more than one `remedy://` URI name is refused: which
/// one it speaks for would depend on the order of its names, and a
/// certificate for one node that also named another could speak for both.
pub fn identity_of(der: &[u8]) -> Result<Option<Identity>, AmbiguousIdentity> {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else { return Ok(None) };
    let Ok(Some(san)) = cert.subject_alternative_name() else { return Ok(None) };
    let remedy: Vec<&str> = san
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            x509_parser::extensions::GeneralName::URI(uri)
                if uri
                    .get(..remedy_shared::auth::URI_SCHEME.len())
                    .is_some_and(|s| s.eq_ignore_ascii_case(remedy_shared::auth::URI_SCHEME)) =>
            {
                Some(*uri)
            }
            _ => None,
        })
        .collect();
    match remedy.as_slice() {
        [] => Ok(None),
        [one] => Ok(Identity::from_uri(one)),
        many => Err(AmbiguousIdentity(many.iter().map(|u| (*u).to_owned()).collect())),
    }
}

/// An accepted, handshaken TLS connection under its listener's deadlines.
pub type TlsConnection = Guarded<tokio_rustls::server::TlsStream<TcpStream>>;

/// Accepts connections on `listener` under `gate` (caps, the handshake's
/// deadline, the first request's and the idle one: see [`crate::listen`])
/// and hands tonic each one after its TLS handshake, with the newest
/// certificates. Stops accepting when tonic drops the stream.
pub fn incoming(
    listener: TcpListener,
    tls: Arc<ServerTls>,
    gate: Arc<Gate>,
) -> ReceiverStream<Result<TlsConnection, std::io::Error>> {
    let handshake: Handshake<tokio_rustls::server::TlsStream<TcpStream>> = Arc::new(move |tcp: TcpStream, remote| {
        let acceptor = tokio_rustls::TlsAcceptor::from(tls.current());
        let handshaking: HandshakeFuture<_> = Box::pin(async move {
            let stream = acceptor.accept(tcp).await.inspect_err(|e| {
                tracing::warn!(peer = %remote, error = %e, "TLS handshake refused");
            })?;
            let chain = stream.get_ref().1.peer_certificates();
            let named = chain.and_then(|c| c.first()).map(|leaf| identity_of(leaf));
            let (identity, refused) = match named {
                Some(Ok(identity)) => (identity, None),
                Some(Err(e)) => {
                    tracing::warn!(peer = %remote, error = %e, "client certificate names no one identity");
                    (None, Some(e.to_string()))
                }
                None => (None, None),
            };
            let peer = PeerInfo {
                identity,
                presented_certificate: chain.is_some_and(|c| !c.is_empty()),
                refused,
                ..PeerInfo::address(remote)
            };
            Ok((stream, peer))
        });
        handshaking
    });
    listen::incoming(listener, gate, handshake)
}

/// A channel to `uri` (an `https://` URL) over TLS with the newest client
/// material at each (re)connection. `server_name` overrides the name the
/// coordinator's certificate is checked against (default: the URL's host).
/// Connects lazily; `endpoint` carries timeouts and keepalives.
pub fn channel(endpoint: Endpoint, tls: Arc<ClientTls>, server_name: Option<String>) -> Result<Channel, TlsError> {
    let uri = endpoint.uri().clone();
    let host = uri.host().ok_or_else(|| TlsError(format!("{uri}: no host")))?.to_owned();
    let port = uri.port_u16().unwrap_or(443);
    let name = server_name.unwrap_or_else(|| host.trim_start_matches('[').trim_end_matches(']').to_owned());
    let name = ServerName::try_from(name.clone())
        .map_err(|_| TlsError(format!("`{name}` is not a DNS name or an IP address to check the server against")))?;
    let connector = tower::service_fn(move |_: Uri| {
        let (tls, host, name) = (tls.clone(), host.clone(), name.clone());
        async move {
            let tcp = TcpStream::connect((host.trim_start_matches('[').trim_end_matches(']'), port)).await?;
            let _ = tcp.set_nodelay(true);
            let stream = tokio_rustls::TlsConnector::from(tls.current()).connect(name, tcp).await?;
            Ok::<_, std::io::Error>(TokioIo::new(stream))
        }
    });
    Ok(endpoint.connect_with_connector_lazy(connector))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_come_from_the_certificate_uri() {
        let mut params = rcgen::CertificateParams::new(vec!["node-1".to_owned()]).unwrap();
        params.subject_alt_names.push(rcgen::SanType::URI("remedy://agent/node-1".try_into().unwrap()));
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(identity_of(cert.der()), Ok(Some(Identity::Agent { node: "node-1".into() })));

        let plain = rcgen::CertificateParams::new(vec!["x".to_owned()]).unwrap().self_signed(&key).unwrap();
        assert_eq!(identity_of(plain.der()), Ok(None), "a certificate without a remedy:// URI names nobody");
        assert_eq!(identity_of(b"not a certificate"), Ok(None));

        // Other URIs beside one remedy:// name are no concern of ours.
        params.subject_alt_names.push(rcgen::SanType::URI("spiffe://cluster/ns/x".try_into().unwrap()));
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(identity_of(cert.der()), Ok(Some(Identity::Agent { node: "node-1".into() })));
    }

    #[test]
    fn a_certificate_with_two_remedy_names_names_nobody_and_says_why() {
        let mut params = rcgen::CertificateParams::new(vec!["node-1".to_owned()]).unwrap();
        for uri in ["remedy://agent/node-1", "REMEDY://agent/node-2"] {
            params.subject_alt_names.push(rcgen::SanType::URI(uri.try_into().unwrap()));
        }
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let refused = identity_of(cert.der()).unwrap_err();
        assert_eq!(
            refused.to_string(),
            "the client certificate carries 2 remedy:// URI names (remedy://agent/node-1, REMEDY://agent/node-2); \
             a certificate must name exactly one identity"
        );
    }

    #[test]
    fn unreadable_or_mismatched_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = TlsFiles {
            cert: Some(dir.path().join("tls.crt")),
            key: Some(dir.path().join("tls.key")),
            ca: dir.path().join("ca.crt"),
        };
        let err = server(missing).unwrap_err().to_string();
        assert!(err.contains("tls.crt"), "{err}");

        let half = TlsFiles { cert: Some(dir.path().join("tls.crt")), key: None, ca: dir.path().join("ca.crt") };
        assert!(client(half).unwrap_err().to_string().contains("give both or neither"));

        std::fs::write(dir.path().join("ca.crt"), "not pem").unwrap();
        let err = client(TlsFiles { cert: None, key: None, ca: dir.path().join("ca.crt") }).unwrap_err();
        assert!(err.to_string().contains("ca.crt: holds no certificate"), "{err}");
    }
}
