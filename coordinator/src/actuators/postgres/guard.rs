//! The guard against two primaries, one task per cluster for as long as
//! this coordinator leads.
//!
//! Every `split_brain_check` it asks every member. When more than one
//! takes writes, the one on the highest timeline is the newer primary (a
//! promotion starts a new timeline) and the others are fenced. That is
//! read from the servers, not remembered, so it holds across a restart of
//! the coordinator or a new leader: an old primary that comes back after
//! either is still caught once the new one answers beside it.
//!
//! A failover whose old primary did not answer also leaves a watch on it
//! here: asked every `fence_watch_interval` for `fence_watch`, fenced the
//! moment it answers taking writes (even while the new primary does not
//! answer), and what became of it goes on the failover's incident. Watches
//! live in this process; the timeline check is what survives it.
//!
//! What the timeline check finds is a `database_split_brain` finding: a
//! warning once it fenced, critical while two writers' timelines do not
//! say which is newer (nothing is fenced then: a person decides), cleared
//! when one writer is left.

use std::collections::BTreeMap;
use std::sync::Arc;

use remedy_shared::failover::{MemberState, Role, Writers, split_brain_finding, writers};
use remedy_shared::incident::{EntryKind, IncidentId, TimelineEntry};

use super::session::probe_all;
use super::{Cluster, Fenced};
use crate::recorder::{Recorder, RunUpdate};

/// The node name the guard's findings are recorded under.
const FINDINGS_SOURCE: &str = "coordinator";

/// An old primary that did not answer during a failover, watched.
#[derive(Debug)]
pub(super) struct Watch {
    pub member: String,
    pub until: tokio::time::Instant,
    pub record: WatchRecord,
    /// A fence that keeps failing is said once, not every interval.
    pub failure_said: bool,
}

/// Where a watch writes what it found.
#[derive(Debug, Clone)]
pub(super) struct WatchRecord {
    pub timeline: Option<Recorder>,
    pub incident: Option<IncidentId>,
    pub step: String,
}

impl WatchRecord {
    async fn say(&self, member: &str, status: &str, message: String) {
        let (Some(recorder), Some(incident)) = (&self.timeline, self.incident) else { return };
        let details = BTreeMap::from([
            ("step".to_owned(), self.step.clone()),
            ("status".to_owned(), status.to_owned()),
            ("watch".to_owned(), member.to_owned()),
        ]);
        let entry = TimelineEntry { at: recorder.clock().now(), kind: EntryKind::Result, message, details };
        let update = RunUpdate { incident: Some(incident), entries: vec![entry], ..Default::default() };
        if let Err(e) = recorder.run_update(update).await {
            tracing::error!(incident = %incident, error = %e, "cannot record what the watch on the old primary found");
        }
    }
}

/// Guards `cluster` until `stopped`.
pub(super) async fn keep_guarding(
    name: String,
    cluster: Arc<Cluster>,
    findings: Option<Recorder>,
    stopped: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stopped);
    let db = &cluster.config;
    loop {
        let watching = cluster.with_state(|s| !s.watches.is_empty());
        let pause = if watching { Some(db.fence_watch_interval) } else { db.split_brain_check };
        let sleep = async {
            match pause {
                Some(p) => tokio::time::sleep(p).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = &mut stopped => return,
            () = sleep => {}
            // A new watch: start asking at its pace now.
            () = cluster.wake.notified() => continue,
        }
        let members = probe_all(db).await;
        cluster.learn(&members);
        // Turned off, the timeline check does nothing, even while a watch
        // makes the guard look.
        let fenced = match db.split_brain_check {
            Some(_) => resolve_split_brain(&name, &cluster, &members, findings.as_ref()).await,
            None => BTreeMap::new(),
        };
        look_after_watches(&cluster, &members, &fenced).await;
    }
}

/// What a returning old primary's fence did, in words.
fn came_back(old: &str, f: &Fenced) -> String {
    format!("the old primary {old} came back taking writes: fenced: {}", f.describe())
}

/// Fences every writer but the newest; returns what each fence did. What
/// it found is a `database_split_brain` finding, for people and runbooks.
async fn resolve_split_brain(
    name: &str,
    cluster: &Cluster,
    members: &[MemberState],
    findings: Option<&Recorder>,
) -> BTreeMap<String, Fenced> {
    let found = writers(members);
    let mut fenced = BTreeMap::new();
    if let Writers::Diverged { keep, fence: old } = &found {
        for member in old {
            match cluster.fence(member).await {
                Ok(f) => {
                    tracing::warn!(database = %name, member = %member, keep = %keep, terminated = f.terminated,
                        "a member on an older timeline took writes beside the primary: fenced");
                    fenced.insert(member.clone(), f);
                }
                Err(e) => {
                    tracing::error!(database = %name, member = %member, keep = %keep, error = %e,
                        "an old primary takes writes beside the newer one and could not be fenced");
                }
            }
        }
    }
    let undecidable = matches!(found, Writers::Undecidable(_));
    let was_undecidable = cluster.with_state(|s| std::mem::replace(&mut s.split_brain_undecided, undecidable));
    if let (Writers::Undecidable(why), false) = (&found, was_undecidable) {
        tracing::error!(database = %name, "two primaries: {why}");
    }
    let names: Vec<String> = fenced.keys().cloned().collect();
    if let Some(recorder) = findings
        && let Some(finding) = split_brain_finding(name, &found, &names, was_undecidable, recorder.clock().now())
    {
        recorder.raise(vec![finding], FINDINGS_SOURCE.to_owned()).await;
    }
    fenced
}

/// Moves every watch on: said and dropped once its member is settled or
/// its time is up.
async fn look_after_watches(cluster: &Cluster, members: &[MemberState], fenced: &BTreeMap<String, Fenced>) {
    let watches = cluster.with_state(|s| std::mem::take(&mut s.watches));
    let mut kept = Vec::new();
    for mut watch in watches {
        let old = watch.member.clone();
        if let Some(f) = fenced.get(&old) {
            watch.record.say(&old, "succeeded", came_back(&old, f)).await;
            continue;
        }
        let state = members.iter().find(|m| m.name == old).map(|m| m.answer.as_ref().map(|s| s.role));
        match state {
            Some(Ok(Role::Primary)) => match cluster.fence(&old).await {
                Ok(f) => {
                    tracing::warn!(member = %old, terminated = f.terminated, "the old primary came back taking writes: fenced");
                    watch.record.say(&old, "succeeded", came_back(&old, &f)).await;
                    continue;
                }
                Err(e) => {
                    tracing::error!(member = %old, error = %e, "fencing the returning old primary failed");
                    if !std::mem::replace(&mut watch.failure_said, true) {
                        let message = format!(
                            "the old primary {old} came back taking writes and could not be fenced ({e}): trying again"
                        );
                        watch.record.say(&old, "failed", message).await;
                    }
                }
            },
            // Read-only already, or rejoined as a standby by a person.
            Some(Ok(role)) => {
                tracing::info!(member = %old, role = role.as_str(), "the old primary answers and takes no writes");
                let message = format!("the old primary {old} answers as {} and takes no writes", role.as_str());
                watch.record.say(&old, "succeeded", message).await;
                continue;
            }
            Some(Err(_)) | None => {}
        }
        if tokio::time::Instant::now() >= watch.until {
            tracing::warn!(member = %old, "the old primary never answered while watched: fence it before starting it");
            let message = format!(
                "the old primary {old} did not answer within {:?}: no longer watched by this coordinator; the \
                 timeline check still fences it if it comes back beside the new primary, but fence it before \
                 starting it",
                cluster.config.fence_watch
            );
            watch.record.say(&old, "failed", message).await;
            continue;
        }
        kept.push(watch);
    }
    cluster.with_state(|s| {
        // Watches added while these were looked at stay too.
        kept.append(&mut s.watches);
        s.watches = kept;
    });
}
