//! How the coordinator's connections to PostgreSQL are protected, by the
//! database's `sslmode`:
//!
//! - unset: no TLS, and no password in clear: a server that asks for a
//!   cleartext password (`password` in pg_hba.conf) is refused before the
//!   password is sent; MD5 and SCRAM go through (neither sends it);
//! - `disable`: no TLS, a cleartext password is sent when asked (say so
//!   only where the network is trusted);
//! - `require`: TLS, the server's certificate not checked (what libpq's
//!   `require` does: the password is encrypted on the wire, not kept from
//!   a server that impersonates the member);
//! - `verify-full`: TLS, the certificate must chain to `sslrootcert` and
//!   name the member's `host`.
//!
//! The refusal reads the server's bytes as they arrive ([`AuthWatch`]),
//! under tokio-postgres: a read that would hand it a cleartext request
//! fails instead, so the password is never written.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use remedy_shared::pgwire::{AuthWatch, Refusal};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, TlsConnect};

use super::config::{DatabaseConfig, MemberConfig, SslMode};

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The TLS client configuration of `sslmode` (`None`: no TLS).
pub(crate) fn client_config(db: &DatabaseConfig) -> Result<Option<Arc<ClientConfig>>, String> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?;
    let config = match db.sslmode {
        None | Some(SslMode::Disable) => return Ok(None),
        Some(SslMode::Require) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider())))
            .with_no_client_auth(),
        Some(SslMode::VerifyFull) => {
            let file = db.sslrootcert.as_ref().ok_or("sslmode verify-full needs sslrootcert")?;
            builder.with_root_certificates(roots(file)?).with_no_client_auth()
        }
    };
    Ok(Some(Arc::new(config)))
}

/// The certificates of a CA file; an error names the file.
pub(crate) fn roots(file: &std::path::Path) -> Result<RootCertStore, String> {
    let pem = std::fs::read(file).map_err(|e| format!("`{}`: {e}", file.display()))?;
    let mut store = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| format!("`{}`: not PEM: {e}", file.display()))?;
        store.add(cert).map_err(|e| format!("`{}`: {e}", file.display()))?;
    }
    if store.is_empty() {
        return Err(format!("`{}` holds no PEM certificate", file.display()));
    }
    Ok(store)
}

/// `require`: any certificate, its handshake signature still checked.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// tokio-postgres's TLS hook over rustls, for one member.
pub(crate) struct Tls {
    pub(crate) config: Arc<ClientConfig>,
    pub(crate) host: String,
}

impl<S> TlsConnect<S> for Tls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = TlsStream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<TlsStream<S>, io::Error>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let name = ServerName::try_from(self.host.clone())
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("`{}`: {e}", self.host)))?;
            let stream = tokio_rustls::TlsConnector::from(self.config).connect(name, stream).await?;
            Ok(TlsStream(stream))
        })
    }
}

/// A TLS connection to a member.
pub(crate) struct TlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsStream<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsStream<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> tokio_postgres::tls::TlsStream for TlsStream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        // SCRAM without channel binding; TLS itself still protects it.
        ChannelBinding::none()
    }
}

/// A plaintext connection that fails a read rather than hand tokio-postgres
/// a request for a cleartext password: the password is never written.
pub(crate) struct Guarded<S> {
    inner: S,
    watch: AuthWatch,
    member: String,
}

impl<S> Guarded<S> {
    pub(crate) fn new(inner: S, member: &MemberConfig) -> Self {
        Guarded { inner, watch: AuthWatch::default(), member: member.name().to_owned() }
    }
}

/// Why a member was refused the password.
pub(crate) fn cleartext_refusal(member: &str) -> String {
    format!(
        "member {member} asked for a cleartext password without TLS; not sent (set the database's `sslmode: \
         require` or `verify-full`, or `sslmode: disable` to allow it on a trusted network)"
    )
}

impl<S: AsyncRead + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => match this.watch.feed(&buf.filled()[before..]) {
                Ok(()) => Poll::Ready(Ok(())),
                Err(Refusal::CleartextPassword) => {
                    Poll::Ready(Err(io::Error::new(io::ErrorKind::PermissionDenied, cleartext_refusal(&this.member))))
                }
            },
            other => other,
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
