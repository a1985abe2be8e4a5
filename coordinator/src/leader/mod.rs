//! Leader election on a `coordination.k8s.io/v1` Lease, and the fencing
//! token the engine checks before each action.
//!
//! Only the leader acts, with its lease as a fencing token. A
//! [`LeaderElector`] runs as a task ([`LeaderElector::run`]): it creates or
//! takes the Lease when it is missing, free or expired, renews it while it
//! leads, and steps down (stops acting) when a renewal has not succeeded
//! within the lease duration (less a safety margin of one retry interval),
//! or as soon as it sees someone else hold the lease. Every write is a replace conditioned on the `resourceVersion` it
//! read, so of two candidates racing for the same lease exactly one wins;
//! the other gets `409 Conflict` and reads again.
//!
//! Expiry is judged as client-go does, from this process's own monotonic
//! clock: a lease is expired when `leaseDurationSeconds` have passed since
//! this process last saw its `resourceVersion` change. Clock skew between
//! machines does not enter. The leader gives up `duration - retry` after it
//! *sent* its last successful renewal, so it has stopped before anyone who
//! saw that renewal land can take over, with a margin for differences in
//! clock rates. See [`decide`].
//!
//! The state is published on a `watch` channel ([`LeaderElector::subscribe`])
//! as a [`Leadership`]. Each term carries a [`FencingToken`] (holder and
//! `leaseTransitions`, which grows at every change of holder);
//! [`LeaderElector::check`] re-reads the Lease and confirms the token is
//! still the lease's and the lease has not run out: the engine calls it
//! right before each action and records the token with the action.
//!
//! On graceful shutdown the elector stops acting first, then releases the
//! lease (clears `holderIdentity`) so another candidate takes it at its next
//! look instead of waiting for expiry. A crash (the task dropped or
//! aborted) releases nothing: the lease expires. [`PodLabeler`] follows the
//! channel and labels this pod `remedy.dev/leader=true` while it leads.

pub mod decide;
mod pod_label;

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::{Client, ResourceExt};
use remedy_shared::Timestamp;
use remedy_shared::sync;
use tokio::sync::watch;

pub use decide::LeaseTimings;
use decide::{LeaseRecord, Next, Observed, RoundEnd};
pub use pod_label::{LEADER_LABEL, PodLabeler};

use crate::clock::Clock;

/// The proof of one term of leadership: who holds the lease and the
/// lease's `leaseTransitions` when it was acquired. A later term, by anyone,
/// has a higher count, so an old token never passes [`LeaderElector::check`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FencingToken {
    /// `holderIdentity` of the term.
    pub holder: String,
    /// `leaseTransitions` of the term.
    pub transitions: u32,
    /// `acquireTime` of the term, as written in the Lease.
    pub acquired_at: Timestamp,
}

impl FencingToken {
    /// The token as timeline or intent details: `fencing.holder`,
    /// `fencing.transitions`, `fencing.acquired_at`.
    pub fn details(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("fencing.holder".to_owned(), self.holder.clone()),
            ("fencing.transitions".to_owned(), self.transitions.to_string()),
            ("fencing.acquired_at".to_owned(), self.acquired_at.to_string()),
        ])
    }
}

impl fmt::Display for FencingToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", self.holder, self.transitions)
    }
}

/// What this process knows of the election, as published.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Leadership {
    /// Whether this process leads now and may act.
    pub leader: bool,
    /// Who holds the lease, as last seen; `None` when free or not yet read.
    pub holder: Option<String>,
    /// The lease's `leaseTransitions`, as last seen.
    pub transitions: u32,
    /// This process's token while it leads.
    pub fencing: Option<FencingToken>,
}

/// Why a fencing token does not allow acting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FencingError {
    /// The lease has moved on: another holder, or another term.
    #[error("token {token} is superseded: the lease is held by {} (transitions {transitions})", holder.as_deref().unwrap_or("nobody"))]
    Superseded {
        /// The token checked.
        token: String,
        /// The holder now.
        holder: Option<String>,
        /// The lease's transitions now.
        transitions: u32,
    },
    /// This process does not lead with this token (it stepped down, or the
    /// token is of an earlier term).
    #[error("token {token} is not this coordinator's current term")]
    NotLeading {
        /// The token checked.
        token: String,
    },
    /// The lease is still this token's, but it was not renewed within its
    /// duration: another candidate may take it any moment.
    #[error("token {token}: the lease was not renewed within its duration")]
    Expired {
        /// The token checked.
        token: String,
    },
    /// The Lease object is gone.
    #[error("lease {lease} no longer exists")]
    Gone {
        /// `namespace/name`.
        lease: String,
    },
    /// The lease could not be read in time: nothing is confirmed.
    #[error("cannot confirm token {token}: {why}")]
    Unavailable {
        /// The token checked.
        token: String,
        /// What went wrong.
        why: String,
    },
}

/// Takes part in the election for one Lease; cheap to clone. See the
/// module documentation.
#[derive(Debug, Clone)]
pub struct LeaderElector {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    leases: Api<Lease>,
    namespace: String,
    name: String,
    identity: String,
    timings: LeaseTimings,
    /// The zero of this elector's monotonic offsets (tokio's clock, which
    /// tests can pause).
    epoch: tokio::time::Instant,
    /// Dates the lease's times and a term's start.
    clock: Clock,
    local: Mutex<Local>,
    tx: watch::Sender<Leadership>,
    conflicts: AtomicU64,
}

/// What this process knows; behind one lock, never held across an await.
#[derive(Debug, Default)]
struct Local {
    /// The lease as last read or written, for the next conditional write.
    lease: Option<Lease>,
    observed: Option<Observed>,
    held: Option<Held>,
}

#[derive(Debug, Clone)]
struct Held {
    token: FencingToken,
    /// Monotonic offset after which this term must not act.
    valid_until: Duration,
}

/// Conditional writes fail with this when someone else wrote first.
const CONFLICT: u16 = 409;
/// Reads and writes per round before giving the round up.
const ATTEMPTS_PER_ROUND: usize = 3;

impl LeaderElector {
    /// An elector for Lease `namespace/lease_name`, taking part as
    /// `identity`. The identity must be unique to this process (a pod name
    /// with a random suffix): a lease naming it that this process did not
    /// acquire is treated as someone else's. `clock` dates the lease's
    /// times, which are informational: expiry is judged on the monotonic
    /// clock.
    pub fn new(
        client: Client,
        namespace: &str,
        lease_name: &str,
        identity: &str,
        timings: LeaseTimings,
        clock: Clock,
    ) -> Result<LeaderElector, String> {
        timings.validate()?;
        if identity.is_empty() {
            return Err("the election identity must not be empty".into());
        }
        if lease_name.is_empty() || namespace.is_empty() {
            return Err("the lease needs a name and a namespace".into());
        }
        let (tx, _) = watch::channel(Leadership::default());
        Ok(LeaderElector {
            shared: Arc::new(Shared {
                leases: Api::namespaced(client, namespace),
                namespace: namespace.to_owned(),
                name: lease_name.to_owned(),
                identity: identity.to_owned(),
                timings,
                epoch: tokio::time::Instant::now(),
                clock,
                local: Mutex::new(Local::default()),
                tx,
                conflicts: AtomicU64::new(0),
            }),
        })
    }

    /// This elector's identity.
    pub fn identity(&self) -> &str {
        &self.shared.identity
    }

    /// The timings in force.
    pub fn timings(&self) -> LeaseTimings {
        self.shared.timings
    }

    /// `namespace/name` of the Lease.
    pub fn lease(&self) -> String {
        format!("{}/{}", self.shared.namespace, self.shared.name)
    }

    /// The state, now and as it changes.
    pub fn subscribe(&self) -> watch::Receiver<Leadership> {
        self.shared.tx.subscribe()
    }

    /// The state now.
    pub fn current(&self) -> Leadership {
        self.shared.tx.borrow().clone()
    }

    /// How many conditional writes lost a race (409) so far.
    pub fn conflicts(&self) -> u64 {
        self.shared.conflicts.load(Ordering::Relaxed)
    }

    /// Takes part in the election until `shutdown` resolves, then steps down
    /// and releases the lease (bounded by the request timeout). When this
    /// future is dropped instead (the task aborted, a panic), this process
    /// stops acting but the lease is left to expire, as after a crash.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let _crash = StepDownOnDrop(self.shared.clone());
        tokio::pin!(shutdown);
        tracing::info!(lease = %self.lease(), identity = %self.shared.identity, "leader election started");
        'election: loop {
            let round = self.round();
            tokio::pin!(round);
            // A round that outlasts the lease does not delay stepping down.
            let wake = loop {
                let lapse = self.lock().held.as_ref().map(|h| h.valid_until);
                tokio::select! {
                    wake = &mut round => break wake,
                    () = self.sleep_until(lapse) => self.lapse_if_expired(self.mono()),
                    () = &mut shutdown => break 'election,
                }
            };
            tokio::select! {
                () = self.sleep_until(Some(wake)) => {}
                () = &mut shutdown => break,
            }
        }
        self.release().await;
    }

    /// Confirms that `token` still allows acting: re-reads the Lease
    /// (bounded by the request timeout) and checks that it still names the
    /// token's holder, transitions and acquire time, and that this process
    /// still leads that term and its lease has not run out.
    pub async fn check(&self, token: &FencingToken) -> Result<(), FencingError> {
        let shown = token.to_string();
        let timeout = self.shared.timings.request_timeout();
        let lease = match tokio::time::timeout(timeout, self.shared.leases.get_opt(&self.shared.name)).await {
            Err(_) => {
                return Err(FencingError::Unavailable { token: shown, why: format!("no answer within {timeout:?}") });
            }
            Ok(Err(e)) => return Err(FencingError::Unavailable { token: shown, why: e.to_string() }),
            Ok(Ok(None)) => return Err(FencingError::Gone { lease: self.lease() }),
            Ok(Ok(Some(lease))) => lease,
        };
        let record = record_of(&lease, self.shared.timings.duration);
        let same_acquisition = record.acquired_at.is_none_or(|at| at == token.acquired_at);
        if record.holder.as_deref() != Some(token.holder.as_str())
            || record.transitions != token.transitions
            || !same_acquisition
        {
            return Err(FencingError::Superseded {
                token: shown,
                holder: record.holder,
                transitions: record.transitions,
            });
        }
        let held = self.lock().held.clone();
        let Some(held) = held.filter(|h| h.token == *token) else {
            return Err(FencingError::NotLeading { token: shown });
        };
        if !decide::still_leading(held.valid_until, self.mono()) {
            return Err(FencingError::Expired { token: shown });
        }
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, Local> {
        self.shared.lock()
    }

    fn mono(&self) -> Duration {
        self.shared.epoch.elapsed()
    }

    fn instant(&self, offset: Duration) -> tokio::time::Instant {
        self.shared.epoch + offset
    }

    /// Sleeps until the monotonic offset `at`; forever when `None`.
    async fn sleep_until(&self, at: Option<Duration>) {
        match at {
            Some(at) => tokio::time::sleep_until(self.instant(at)).await,
            None => std::future::pending().await,
        }
    }

    /// One attempt to acquire or renew; returns when the next one starts.
    async fn round(&self) -> Duration {
        let end = self.try_acquire_or_renew().await;
        let now = self.mono();
        self.lapse_if_expired(now);
        decide::next_round(end, &self.shared.timings, now)
    }

    async fn try_acquire_or_renew(&self) -> RoundEnd {
        self.lapse_if_expired(self.mono());
        // Fast path: the leader renews from the copy it holds.
        let fast = {
            let local = self.lock();
            local.held.clone().zip(local.lease.clone())
        };
        if let Some((held, lease)) = fast {
            match self.write(Write::Renew, lease, Some(held.valid_until)).await {
                Ok(end) => return end,
                Err(WriteFailed::Conflict) => {}
                // As client-go: read the lease again before giving the round up.
                Err(WriteFailed::Other(e)) => {
                    tracing::warn!(lease = %self.lease(), error = %e, "lease renewal failed; reading the lease again");
                }
            }
        }
        // Slow path: read, decide, write; a lost race means read again.
        for _ in 0..ATTEMPTS_PER_ROUND {
            let timeout = self.shared.timings.request_timeout();
            let read = match tokio::time::timeout(timeout, self.shared.leases.get_opt(&self.shared.name)).await {
                Ok(Ok(read)) => read,
                Ok(Err(e)) => {
                    tracing::warn!(lease = %self.lease(), error = %e, "cannot read the lease");
                    return self.failed_round();
                }
                Err(_) => {
                    tracing::warn!(lease = %self.lease(), "reading the lease took longer than {timeout:?}");
                    return self.failed_round();
                }
            };
            let now = self.mono();
            let (next, held) = {
                let mut local = self.lock();
                let observed = read.as_ref().map(|lease| {
                    decide::observe(local.observed.as_ref(), record_of(lease, self.shared.timings.duration), now)
                });
                local.observed = observed.clone();
                local.lease = read.clone();
                let held = local.held.clone();
                let next = decide::next_action(
                    &self.shared.identity,
                    held.as_ref().map(|h| h.token.transitions),
                    observed.as_ref(),
                    now,
                );
                (next, held)
            };
            let write = match (next, read) {
                (Next::Wait { holder, expires_in }, _) => {
                    if held.is_some() {
                        self.step_down(&format!("the lease is now held by {holder}"));
                    } else {
                        self.publish();
                    }
                    return RoundEnd::Waiting { expires_in };
                }
                (Next::Create, _) => self.write(Write::Create, self.new_lease(), None).await,
                (Next::Acquire { transitions }, Some(lease)) => {
                    self.write(Write::Acquire { transitions }, lease, held.map(|h| h.valid_until)).await
                }
                (Next::Renew, Some(lease)) => self.write(Write::Renew, lease, held.map(|h| h.valid_until)).await,
                // Acquire and Renew come only from a lease that was read.
                (Next::Acquire { .. } | Next::Renew, None) => return RoundEnd::Unknown,
            };
            match write {
                Ok(end) => return end,
                Err(WriteFailed::Conflict) => continue,
                Err(WriteFailed::Other(e)) => {
                    tracing::warn!(lease = %self.lease(), error = %e, "writing the lease failed");
                    return self.failed_round();
                }
            }
        }
        self.failed_round()
    }

    /// How a round that could not finish ends.
    fn failed_round(&self) -> RoundEnd {
        match self.lock().held.as_ref() {
            Some(held) => RoundEnd::LeadFailed { valid_until: held.valid_until },
            None => RoundEnd::Unknown,
        }
    }

    fn new_lease(&self) -> Lease {
        Lease {
            metadata: ObjectMeta {
                name: Some(self.shared.name.clone()),
                namespace: Some(self.shared.namespace.clone()),
                labels: Some(BTreeMap::from([("app.kubernetes.io/managed-by".to_owned(), "remedy".to_owned())])),
                ..ObjectMeta::default()
            },
            spec: None,
        }
    }

    /// Writes the lease as `what` says, conditioned on the
    /// `resourceVersion` of `lease`; a leader's write is bounded by the end
    /// of its lease as well as by the request timeout.
    async fn write(
        &self,
        what: Write,
        mut lease: Lease,
        lead_until: Option<Duration>,
    ) -> Result<RoundEnd, WriteFailed> {
        let wall = micro_time(self.shared.clock.now());
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        spec.renew_time = Some(wall.clone());
        spec.lease_duration_seconds = Some(self.shared.timings.lease_seconds());
        match what {
            Write::Create => {
                spec.holder_identity = Some(self.shared.identity.clone());
                spec.acquire_time = Some(wall);
                spec.lease_transitions = Some(0);
            }
            Write::Acquire { transitions } => {
                spec.holder_identity = Some(self.shared.identity.clone());
                spec.acquire_time = Some(wall);
                spec.lease_transitions = Some(i32::try_from(transitions).unwrap_or(i32::MAX));
            }
            Write::Renew => {}
        }
        let sent = self.mono();
        let mut deadline = sent + self.shared.timings.request_timeout();
        if let Some(until) = lead_until {
            deadline = deadline.min(until);
        }
        let pp = PostParams::default();
        let request = async {
            match what {
                Write::Create => self.shared.leases.create(&pp, &lease).await,
                Write::Acquire { .. } | Write::Renew => {
                    self.shared.leases.replace(&self.shared.name, &pp, &lease).await
                }
            }
        };
        let written = match tokio::time::timeout_at(self.instant(deadline), request).await {
            Err(_) => return Err(WriteFailed::Other(format!("no answer within {:?}", deadline - sent))),
            Ok(Err(kube::Error::Api(status))) if status.code == CONFLICT => {
                self.shared.conflicts.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(lease = %self.lease(), reason = %status.reason, "lost a race for the lease; reading it again");
                return Err(WriteFailed::Conflict);
            }
            Ok(Err(e)) => return Err(WriteFailed::Other(e.to_string())),
            Ok(Ok(written)) => written,
        };
        Ok(self.wrote(what, written, sent))
    }

    /// Records a successful write sent at `sent`.
    fn wrote(&self, what: Write, written: Lease, sent: Duration) -> RoundEnd {
        let now = self.mono();
        let record = record_of(&written, self.shared.timings.duration);
        let valid_until = decide::lead_until(sent, &self.shared.timings);
        let token = FencingToken {
            holder: self.shared.identity.clone(),
            transitions: record.transitions,
            acquired_at: record.acquired_at.unwrap_or_else(|| self.shared.clock.now()),
        };
        let new_term = {
            let mut local = self.lock();
            local.observed = Some(decide::observe(local.observed.as_ref(), record, now));
            local.lease = Some(written);
            if !decide::still_leading(valid_until, now) {
                // The answer came after the term it would start had ended.
                drop(local);
                self.step_down("the lease write was answered too late to act on");
                return RoundEnd::Unknown;
            }
            let new_term = local.held.as_ref().is_none_or(|h| h.token != token);
            local.held = Some(Held { token: token.clone(), valid_until });
            new_term
        };
        if new_term {
            let how = match what {
                Write::Create => "created the lease",
                Write::Acquire { .. } => "acquired the lease",
                Write::Renew => "renewed a lease it did not know it held",
            };
            tracing::info!(lease = %self.lease(), token = %token, "{how}: leading");
        }
        self.publish();
        RoundEnd::Led { sent, valid_until }
    }

    /// Stops acting when the last renewal is too old (see
    /// [`decide::lead_until`]).
    fn lapse_if_expired(&self, now: Duration) {
        let lapsed = self.lock().held.as_ref().is_some_and(|h| !decide::still_leading(h.valid_until, now));
        if lapsed {
            self.step_down("the lease was not renewed within its duration");
        }
    }

    fn step_down(&self, why: &str) {
        self.shared.step_down(why);
    }

    fn publish(&self) {
        self.shared.publish();
    }

    /// Stops acting, then clears `holderIdentity` if the lease is still this
    /// process's, so another candidate takes it at once. Bounded: at most a
    /// few conditional writes, each within the request timeout.
    async fn release(&self) {
        self.step_down("shutting down");
        let timeout = self.shared.timings.request_timeout();
        for _ in 0..ATTEMPTS_PER_ROUND {
            let lease = match tokio::time::timeout(timeout, self.shared.leases.get_opt(&self.shared.name)).await {
                Ok(Ok(Some(lease))) => lease,
                Ok(Ok(None)) => return,
                Ok(Err(e)) => {
                    tracing::warn!(lease = %self.lease(), error = %e, "cannot release the lease; it will expire");
                    return;
                }
                Err(_) => {
                    tracing::warn!(lease = %self.lease(), "cannot release the lease in time; it will expire");
                    return;
                }
            };
            let record = record_of(&lease, self.shared.timings.duration);
            if record.holder.as_deref() != Some(self.shared.identity.as_str()) {
                return;
            }
            let mut released = lease;
            let spec = released.spec.get_or_insert_with(LeaseSpec::default);
            spec.holder_identity = None;
            spec.lease_duration_seconds = Some(1);
            spec.renew_time = Some(micro_time(self.shared.clock.now()));
            let pp = PostParams::default();
            let write = self.shared.leases.replace(&self.shared.name, &pp, &released);
            match tokio::time::timeout(timeout, write).await {
                Ok(Ok(written)) => {
                    let now = self.mono();
                    {
                        let mut local = self.lock();
                        let record = record_of(&written, self.shared.timings.duration);
                        local.observed = Some(decide::observe(local.observed.as_ref(), record, now));
                        local.lease = Some(written);
                    }
                    self.publish();
                    tracing::info!(lease = %self.lease(), "released the lease");
                    return;
                }
                Ok(Err(kube::Error::Api(status))) if status.code == CONFLICT => {
                    self.shared.conflicts.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Err(e)) => {
                    tracing::warn!(lease = %self.lease(), error = %e, "cannot release the lease; it will expire");
                    return;
                }
                Err(_) => {
                    tracing::warn!(lease = %self.lease(), "cannot release the lease in time; it will expire");
                    return;
                }
            }
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Local> {
        sync::lock(&self.local)
    }

    fn step_down(&self, why: &str) {
        let was = self.lock().held.take();
        if let Some(held) = was {
            tracing::warn!(lease = %format!("{}/{}", self.namespace, self.name), token = %held.token, why, "stepped down: no longer acting");
        }
        self.publish();
    }

    fn publish(&self) {
        let state = {
            let local = self.lock();
            let record = local.observed.as_ref().map(|o| &o.record);
            Leadership {
                leader: local.held.is_some(),
                holder: record.and_then(|r| r.holder.clone()),
                transitions: record.map_or(0, |r| r.transitions),
                fencing: local.held.as_ref().map(|h| h.token.clone()),
            }
        };
        self.tx.send_if_modified(|current| {
            if *current == state {
                return false;
            }
            *current = state;
            true
        });
    }
}

/// Stops acting when the election task ends without a graceful shutdown.
struct StepDownOnDrop(Arc<Shared>);

impl Drop for StepDownOnDrop {
    fn drop(&mut self) {
        if self.0.lock().held.is_some() {
            self.0.step_down("the election task stopped");
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Write {
    Create,
    Acquire { transitions: u32 },
    Renew,
}

enum WriteFailed {
    Conflict,
    Other(String),
}

/// The record a Lease holds. A missing duration counts as `fallback` (this
/// elector's own): a lease that says nothing is not taken early.
pub fn record_of(lease: &Lease, fallback: Duration) -> LeaseRecord {
    let spec = lease.spec.as_ref();
    let millis = |t: Option<&MicroTime>| t.map(|MicroTime(t)| Timestamp::from_millis(t.as_millisecond()));
    LeaseRecord {
        holder: spec.and_then(|s| s.holder_identity.clone()).filter(|h| !h.is_empty()),
        duration: spec
            .and_then(|s| s.lease_duration_seconds)
            .map_or(fallback, |secs| Duration::from_secs(u64::try_from(secs).unwrap_or(0))),
        transitions: spec.and_then(|s| s.lease_transitions).map_or(0, |t| u32::try_from(t).unwrap_or(0)),
        acquired_at: millis(spec.and_then(|s| s.acquire_time.as_ref())),
        renewed_at: millis(spec.and_then(|s| s.renew_time.as_ref())),
        resource_version: lease.resource_version().unwrap_or_default(),
    }
}

/// A time of day, to the millisecond, as the Lease's times: informational,
/// never used to judge expiry.
fn micro_time(at: Timestamp) -> MicroTime {
    let ms = at.as_millis();
    MicroTime(k8s_openapi::jiff::Timestamp::from_millisecond(ms).unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(spec: Option<LeaseSpec>, rv: Option<&str>) -> Lease {
        Lease {
            metadata: ObjectMeta {
                name: Some("l".into()),
                resource_version: rv.map(str::to_owned),
                ..ObjectMeta::default()
            },
            spec,
        }
    }

    #[test]
    fn an_empty_holder_is_a_free_lease_and_missing_fields_are_safe() {
        let free = lease(
            Some(LeaseSpec {
                holder_identity: Some(String::new()),
                lease_transitions: Some(-3),
                ..LeaseSpec::default()
            }),
            Some("7"),
        );
        let r = record_of(&free, Duration::from_secs(15));
        assert_eq!(r.holder, None);
        assert_eq!(r.transitions, 0);
        // No duration in the lease: ours, never zero.
        assert_eq!(r.duration, Duration::from_secs(15));
        assert_eq!(r.resource_version, "7");
        let bare = record_of(&lease(None, None), Duration::from_secs(2));
        assert_eq!((bare.holder, bare.duration, bare.acquired_at), (None, Duration::from_secs(2), None));
    }

    #[test]
    fn times_are_read_to_the_millisecond() {
        let at = k8s_openapi::jiff::Timestamp::from_microsecond(1_700_000_000_123_456).unwrap();
        let held = lease(
            Some(LeaseSpec {
                holder_identity: Some("a".into()),
                lease_duration_seconds: Some(2),
                lease_transitions: Some(4),
                acquire_time: Some(MicroTime(at)),
                renew_time: Some(MicroTime(at)),
                ..LeaseSpec::default()
            }),
            Some("9"),
        );
        let r = record_of(&held, Duration::from_secs(15));
        assert_eq!(r.holder.as_deref(), Some("a"));
        assert_eq!(r.duration, Duration::from_secs(2));
        assert_eq!(r.transitions, 4);
        assert_eq!(r.acquired_at, Some(Timestamp::from_millis(1_700_000_000_123)));
        assert_eq!(r.renewed_at, r.acquired_at);
    }

    #[test]
    fn tokens_read_as_holder_and_term() {
        let token = FencingToken { holder: "coord-0".into(), transitions: 3, acquired_at: Timestamp::from_millis(0) };
        assert_eq!(token.to_string(), "coord-0#3");
        let details = token.details();
        assert_eq!(details["fencing.holder"], "coord-0");
        assert_eq!(details["fencing.transitions"], "3");
        assert!(details.contains_key("fencing.acquired_at"));
    }

    #[test]
    fn fencing_errors_name_the_token_and_the_holder() {
        let e = FencingError::Superseded { token: "a#1".into(), holder: Some("b".into()), transitions: 2 };
        assert_eq!(e.to_string(), "token a#1 is superseded: the lease is held by b (transitions 2)");
        let e = FencingError::Superseded { token: "a#1".into(), holder: None, transitions: 1 };
        assert!(e.to_string().contains("held by nobody"));
    }
}
