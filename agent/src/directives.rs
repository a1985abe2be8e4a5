//! The executor of the coordinator's directives: each runs off the stream
//! loop, through the handler a feature registered for it (see
//! [`crate::handler`]), and gets back exactly one result.
//!
//! The stream loop hands every directive to the [`Executor`] and goes back
//! to its findings and heartbeats: directives run in their own tasks, at most
//! [`MAX_RUNNING`] at a time, and a flood beyond [`MAX_ADMITTED`] is refused
//! rather than queued without end. Each directive is answered exactly once
//! (done, refused, unsupported, or timed out at its deadline); a directive
//! id seen before is not run again, its result is sent again if it is known.
//! Results go through a channel that outlives a stream, so a result finished
//! while the agent reconnects is sent on the next stream. This is the one
//! place a feature's [`Reply`] becomes the wire's `ActionResult`.

use std::collections::{HashMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use remedy_proto::v1 as pb;
use remedy_shared::Timestamp;
use tokio::sync::{Semaphore, mpsc};

use crate::clock::now;
use crate::handler::{Handlers, Outcome, Reply, Request};
use remedy_shared::sync::lock;

/// Directives executing at once.
const MAX_RUNNING: usize = 4;
/// Directives executing or waiting for their turn; beyond it they are
/// refused at once, so a coordinator cannot make the agent hold an
/// unbounded queue.
const MAX_ADMITTED: usize = 64;
/// The deadline of a directive that names none (0 on the wire).
const DEFAULT_DEADLINE: Duration = Duration::from_secs(60);
/// Directive ids remembered, so a repeated id is recognised.
const REMEMBERED: usize = 256;
/// Results finished and not yet on a stream.
const RESULTS_QUEUE: usize = 64;
/// Runs directives off the stream loop. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Executor {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    handlers: Arc<Handlers>,
    running: Arc<Semaphore>,
    admitted: AtomicUsize,
    seen: Mutex<Seen>,
    results: mpsc::Sender<pb::ActionResult>,
}

/// Directive ids seen lately: running (`None`) or finished with a result.
#[derive(Debug, Default)]
struct Seen {
    order: VecDeque<String>,
    by_id: HashMap<String, Option<pb::ActionResult>>,
}

impl Seen {
    fn start(&mut self, id: &str) -> Option<Option<pb::ActionResult>> {
        if let Some(known) = self.by_id.get(id) {
            return Some(known.clone());
        }
        self.by_id.insert(id.to_owned(), None);
        self.order.push_back(id.to_owned());
        while self.order.len() > REMEMBERED {
            if let Some(old) = self.order.pop_front() {
                self.by_id.remove(&old);
            }
        }
        None
    }

    fn finish(&mut self, result: &pb::ActionResult) {
        if let Some(slot) = self.by_id.get_mut(&result.directive_id) {
            *slot = Some(result.clone());
        }
    }
}

/// The wire's name for an outcome.
fn wire_outcome(outcome: Outcome) -> pb::ActionOutcome {
    match outcome {
        Outcome::Succeeded => pb::ActionOutcome::Succeeded,
        Outcome::Failed => pb::ActionOutcome::Failed,
        Outcome::Refused => pb::ActionOutcome::Refused,
        Outcome::DryRun => pb::ActionOutcome::DryRun,
        Outcome::TimedOut => pb::ActionOutcome::TimedOut,
        Outcome::Unsupported => pb::ActionOutcome::Unsupported,
    }
}

/// A reply, dated now and addressed to its directive.
fn into_result(reply: Reply, directive_id: &str) -> pb::ActionResult {
    pb::ActionResult {
        directive_id: directive_id.to_owned(),
        outcome: wire_outcome(reply.outcome) as i32,
        message: reply.message,
        evidence: reply.evidence.into_iter().collect(),
        finished_at_ms: now().as_millis(),
    }
}

impl Executor {
    /// An executor running directives through `handlers`, and the receiving
    /// end of its results, which the stream drains onto whichever stream is
    /// open.
    pub fn new(handlers: Arc<Handlers>) -> (Executor, mpsc::Receiver<pb::ActionResult>) {
        let (results, rx) = mpsc::channel(RESULTS_QUEUE);
        let inner = Inner {
            handlers,
            running: Arc::new(Semaphore::new(MAX_RUNNING)),
            admitted: AtomicUsize::new(0),
            seen: Mutex::new(Seen::default()),
            results,
        };
        (Executor { inner: Arc::new(inner) }, rx)
    }

    /// Takes a directive; returns at once. Its result arrives on the
    /// results channel.
    pub fn submit(&self, directive: pb::Directive) {
        let id = directive.id.clone();
        if !id.is_empty() {
            match lock(&self.inner.seen).start(&id) {
                None => {}
                Some(None) => {
                    tracing::info!(directive = %id, "directive received again while it runs; its result will follow");
                    return;
                }
                Some(Some(result)) => {
                    tracing::info!(directive = %id, "directive received again; sending its result again");
                    self.answer(result);
                    return;
                }
            }
        }
        if self.inner.admitted.fetch_add(1, Ordering::SeqCst) >= MAX_ADMITTED {
            self.inner.admitted.fetch_sub(1, Ordering::SeqCst);
            let reply = Reply::new(
                Outcome::Refused,
                format!("this agent is busy: {MAX_ADMITTED} directives are running or waiting"),
            );
            self.finish(into_result(reply, &id));
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            let reply = me.run(directive).await;
            me.inner.admitted.fetch_sub(1, Ordering::SeqCst);
            me.finish(into_result(reply, &id));
        });
    }

    /// Runs one directive within its deadline.
    async fn run(&self, directive: pb::Directive) -> Reply {
        let left = if directive.deadline_ms == 0 {
            DEFAULT_DEADLINE
        } else {
            Timestamp::from_millis(directive.deadline_ms).since(now())
        };
        if left.is_zero() {
            return Reply::new(Outcome::TimedOut, "the deadline had passed when the directive arrived");
        }
        let running = self.inner.running.clone();
        let handlers = self.inner.handlers.clone();
        let work = async move {
            let Ok(_permit) = running.acquire_owned().await else {
                return Reply::new(Outcome::Failed, "the agent is stopping");
            };
            // A panic still gets its one answer. Run here rather than in a
            // task of its own, so the deadline below stops the work too.
            AssertUnwindSafe(execute(&handlers, directive))
                .catch_unwind()
                .await
                .unwrap_or_else(|_| Reply::new(Outcome::Failed, "the directive failed: it panicked"))
        };
        match tokio::time::timeout(left, work).await {
            Ok(reply) => reply,
            Err(_) => Reply::new(Outcome::TimedOut, format!("not finished before its deadline ({left:?})")),
        }
    }

    fn finish(&self, result: pb::ActionResult) {
        tracing::info!(
            directive = %result.directive_id,
            outcome = result.outcome().as_str_name(),
            message = %result.message,
            "directive answered"
        );
        lock(&self.inner.seen).finish(&result);
        self.answer(result);
    }

    /// Queues a result for the stream. The queue is drained while a stream
    /// is open; while none is, this waits in its own task.
    fn answer(&self, result: pb::ActionResult) {
        let results = self.inner.results.clone();
        tokio::spawn(async move {
            if results.send(result).await.is_err() {
                tracing::debug!("the agent is stopping: a directive result is dropped");
            }
        });
    }
}

/// Executes `directive` through the handler registered for it.
async fn execute(handlers: &Handlers, directive: pb::Directive) -> Reply {
    let Some(handler) = handlers.get(&directive.action) else {
        return Reply::new(
            Outcome::Unsupported,
            format!("this agent cannot run `{}`; it runs: {}", directive.action, handlers.announced().join(", ")),
        );
    };
    let request =
        Request { id: directive.id, action: directive.action, params: directive.params, dry_run: directive.dry_run };
    handler.handle(request).await
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::pods::directive::RESTART_POD;
    use crate::published::Published;
    use crate::signals::NodeStatus;
    use crate::snapshot::SNAPSHOT;
    use crate::snapshot::tests::sample;

    #[test]
    fn repeated_ids_are_recognised_within_a_bounded_memory() {
        let mut seen = Seen::default();
        assert_eq!(seen.start("d1"), None);
        assert_eq!(seen.start("d1"), Some(None), "running");
        let result = into_result(Reply::new(Outcome::Succeeded, "ok"), "d1");
        seen.finish(&result);
        assert_eq!(seen.start("d1"), Some(Some(result)));
        for i in 0..REMEMBERED {
            seen.start(&i.to_string());
        }
        assert_eq!(seen.start("d1"), None, "forgotten after {REMEMBERED} newer ids");
    }

    /// An executor with the handlers of an agent whose pod watching is off
    /// (`why`) and whose node was sampled.
    fn executor_with_pods_off(why: &str) -> (Executor, mpsc::Receiver<pb::ActionResult>) {
        let node = Published::new(NodeStatus { snapshot: Some(sample()), active_findings: Vec::new() });
        let pods = crate::pods::Pods { report: Default::default(), restarter: None, task: None };
        pods.report.status.lock().client = why.to_owned();
        let mut handlers = Handlers::new();
        crate::snapshot::register(&mut handlers, node, None);
        crate::pods::directive::register(&mut handlers, &pods);
        crate::reach::register(&mut handlers);
        Executor::new(Arc::new(handlers))
    }

    fn executor() -> (Executor, mpsc::Receiver<pb::ActionResult>) {
        executor_with_pods_off("pods.enabled is false")
    }

    fn directive(id: &str, action: &str, include: &str, deadline_ms: i64) -> pb::Directive {
        pb::Directive {
            id: id.into(),
            action: action.into(),
            params: [("include".to_owned(), include.to_owned())].into(),
            deadline_ms,
            dry_run: true,
            incident_id: "INC-000001".into(),
            step_id: "s".into(),
        }
    }

    #[tokio::test]
    async fn every_directive_gets_exactly_one_result() {
        let (executor, mut results) = executor();
        let later = now().plus(Duration::from_secs(30)).as_millis();
        executor.submit(directive("d1", SNAPSHOT, "resources", later));
        executor.submit(directive("d2", "reboot", "", later));
        executor.submit(directive("d3", SNAPSHOT, "bogus", later));
        executor.submit(directive("d4", SNAPSHOT, "resources", 1));
        let mut got = BTreeMap::new();
        for _ in 0..4 {
            let r = results.recv().await.expect("a result");
            assert!(got.insert(r.directive_id.clone(), r).is_none(), "one result per directive");
        }
        assert_eq!(got["d1"].outcome(), pb::ActionOutcome::Succeeded);
        assert_eq!(got["d1"].evidence["memory_total_bytes"], "4096");
        assert_eq!(got["d2"].outcome(), pb::ActionOutcome::Unsupported);
        assert_eq!(got["d2"].message, "this agent cannot run `reboot`; it runs: snapshot, restart_pod, reach");
        assert_eq!(got["d3"].outcome(), pb::ActionOutcome::Refused);
        assert!(got["d3"].message.starts_with("include: unknown section `bogus`"), "{}", got["d3"].message);
        assert_eq!(got["d4"].outcome(), pb::ActionOutcome::TimedOut);
        assert!(got.values().all(|r| r.finished_at_ms > 0));

        // The same id again: not run again, its result sent again.
        executor.submit(directive("d1", SNAPSHOT, "bogus", later));
        let again = results.recv().await.expect("the result again");
        assert_eq!(again.directive_id, "d1");
        assert_eq!(again.outcome(), pb::ActionOutcome::Succeeded);
        assert!(results.try_recv().is_err(), "nothing more");
    }

    #[tokio::test]
    async fn restart_pod_is_dispatched_and_refused_without_pod_watching() {
        let (executor, mut results) = executor_with_pods_off("no Kubernetes client: not in a cluster");
        let later = now().plus(Duration::from_secs(30)).as_millis();
        let mut d = directive("r1", RESTART_POD, "", later);
        d.params = [("namespace".to_owned(), "shop".to_owned()), ("name".to_owned(), "api-1".to_owned())].into();
        executor.submit(d);
        let r = results.recv().await.expect("a result");
        assert_eq!(r.outcome(), pb::ActionOutcome::Refused, "{r:?}");
        assert!(r.message.contains("pod watching is off on this agent (no Kubernetes client"), "{}", r.message);
        assert_eq!(r.evidence["pod"], "shop/api-1");
    }

    #[tokio::test]
    async fn a_flood_beyond_the_admission_limit_is_refused_not_queued() {
        let (executor, mut results) = executor();
        // Hold every execution slot so admitted directives wait for their turn.
        let held = executor.inner.running.clone().acquire_many_owned(MAX_RUNNING as u32).await.expect("permits");
        let later = now().plus(Duration::from_secs(30)).as_millis();
        for i in 0..MAX_ADMITTED + 3 {
            executor.submit(directive(&format!("d{i}"), SNAPSHOT, "resources", later));
        }
        let mut refused = 0;
        for _ in 0..3 {
            let r = results.recv().await.expect("a refusal");
            assert_eq!(r.outcome(), pb::ActionOutcome::Refused, "{r:?}");
            assert!(r.message.starts_with("this agent is busy"), "{}", r.message);
            refused += 1;
        }
        drop(held);
        let mut succeeded = 0;
        for _ in 0..MAX_ADMITTED {
            let r = results.recv().await.expect("a result");
            assert_eq!(r.outcome(), pb::ActionOutcome::Succeeded, "{r:?}");
            succeeded += 1;
        }
        assert_eq!((refused, succeeded), (3, MAX_ADMITTED));
    }
}
