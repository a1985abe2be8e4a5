//! The cost of mutual TLS: new connections per second to a coordinator
//! serving mTLS, beside the same coordinator serving plaintext. Each
//! connection is established as gRPC needs it (TCP; for mTLS the TLS 1.3
//! handshake with a client certificate; the HTTP/2 preface and the
//! server's SETTINGS) and closed. No call is made: every admin call writes
//! an audit entry, and that fsync would be measured instead of the
//! handshake. Four connections at a time, for a fixed time per transport.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use remedy_proto::pki::{Authority, Leaf};
use remedy_proto::tls::{self, TlsFiles};
use remedy_shared::auth::Identity;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::CoordinatorProc;

const CONCURRENCY: usize = 4;

/// What was measured for one transport.
#[derive(Debug, Clone)]
pub struct TransportFigures {
    /// Connections that completed their call.
    pub connections: u64,
    /// Per second.
    pub per_sec: f64,
    /// Median time for connect + call, ms.
    pub p50_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
}

/// Both transports.
#[derive(Debug, Clone)]
pub struct HandshakeFigures {
    /// Plaintext (`--insecure`).
    pub plaintext: TransportFigures,
    /// Mutual TLS (TLS 1.3, ECDSA P-256 certificates, ring).
    pub mtls: TransportFigures,
    /// Seconds per transport.
    pub secs: u64,
}

/// Runs the part.
pub async fn run(per_transport: Duration) -> anyhow::Result<HandshakeFigures> {
    let dir = tempfile::Builder::new().prefix("remedy-bench-tls-").tempdir().context("temp dir")?;
    let ca = Authority::generate("bench CA").map_err(anyhow::Error::msg)?;
    let year = Duration::from_secs(365 * 24 * 3600);
    std::fs::write(dir.path().join("ca.crt"), &ca.certificate().cert_pem)?;
    let server = ca.issue(&Leaf::Server(vec!["127.0.0.1".into()]), year).map_err(anyhow::Error::msg)?;
    let (cert, key) = server.write(dir.path(), "coordinator")?;
    let user = ca.issue(&Leaf::Client(Identity::User { name: "bench".into() }), year).map_err(anyhow::Error::msg)?;
    let user_files = user.write(dir.path(), "user")?;
    let config = dir.path().join("coordinator.yaml");
    std::fs::write(&config, "authorization:\n  roles:\n    viewer: ['user:bench']\n")?;
    let ca_path = dir.path().join("ca.crt");

    let plain = CoordinatorProc::start().await?;
    let addr = plain.grpc;
    let plaintext = measure(per_transport, move || async move {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        h2_preface(tcp).await
    })
    .await
    .context("plaintext")?;
    drop(plain);

    let secure = CoordinatorProc::start_with(&[
        "--tls-cert".into(),
        cert.into(),
        "--tls-key".into(),
        key.into(),
        "--tls-client-ca".into(),
        ca_path.clone().into(),
        "--config".into(),
        config.into(),
    ])
    .await?;
    let addr = secure.grpc;
    let client_tls = tls::client(TlsFiles { cert: Some(user_files.0), key: Some(user_files.1), ca: ca_path })?;
    let mtls = measure(per_transport, move || {
        let client_tls = client_tls.clone();
        async move {
            let tcp = TcpStream::connect(addr).await?;
            tcp.set_nodelay(true)?;
            let name = rustls::pki_types::ServerName::try_from("127.0.0.1")?;
            let stream = tokio_rustls::TlsConnector::from(client_tls.current()).connect(name, tcp).await?;
            h2_preface(stream).await
        }
    })
    .await
    .context("mTLS")?;
    drop(secure);
    Ok(HandshakeFigures { plaintext, mtls, secs: per_transport.as_secs() })
}

/// Sends the HTTP/2 client preface and an empty SETTINGS frame, and waits
/// for the server's first frame header: the connection is then usable.
async fn h2_preface<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S) -> anyhow::Result<()> {
    stream.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await?;
    stream.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await?;
    let mut header = [0u8; 9];
    stream.read_exact(&mut header).await?;
    anyhow::ensure!(header[3] == 4, "the server's first frame is not SETTINGS");
    Ok(())
}

async fn measure<F, Fut>(per_transport: Duration, connect: F) -> anyhow::Result<TransportFigures>
where
    F: Fn() -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + per_transport;
    let mut workers = Vec::new();
    for _ in 0..CONCURRENCY {
        let (connect, done) = (connect.clone(), done.clone());
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while Instant::now() < deadline {
                let started = Instant::now();
                connect().await?;
                latencies.push(started.elapsed());
                done.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<_, anyhow::Error>(latencies)
        }));
    }
    let mut all = Vec::new();
    for w in workers {
        all.extend(w.await.context("worker")??);
    }
    all.sort();
    let at = |q: f64| all.get(((all.len() as f64 - 1.0) * q).round() as usize).copied().unwrap_or_default();
    let connections = done.load(Ordering::Relaxed);
    Ok(TransportFigures {
        connections,
        per_sec: connections as f64 / per_transport.as_secs_f64(),
        p50_ms: at(0.5).as_secs_f64() * 1e3,
        p99_ms: at(0.99).as_secs_f64() * 1e3,
    })
}

/// The Markdown section.
pub fn report(figures: &Option<anyhow::Result<HandshakeFigures>>) -> String {
    let Some(figures) = figures else { return String::new() };
    let f = match figures {
        Ok(f) => f,
        Err(e) => return format!("\n### New connections: mTLS vs plaintext\n\nfailed: {e:#}\n"),
    };
    let row = |name: &str, t: &TransportFigures| {
        format!("| {name} | {} | {:.0} | {:.2} | {:.2} |\n", t.connections, t.per_sec, t.p50_ms, t.p99_ms)
    };
    format!(
        "\n### New connections: mTLS vs plaintext\n\n\
         Each connection: TCP (and for mTLS the TLS 1.3 handshake with a client certificate, ECDSA P-256, ring), \
         the HTTP/2 preface and the server's SETTINGS, close (no call: every admin call writes an audit entry, \
         whose fsync would be measured instead); {CONCURRENCY} at a time for {} s per transport, \
         against a release coordinator on loopback.\n\n\
         | transport | connections | per second | p50 ms | p99 ms |\n|---|--:|--:|--:|--:|\n{}{}\n\
         mTLS costs {:.1}x the time per new connection; streams and admin clients keep their connection, so \
         this is paid once per agent (re)connect, not per message.\n",
        f.secs,
        row("plaintext", &f.plaintext),
        row("mutual TLS", &f.mtls),
        f.plaintext.per_sec / f.mtls.per_sec.max(1e-9),
    )
}
