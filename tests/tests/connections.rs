//! Connections have deadlines, end to end with a real TLS coordinator and
//! agent on loopback: connections that never finish their TLS handshake,
//! that finish it and send nothing, and HTTP clients that send their
//! headers a byte at a time are all closed by the server, and counted,
//! while real callers are served; open streams are never taken for idle;
//! one address cannot hold more than its share.

// Test helpers fail the test by panicking; that is their job.
#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use remedy_e2e::procs::{Agent, Coordinator, eventually, http_request, metric_value, remedyctl};
use remedy_e2e::runs::now_rfc3339;
use remedy_e2e::world::alert_payload;
use remedy_proto::pki::{Authority, Leaf};
use remedy_proto::tls::{self, TlsFiles};
use remedy_proto::v1 as pb;
use remedy_proto::v1::admin_service_client::AdminServiceClient;
use remedy_shared::auth::Identity;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_stream::StreamExt;
use tonic::transport::Endpoint;

const WAIT: Duration = Duration::from_secs(60);
const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);
/// Connections of each kind in the flood.
const FLOOD: usize = 500;
/// Source addresses the flood is spread over (127.0.0.2 and up), so that
/// no address goes over its cap: each holds 34 connections on the gRPC
/// port (17 silent TCP, 17 silent TLS) and 17 on the HTTP port, under the
/// default cap of 64 the flood runs with.
const SOURCES: usize = 30;
/// TCP connects and TLS handshakes the flood runs at once, so that its
/// own handshakes do not starve one another of CPU past their deadline on
/// a busy machine, and its SYNs do not overflow the kernel's queue (which
/// drops connections without telling either side's program).
const HANDSHAKES_AT_ONCE: usize = 32;
/// The cap of the test of caps.
const MAX_PER_PEER: usize = 32;

/// Short deadlines, so the test does not wait for the defaults; the
/// idle timeout is shorter than the first-request deadline, so open
/// streams outlive several idle timeouts while the flood is closed.
const CONFIG: &str = "
connections:
  handshake_timeout: 3s
  header_read_timeout: 2s
  first_request_timeout: 4s
  idle_timeout: 1s
  max_total: 4000
";
const ROLES: &str = "authorization:\n  roles:\n    admin: ['user:ada']\n";

/// A CA, the coordinator's certificate and two clients', under `dir`.
struct Pki {
    ca: PathBuf,
    server: (PathBuf, PathBuf),
    agent: (PathBuf, PathBuf),
    ada: (PathBuf, PathBuf),
}

impl Pki {
    fn new(dir: &Path) -> Pki {
        std::fs::create_dir_all(dir).unwrap();
        let ca = Authority::generate("connections CA").unwrap();
        std::fs::write(dir.join("ca.crt"), &ca.certificate().cert_pem).unwrap();
        let issue = |name: &str, leaf: Leaf| ca.issue(&leaf, YEAR).unwrap().write(dir, name).unwrap();
        Pki {
            ca: dir.join("ca.crt"),
            server: issue("coordinator", Leaf::Server(vec!["localhost".into(), "127.0.0.1".into()])),
            agent: issue("agent-node-1", Leaf::Client(Identity::parse("agent:node-1").unwrap())),
            ada: issue("user-ada", Leaf::Client(Identity::parse("user:ada").unwrap())),
        }
    }
}

async fn coordinator(dir: &Path, pki: &Pki, config: &str) -> Coordinator {
    Coordinator::start_tls(dir, &pki.server, &pki.ca, config, &[]).await
}

fn admin(c: &Coordinator, pki: &Pki) -> AdminServiceClient<tonic::transport::Channel> {
    let files = TlsFiles { cert: Some(pki.ada.0.clone()), key: Some(pki.ada.1.clone()), ca: pki.ca.clone() };
    let endpoint = Endpoint::from_shared(c.https_url()).unwrap().connect_timeout(Duration::from_secs(5));
    AdminServiceClient::new(tls::channel(endpoint, tls::client(files).unwrap(), None).unwrap())
}

/// The flood's `n`th source address: 127.0.0.2, 127.0.0.3...
fn source(n: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + (n % SOURCES) as u8))
}

/// A TCP connection to `to` from `from` (any address of loopback's /8).
async fn connect_from(from: IpAddr, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(from, 0)).unwrap();
    socket.connect(to).await.unwrap()
}

/// Reads until the server closes the connection (end of stream or reset);
/// `false` if it is still open after `WAIT`.
async fn closed_by_server(stream: &mut (impl AsyncReadExt + Unpin)) -> bool {
    let mut sink = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut sink)).await.is_ok()
}

/// Makes room for the flood's descriptors (both ends live in this
/// process and the coordinator, which inherits the limit).
fn enough_descriptors(needed: u64) {
    let (soft, hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
    if soft < needed {
        assert!(hard >= needed, "RLIMIT_NOFILE's hard limit {hard} is below the {needed} descriptors this test needs");
        nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, needed, hard).unwrap();
    }
}

fn closed_metric(listener: &str, reason: &str) -> String {
    format!("remedy_connections_closed_total{{listener=\"{listener}\",reason=\"{reason}\"}}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_slow_connections_are_closed_by_their_deadlines_while_callers_are_served() {
    enough_descriptors(8 * FLOOD as u64 + 1024);
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(&dir.path().join("pki"));
    let coordinator = coordinator(dir.path(), &pki, &format!("{CONFIG}{ROLES}")).await;
    let s = |p: &Path| p.to_str().unwrap().to_owned();
    let agent_args = [
        "--tls-cert".to_owned(),
        s(&pki.agent.0),
        "--tls-key".to_owned(),
        s(&pki.agent.1),
        "--tls-ca".to_owned(),
        s(&pki.ca),
    ];
    let agent_args: Vec<&str> = agent_args.iter().map(String::as_str).collect();
    let agent = Agent::start_with(&dir.path().join("a"), "node-1", &coordinator.https_url(), &agent_args).await;
    eventually("the agent's stream", WAIT, || async { (agent.readyz().await == 200).then_some(()) }).await;
    let agent_metrics = || async {
        let (_, body) = http_request(agent.diagnostics, "GET", "/metrics", None).await.unwrap();
        (metric_value(&body, "remedy_agent_reconnects_total"), metric_value(&body, "remedy_agent_connected"))
    };
    let (reconnects_before, _) = agent_metrics().await;
    // A watch open before the flood, with nothing to say while it lasts.
    let mut client = admin(&coordinator, &pki);
    let mut watch =
        client.watch_incidents(pb::WatchIncidentsRequest { include_resolved: false }).await.unwrap().into_inner();

    // The flood: connections that never start their TLS handshake, that
    // finish it and send nothing, and HTTP clients sending their headers
    // a byte a second. Each task reports once connected, then whether the
    // server closed it.
    let client_tls = tls::client(TlsFiles { cert: None, key: None, ca: pki.ca.clone() }).unwrap();
    let (connected_tx, mut connected_rx) = tokio::sync::mpsc::channel::<()>(3 * FLOOD);
    let at_once = Arc::new(tokio::sync::Semaphore::new(HANDSHAKES_AT_ONCE));
    let mut flood = Vec::new();
    for n in 0..FLOOD {
        let (grpc, http, connected, handshakes) =
            (coordinator.grpc, coordinator.http, connected_tx.clone(), at_once.clone());
        flood.push(tokio::spawn(async move {
            let turn = handshakes.acquire_owned().await.unwrap();
            let mut tcp = connect_from(source(n), grpc).await;
            drop(turn);
            connected.send(()).await.unwrap();
            ("silent TCP", closed_by_server(&mut tcp).await)
        }));
        let (config, connected, handshakes) = (client_tls.current(), connected_tx.clone(), at_once.clone());
        flood.push(tokio::spawn(async move {
            let turn = handshakes.acquire_owned().await.unwrap();
            let tcp = connect_from(source(n), grpc).await;
            let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
            let mut stream = tokio_rustls::TlsConnector::from(config).connect(name, tcp).await.unwrap();
            drop(turn);
            connected.send(()).await.unwrap();
            ("silent TLS", closed_by_server(&mut stream).await)
        }));
        let (connected, handshakes) = (connected_tx.clone(), at_once.clone());
        flood.push(tokio::spawn(async move {
            let turn = handshakes.acquire_owned().await.unwrap();
            let tcp = connect_from(source(n), http).await;
            drop(turn);
            let (mut read, mut write) = tcp.into_split();
            connected.send(()).await.unwrap();
            let slow = tokio::spawn(async move {
                let mut every = tokio::time::interval(Duration::from_secs(1));
                for byte in b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
                {
                    every.tick().await;
                    if write.write_all(&[*byte]).await.is_err() {
                        return;
                    }
                }
            });
            let closed = closed_by_server(&mut read).await;
            slow.abort();
            ("slow HTTP", closed)
        }));
    }
    drop(connected_tx);
    for _ in 0..3 * FLOOD {
        tokio::time::timeout(WAIT, connected_rx.recv()).await.expect("the flood connects").unwrap();
    }

    // Real callers are served while the flood holds its connections.
    let list = client.list_agents(pb::ListAgentsRequest::default()).await.unwrap().into_inner();
    assert!(list.agents.iter().any(|a| a.node_name == "node-1"), "{list:?}");
    let (status, out, err) = remedyctl(
        &coordinator.https_url(),
        &["agents", "--ca", &s(&pki.ca), "--cert", &s(&pki.ada.0), "--key", &s(&pki.ada.1)],
    );
    assert!(status.success(), "{err}");
    assert!(out.contains("node-1"), "{out}");
    let (code, body) = http_request(coordinator.http, "GET", "/healthz", None).await.unwrap();
    assert_eq!((code, body.as_str()), (200, "ok\n"));

    // Every flood connection is closed by the server.
    let mut open = Vec::new();
    for task in flood {
        let (what, closed) = task.await.unwrap();
        if !closed {
            open.push(what);
        }
    }
    let metrics = http_request(coordinator.http, "GET", "/metrics", None).await.unwrap().1;
    assert!(open.is_empty(), "connections still open after {WAIT:?}: {open:?}\n{metrics}");
    for (listener, reason) in
        [("grpc", "handshake_timeout"), ("grpc", "first_request_timeout"), ("http", "header_timeout")]
    {
        let closed = metric_value(&metrics, &closed_metric(listener, reason));
        assert!(closed >= FLOOD as f64, "{listener} {reason}: {closed} closed\n{metrics}");
    }
    assert_eq!(metric_value(&metrics, &closed_metric("grpc", "peer_limit")), 0.0, "{metrics}");

    // Open streams outlived many idle timeouts: the agent never lost its
    // stream, and the watch still tells of a new incident.
    let (reconnects, connected) = agent_metrics().await;
    assert_eq!((reconnects, connected), (reconnects_before, 1.0), "the agent's stream was cut");
    let (code, body) = coordinator.notify(&alert_payload("ConnectionsWatched", &[], "firing", &now_rfc3339())).await;
    assert_eq!(code, 200, "{body}");
    let event = tokio::time::timeout(WAIT, watch.next()).await.expect("an incident event").unwrap().unwrap();
    let incident = event.incident.unwrap();
    assert!(format!("{incident:?}").contains("ConnectionsWatched"), "{incident:?}");
}

/// Whether a connection from `from` is served: an HTTP request answered, or
/// a TLS handshake finished. A connection the server refused is closed
/// before either.
async fn served_from(listener: &str, from: IpAddr, to: SocketAddr, tls: &tls::ClientTls) -> Option<Held> {
    let tcp = connect_from(from, to).await;
    match listener {
        "http" => {
            let mut held = Held::Plain(tcp);
            held.get_healthz().await.then_some(held)
        }
        _ => {
            let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
            let stream = tokio_rustls::TlsConnector::from(tls.current()).connect(name, tcp).await.ok()?;
            Some(Held::Tls(Box::new(stream), false))
        }
    }
}

/// A connection the server admitted.
enum Held {
    Plain(TcpStream),
    /// A TLS connection, and whether it has begun HTTP/2.
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>, bool),
}

impl Held {
    /// Whether the server still serves this connection: `GET /healthz`
    /// answered `ok` on a kept-alive HTTP connection; on a TLS one, the
    /// server's HTTP/2 SETTINGS in answer to the client's preface (once).
    async fn get_healthz(&mut self) -> bool {
        let (stream, request, answered): (&mut dyn AsyncReadWrite, &[u8], Answered) = match self {
            Held::Plain(stream) => (stream, b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n", |answer| {
                answer.ends_with(b"ok\n").then(|| answer.starts_with(b"HTTP/1.1 200"))
            }),
            Held::Tls(_, true) => return true,
            Held::Tls(stream, begun) => {
                *begun = true;
                // The client preface, then an empty SETTINGS frame.
                (stream.as_mut(), b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0", |answer| {
                    (answer.len() >= 9).then(|| answer[3] == 0x04)
                })
            }
        };
        if stream.write_all(request).await.is_err() {
            return false;
        }
        let mut answer = Vec::new();
        let mut chunk = [0u8; 512];
        loop {
            if let Some(ok) = answered(&answer) {
                return ok;
            }
            match tokio::time::timeout(WAIT, stream.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => answer.extend_from_slice(&chunk[..n]),
                _ => return false,
            }
        }
    }
}

/// Whether an answer read so far is complete, and then whether it is right.
type Answered = fn(&[u8]) -> Option<bool>;

trait AsyncReadWrite: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> AsyncReadWrite for T {}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_one_address_cap_are_closed_at_once_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(&dir.path().join("pki"));
    // Deadlines far away: the connections held stay open for the test.
    let config = format!(
        "connections:\n  first_request_timeout: 10m\n  idle_timeout: 10m\n  max_per_peer: {MAX_PER_PEER}\n{ROLES}"
    );
    let coordinator = coordinator(dir.path(), &pki, &config).await;
    let client_tls = tls::client(TlsFiles { cert: None, key: None, ca: pki.ca.clone() }).unwrap();
    let crowded = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 9));

    for (listener, addr) in [("http", coordinator.http), ("grpc", coordinator.grpc)] {
        let mut held = Vec::new();
        for n in 0..MAX_PER_PEER {
            let admitted = served_from(listener, crowded, addr, &client_tls).await;
            held.push(admitted.unwrap_or_else(|| panic!("{listener}: connection {n} under the cap was refused")));
        }
        // The connection past the cap: closed without a word, and counted.
        let mut refused = connect_from(crowded, addr).await;
        assert!(closed_by_server(&mut refused).await, "{listener}: the connection past the cap stayed open");
        let counted = eventually(&format!("{listener}'s refusal counted"), WAIT, || async {
            let value = coordinator.metric(&closed_metric(listener, "peer_limit")).await;
            (value >= 1.0).then_some(value)
        })
        .await;
        assert_eq!(counted, 1.0, "{listener}: only the connection past the cap was refused");
        // Those admitted are still served...
        for (n, connection) in held.iter_mut().enumerate() {
            assert!(connection.get_healthz().await, "{listener}: admitted connection {n} was closed");
        }
        // ...other addresses too, loopback's own included...
        assert!(served_from(listener, "127.0.0.1".parse().unwrap(), addr, &client_tls).await.is_some());
        // ...and once one closes, its address may connect again.
        drop(held.pop());
        let again = eventually(&format!("{listener}: the place freed"), WAIT, || {
            served_from(listener, crowded, addr, &client_tls)
        })
        .await;
        held.push(again);
    }
    let (status, _, err) = remedyctl(
        &coordinator.https_url(),
        &[
            "agents",
            "--ca",
            pki.ca.to_str().unwrap(),
            "--cert",
            pki.ada.0.to_str().unwrap(),
            "--key",
            pki.ada.1.to_str().unwrap(),
        ],
    );
    assert!(status.success(), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_connections_setting_exits_64_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    for (config, field) in [
        ("connections:\n  idle_timeout: 10ms\n", "connections.idle_timeout"),
        ("connections:\n  max_per_peer: 0\n", "connections.max_per_peer"),
        ("connections:\n  max_per_peer: 100\n  max_total: 10\n", "connections.max_total"),
        ("connections:\n  handshake_timeout: soon\n", "connections.handshake_timeout"),
    ] {
        let path = dir.path().join("coordinator.yaml");
        std::fs::write(&path, config).unwrap();
        let out = std::process::Command::new(remedy_e2e::procs::bin("remedy-coordinator"))
            .args(["--insecure", "--config", path.to_str().unwrap()])
            .args(["--data-dir", dir.path().join("data").to_str().unwrap()])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{config}: {err}");
        assert!(err.contains(field), "{config}: {err}");
    }
}
