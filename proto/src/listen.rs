//! Every listener's accept loop and its deadlines: the I/O side of
//! [`remedy_shared::connections`].
//!
//! A connection is admitted only under its peer's cap and the listener's
//! cap (over either it is closed at once); its TLS handshake, if any, has a
//! deadline; once up, it is closed when no request begins in time, or when
//! none has been in flight for the idle timeout. Requests are tracked by a
//! tower layer ([`ActivityLayer`]) that holds a connection's count from the
//! call until the response body, the last message of a stream included, is
//! dropped: a long stream is never idle, a slow sender never has a request.
//! Every closure is reported to the listener's [`Gate`] callback (a metric).

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use remedy_shared::connections::{CloseReason, ConnectionLimits, PeerCounts, RequestActivity};
use remedy_shared::sync;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, Sleep};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;
use tower::{Layer, Service, ServiceExt};

use crate::tls::PeerInfo;

/// Told of every connection the server closes by a deadline or a cap.
pub type OnClose = Arc<dyn Fn(CloseReason) + Send + Sync>;

/// One listener's policy and its connections open now, by peer.
pub struct Gate {
    limits: ConnectionLimits,
    counts: Mutex<PeerCounts>,
    on_close: OnClose,
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate").field("limits", &self.limits).field("open", &self.open()).finish()
    }
}

impl Gate {
    /// A listener's gate; `on_close` counts what it closes.
    pub fn new(limits: ConnectionLimits, on_close: OnClose) -> Arc<Self> {
        Arc::new(Gate { limits, counts: Mutex::new(PeerCounts::default()), on_close })
    }

    /// The numbers this gate applies.
    pub fn limits(&self) -> &ConnectionLimits {
        &self.limits
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        sync::lock(&self.counts).total()
    }

    fn admit(self: &Arc<Self>, peer: IpAddr) -> Result<Ticket, CloseReason> {
        sync::lock(&self.counts).admit(peer, &self.limits)?;
        Ok(Ticket { gate: self.clone(), peer })
    }

    fn closed(&self, reason: CloseReason) {
        (self.on_close)(reason);
    }
}

/// A connection's place under the caps, given back when it is dropped.
#[derive(Debug)]
struct Ticket {
    gate: Arc<Gate>,
    peer: IpAddr,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        sync::lock(&self.gate.counts).release(self.peer);
    }
}

/// One connection's requests, shared between the connection (which closes
/// itself when none is in flight for too long) and the requests.
#[derive(Debug, Clone)]
pub struct Activity(Arc<Mutex<RequestActivity<Instant>>>);

impl Default for Activity {
    fn default() -> Self {
        Activity(Arc::new(Mutex::new(RequestActivity::new(Instant::now()))))
    }
}

/// Two handles are equal when they are the same connection's.
impl PartialEq for Activity {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for Activity {}

impl Activity {
    fn begin(&self) -> InFlight {
        sync::lock(&self.0).begin();
        InFlight(self.clone())
    }

    fn close_at(&self, limits: &ConnectionLimits) -> Option<(Instant, CloseReason)> {
        sync::lock(&self.0).close_at(limits)
    }
}

/// A request in flight; finished when dropped.
#[derive(Debug)]
struct InFlight(Activity);

impl Drop for InFlight {
    fn drop(&mut self) {
        sync::lock(&(self.0).0).finish(Instant::now());
    }
}

/// An admitted connection: closes itself (its reads fail) at its deadline.
#[derive(Debug)]
pub struct Guarded<IO> {
    io: IO,
    peer: PeerInfo,
    gate: Arc<Gate>,
    wake: Pin<Box<Sleep>>,
    expired: bool,
    _ticket: Ticket,
}

impl<IO> Guarded<IO> {
    /// Who is on the other end.
    pub fn peer(&self) -> &PeerInfo {
        &self.peer
    }

    /// Whether the deadline has passed; arms the timer for the next check
    /// otherwise. While a request is in flight the timer still fires every
    /// idle timeout, since the end of a request wakes nobody: the next
    /// check then sees it ended.
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Error> {
        if self.expired {
            return Poll::Ready(closed());
        }
        while self.wake.as_mut().poll(cx).is_ready() {
            let now = Instant::now();
            match self.peer.activity.close_at(&self.gate.limits) {
                Some((at, reason)) if at <= now => {
                    self.expired = true;
                    tracing::debug!(peer = ?self.peer.remote, reason = reason.label(), "connection closed");
                    self.gate.closed(reason);
                    return Poll::Ready(closed());
                }
                Some((at, _)) => self.wake.as_mut().reset(at),
                None => self.wake.as_mut().reset(now + self.gate.limits.idle_timeout),
            }
        }
        Poll::Pending
    }
}

fn closed() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::TimedOut, "the connection had no request in time")
}

impl<IO> Connected for Guarded<IO> {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        self.peer.clone()
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Guarded<IO> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        if let Poll::Ready(e) = self.poll_deadline(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Guarded<IO> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// How an admitted TCP connection becomes a stream and who is on it (a TLS
/// handshake, or nothing for plaintext).
pub type Handshake<IO> = Arc<dyn Fn(TcpStream, SocketAddr) -> HandshakeFuture<IO> + Send + Sync>;

/// A handshake under way.
pub type HandshakeFuture<IO> = Pin<Box<dyn Future<Output = std::io::Result<(IO, PeerInfo)>> + Send>>;

/// Plaintext: the TCP stream itself, its peer known by address only.
pub fn plaintext() -> Handshake<TcpStream> {
    Arc::new(|tcp: TcpStream, remote: SocketAddr| -> HandshakeFuture<TcpStream> {
        Box::pin(async move { Ok((tcp, PeerInfo::address(remote))) })
    })
}

/// Connections the kernel may hold for a listener before it accepts them
/// (as far as `net.core.somaxconn` allows). Past a full queue a flood's
/// connections are dropped by the kernel without the peer being told,
/// where the accept loop would have closed them by their deadline.
const BACKLOG: u32 = 4_096;

/// Listens on `addr` with room for a burst of connections ([`BACKLOG`]).
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    // As tokio's own bind: a restarted process may listen again at once.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// Accepts connections on `listener` under `gate`'s caps and yields each
/// after its handshake. Handshakes run concurrently, each bounded in time,
/// so one slow client delays nobody. Stops accepting when the stream is
/// dropped.
pub fn incoming<IO: Send + 'static>(
    listener: TcpListener,
    gate: Arc<Gate>,
    handshake: Handshake<IO>,
) -> ReceiverStream<std::io::Result<Guarded<IO>>> {
    let (tx, rx) = tokio::sync::mpsc::channel(256);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = tx.closed() => return,
                accepted = listener.accept() => accepted,
            };
            let (tcp, remote) = match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of descriptors and the like: say so, back off, go on.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let ticket = match gate.admit(remote.ip()) {
                Ok(ticket) => ticket,
                Err(reason) => {
                    // Dropped at once: a flood from one address costs an
                    // accept and a close, nothing more.
                    tracing::debug!(peer = %remote, reason = reason.label(), "connection refused");
                    gate.closed(reason);
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let (tx, gate, handshake) = (tx.clone(), gate.clone(), handshake.clone());
            tokio::spawn(async move {
                let limit = gate.limits.handshake_timeout;
                match tokio::time::timeout(limit, handshake(tcp, remote)).await {
                    Ok(Ok((io, peer))) => {
                        let wake = Box::pin(tokio::time::sleep(Duration::ZERO));
                        let guarded = Guarded { io, peer, gate, wake, expired: false, _ticket: ticket };
                        let _ = tx.send(Ok(guarded)).await;
                    }
                    // The handshake says why (a TLS refusal is logged there).
                    Ok(Err(e)) => tracing::debug!(peer = %remote, error = %e, "handshake failed"),
                    Err(_) => {
                        tracing::debug!(peer = %remote, "handshake not finished in {limit:?}; closed");
                        gate.closed(CloseReason::HandshakeTimeout);
                    }
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

/// Counts each request of a connection from its call until its response
/// body is dropped. The connection is found in the request's [`PeerInfo`]
/// (tonic puts it there) unless the service was built for one connection.
#[derive(Debug, Clone, Default)]
pub struct ActivityLayer;

impl<S> Layer<S> for ActivityLayer {
    type Service = Tracked<S>;

    fn layer(&self, inner: S) -> Tracked<S> {
        Tracked { inner, activity: None }
    }
}

/// See [`ActivityLayer`].
#[derive(Debug, Clone)]
pub struct Tracked<S> {
    inner: S,
    activity: Option<Activity>,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, B, RB> Service<http::Request<B>> for Tracked<S>
where
    S: Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<TrackedBody<RB>>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let activity =
            self.activity.clone().or_else(|| request.extensions().get::<PeerInfo>().map(|p| p.activity.clone()));
        let in_flight = activity.map(|a| a.begin());
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|inner| TrackedBody { inner, _in_flight: in_flight }))
        })
    }
}

/// A response body that holds its request in flight until dropped.
#[derive(Debug)]
pub struct TrackedBody<B> {
    inner: B,
    _in_flight: Option<InFlight>,
}

impl<B: http_body::Body + Unpin> http_body::Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Serves `app` over HTTP/1 on `listener` under `gate` until `shutdown`
/// resolves, then lets requests in flight finish. Request headers must
/// arrive within the gate's `header_read_timeout`, which hyper enforces
/// from the moment it waits for them, on a new connection or a kept-alive
/// one.
pub async fn serve_http(
    listener: TcpListener,
    gate: Arc<Gate>,
    app: axum::Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let mut incoming = incoming(listener, gate.clone(), plaintext());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(());
    tokio::pin!(shutdown);
    loop {
        let connection = tokio::select! {
            () = &mut shutdown => break,
            next = incoming.next() => match next {
                Some(Ok(connection)) => connection,
                Some(Err(_)) => continue,
                None => break,
            },
        };
        let remote = connection.peer.remote;
        let app = app.clone();
        let service = tower::service_fn(move |mut request: http::Request<hyper::body::Incoming>| {
            if let Some(remote) = remote {
                request.extensions_mut().insert(axum::extract::ConnectInfo(remote));
            }
            app.clone().oneshot(request)
        });
        let service = Tracked { inner: service, activity: Some(connection.peer.activity.clone()) };
        let service = hyper_util::service::TowerToHyperService::new(service);
        let mut stop = stop_rx.clone();
        let gate = gate.clone();
        tokio::spawn(async move {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder.timer(TokioTimer::new()).header_read_timeout(gate.limits.header_read_timeout);
            let serving = builder.serve_connection(TokioIo::new(connection), service);
            tokio::pin!(serving);
            let served = tokio::select! {
                served = &mut serving => served,
                _ = stop.changed() => {
                    serving.as_mut().graceful_shutdown();
                    serving.await
                }
            };
            if let Err(e) = served
                && e.is_timeout()
            {
                gate.closed(CloseReason::HeaderTimeout);
            }
            drop(stop);
        });
    }
    drop(incoming);
    // Every connection holds a receiver: when the last is dropped, all
    // have finished.
    let _ = stop_tx.send(());
    drop(stop_rx);
    stop_tx.closed().await;
    Ok(())
}
