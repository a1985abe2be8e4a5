//! What a step does: the closed catalogue of action kinds and their typed
//! parameters.
//!
//! Two classes: evidence kinds only look (probe a URL, snapshot agents, list
//! pods) and their results join the timeline and the `steps.<id>` context;
//! change kinds act on the world or tell people (scale, delete pods, call a
//! URL, notify). Every action, whatever its class, goes through the guard
//! rails and leaves a timeline entry.
//!
//! Every text parameter may be a template (see [`super::template`]); numbers,
//! booleans and durations are literal, so they are checked when the runbook
//! loads. Named resources (databases, Redis instances, webhooks, warm-up
//! sets) are configured on the coordinator, which keeps connection strings
//! and secrets out of runbooks.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::de::MapAccess;
use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize};

use crate::config::duration;

/// Whether an action only looks or also changes something.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionClass {
    /// Gathers evidence; its result is available to later steps as
    /// `steps.<id>`.
    Evidence,
    /// Changes the world or tells people.
    Change,
}

macro_rules! actions {
    ($( $(#[$doc:meta])* $variant:ident($payload:ident) => $name:literal, $class:ident, destructive: $destructive:literal; )*) => {
        /// A step's action with its parameters. In YAML, the action is the
        /// step's key named after its kind: `scale: {...}`.
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        pub enum Action {
            $( $(#[$doc])* #[serde(rename = $name)] $variant($payload), )*
        }

        /// The kind of an action, without parameters.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        pub enum ActionKind {
            $( $(#[$doc])* #[serde(rename = $name)] $variant, )*
        }

        impl ActionKind {
            /// Every kind, in declaration order.
            pub const ALL: &'static [ActionKind] = &[$(ActionKind::$variant),*];

            /// The snake_case name used in runbooks.
            pub fn as_str(self) -> &'static str {
                match self { $(ActionKind::$variant => $name,)* }
            }

            /// Whether the kind only looks or also changes something.
            pub fn class(self) -> ActionClass {
                match self { $(ActionKind::$variant => ActionClass::$class,)* }
            }

            /// Whether the kind is destructive by nature: it removes or
            /// replaces something (pods, keys, files, a primary), so the
            /// trigger is re-checked just before it runs. A step can mark
            /// other kinds destructive, never these ones not.
            pub fn is_destructive(self) -> bool {
                match self { $(ActionKind::$variant => $destructive,)* }
            }
        }

        impl FromStr for ActionKind {
            type Err = UnknownActionKind;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($name => Ok(ActionKind::$variant),)*
                    _ => Err(UnknownActionKind(s.to_owned())),
                }
            }
        }

        impl Action {
            /// The action's kind.
            pub fn kind(&self) -> ActionKind {
                match self { $(Action::$variant(_) => ActionKind::$variant,)* }
            }

            /// Reads the value of a map entry whose key is the action kind
            /// `name`; `Ok(None)` when `name` is not an action kind (the
            /// value is then left unread). Reading straight from the YAML
            /// stream keeps line numbers in errors.
            pub(crate) fn next_value_named<'de, A: MapAccess<'de>>(
                name: &str,
                map: &mut A,
            ) -> Result<Option<Action>, A::Error> {
                match name {
                    $($name => map.next_value::<$payload>().map(|p| Some(Action::$variant(p))),)*
                    _ => Ok(None),
                }
            }

            /// Writes the action as one map entry, `kind: parameters`.
            pub(crate) fn serialize_entry<M: SerializeMap>(&self, map: &mut M) -> Result<(), M::Error> {
                match self { $(Action::$variant(p) => map.serialize_entry($name, p),)* }
            }
        }
    };
}

actions! {
    // ---- change kinds available with the runbook engine
    /// Call a URL (for example a circuit-breaker reset).
    Http(HttpCall) => "http", Change, destructive: false;
    /// Send a directive to one or all agents and collect their results.
    Agent(AgentDirective) => "agent", Change, destructive: false;
    /// Post a message to a webhook configured on the coordinator.
    Notify(Notify) => "notify", Change, destructive: false;
    // ---- evidence kinds available with the runbook engine
    /// Probe a URL and record status and latency.
    ProbeHttp(ProbeHttp) => "probe_http", Evidence, destructive: false;
    /// Ask agents for a snapshot of their node.
    AgentSnapshot(AgentSnapshot) => "agent_snapshot", Evidence, destructive: false;
    // ---- change kinds whose actuators arrive later
    /// Set a workload's replicas, within a floor and a ceiling.
    Scale(Scale) => "scale", Change, destructive: false;
    /// Change a HorizontalPodAutoscaler's bounds.
    PatchHpa(PatchHpa) => "patch_hpa", Change, destructive: false;
    /// Restart a workload's pods by rolling update.
    RolloutRestart(RolloutRestart) => "rollout_restart", Change, destructive: true;
    /// Delete pods by label selector and phase, at most a given count.
    DeletePods(DeletePods) => "delete_pods", Change, destructive: true;
    /// Evict pods through the eviction API (honours disruption budgets).
    EvictPods(EvictPods) => "evict_pods", Change, destructive: true;
    /// Set keys in a ConfigMap.
    PatchConfigmap(PatchConfigmap) => "patch_configmap", Change, destructive: false;
    /// Fence a PostgreSQL primary and promote its replica.
    PgFailover(PgFailover) => "pg_failover", Change, destructive: true;
    /// Run named PostgreSQL maintenance operations.
    PgMaintenance(PgMaintenance) => "pg_maintenance", Change, destructive: false;
    /// Flush one Redis database (or, explicitly, all of them).
    RedisFlush(RedisFlush) => "redis_flush", Change, destructive: true;
    /// Delete Redis keys matching a pattern, scoped and capped.
    RedisDeleteKeys(RedisDeleteKeys) => "redis_delete_keys", Change, destructive: true;
    /// Pre-populate a cache with a named warm-up set.
    CacheWarm(CacheWarm) => "cache_warm", Change, destructive: false;
    /// Block an IP address on every node and, optionally, at the edge.
    BlockIp(BlockIp) => "block_ip", Change, destructive: true;
    /// Delete old files under allowed roots on nodes.
    LogCleanup(LogCleanup) => "log_cleanup", Change, destructive: true;
    /// Ask a runtime in selected pods to collect garbage.
    GcNudge(GcNudge) => "gc_nudge", Change, destructive: false;
    /// Enable or reset circuit breakers at the gateway.
    CircuitBreaker(CircuitBreaker) => "circuit_breaker", Change, destructive: false;
    // ---- evidence kinds whose actuators arrive later
    /// Run `SELECT 1` on a named database.
    PgSelect1(PgSelect1) => "pg_select1", Evidence, destructive: false;
    /// `PING` a named Redis instance.
    RedisPing(RedisPing) => "redis_ping", Evidence, destructive: false;
    /// List pods (phase, restarts, readiness).
    ListPods(ListPods) => "list_pods", Evidence, destructive: false;
    /// List services and their ready endpoints.
    ListServices(ListServices) => "list_services", Evidence, destructive: false;
}

/// A name that is not an action kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown action kind `{0}`")]
pub struct UnknownActionKind(pub String);

impl fmt::Display for ActionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

// ---------------------------------------------------------------- defaults

fn yes() -> bool {
    true
}
fn seconds<const N: u64>() -> Duration {
    Duration::from_secs(N)
}
fn one() -> u32 {
    1
}
fn status_ok() -> u16 {
    200
}
fn max_keys() -> u32 {
    10_000
}
fn log_globs() -> Vec<String> {
    vec!["*.log".to_owned()]
}
fn is_false(b: &bool) -> bool {
    !*b
}

// ---------------------------------------------------------------- shared pieces

/// An HTTP method.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum HttpMethod {
    /// GET
    #[default]
    Get,
    /// HEAD
    Head,
    /// POST
    Post,
    /// PUT
    Put,
    /// PATCH
    Patch,
    /// DELETE
    Delete,
}

/// Which agents a directive or snapshot goes to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentTarget {
    /// Every connected agent.
    All,
    /// The agents whose findings triggered the incident.
    Reporting,
    /// The agent on this node (templated, e.g. `{{ finding.labels.node }}`).
    Node(String),
}

/// A workload kind that can be scaled or restarted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum WorkloadKind {
    /// apps/v1 Deployment.
    #[default]
    Deployment,
    /// apps/v1 StatefulSet.
    StatefulSet,
}

/// A pod phase, as Kubernetes spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PodPhase {
    /// Accepted, not all containers running.
    Pending,
    /// Bound and running.
    Running,
    /// All containers exited with success.
    Succeeded,
    /// All containers exited, one at least in failure.
    Failed,
    /// State unknown.
    Unknown,
}

// ---------------------------------------------------------------- change kinds, now

/// `http`: call a URL.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpCall {
    /// Method; GET when omitted.
    #[serde(default)]
    pub method: HttpMethod,
    /// The URL (templated).
    pub url: String,
    /// Request headers (values templated).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// A JSON body; strings inside are templated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<serde_json::Value>,
    /// The status that counts as success; any 2xx when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_status: Option<u16>,
    /// Gives up after this long.
    #[serde(with = "duration", default = "seconds::<10>")]
    pub timeout: Duration,
}

/// `agent`: a directive to agents.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentDirective {
    /// Which agents.
    pub agents: AgentTarget,
    /// The directive's name, as the agents know it.
    pub directive: String,
    /// Its parameters (values templated).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub params: BTreeMap<String, String>,
    /// Whether to wait for and record each agent's result.
    #[serde(default = "yes")]
    pub collect: bool,
    /// How long to wait for results.
    #[serde(with = "duration", default = "seconds::<30>")]
    pub timeout: Duration,
}

/// `notify`: a message through a channel configured on the coordinator
/// (Slack, PagerDuty, a signed webhook, email, a status page).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Notify {
    /// The channel's name in the coordinator's `channels:` (`webhook:`,
    /// its name before channels had kinds, is still read).
    #[serde(alias = "webhook")]
    pub channel: String,
    /// A title (templated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// The message (templated).
    pub message: String,
}

// ---------------------------------------------------------------- evidence kinds, now

/// `probe_http`: probe a URL.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeHttp {
    /// The URL (templated).
    pub url: String,
    /// Method; GET when omitted.
    #[serde(default)]
    pub method: HttpMethod,
    /// The status that counts as healthy.
    #[serde(default = "status_ok")]
    pub expected_status: u16,
    /// Gives up after this long.
    #[serde(with = "duration", default = "seconds::<5>")]
    pub timeout: Duration,
}

/// What an agent snapshot includes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SnapshotSection {
    /// CPU, memory, load, disks.
    Resources,
    /// Error lines per category over the window.
    ErrorCounts,
    /// Authentication failures per source over the window.
    AuthFailures,
    /// The hottest processes.
    Processes,
    /// Pods on the node: phase, restarts, OOM kills.
    Pods,
}

/// How an agent snapshot combines the agents' numeric answers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Combine {
    /// Kept apart: `steps.<id>.nodes.<node>.<key>`.
    #[default]
    PerNode,
    /// Summed over agents: `steps.<id>.<key>` (cluster-wide error counts).
    Sum,
    /// The largest over agents: `steps.<id>.<key>` (the worst node).
    Max,
}

/// `agent_snapshot`: ask agents what they see.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentSnapshot {
    /// Which agents.
    pub agents: AgentTarget,
    /// What to include.
    pub include: Vec<SnapshotSection>,
    /// Only pods matching this label selector (for per-pod sections such as
    /// error counts); every pod on the node when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// The window for counts; the agents' default when omitted.
    #[serde(with = "super::optional_duration", default, skip_serializing_if = "Option::is_none")]
    pub window: Option<Duration>,
    /// How answers from several agents combine into `steps.<id>`.
    #[serde(default)]
    pub combine: Combine,
    /// How long to wait for answers.
    #[serde(with = "duration", default = "seconds::<10>")]
    pub timeout: Duration,
}

// ---------------------------------------------------------------- change kinds, later

/// `scale`: set replicas, never below the floor nor above the ceiling.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scale {
    /// Deployment when omitted.
    #[serde(default)]
    pub kind: WorkloadKind,
    /// Namespace.
    pub namespace: String,
    /// Workload name.
    pub name: String,
    /// Desired replicas.
    pub replicas: u32,
    /// Never fewer than this (1 when omitted; 0 must be written out).
    #[serde(default = "one")]
    pub floor: u32,
    /// Never more than this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ceiling: Option<u32>,
}

/// `patch_hpa`: change an autoscaler's bounds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatchHpa {
    /// Namespace.
    pub namespace: String,
    /// HorizontalPodAutoscaler name.
    pub name: String,
    /// New `minReplicas`.
    pub min_replicas: u32,
    /// New `maxReplicas`.
    pub max_replicas: u32,
}

/// `rollout_restart`: restart a workload's pods by rolling update.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutRestart {
    /// Deployment when omitted.
    #[serde(default)]
    pub kind: WorkloadKind,
    /// Namespace.
    pub namespace: String,
    /// Workload name.
    pub name: String,
}

/// `delete_pods`: delete matching pods, at most `max_count`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeletePods {
    /// Namespace.
    pub namespace: String,
    /// Label selector (`app=saas-idp-api`); an empty selector is refused,
    /// never read as "all".
    pub selector: String,
    /// Only pods in this phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<PodPhase>,
    /// At most this many pods per run.
    pub max_count: u32,
}

/// `evict_pods`: evict matching pods through the eviction API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvictPods {
    /// Namespace.
    pub namespace: String,
    /// Label selector; never empty.
    pub selector: String,
    /// Only pods on this node (templated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// At most this many pods per run.
    pub max_count: u32,
}

/// `patch_configmap`: set keys in a ConfigMap (values templated).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatchConfigmap {
    /// Namespace.
    pub namespace: String,
    /// ConfigMap name.
    pub name: String,
    /// Keys to set.
    pub data: BTreeMap<String, String>,
}

/// `pg_failover`: fence the primary, promote a replica.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PgFailover {
    /// The database cluster's name in the coordinator's configuration (its
    /// primary and replicas are configured there).
    pub database: String,
    /// Promote this replica; when omitted, the healthy replica with the
    /// least replay lag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica: Option<String>,
    /// Make the old primary read-only first (`default_transaction_read_only`)
    /// so that two primaries never take writes.
    #[serde(default = "yes")]
    pub fence_primary: bool,
}

/// A PostgreSQL maintenance operation: a closed set, never free SQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PgOperation {
    /// `SELECT pg_reload_conf()`.
    ReloadConf,
    /// `SELECT pg_stat_reset()`.
    StatReset,
}

/// `pg_maintenance`: run maintenance operations.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PgMaintenance {
    /// The database's name in the coordinator's configuration.
    pub database: String,
    /// Operations, in order.
    pub operations: Vec<PgOperation>,
}

/// `redis_flush`: flush one database, or all of them when said explicitly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisFlush {
    /// The instance's name in the coordinator's configuration.
    pub instance: String,
    /// The database to flush (`FLUSHDB`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub db: Option<u32>,
    /// Flush every database (`FLUSHALL`); exclusive with `db`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub all_databases: bool,
}

/// `redis_delete_keys`: delete keys matching a pattern, scoped and capped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisDeleteKeys {
    /// The instance's name in the coordinator's configuration.
    pub instance: String,
    /// The database.
    #[serde(default)]
    pub db: u32,
    /// Key pattern as for `SCAN MATCH` (templated); a pattern of wildcards
    /// only is refused. `{user}` stands for one user's id: with
    /// `scoped_to_users` it is replaced by each user in turn, without it by
    /// `*`.
    pub pattern: String,
    /// When set, only keys belonging to these users are deleted
    /// (comma-separated, templated, e.g. the accounts an attacker targeted);
    /// the pattern must then say where the user is, with `{user}`. Empty
    /// after rendering means the finding named nobody: every key matching
    /// the pattern, up to `max_keys`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scoped_to_users: Option<String>,
    /// At most this many keys per run.
    #[serde(default = "max_keys")]
    pub max_keys: u32,
}

/// `cache_warm`: pre-populate a cache.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheWarm {
    /// The instance's name in the coordinator's configuration.
    pub instance: String,
    /// The warm-up set's name (for example `critical`).
    pub set: String,
}

/// `block_ip`: block an address on every node, and at the edge if asked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockIp {
    /// The address (templated); allow-listed and infrastructure addresses
    /// are refused by the guard rails.
    pub ip: String,
    /// How long the block lasts.
    #[serde(with = "duration")]
    pub duration: Duration,
    /// Also block at the edge provider (e.g. Cloudflare).
    #[serde(default)]
    pub edge: bool,
    /// Why, recorded with the block (templated).
    pub reason: String,
}

/// One root that `log_cleanup` may delete under.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CleanupRoot {
    /// An absolute directory; symlinks out of it are never followed.
    pub path: String,
    /// File name globs; `*.log` when omitted.
    #[serde(default = "log_globs")]
    pub globs: Vec<String>,
    /// Only files last modified longer ago than this.
    #[serde(with = "duration")]
    pub older_than: Duration,
}

/// `log_cleanup`: delete old files on nodes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogCleanup {
    /// Which agents do it.
    pub agents: AgentTarget,
    /// Where, what and how old.
    pub roots: Vec<CleanupRoot>,
}

/// `gc_nudge`: ask a runtime in selected pods to collect garbage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GcNudge {
    /// Namespace.
    pub namespace: String,
    /// Label selector; never empty.
    pub selector: String,
    /// At most this many pods.
    #[serde(default = "one")]
    pub max_pods: u32,
}

/// What `circuit_breaker` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerOperation {
    /// Open the breakers: calls to these services fail fast.
    Enable,
    /// Close them again.
    Reset,
}

/// `circuit_breaker`: enable or reset breakers at the gateway.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CircuitBreaker {
    /// Enable or reset.
    pub operation: BreakerOperation,
    /// The services, by the gateway's names.
    pub services: Vec<String>,
    /// The gateway's base URL (templated).
    pub gateway: String,
}

// ---------------------------------------------------------------- evidence kinds, later

/// `pg_select1`: can the database answer?
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PgSelect1 {
    /// The database cluster's name in the coordinator's configuration.
    pub database: String,
    /// Ask this member (primary or replica, by its configured name); the
    /// cluster's current primary when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member: Option<String>,
}

/// The text `redis_delete_keys` patterns use for one user's id.
pub const USER_PLACEHOLDER: &str = "{user}";

/// `redis_ping`: can the instance answer?
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisPing {
    /// The instance's name in the coordinator's configuration.
    pub instance: String,
}

/// `list_pods`: pods, their phase, readiness and restarts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListPods {
    /// Namespace.
    pub namespace: String,
    /// Label selector; every pod of the namespace when omitted (reading is
    /// harmless).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
}

/// `list_services`: services and their ready endpoints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListServices {
    /// Namespace.
    pub namespace: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_round_trips_through_its_name() {
        for kind in ActionKind::ALL {
            assert_eq!(kind.as_str().parse::<ActionKind>(), Ok(*kind));
        }
        assert_eq!("scael".parse::<ActionKind>(), Err(UnknownActionKind("scael".into())));
    }

    #[test]
    fn evidence_kinds_are_never_destructive() {
        for kind in ActionKind::ALL {
            assert!(!(kind.class() == ActionClass::Evidence && kind.is_destructive()), "{kind}");
        }
        assert!(ActionKind::DeletePods.is_destructive() && ActionKind::PgFailover.is_destructive());
        assert!(!ActionKind::Notify.is_destructive());
    }

    #[test]
    fn actions_serialize_as_one_entry_named_by_kind() {
        let action = Action::Scale(Scale {
            kind: WorkloadKind::Deployment,
            namespace: "ns".into(),
            name: "api".into(),
            replicas: 10,
            floor: 3,
            ceiling: None,
        });
        let json = serde_json::to_value(&action).unwrap_or_default();
        assert_eq!(json["scale"]["replicas"], 10);
        assert_eq!(serde_json::from_value::<Action>(json).ok(), Some(action));
    }
}
