//! Live view of agents: who is connected, when each was last heard from,
//! their latest resources. In memory only: it is rebuilt from connections
//! and heartbeats after a restart, and a restart gives every known agent a
//! full grace period before it can be called stale.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use remedy_shared::Timestamp;
use remedy_shared::signals::ResourceSnapshot;
use remedy_shared::sync;
use tokio::sync::Notify;

/// What is known live about one agent.
#[derive(Debug, Clone, Default)]
pub struct LiveAgent {
    /// Node it runs on.
    pub node_name: String,
    /// Whether a stream is open.
    pub connected: bool,
    /// Whether it missed its heartbeats.
    pub stale: bool,
    /// Last message of any kind.
    pub last_seen: Timestamp,
    /// Latest snapshot.
    pub snapshot: Option<ResourceSnapshot>,
    /// Spool depth from the latest heartbeat.
    pub spool_depth: u64,
    /// Spool drops from the latest heartbeat.
    pub spool_dropped: u64,
    generation: u64,
    replaced: Option<Arc<Notify>>,
}

/// A stream's claim on an agent id; a newer stream for the same id takes
/// over and the older one is told to end.
#[derive(Debug)]
pub struct Session {
    /// Agent id.
    pub agent_id: String,
    generation: u64,
    /// Notified when a newer stream for the same agent took over.
    pub replaced: Arc<Notify>,
}

/// The live registry.
#[derive(Debug, Default)]
pub struct Registry {
    agents: Mutex<HashMap<String, LiveAgent>>,
    next_generation: Mutex<u64>,
}

impl Registry {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, LiveAgent>> {
        sync::lock(&self.agents)
    }

    /// Remembers an agent known from the store, not yet connected.
    pub fn seed(&self, agent_id: &str, node_name: &str, now: Timestamp) {
        self.lock().entry(agent_id.to_owned()).or_insert_with(|| LiveAgent {
            node_name: node_name.to_owned(),
            last_seen: now,
            ..LiveAgent::default()
        });
    }

    /// Marks a stream open; an older stream of the same agent is told to end.
    /// Returns the session and whether the agent was stale until now.
    pub fn connect(&self, agent_id: &str, node_name: &str, now: Timestamp) -> (Session, bool) {
        let generation = {
            let mut next = sync::lock(&self.next_generation);
            *next += 1;
            *next
        };
        let replaced = Arc::new(Notify::new());
        let mut agents = self.lock();
        let live = agents.entry(agent_id.to_owned()).or_default();
        if let Some(old) = live.replaced.take() {
            old.notify_one();
        }
        let was_stale = live.stale;
        live.node_name = node_name.to_owned();
        live.connected = true;
        live.stale = false;
        live.last_seen = now;
        live.generation = generation;
        live.replaced = Some(replaced.clone());
        (Session { agent_id: agent_id.to_owned(), generation, replaced }, was_stale)
    }

    /// Records a message from the session's agent; returns whether the agent
    /// was stale until now.
    pub fn touch(&self, session: &Session, now: Timestamp) -> bool {
        let mut agents = self.lock();
        let Some(live) = agents.get_mut(&session.agent_id) else { return false };
        live.last_seen = now;
        std::mem::replace(&mut live.stale, false)
    }

    /// Records a heartbeat.
    pub fn heartbeat(
        &self,
        session: &Session,
        snapshot: Option<ResourceSnapshot>,
        spool_depth: u64,
        spool_dropped: u64,
    ) {
        let mut agents = self.lock();
        if let Some(live) = agents.get_mut(&session.agent_id) {
            if snapshot.is_some() {
                live.snapshot = snapshot;
            }
            live.spool_depth = spool_depth;
            live.spool_dropped = spool_dropped;
        }
    }

    /// Marks the session's stream closed, unless a newer one took over.
    pub fn disconnect(&self, session: &Session) {
        let mut agents = self.lock();
        if let Some(live) = agents.get_mut(&session.agent_id)
            && live.generation == session.generation
        {
            live.connected = false;
            live.replaced = None;
        }
    }

    /// Agents silent for longer than `stale_after`, newly marked stale:
    /// (agent id, node name) of each.
    pub fn mark_stale(&self, now: Timestamp, stale_after: Duration) -> Vec<(String, String)> {
        let mut agents = self.lock();
        let mut newly = Vec::new();
        for (id, live) in agents.iter_mut() {
            if !live.stale && now.since(live.last_seen) > stale_after {
                live.stale = true;
                newly.push((id.clone(), live.node_name.clone()));
            }
        }
        newly
    }

    /// The live view of one agent.
    pub fn get(&self, agent_id: &str) -> Option<LiveAgent> {
        self.lock().get(agent_id).cloned()
    }

    /// Open streams and stale agents now.
    pub fn counts(&self) -> (usize, usize) {
        let agents = self.lock();
        (agents.values().filter(|a| a.connected).count(), agents.values().filter(|a| a.stale).count())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(ms: i64) -> Timestamp {
        Timestamp::from_millis(ms)
    }

    #[test]
    fn a_silent_agent_is_marked_stale_once_and_recovers_on_contact() {
        let r = Registry::default();
        let (session, was_stale) = r.connect("a", "n1", t(0));
        assert!(!was_stale);
        assert!(r.mark_stale(t(30_000), Duration::from_secs(30)).is_empty());
        assert_eq!(r.mark_stale(t(30_001), Duration::from_secs(30)), vec![("a".to_owned(), "n1".to_owned())]);
        assert!(r.mark_stale(t(60_000), Duration::from_secs(30)).is_empty());
        assert!(r.touch(&session, t(60_001)));
        assert!(!r.touch(&session, t(60_002)));
    }

    #[test]
    fn a_newer_stream_takes_over_and_the_old_disconnect_does_not_count() {
        let r = Registry::default();
        let (old, _) = r.connect("a", "n1", t(0));
        let (_new, _) = r.connect("a", "n1", t(1));
        r.disconnect(&old);
        assert!(r.get("a").unwrap().connected);
        assert_eq!(r.counts(), (1, 0));
    }
}
