//! How long a connection may stay without a request, and how many
//! connections one peer and everybody together may hold: the policy every
//! listener (gRPC, HTTP, the agent's diagnostics) applies, so that clients
//! who connect and say nothing, or say it a byte at a time, cannot hold the
//! server's descriptors and memory.
//!
//! "Idle" means no request in flight, not no bytes: a slow sender keeps
//! sending bytes, and an agent's `Connect` stream or a `WatchIncidents`
//! stream may go minutes without one yet is a request the whole time.

use std::collections::HashMap;
use std::net::IpAddr;
use std::ops::Add;
use std::time::Duration;

use serde::Deserialize;

use crate::config::ConfigError;

/// The numbers, from the `connections:` section of a configuration file;
/// every field has a default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConnectionLimits {
    /// Longest a TLS handshake may take.
    #[serde(with = "crate::config::duration")]
    pub handshake_timeout: Duration,
    /// Longest a connection may stay open, once up, before its first
    /// request has arrived.
    #[serde(with = "crate::config::duration")]
    pub first_request_timeout: Duration,
    /// Longest an HTTP/1 request's headers may take to arrive.
    #[serde(with = "crate::config::duration")]
    pub header_read_timeout: Duration,
    /// Longest a connection may stay open with no request in flight after
    /// its last one finished. Open streams are requests in flight.
    #[serde(with = "crate::config::duration")]
    pub idle_timeout: Duration,
    /// How often an HTTP/2 (gRPC) connection is pinged, so that a peer
    /// that vanished with a stream open is noticed.
    #[serde(with = "crate::config::duration")]
    pub keepalive_interval: Duration,
    /// How long a ping may go unanswered before the connection is closed.
    #[serde(with = "crate::config::duration")]
    pub keepalive_timeout: Duration,
    /// Most connections open at once from one IP address.
    pub max_per_peer: usize,
    /// Most connections open at once on one listener.
    pub max_total: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            handshake_timeout: Duration::from_secs(10),
            first_request_timeout: Duration::from_secs(30),
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(120),
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(10),
            max_per_peer: 64,
            max_total: 4_096,
        }
    }
}

/// Below this a deadline would cut clients on an ordinary slow network.
const SHORTEST: Duration = Duration::from_millis(100);

impl ConnectionLimits {
    /// Checks the numbers; an error names the field under `section`
    /// (`connections`).
    pub fn validate(&self, source: &str, section: &str) -> Result<(), ConfigError> {
        let durations = [
            ("handshake_timeout", self.handshake_timeout),
            ("first_request_timeout", self.first_request_timeout),
            ("header_read_timeout", self.header_read_timeout),
            ("idle_timeout", self.idle_timeout),
            ("keepalive_interval", self.keepalive_interval),
            ("keepalive_timeout", self.keepalive_timeout),
        ];
        for (field, value) in durations {
            if value < SHORTEST {
                return Err(ConfigError::new(source, format!("{section}.{field}"), "must be at least 100ms"));
            }
        }
        if self.max_per_peer == 0 {
            return Err(ConfigError::new(source, format!("{section}.max_per_peer"), "must be at least 1"));
        }
        if self.max_total < self.max_per_peer {
            return Err(ConfigError::new(
                source,
                format!("{section}.max_total"),
                format!("must be at least max_per_peer ({})", self.max_per_peer),
            ));
        }
        Ok(())
    }
}

/// Why the server closed a connection (a metric's `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseReason {
    /// The TLS handshake did not finish in time.
    HandshakeTimeout,
    /// No request arrived in time after the connection was up.
    FirstRequestTimeout,
    /// An HTTP/1 request's headers did not arrive in time.
    HeaderTimeout,
    /// No request was in flight for too long.
    IdleTimeout,
    /// The peer's address already held as many connections as allowed.
    PeerLimit,
    /// The listener already held as many connections as allowed.
    TotalLimit,
}

impl CloseReason {
    /// The label: `handshake_timeout`, `first_request_timeout`...
    pub fn label(self) -> &'static str {
        match self {
            CloseReason::HandshakeTimeout => "handshake_timeout",
            CloseReason::FirstRequestTimeout => "first_request_timeout",
            CloseReason::HeaderTimeout => "header_timeout",
            CloseReason::IdleTimeout => "idle_timeout",
            CloseReason::PeerLimit => "peer_limit",
            CloseReason::TotalLimit => "total_limit",
        }
    }
}

/// Connections open now, by peer address, on one listener.
#[derive(Debug, Default)]
pub struct PeerCounts {
    by_peer: HashMap<IpAddr, usize>,
    total: usize,
}

impl PeerCounts {
    /// Counts a new connection from `peer`, or says which cap it is over
    /// (then nothing is counted).
    pub fn admit(&mut self, peer: IpAddr, limits: &ConnectionLimits) -> Result<(), CloseReason> {
        if self.total >= limits.max_total {
            return Err(CloseReason::TotalLimit);
        }
        let held = self.by_peer.entry(peer).or_default();
        if *held >= limits.max_per_peer {
            return Err(CloseReason::PeerLimit);
        }
        *held += 1;
        self.total += 1;
        Ok(())
    }

    /// Forgets one connection of `peer`, admitted before.
    pub fn release(&mut self, peer: IpAddr) {
        if let Some(held) = self.by_peer.get_mut(&peer) {
            *held -= 1;
            self.total -= 1;
            if *held == 0 {
                // Addresses come and go; only those holding connections stay.
                self.by_peer.remove(&peer);
            }
        }
    }

    /// Connections open now.
    pub fn total(&self) -> usize {
        self.total
    }

    /// Connections `peer` holds now.
    pub fn of(&self, peer: IpAddr) -> usize {
        self.by_peer.get(&peer).copied().unwrap_or(0)
    }
}

/// The requests of one connection: when it may be closed for having none.
/// `I` is the caller's instant (tokio's in the servers): this crate reads
/// no clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestActivity<I> {
    /// When the connection was up (after its TLS handshake).
    opened: I,
    /// Requests begun.
    started: u64,
    /// Requests begun and not finished (a finished request has sent its
    /// whole response, the last message of a stream included).
    in_flight: u64,
    /// When the last request finished.
    last_finished: Option<I>,
}

impl<I: Copy + Add<Duration, Output = I>> RequestActivity<I> {
    /// A connection up at `opened`, with no request yet.
    pub fn new(opened: I) -> Self {
        RequestActivity { opened, started: 0, in_flight: 0, last_finished: None }
    }

    /// A request begins.
    pub fn begin(&mut self) {
        self.started += 1;
        self.in_flight += 1;
    }

    /// A request begun before finishes at `now`.
    pub fn finish(&mut self, now: I) {
        self.in_flight = self.in_flight.saturating_sub(1);
        self.last_finished = Some(now);
    }

    /// When the connection is to be closed, and why, if no request begins
    /// before then; `None` while a request is in flight.
    pub fn close_at(&self, limits: &ConnectionLimits) -> Option<(I, CloseReason)> {
        if self.in_flight > 0 {
            return None;
        }
        match self.last_finished {
            _ if self.started == 0 => {
                Some((self.opened + limits.first_request_timeout, CloseReason::FirstRequestTimeout))
            }
            Some(at) => Some((at + limits.idle_timeout, CloseReason::IdleTimeout)),
            None => Some((self.opened + limits.idle_timeout, CloseReason::IdleTimeout)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> ConnectionLimits {
        ConnectionLimits { max_per_peer: 2, max_total: 3, ..ConnectionLimits::default() }
    }

    #[test]
    fn each_peer_and_the_listener_have_a_cap() {
        let (a, b, c): (IpAddr, IpAddr, IpAddr) =
            ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap(), "10.0.0.3".parse().unwrap());
        let mut counts = PeerCounts::default();
        assert_eq!(counts.admit(a, &limits()), Ok(()));
        assert_eq!(counts.admit(a, &limits()), Ok(()));
        assert_eq!(counts.admit(a, &limits()), Err(CloseReason::PeerLimit));
        assert_eq!(counts.of(a), 2, "a refused connection is not counted");
        assert_eq!(counts.admit(b, &limits()), Ok(()));
        assert_eq!(counts.admit(c, &limits()), Err(CloseReason::TotalLimit));
        counts.release(a);
        assert_eq!(counts.admit(c, &limits()), Ok(()), "a closed connection frees its place");
        counts.release(b);
        counts.release(b);
        assert_eq!((counts.of(b), counts.total()), (0, 2), "releasing what was not admitted changes nothing");
    }

    #[test]
    fn a_connection_without_a_request_in_flight_has_a_deadline() {
        let l = ConnectionLimits {
            first_request_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(60),
            ..ConnectionLimits::default()
        };
        // Instants as offsets from an arbitrary start.
        let t0 = Duration::from_secs(1_000);
        let mut a = RequestActivity::new(t0);
        assert_eq!(a.close_at(&l), Some((t0 + Duration::from_secs(5), CloseReason::FirstRequestTimeout)));
        a.begin();
        assert_eq!(a.close_at(&l), None, "an open request or stream is never idle, however long");
        a.begin();
        a.finish(t0 + Duration::from_secs(100));
        assert_eq!(a.close_at(&l), None, "one of two requests still in flight");
        a.finish(t0 + Duration::from_secs(200));
        assert_eq!(a.close_at(&l), Some((t0 + Duration::from_secs(260), CloseReason::IdleTimeout)));
    }

    #[test]
    fn bad_numbers_name_their_field() {
        let err = ConnectionLimits { idle_timeout: Duration::from_millis(10), ..ConnectionLimits::default() }
            .validate("c.yaml", "connections")
            .unwrap_err();
        assert_eq!(err.field, "connections.idle_timeout");
        let err = ConnectionLimits { max_per_peer: 0, ..ConnectionLimits::default() }
            .validate("c.yaml", "connections")
            .unwrap_err();
        assert_eq!(err.field, "connections.max_per_peer");
        let err = ConnectionLimits { max_per_peer: 10, max_total: 5, ..ConnectionLimits::default() }
            .validate("c.yaml", "connections")
            .unwrap_err();
        assert_eq!(err.field, "connections.max_total");
        assert!(ConnectionLimits::default().validate("c.yaml", "connections").is_ok());
    }

    #[test]
    fn the_file_may_set_any_field_and_no_unknown_one() {
        let l: ConnectionLimits = crate::config::parse_yaml("c.yaml", "idle_timeout: 5m\nmax_per_peer: 8\n").unwrap();
        assert_eq!((l.idle_timeout, l.max_per_peer), (Duration::from_secs(300), 8));
        assert_eq!(l.handshake_timeout, ConnectionLimits::default().handshake_timeout);
        let err = crate::config::parse_yaml::<ConnectionLimits>("c.yaml", "idle: 5m\n").unwrap_err();
        assert_eq!(err.field, "idle");
    }
}
