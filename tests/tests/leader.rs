//! Leader election against a real kube-apiserver: two or more
//! [`LeaderElector`]s on one Lease, crashes, graceful hand-overs, lost
//! races, a foreign takeover, and the pod label that follows the leader.
//!
//! Waits are by condition with generous bounds; takeover times are measured
//! and printed, never asserted.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, PostParams};
use remedy_coordinator::leader::{
    FencingError, FencingToken, LEADER_LABEL, LeaderElector, Leadership, LeaseTimings, PodLabeler,
};
use remedy_e2e::cluster::{TestCluster, wait_for, wait_until};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

/// Short timings so tests take seconds, not minutes.
const TIMINGS: LeaseTimings = LeaseTimings {
    duration: Duration::from_secs(2),
    renew_every: Duration::from_millis(500),
    retry: Duration::from_millis(300),
};
/// Generous bound for anything that should take a lease duration or two.
const WAIT: Duration = Duration::from_secs(30);
const LEASE: &str = "remedy-coordinator";

/// Lines that show in the test output even when it is captured.
fn report(msg: &str) {
    let _ = writeln!(std::io::stderr(), "{msg}");
}

/// A running elector: its handle, its task, and how to stop it gracefully.
struct Candidate {
    elector: LeaderElector,
    rx: watch::Receiver<Leadership>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Candidate {
    fn start(client: kube::Client, ns: &str, lease: &str, identity: &str) -> Candidate {
        let elector =
            LeaderElector::new(client, ns, lease, identity, TIMINGS, remedy_coordinator::clock::Clock::System)
                .expect("valid elector");
        let rx = elector.subscribe();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(elector.clone().run(async move {
            let _ = stopped.await;
        }));
        Candidate { elector, rx, stop: Some(stop), task }
    }

    fn identity(&self) -> &str {
        self.elector.identity()
    }

    fn leads(&self) -> bool {
        self.rx.borrow().leader
    }

    /// Waits until this candidate leads; returns its token.
    async fn until_leader(&mut self) -> FencingToken {
        let what = format!("{} to lead", self.identity());
        let state = wait_state(&mut self.rx, &what, |l| l.leader).await;
        state.fencing.expect("a leader has a token")
    }

    /// Waits until this candidate sees `holder` hold the lease.
    async fn until_sees(&mut self, holder: &str) {
        let what = format!("{} to see {holder} hold the lease", self.identity());
        wait_state(&mut self.rx, &what, |l| l.holder.as_deref() == Some(holder)).await;
    }

    /// Shuts down gracefully (steps down, releases) and waits for the task.
    async fn shut_down(mut self) -> LeaderElector {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(WAIT, &mut self.task).await.expect("the elector stops in time").expect("no panic");
        self.elector
    }

    /// Kills the task without releasing anything, like a crash.
    async fn crash(self) -> LeaderElector {
        self.task.abort();
        let _ = self.task.await;
        self.elector
    }
}

/// Waits, bounded, until the published state satisfies `condition`.
async fn wait_state(
    rx: &mut watch::Receiver<Leadership>,
    what: &str,
    condition: impl FnMut(&Leadership) -> bool,
) -> Leadership {
    let seen = tokio::time::timeout(WAIT, rx.wait_for(condition)).await.map(|r| r.map(|state| state.clone()));
    match seen {
        Ok(Ok(state)) => state,
        Ok(Err(_)) => panic!("the election stopped while waiting for {what}"),
        Err(_) => panic!("timed out after {WAIT:?} waiting for {what}; last state {:?}", *rx.borrow()),
    }
}

/// Watches every candidate's channel and records any moment at which two
/// of them claim to lead.
struct OverlapWatch {
    seen: Arc<Mutex<Vec<String>>>,
    tasks: Vec<JoinHandle<()>>,
}

impl OverlapWatch {
    fn new(candidates: &[&Candidate]) -> OverlapWatch {
        let all: Vec<(String, watch::Receiver<Leadership>)> =
            candidates.iter().map(|c| (c.identity().to_owned(), c.rx.clone())).collect();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let tasks = all
            .iter()
            .map(|(_, rx)| {
                let (mut rx, all, seen) = (rx.clone(), all.clone(), seen.clone());
                tokio::spawn(async move {
                    while rx.changed().await.is_ok() {
                        let leaders: Vec<String> =
                            all.iter().filter(|(_, r)| r.borrow().leader).map(|(id, _)| id.clone()).collect();
                        if leaders.len() > 1 {
                            seen.lock().unwrap_or_else(|p| p.into_inner()).push(leaders.join(" and "));
                        }
                    }
                })
            })
            .collect();
        OverlapWatch { seen, tasks }
    }

    fn assert_none(&self) {
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        assert!(seen.is_empty(), "two leaders at once: {seen:?}");
    }
}

impl Drop for OverlapWatch {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

async fn lease_of(leases: &Api<Lease>, name: &str) -> Lease {
    leases.get(name).await.expect("read the lease")
}

fn holder(lease: &Lease) -> Option<String> {
    lease.spec.as_ref().and_then(|s| s.holder_identity.clone()).filter(|h| !h.is_empty())
}

fn transitions(lease: &Lease) -> u32 {
    lease.spec.as_ref().and_then(|s| s.lease_transitions).map_or(0, |t| t as u32)
}

/// Waits until the lease has been written `n` more times (renewals).
async fn renewals(leases: &Api<Lease>, name: &str, n: usize) {
    let mut last = lease_of(leases, name).await.metadata.resource_version;
    for i in 0..n {
        let seen = wait_for(&format!("renewal {} of {n}", i + 1), WAIT, || {
            let last = last.clone();
            async move {
                let rv = leases.get(name).await?.metadata.resource_version;
                Ok((rv != last).then_some(rv))
            }
        })
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
        last = seen;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_candidates_exactly_one_leads_and_the_other_follows() {
    let cluster = TestCluster::start().await;
    let ns = cluster.new_namespace("leader").await.expect("namespace");
    let leases: Api<Lease> = Api::namespaced(cluster.client(), &ns);
    let mut a = Candidate::start(cluster.client(), &ns, LEASE, "coord-a");
    let mut b = Candidate::start(cluster.client(), &ns, LEASE, "coord-b");
    let overlap = OverlapWatch::new(&[&a, &b]);

    wait_until("exactly one of two candidates to lead", WAIT, || {
        let leaders = [a.leads(), b.leads()].iter().filter(|l| **l).count();
        async move { Ok(leaders == 1) }
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
    let (leader, follower) = if a.leads() { (&mut a, &mut b) } else { (&mut b, &mut a) };
    let token = leader.until_leader().await;
    let leader_id = leader.identity().to_owned();
    follower.until_sees(&leader_id).await;

    // Through several renewals nothing changes hands.
    renewals(&leases, LEASE, 3).await;
    let lease = lease_of(&leases, LEASE).await;
    assert_eq!(holder(&lease).as_deref(), Some(leader_id.as_str()));
    assert_eq!(transitions(&lease), token.transitions);
    assert!(leader.leads() && !follower.leads());
    assert_eq!(leader.elector.check(&token).await, Ok(()));
    assert_eq!(lease.spec.as_ref().and_then(|s| s.lease_duration_seconds), Some(2));
    overlap.assert_none();

    drop(overlap);
    b.shut_down().await;
    a.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_leader_is_replaced_after_expiry_and_its_token_fails() {
    let cluster = TestCluster::start().await;
    let ns = cluster.new_namespace("leader-crash").await.expect("namespace");
    let leases: Api<Lease> = Api::namespaced(cluster.client(), &ns);
    let mut a = Candidate::start(cluster.client(), &ns, LEASE, "coord-a");
    let token_a = a.until_leader().await;
    let mut b = Candidate::start(cluster.client(), &ns, LEASE, "coord-b");
    b.until_sees("coord-a").await;
    // B follows A's renewals for a while, as a standing replica would.
    renewals(&leases, LEASE, 3).await;
    let overlap = OverlapWatch::new(&[&a, &b]);
    assert!(!b.leads());

    let mut a_rx = a.rx.clone();
    let crashed_at = Instant::now();
    let a = a.crash().await;
    // The dead task's process stops acting at once; the lease stays held.
    assert!(!a_rx.borrow_and_update().leader, "a crashed elector must not claim to lead");
    assert_eq!(holder(&lease_of(&leases, LEASE).await).as_deref(), Some("coord-a"), "a crash releases nothing");

    let token_b = b.until_leader().await;
    let takeover = crashed_at.elapsed();
    report(&format!(
        "leader figures: takeover after a crash in {takeover:.2?} (lease {:?} + retry {:?} = {:?}; renew every {:?})",
        TIMINGS.duration,
        TIMINGS.retry,
        TIMINGS.duration + TIMINGS.retry,
        TIMINGS.renew_every
    ));
    assert_eq!(token_b.holder, "coord-b");
    assert_eq!(token_b.transitions, token_a.transitions + 1, "a takeover is a new transition");
    let lease = lease_of(&leases, LEASE).await;
    assert_eq!(holder(&lease).as_deref(), Some("coord-b"));
    assert_eq!(transitions(&lease), token_b.transitions);

    // The old token is refused because the lease moved on, not just
    // because the old process knows it stopped.
    match a.check(&token_a).await {
        Err(FencingError::Superseded { holder, transitions, .. }) => {
            assert_eq!(holder.as_deref(), Some("coord-b"));
            assert_eq!(transitions, token_b.transitions);
        }
        other => panic!("the crashed leader's token must be superseded, got {other:?}"),
    }
    // Even the new leader's elector refuses the old token.
    assert!(matches!(b.elector.check(&token_a).await, Err(FencingError::Superseded { .. })));
    assert_eq!(b.elector.check(&token_b).await, Ok(()));
    overlap.assert_none();

    drop(overlap);
    b.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_release_hands_over_without_waiting_for_expiry() {
    let cluster = TestCluster::start().await;
    let ns = cluster.new_namespace("leader-release").await.expect("namespace");
    let leases: Api<Lease> = Api::namespaced(cluster.client(), &ns);
    let mut a = Candidate::start(cluster.client(), &ns, LEASE, "coord-a");
    let token_a = a.until_leader().await;
    let mut b = Candidate::start(cluster.client(), &ns, LEASE, "coord-b");
    b.until_sees("coord-a").await;
    let overlap = OverlapWatch::new(&[&a, &b]);

    let mut a_rx = a.rx.clone();
    let released_at = Instant::now();
    let a = a.shut_down().await;
    let shut_down_in = released_at.elapsed();
    assert!(!a_rx.borrow_and_update().leader);
    let token_b = b.until_leader().await;
    let handover = released_at.elapsed();
    report(&format!(
        "leader figures: hand-over after a graceful release in {handover:.2?} (shutdown took {shut_down_in:.2?}; \
         lease {:?}, retry {:?})",
        TIMINGS.duration, TIMINGS.retry
    ));
    assert_eq!(token_b.transitions, token_a.transitions + 1);
    assert!(matches!(a.check(&token_a).await, Err(FencingError::Superseded { .. })));
    let lease = lease_of(&leases, LEASE).await;
    assert_eq!(holder(&lease).as_deref(), Some("coord-b"));
    overlap.assert_none();

    // B releases too: with nobody left, the lease says it is free.
    drop(overlap);
    b.shut_down().await;
    let lease = lease_of(&leases, LEASE).await;
    assert_eq!(holder(&lease), None, "a released lease has no holder");
    assert_eq!(transitions(&lease), token_b.transitions, "a release is not a transition");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_candidates_never_both_lead() {
    const ROUNDS: usize = 5;
    const CANDIDATES: usize = 3;
    let cluster = TestCluster::start().await;
    let ns = cluster.new_namespace("leader-race").await.expect("namespace");
    let leases: Api<Lease> = Api::namespaced(cluster.client(), &ns);
    let mut conflicts = 0;
    let mut handovers = Vec::new();
    for round in 0..ROUNDS {
        // Even rounds race to create the Lease, odd rounds to take the one
        // the previous round released.
        let lease = if round % 2 == 0 { format!("race-{round}") } else { format!("race-{}", round - 1) };
        let before = leases.get_opt(&lease).await.expect("read the lease").map_or(0, |l| transitions(&l));
        let mut candidates: Vec<Candidate> = (0..CANDIDATES)
            .map(|i| Candidate::start(cluster.client(), &ns, &lease, &format!("r{round}-c{i}")))
            .collect();
        let overlap = OverlapWatch::new(&candidates.iter().collect::<Vec<_>>());

        let first = wait_for("one of the racing candidates to lead", WAIT, || {
            let leader = candidates.iter().position(Candidate::leads);
            async move { Ok(leader) }
        })
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
        let token = candidates[first].until_leader().await;
        for (i, c) in candidates.iter_mut().enumerate() {
            if i != first {
                c.until_sees(&token.holder).await;
            }
        }
        assert_eq!(candidates.iter().filter(|c| c.leads()).count(), 1);
        if round % 2 == 1 {
            assert_eq!(token.transitions, before + 1, "taking a released lease is one transition");
        }

        // The leader leaves; one of the others takes over, and only one.
        let leaving = candidates.remove(first);
        let left_at = Instant::now();
        leaving.shut_down().await;
        let next = wait_for("a remaining candidate to lead", WAIT, || {
            let leader = candidates.iter().position(Candidate::leads);
            async move { Ok(leader) }
        })
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
        handovers.push(left_at.elapsed());
        let next_token = candidates[next].until_leader().await;
        assert_eq!(next_token.transitions, token.transitions + 1);
        assert_eq!(candidates.iter().filter(|c| c.leads()).count(), 1);
        overlap.assert_none();

        drop(overlap);
        for c in candidates {
            conflicts += c.elector.conflicts();
            c.shut_down().await;
        }
    }
    report(&format!(
        "leader figures: {ROUNDS} rounds of {CANDIDATES} racing candidates, {conflicts} lost races (409), \
         never two leaders; hand-overs {handovers:.2?}"
    ));
}

/// A TCP proxy to the apiserver that can be cut: while cut, every
/// connection through it hangs (nothing is forwarded, nothing is closed), as
/// in a network partition; healing closes the hung connections.
struct Partition {
    addr: std::net::SocketAddr,
    cut: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Partition {
    async fn to(upstream: std::net::SocketAddr) -> Partition {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let (cut, cut_rx) = watch::channel(false);
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let mut cut_rx = cut_rx.clone();
                tokio::spawn(async move {
                    let cut_now = *cut_rx.borrow_and_update();
                    if cut_now {
                        let _ = cut_rx.wait_for(|c| !*c).await.is_ok();
                        return;
                    }
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = async { cut_rx.wait_for(|c| *c).await.is_ok() } => {
                            // Hold both ends open, silent, until healed.
                            let _ = cut_rx.wait_for(|c| !*c).await.is_ok();
                        }
                    }
                });
            }
        });
        Partition { addr, cut, task }
    }

    fn client(&self, cluster: &TestCluster) -> kube::Client {
        let mut config = cluster.config();
        config.cluster_url = format!("https://{}", self.addr).parse().expect("proxy URL");
        kube::Client::try_from(config).expect("a client through the proxy")
    }

    fn set_cut(&self, cut: bool) {
        self.cut.send_replace(cut);
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_from_the_apiserver_stops_acting_before_anyone_takes_over() {
    let cluster = TestCluster::start().await;
    let ns = cluster.new_namespace("leader-partition").await.expect("namespace");
    let leases: Api<Lease> = Api::namespaced(cluster.client(), &ns);
    let upstream: std::net::SocketAddr =
        cluster.server_url().trim_start_matches("https://").parse().expect("apiserver address");
    let partition = Partition::to(upstream).await;

    let mut a = Candidate::start(partition.client(cluster), &ns, LEASE, "coord-a");
    let token_a = a.until_leader().await;
    let mut b = Candidate::start(cluster.client(), &ns, LEASE, "coord-b");
    b.until_sees("coord-a").await;
    renewals(&leases, LEASE, 3).await;
    let overlap = OverlapWatch::new(&[&a, &b]);

    // A's requests now hang: it cannot renew, and must stop acting on its
    // own clock, before B (who saw its last renewal land) takes over.
    let cut_at = Instant::now();
    partition.set_cut(true);
    wait_state(&mut a.rx, "the cut-off leader to step down", |l| !l.leader).await;
    let stepped_down = cut_at.elapsed();
    let token_b = b.until_leader().await;
    let taken_over = cut_at.elapsed();
    // Its check cannot reach the apiserver either: bounded, and refused.
    assert!(a.elector.check(&token_a).await.is_err(), "a cut-off leader's token must not pass");
    report(&format!(
        "leader figures: cut off from the apiserver, the leader stopped acting after {stepped_down:.2?}; \
         the other took over after {taken_over:.2?} (lease {:?}, renew every {:?})",
        TIMINGS.duration, TIMINGS.renew_every
    ));
    assert!(stepped_down <= taken_over);
    assert_eq!(token_b.transitions, token_a.transitions + 1);
    overlap.assert_none();

    // Healed, A follows B and its old token stays refused.
    partition.set_cut(false);
    a.until_sees("coord-b").await;
    assert!(!a.leads());
    assert!(matches!(a.elector.check(&token_a).await, Err(FencingError::Superseded { .. })));
    overlap.assert_none();

    drop(overlap);
    a.shut_down().await;
    b.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_takeover_makes_the_leader_step_down_at_its_next_renewal() {
    let cluster = TestCluster::start().await;
    let ns = cluster.new_namespace("leader-foreign").await.expect("namespace");
    let leases: Api<Lease> = Api::namespaced(cluster.client(), &ns);
    let mut a = Candidate::start(cluster.client(), &ns, LEASE, "coord-a");
    let token = a.until_leader().await;

    // Another writer wins a race: it takes the lease with the version it
    // read, as a candidate would.
    let mut lease = lease_of(&leases, LEASE).await;
    let spec = lease.spec.as_mut().expect("spec");
    let now = k8s_openapi::jiff::Timestamp::now();
    spec.holder_identity = Some("intruder".into());
    spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
    spec.acquire_time = Some(MicroTime(now));
    spec.renew_time = Some(MicroTime(now));
    // Keep it held by the intruder for the rest of the test.
    spec.lease_duration_seconds = Some(3600);
    let taken_at = Instant::now();
    leases.replace(LEASE, &PostParams::default(), &lease).await.expect("the intruder takes the lease");

    wait_state(&mut a.rx, "the leader to step down for the intruder", |l| {
        !l.leader && l.holder.as_deref() == Some("intruder")
    })
    .await;
    report(&format!("leader figures: stepped down {:.2?} after a foreign takeover", taken_at.elapsed()));
    assert!(a.elector.conflicts() >= 1, "the renewal from the stale copy must have conflicted");
    match a.elector.check(&token).await {
        Err(FencingError::Superseded { holder, .. }) => assert_eq!(holder.as_deref(), Some("intruder")),
        other => panic!("expected a superseded token, got {other:?}"),
    }

    // It keeps looking but never takes a live lease; on shutdown it leaves
    // the intruder's lease alone.
    let window = TIMINGS.duration * 2;
    let took = tokio::time::timeout(window, a.rx.wait_for(|l| l.leader)).await.map(|r| r.map(|state| state.clone()));
    assert!(took.is_err(), "took a live lease within {window:?}: {took:?}");
    a.shut_down().await;
    assert_eq!(holder(&lease_of(&leases, LEASE).await).as_deref(), Some("intruder"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_pod_label_follows_leadership_and_its_failures_do_not_stop_it() {
    let cluster = TestCluster::start().await;
    let ns = cluster.new_namespace("leader-label").await.expect("namespace");
    let pods: Api<Pod> = Api::namespaced(cluster.client(), &ns);
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": { "name": "coordinator-0", "labels": { "app": "remedy-coordinator" } },
        "spec": { "containers": [{ "name": "coordinator", "image": "example.invalid/remedy:1" }] }
    }))
    .expect("a valid Pod");
    pods.create(&PostParams::default(), &pod).await.expect("create the pod");
    let label = |p: &Pod| p.metadata.labels.as_ref().and_then(|l| l.get(LEADER_LABEL).cloned());

    // A labeler for a pod that does not exist fails, and leadership goes on.
    let mut ghost = Candidate::start(cluster.client(), &ns, "ghost-lease", "coord-ghost");
    let (ghost_stop, ghost_stopped) = oneshot::channel::<()>();
    let ghost_labeler =
        tokio::spawn(PodLabeler::new(cluster.client(), &ns, "no-such-pod").follow(ghost.rx.clone(), async move {
            let _ = ghost_stopped.await;
        }));
    let ghost_token = ghost.until_leader().await;
    renewals(&Api::namespaced(cluster.client(), &ns), "ghost-lease", 2).await;
    assert_eq!(ghost.elector.check(&ghost_token).await, Ok(()), "a failing label must not stop leadership");

    let mut a = Candidate::start(cluster.client(), &ns, LEASE, "coord-a");
    let (stop, stopped) = oneshot::channel::<()>();
    let labeler =
        tokio::spawn(PodLabeler::new(cluster.client(), &ns, "coordinator-0").follow(a.rx.clone(), async move {
            let _ = stopped.await;
        }));
    a.until_leader().await;
    wait_until("the leader label on the pod", WAIT, || async {
        Ok(label(&pods.get("coordinator-0").await?).as_deref() == Some("true"))
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));

    // Stepping down removes it; other labels stay.
    a.shut_down().await;
    wait_until("the leader label to go", WAIT, || async { Ok(label(&pods.get("coordinator-0").await?).is_none()) })
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let pod = pods.get("coordinator-0").await.expect("read the pod");
    assert_eq!(pod.metadata.labels.as_ref().and_then(|l| l.get("app")).map(String::as_str), Some("remedy-coordinator"));
    let _ = stop.send(());
    tokio::time::timeout(WAIT, labeler).await.expect("the labeler stops").expect("no panic");

    let _ = ghost_stop.send(());
    tokio::time::timeout(WAIT, ghost_labeler).await.expect("the failing labeler stops").expect("no panic");
    ghost.shut_down().await;
}
