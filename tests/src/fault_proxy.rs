//! A TCP proxy on loopback that a test controls, to put faults between two
//! of our processes: it forwards to a target, and on command stops
//! forwarding in both directions while keeping every socket open (a black
//! hole, which is how a dead network path looks from both ends: no error,
//! no reset, just silence), forwards again, or cuts every connection. It
//! can also refuse one client address while serving the others: a path cut
//! between two hosts only, as a partition looks.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Bytes read at a time in each direction.
const CHUNK: usize = 64 * 1024;

/// A running proxy; stops accepting and closes every connection on drop.
#[derive(Debug)]
pub struct FaultProxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    forwarding: watch::Sender<bool>,
    /// Bumped by [`FaultProxy::cut`]: connections accepted under an older
    /// generation close.
    generation: watch::Sender<u64>,
    accepted: Arc<AtomicU64>,
    /// Connections from this address are closed as soon as accepted.
    refused: Arc<Mutex<Option<IpAddr>>>,
    acceptor: JoinHandle<()>,
}

impl FaultProxy {
    /// Listens on an ephemeral loopback port and forwards to `target`.
    pub async fn start(target: SocketAddr) -> FaultProxy {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), target).await
    }

    /// Listens on `bind` (an address of a link the test made, or loopback)
    /// and forwards to `target`.
    pub async fn start_on(bind: SocketAddr, target: SocketAddr) -> FaultProxy {
        let listener = TcpListener::bind(bind).await.unwrap_or_else(|e| panic!("bind the proxy on {bind}: {e}"));
        Self::serve(listener, target)
    }

    /// Serves on `listener`, bound where the test needs it (a socket made
    /// inside a network namespace stays there, whichever thread uses it),
    /// forwarding to `target` from this process's own namespace.
    pub fn from_listener(listener: std::net::TcpListener, target: SocketAddr) -> FaultProxy {
        listener.set_nonblocking(true).expect("a non-blocking listener");
        Self::serve(TcpListener::from_std(listener).expect("a tokio listener"), target)
    }

    fn serve(listener: TcpListener, target: SocketAddr) -> FaultProxy {
        let addr = listener.local_addr().expect("the proxy's address");
        let (forwarding, forwarding_rx) = watch::channel(true);
        let (generation, generation_rx) = watch::channel(0u64);
        let accepted = Arc::new(AtomicU64::new(0));
        let count = accepted.clone();
        let refused = Arc::new(Mutex::new(None));
        let refusing = refused.clone();
        let acceptor = tokio::spawn(async move {
            while let Ok((client, peer)) = listener.accept().await {
                count.fetch_add(1, Ordering::Relaxed);
                if *refusing.lock().unwrap_or_else(|p| p.into_inner()) == Some(peer.ip()) {
                    continue;
                }
                let forwarding = forwarding_rx.clone();
                let mut generation = generation_rx.clone();
                let born = *generation.borrow_and_update();
                tokio::spawn(async move {
                    // A target that refuses is a closed connection for the
                    // client, as it would be without the proxy.
                    let Ok(server) = TcpStream::connect(target).await else { return };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    // The first direction to end ends the connection: both
                    // sides speak HTTP/2, which never half-closes.
                    tokio::select! {
                        _ = pump(client_read, server_write, forwarding.clone()) => {}
                        _ = pump(server_read, client_write, forwarding) => {}
                        _ = generation.wait_for(|g| *g != born) => {}
                    }
                });
            }
        });
        FaultProxy { addr, forwarding, generation, accepted, refused, acceptor }
    }

    /// Closes every new connection from `client` at once; others are served.
    pub fn refuse_from(&self, client: IpAddr) {
        *self.refused.lock().unwrap_or_else(|p| p.into_inner()) = Some(client);
    }

    /// Serves every client again.
    pub fn serve_all(&self) {
        *self.refused.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// The URL our processes use to reach the target through the proxy.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops forwarding in both directions; sockets stay open and silent,
    /// and new connections are accepted but carry nothing either.
    pub fn stall(&self) {
        self.forwarding.send_replace(false);
    }

    /// Forwards again, including whatever waited in the sockets.
    pub fn resume(&self) {
        self.forwarding.send_replace(true);
    }

    /// Closes every connection open now; later ones are served as usual.
    pub fn cut(&self) {
        self.generation.send_modify(|g| *g += 1);
    }

    /// Connections accepted so far.
    pub fn connections_accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.acceptor.abort();
        self.cut();
    }
}

/// Copies `from` to `to` while forwarding is on; returns at end of stream
/// or on the first error.
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut forwarding: watch::Receiver<bool>) {
    let mut buf = vec![0u8; CHUNK];
    loop {
        // Checked before reading and again before writing: once stalled,
        // nothing crosses, not even what was being read at that moment.
        if forwarding.wait_for(|on| *on).await.is_err() {
            return;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if forwarding.wait_for(|on| *on).await.is_err() {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
