//! The `reach` directive: can this node reach a server, as the
//! applications on it would? The coordinator asks before it fails a
//! database over, so that a primary it cannot reach itself, but the nodes
//! still can, is not taken for a dead one.
//!
//! Parameters: `address` (`host:port`), `protocol` (`tcp`, the default:
//! the connection opens; `postgres`: a PostgreSQL server answers the
//! `SSLRequest` that opens every session, which a proxy or a load balancer
//! in front of a dead server does not), and `timeout_ms` (2000 by default,
//! at most 60000). It opens one connection, sends at most eight bytes and
//! closes: no credentials, nothing changed. The answer is `succeeded` with
//! evidence `reached` (`true` or `false`), `verdict`, `millis` and, when not
//! reached, `error`; bad parameters are refused naming the parameter.
//!
//! `verdict` is what the coordinator may take as evidence: `reached`;
//! `unreachable`, when this node tried and the path or the server failed
//! it (refused, reset, unreachable, no answer in time, not PostgreSQL), as
//! it would fail the applications here; or `inconclusive`, when the node
//! could not try at all (the name did not resolve here, no socket or
//! local address to be had, the node's own rules forbade it). An
//! inconclusive answer says nothing about the primary, so it never counts
//! as a node that cannot reach it.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, lookup_host};

use crate::handler::{Handlers, Outcome, Reply, Request};

/// The directive's name.
pub const REACH: &str = "reach";

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
const MAX_TIMEOUT: Duration = Duration::from_secs(60);
/// Length 8, then the `SSLRequest` code 80877103 (PostgreSQL protocol,
/// "SSLSessionEncryption"): every server answers it with one byte before
/// anything else, without a password.
const PG_SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Tcp,
    Postgres,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct ReachParams {
    address: String,
    protocol: Protocol,
    timeout: Duration,
}

/// Reads the parameters; the error names the parameter at fault.
fn reach_params(params: &HashMap<String, String>) -> Result<ReachParams, String> {
    let mut keys: Vec<&String> = params.keys().collect();
    keys.sort();
    if let Some(unknown) = keys.into_iter().find(|k| !matches!(k.as_str(), "address" | "protocol" | "timeout_ms")) {
        return Err(format!("unknown parameter `{unknown}` (reach takes address, protocol, timeout_ms)"));
    }
    let address = params.get("address").map(|a| a.trim()).unwrap_or_default();
    let port = address.rsplit_once(':').map(|(host, port)| (host, port.parse::<u16>()));
    match port {
        Some((host, Ok(port))) if !host.is_empty() && port != 0 => {}
        _ => return Err(format!("address: `{address}` is not host:port")),
    }
    let protocol = match params.get("protocol").map(|p| p.trim()) {
        None | Some("tcp") => Protocol::Tcp,
        Some("postgres") => Protocol::Postgres,
        Some(other) => return Err(format!("protocol: `{other}` is not one of tcp, postgres")),
    };
    let timeout = match params.get("timeout_ms") {
        None => DEFAULT_TIMEOUT,
        Some(ms) => match ms.trim().parse::<u64>() {
            Ok(ms) if ms > 0 && Duration::from_millis(ms) <= MAX_TIMEOUT => Duration::from_millis(ms),
            _ => return Err(format!("timeout_ms: `{ms}` is not a number of milliseconds from 1 to 60000")),
        },
    };
    Ok(ReachParams { address: address.to_owned(), protocol, timeout })
}

/// Runs a `reach` directive.
/// Serves `reach`. It changes nothing, so it runs in a dry run too.
pub fn register(handlers: &mut Handlers) {
    handlers.announce(REACH, |request: Request| async move { reach(&request.params).await });
}

pub(crate) async fn reach(params: &HashMap<String, String>) -> Reply {
    let wanted = match reach_params(params) {
        Ok(p) => p,
        Err(e) => return Reply::new(Outcome::Refused, e),
    };
    let started = Instant::now();
    let until = started + wanted.timeout;
    let outcome = attempt(&wanted, until).await;
    let millis = started.elapsed().as_millis().to_string();
    let what = match wanted.protocol {
        Protocol::Tcp => "the connection opened",
        Protocol::Postgres => "PostgreSQL answered",
    };
    let (message, verdict) = match &outcome {
        Ok(()) => (format!("reached {}: {what}", wanted.address), "reached"),
        Err(Failed::Unreachable(e)) => (format!("cannot reach {}: {e}", wanted.address), "unreachable"),
        Err(Failed::Inconclusive(e)) => (format!("could not try to reach {}: {e}", wanted.address), "inconclusive"),
    };
    let mut reply = Reply::new(Outcome::Succeeded, message);
    reply.evidence.insert("reached".into(), outcome.is_ok().to_string());
    reply.evidence.insert("verdict".into(), verdict.into());
    reply.evidence.insert("millis".into(), millis);
    if let Err(Failed::Unreachable(e) | Failed::Inconclusive(e)) = outcome {
        reply.evidence.insert("error".into(), e);
    }
    reply
}

/// Why the server was not reached.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Failed {
    /// Tried: the path or the server failed, as it fails the applications
    /// on this node.
    Unreachable(String),
    /// Could not try: nothing learnt about the server.
    Inconclusive(String),
}

/// Whether a failed connection says something about the path to the
/// server, or only about this node: no socket, no local address, a local
/// rule forbidding it.
fn judge_connect(e: &std::io::Error) -> Failed {
    use std::io::ErrorKind;
    // EMFILE, ENFILE, ENOBUFS: the node is out of sockets or buffers.
    let exhausted = matches!(e.raw_os_error(), Some(23 | 24 | 105));
    if exhausted
        || matches!(e.kind(), ErrorKind::PermissionDenied | ErrorKind::AddrNotAvailable | ErrorKind::OutOfMemory)
    {
        Failed::Inconclusive(e.to_string())
    } else {
        Failed::Unreachable(e.to_string())
    }
}

async fn attempt(wanted: &ReachParams, until: Instant) -> Result<(), Failed> {
    let timeout = || format!("no answer within {} ms", wanted.timeout.as_millis());
    // Resolved first and apart: a name this node cannot resolve says
    // nothing about the server, while a connection that fails does.
    let addresses: Vec<std::net::SocketAddr> = match tokio::time::timeout_at(until, lookup_host(&wanted.address)).await
    {
        Ok(Ok(found)) => found.collect(),
        Ok(Err(e)) => return Err(Failed::Inconclusive(format!("cannot resolve the address here: {e}"))),
        Err(_) => return Err(Failed::Inconclusive(format!("cannot resolve the address here: {}", timeout()))),
    };
    if addresses.is_empty() {
        return Err(Failed::Inconclusive("the address resolves to nothing here".to_owned()));
    }
    let talk = async {
        let mut stream = TcpStream::connect(addresses.as_slice()).await.map_err(|e| judge_connect(&e))?;
        if wanted.protocol == Protocol::Tcp {
            return Ok(());
        }
        stream
            .write_all(&PG_SSL_REQUEST)
            .await
            .map_err(|e| Failed::Unreachable(format!("cannot send the SSLRequest: {e}")))?;
        let mut answer = [0u8; 1];
        match stream.read(&mut answer).await {
            // `S` or `N`: TLS offered or not; `E`: an error message, from a
            // server too old for the request, which is still a server.
            Ok(1) if matches!(answer[0], b'S' | b'N' | b'E') => Ok(()),
            Ok(0) => Err(Failed::Unreachable("the connection closed without a PostgreSQL answer".to_owned())),
            Ok(_) => Err(Failed::Unreachable(format!("answered {:#04x}, not PostgreSQL", answer[0]))),
            Err(e) => Err(Failed::Unreachable(format!("no PostgreSQL answer: {e}"))),
        }
    };
    tokio::time::timeout_at(until, talk).await.unwrap_or_else(|_| Err(Failed::Unreachable(timeout())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    fn evidence(reply: &Reply, key: &str) -> String {
        reply.evidence.get(key).cloned().unwrap_or_default()
    }

    #[test]
    fn bad_parameters_are_refused_naming_the_parameter() {
        let cases = [
            (params(&[]), "address"),
            (params(&[("address", "db-0")]), "address"),
            (params(&[("address", "db-0:0")]), "address"),
            (params(&[("address", ":5432")]), "address"),
            (params(&[("address", "db-0:5432"), ("protocol", "mysql")]), "protocol"),
            (params(&[("address", "db-0:5432"), ("timeout_ms", "0")]), "timeout_ms"),
            (params(&[("address", "db-0:5432"), ("timeout_ms", "600000")]), "timeout_ms"),
            (params(&[("address", "db-0:5432"), ("port", "1")]), "unknown parameter `port`"),
        ];
        for (given, named) in cases {
            let error = reach_params(&given).err().unwrap_or_default();
            assert!(error.starts_with(named), "{given:?}: {error}");
        }
        let fine = reach_params(&params(&[("address", "[::1]:5432"), ("protocol", "postgres")]));
        assert_eq!(fine.map(|p| (p.protocol, p.timeout)), Ok((Protocol::Postgres, DEFAULT_TIMEOUT)));
    }

    #[tokio::test]
    async fn a_listener_is_reached_by_tcp_and_a_silent_close_is_not_postgres() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("{e}"));
        let address = listener.local_addr().unwrap_or_else(|e| panic!("{e}")).to_string();
        // Accepts and closes at once, as a proxy in front of a dead server does.
        let closer = tokio::spawn(async move {
            for _ in 0..2 {
                let Ok((socket, _)) = listener.accept().await else { return };
                drop(socket);
            }
        });
        let tcp = reach(&params(&[("address", &address)])).await;
        assert_eq!((evidence(&tcp, "reached"), evidence(&tcp, "verdict")), ("true".into(), "reached".into()));
        let pg = reach(&params(&[("address", &address), ("protocol", "postgres")])).await;
        assert_eq!(evidence(&pg, "reached"), "false", "{}", pg.message);
        assert_eq!(evidence(&pg, "verdict"), "unreachable", "{}", pg.message);
        assert!(evidence(&pg, "error").contains("without a PostgreSQL answer"), "{}", pg.message);
        closer.await.unwrap_or_else(|e| panic!("{e}"));
    }

    #[tokio::test]
    async fn a_server_answering_the_ssl_request_is_postgres_and_a_closed_port_is_not_reached() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("{e}"));
        let address = listener.local_addr().unwrap_or_else(|e| panic!("{e}")).to_string();
        let server = tokio::spawn(async move {
            let Ok((mut socket, _)) = listener.accept().await else { return Vec::new() };
            let mut request = [0u8; 8];
            if socket.read_exact(&mut request).await.is_err() {
                return Vec::new();
            }
            let _ = socket.write_all(b"N").await;
            request.to_vec()
        });
        let pg = reach(&params(&[("address", &address), ("protocol", "postgres")])).await;
        assert_eq!(evidence(&pg, "reached"), "true", "{}", pg.message);
        assert_eq!(server.await.unwrap_or_default(), PG_SSL_REQUEST.to_vec());
        // The listener is gone with its task: nothing listens there now.
        let gone = reach(&params(&[("address", &address), ("timeout_ms", "1000")])).await;
        assert_eq!(evidence(&gone, "reached"), "false", "{}", gone.message);
        assert_eq!(evidence(&gone, "verdict"), "unreachable", "a refused connection is the node's answer");
        assert!(!evidence(&gone, "error").is_empty());
    }

    #[tokio::test]
    async fn a_name_this_node_cannot_resolve_is_no_verdict_on_the_server() {
        // `.invalid` never resolves (RFC 2606), with or without a resolver.
        let unknown = reach(&params(&[("address", "db.invalid:5432"), ("timeout_ms", "1000")])).await;
        assert_eq!(evidence(&unknown, "reached"), "false", "{}", unknown.message);
        assert_eq!(evidence(&unknown, "verdict"), "inconclusive", "{}", unknown.message);
        assert!(unknown.message.starts_with("could not try to reach db.invalid:5432"), "{}", unknown.message);
    }
}
