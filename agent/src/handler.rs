//! What a directive is to the feature that runs it: a [`Request`] in, a
//! [`Reply`] with a domain [`Outcome`] out, and the [`Handlers`] table that
//! says which feature runs which directive.
//!
//! This module is a leaf: it imports nothing of the agent, so every feature
//! can serve directives without knowing the executor, the stream or the
//! protocol. `main` registers each feature's handlers; the executor
//! (`directives`) looks them up and turns a [`Reply`] into the wire result.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// How a directive ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Done as asked.
    Succeeded,
    /// Tried and failed; the message says why.
    Failed,
    /// Refused by a parameter or a local guard rail; nothing changed.
    Refused,
    /// A dry run: nothing changed; the evidence says what would have.
    DryRun,
    /// Not finished before its deadline.
    TimedOut,
    /// This agent does not run it.
    Unsupported,
}

impl Outcome {
    /// The outcome as metrics and `/debug/state` name it (`dry_run`).
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::Failed => "failed",
            Outcome::Refused => "refused",
            Outcome::DryRun => "dry_run",
            Outcome::TimedOut => "timed_out",
            Outcome::Unsupported => "unsupported",
        }
    }
}

/// What a directive came to, before it is dated and addressed.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    /// How it ended.
    pub outcome: Outcome,
    /// What a person reads on the incident's timeline.
    pub message: String,
    /// Figures and facts, flat keys.
    pub evidence: BTreeMap<String, String>,
}

impl Reply {
    /// A reply with no evidence.
    pub fn new(outcome: Outcome, message: impl Into<String>) -> Reply {
        Reply { outcome, message: message.into(), evidence: BTreeMap::new() }
    }
}

/// A directive as the feature that runs it sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Request {
    /// The coordinator's id for it, unique per step execution.
    pub id: String,
    /// Which directive (`block_ip`, `snapshot`, ...).
    pub action: String,
    /// Its parameters, all strings; each handler refuses the ones it does
    /// not take, naming them.
    pub params: HashMap<String, String>,
    /// Rehearse: check everything, change nothing.
    pub dry_run: bool,
}

/// The future a handler returns.
pub type ReplyFuture = Pin<Box<dyn Future<Output = Reply> + Send>>;

/// Runs one kind of directive.
pub trait Handler: Send + Sync {
    /// Runs `request` to its reply. The executor bounds it with the
    /// directive's deadline and catches a panic.
    fn handle(&self, request: Request) -> ReplyFuture;
}

impl<F, Fut> Handler for F
where
    F: Fn(Request) -> Fut + Send + Sync,
    Fut: Future<Output = Reply> + Send + 'static,
{
    fn handle(&self, request: Request) -> ReplyFuture {
        Box::pin(self(request))
    }
}

struct Entry {
    name: &'static str,
    announced: bool,
    handler: Arc<dyn Handler>,
}

/// Which handler runs which directive, in the order they were registered.
#[derive(Default)]
pub struct Handlers {
    entries: Vec<Entry>,
}

impl fmt::Debug for Handlers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.entries.iter().map(|e| (e.name, e.announced))).finish()
    }
}

impl Handlers {
    /// An empty table.
    pub fn new() -> Handlers {
        Handlers::default()
    }

    /// Runs `name` with `handler`, and announces it in the hello: the
    /// coordinator sends only directives an agent announced.
    pub fn announce(&mut self, name: &'static str, handler: impl Handler + 'static) {
        self.insert(name, true, Arc::new(handler));
    }

    /// Runs `name` with `handler` without announcing it: a feature that is
    /// off still answers why, rather than "unknown", should a directive
    /// arrive anyway.
    pub fn answer_unannounced(&mut self, name: &'static str, handler: impl Handler + 'static) {
        self.insert(name, false, Arc::new(handler));
    }

    fn insert(&mut self, name: &'static str, announced: bool, handler: Arc<dyn Handler>) {
        match self.entries.iter_mut().find(|e| e.name == name) {
            // A later registration wins: `main` registers a feature's live
            // handler after the one that says it is off.
            Some(e) => *e = Entry { name, announced, handler },
            None => self.entries.push(Entry { name, announced, handler }),
        }
    }

    /// The handler of `name`.
    pub fn get(&self, name: &str) -> Option<Arc<dyn Handler>> {
        self.entries.iter().find(|e| e.name == name).map(|e| e.handler.clone())
    }

    /// What the hello announces, in registration order.
    pub fn announced(&self) -> Vec<String> {
        self.entries.iter().filter(|e| e.announced).map(|e| e.name.to_owned()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_later_registration_replaces_an_earlier_one_and_only_announced_names_are_listed() {
        let mut handlers = Handlers::new();
        handlers.answer_unannounced("block_ip", |_r: Request| async { Reply::new(Outcome::Refused, "off") });
        handlers.announce("snapshot", |_r: Request| async { Reply::new(Outcome::Succeeded, "snap") });
        assert_eq!(handlers.announced(), vec!["snapshot".to_owned()]);
        handlers.announce("block_ip", |r: Request| async move { Reply::new(Outcome::Succeeded, r.id) });
        assert_eq!(handlers.announced(), vec!["block_ip".to_owned(), "snapshot".to_owned()]);
        let reply = handlers.get("block_ip").unwrap().handle(Request { id: "d1".into(), ..Request::default() }).await;
        assert_eq!(reply, Reply::new(Outcome::Succeeded, "d1"));
        assert!(handlers.get("gc_nudge").is_none());
    }

    #[test]
    fn outcomes_are_named_as_metrics_name_them() {
        assert_eq!(Outcome::DryRun.as_str(), "dry_run");
        assert_eq!(Outcome::TimedOut.as_str(), "timed_out");
    }
}
