//! The data-plane actions against real servers on loopback: a PostgreSQL
//! primary with a streaming replica (Debian's `postgresql`), and Redis
//! (Debian's `redis-server`), driven by a real coordinator through its
//! runbooks, approvals and timeline.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use remedy_e2e::datastores::{
    COORDINATOR_ROLE, PG_PASSWORD, Postgres, REDIS_PASSWORD, Redis, RedisSetup, RedisTlsFiles, connect_as,
    databases_yaml, pg_password_file,
};
use remedy_e2e::fault_proxy::FaultProxy;
use remedy_e2e::net_tools::{Netns, require_tools};
use remedy_e2e::procs::{Proc, bin, eventually, free_addr};
use remedy_e2e::runs::{
    about, approve, deny, incident_for, now_rfc3339, post_alert, result_of, run_end, run_manual, runbook, seed_catalog,
    show, start, start_on, status_of, timeline,
};
use remedy_e2e::world::{World, alert_payload};
use remedy_proto::v1 as pb;
use remedy_shared::failover::TWO_WRITERS_RISK;

/// `databases:` for one cluster named `main` whose repoint hook is the
/// world's, plus `extra` lines under it.
fn databases(dir: &Path, primary: &Postgres, replica: &Postgres, world: &World, extra: &str) -> String {
    databases_yaml(dir, primary, replica, &format!("    repoint_hook: {}/hooks/repoint\n{extra}", world.url()))
}

/// The member's default as the coordinator's role sees it (through the
/// door a fence leaves it, when fenced).
async fn read_only_setting(pg: &Postgres) -> Option<String> {
    let client = pg.coordinator_client().await;
    client.query_one("SHOW default_transaction_read_only", &[]).await.ok().map(|r| r.get(0))
}

/// Whether the member is in recovery, as the coordinator's role sees it.
async fn in_recovery(pg: &Postgres) -> bool {
    let client = pg.coordinator_client().await;
    client.query_one("SELECT pg_is_in_recovery()", &[]).await.map(|r| r.get(0)).unwrap_or(true)
}

/// A write as a client that means it would try it: read-only turned off,
/// then a read-write transaction, committed.
const DETERMINED_WRITE: &str = "SET default_transaction_read_only = off; BEGIN READ WRITE; \
     CREATE TABLE IF NOT EXISTS split_brain (note text); INSERT INTO split_brain VALUES ('two writers'); COMMIT";

/// Tries to commit a write on `pg` as each of `roles` (name, password) on
/// each of `databases`, and on each of `sessions` opened before; returns
/// what committed (nothing, on a fenced member), and prints what each
/// attempt met.
async fn writes_that_commit(
    pg: &Postgres,
    roles: &[(&str, &str)],
    databases: &[&str],
    sessions: &[(&str, &tokio_postgres::Client)],
) -> Vec<String> {
    let mut committed = Vec::new();
    for (role, password) in roles {
        for database in databases {
            let what = format!("a new session of {role} on {database}");
            match connect_as(pg.addr, role, password, database).await {
                Err(e) => println!("{what}: refused: {e}"),
                Ok(client) => match client.batch_execute(DETERMINED_WRITE).await {
                    Err(e) => println!("{what}: the write failed: {e}"),
                    Ok(()) => committed.push(what),
                },
            }
        }
    }
    for (what, client) in sessions {
        match client.batch_execute(DETERMINED_WRITE).await {
            Err(e) => println!("{what}: the write failed: {e}"),
            Ok(()) => committed.push((*what).to_owned()),
        }
    }
    committed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p0_002_promotes_the_replica_loses_nothing_fences_the_old_primary_and_leaves_a_second_failure_to_people() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut primary = Postgres::primary(dir.path(), "db-0", true).await;
    let mut replica = Postgres::replica_of(&primary, dir.path(), "db-1").await;
    primary.write_orders(1000).await;
    // The application's own database, beside the one the coordinator uses.
    primary.client().await.batch_execute("CREATE DATABASE app").await.expect("create the application's database");

    let world = World::start().await;
    let catalog = seed_catalog(dir.path(), &world);
    let config = databases(dir.path(), &primary, &replica, &world, "    promote_timeout: 20s\n");
    let coordinator = start(dir.path(), &world, &catalog, &config).await;

    // The primary crashes: everything it acknowledged is on the replica.
    primary.crash();
    let started = now_rfc3339();
    post_alert(&coordinator, &alert_payload("P0_DatabaseDown", &[], "firing", &started)).await;
    let incident = incident_for(&coordinator, "P0-002").await;
    // A failover waits for a person, who is told that nothing shows the
    // primary down (no agent is connected, and the coordinator's own
    // failed connection is no evidence) before approving anyway.
    let asked = approve(&coordinator, &incident.id, "failover").await;
    assert!(asked.reason.contains(TWO_WRITERS_RISK), "the approval request says what it risks: {}", asked.reason);
    let entries = run_end(&coordinator, &incident.id).await;
    let log = show(&entries);
    println!("first failover:\n{log}");
    assert_eq!(status_of(&entries, "primary").as_deref(), Some("failed"), "no member took writes:\n{log}");
    assert_eq!(status_of(&entries, "failover").as_deref(), Some("succeeded"), "{log}");
    let failover = result_of(&entries, "failover").expect("a failover result");
    assert_eq!(failover.details.get("evidence.promoted").map(String::as_str), Some("db-1"), "{log}");
    let steps: Vec<&String> =
        failover.details.iter().filter(|(k, _)| k.starts_with("evidence.step.")).map(|(_, v)| v).collect();
    assert!(steps.iter().any(|s| s.starts_with("chose db-1: replayed ")), "{steps:?}");
    assert!(steps.iter().any(|s| s.starts_with("promoted db-1: accepts writes, lsn ")), "{steps:?}");
    assert!(steps.iter().any(|s| s.contains("db-0 did not answer: watched")), "{steps:?}");
    assert!(
        steps.iter().any(|s| s.contains("db-0 does not answer and nothing showed it down: a person approved anyway")
            && s.contains("approved by dba")),
        "the timeline says the failover went ahead on a person's word: {steps:?}"
    );
    assert_eq!(
        failover.details.get("evidence.old_primary_down").map(String::as_str),
        Some("approved_without_evidence")
    );
    assert_eq!(status_of(&entries, "new_primary").as_deref(), Some("succeeded"), "{log}");
    assert!(entries.iter().any(|e| e.message.contains("runbook P0-002 finished")), "{log}");
    assert!(!log.contains(PG_PASSWORD), "no password on the timeline");

    // The replica takes writes, and every row committed before holds.
    let client = replica.client().await;
    client.execute("INSERT INTO orders VALUES (1001, 'after the failover')", &[]).await.expect("write to db-1");
    let count: i64 = client.query_one("SELECT count(*) FROM orders", &[]).await.expect("count").get(0);
    let max: i64 = client.query_one("SELECT max(id) FROM orders WHERE id <= 1000", &[]).await.expect("max").get(0);
    assert_eq!((count, max), (1001, 1000), "nothing committed before the crash was lost");

    // The application is told where the primary is now.
    let repoints = world.requests("POST", "/hooks/repoint");
    assert_eq!(repoints.len(), 1, "{log}");
    let told: serde_json::Value = serde_json::from_str(&repoints[0].body).expect("a JSON body");
    assert_eq!(told["primary"], "db-1");
    assert_eq!(told["url"], format!("postgresql://127.0.0.1:{}/postgres", replica.addr.port()));
    // Without a cluster the ConfigMap patch rehearses; it is reached, not
    // skipped, once the new primary answers.
    assert_eq!(status_of(&entries, "repoint_app").as_deref(), Some("dry_run"), "{log}");

    // The old primary comes back: it is fenced before it takes writes for
    // long, and it is no candidate for anything.
    primary.start().await;
    // The incident's record says so once the fence is complete (sessions
    // ended included), not only the coordinator's log.
    eventually("the fence of the returning old primary on the timeline", Duration::from_secs(30), || async {
        let entries = timeline(&coordinator, &incident.id).await;
        entries
            .iter()
            .any(|e| {
                e.kind == "result"
                    && e.message.contains("the old primary db-0 came back taking writes: fenced: logins closed")
                    && e.details.get("watch").map(String::as_str) == Some("db-0")
            })
            .then_some(())
    })
    .await;
    assert_eq!(read_only_setting(&primary).await.as_deref(), Some("on"), "the returning old primary is fenced");
    // No session commits a write there, on any database, whatever it asks
    // for; the new primary still serves the application.
    let roles = [("postgres", PG_PASSWORD), (COORDINATOR_ROLE, PG_PASSWORD)];
    let committed = writes_that_commit(&primary, &roles, &["postgres", "app"], &[]).await;
    assert!(committed.is_empty(), "writes committed on the fenced old primary: {committed:?}");
    remedy_e2e::datastores::connect_to(replica.addr, "app").await.expect("the new primary serves the application");
    // A second failure within the window goes to people: the rails stop
    // the failover before it runs, and nothing is promoted.
    let mut admin = coordinator.admin().await;
    admin
        .resolve_incident(pb::IncidentCommand {
            id: incident.id.clone(),
            requested_by: "dba".into(),
            reason: "failed over".into(),
        })
        .await
        .expect("resolve the first incident");
    replica.crash();
    post_alert(&coordinator, &alert_payload("P0_DatabaseDown", &[("attempt", "2")], "firing", &now_rfc3339())).await;
    let second = eventually("a second P0-002 incident", Duration::from_secs(30), || {
        let (mut admin, first) = (admin.clone(), incident.id.clone());
        async move {
            let list = admin
                .list_incidents(pb::ListIncidentsRequest { include_resolved: true, ..Default::default() })
                .await
                .ok()?
                .into_inner();
            list.incidents.into_iter().find(|i| i.runbook_id == "P0-002" && i.id != first)
        }
    })
    .await;
    let entries = run_end(&coordinator, &second.id).await;
    let log = show(&entries);
    println!("second failure:\n{log}");
    let decisions: Vec<&pb::TimelineEntry> =
        about(&entries, "failover").into_iter().filter(|e| e.kind == "decision").collect();
    assert!(
        decisions.iter().any(|e| matches!(e.details.get("outcome").map(String::as_str), Some("escalated" | "refused"))),
        "the rails stop a second automatic failover:\n{log}"
    );
    assert!(result_of(&entries, "failover").is_none(), "the actuator never ran:\n{log}");
    assert!(entries.iter().any(|e| e.kind == "escalated"), "a person is called:\n{log}");
    assert_eq!(read_only_setting(&primary).await.as_deref(), Some("on"), "the old primary stays fenced");
    assert!(!in_recovery(&primary).await, "the old primary is no standby, so never promoted again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failovers_are_refused_with_the_reason_and_bad_credentials_or_servers_say_so() {
    let dir = tempfile::tempdir().expect("temp dir");
    let primary = Postgres::primary(dir.path(), "db-0", false).await;
    let mut replica = Postgres::replica_of(&primary, dir.path(), "db-1").await;
    let world = World::start().await;
    let wrong_password = dir.path().join("wrong-password");
    std::fs::write(&wrong_password, "not-the-password\n").expect("write a wrong password");
    let nobody = free_addr();
    let extra = format!(
        "    max_lag_bytes: 65536\n  wrong:\n    primary: {{host: 127.0.0.1, port: {}, user: postgres, password_file: {}}}\n\
         \x20 gone:\n    primary: {{host: 127.0.0.1, port: {}, user: postgres}}\n    connect_timeout: 1s\n\
         guard_rails: {{approval: {{kinds: []}}}}\n",
        primary.addr.port(),
        wrong_password.display(),
        nobody.port()
    );
    let config = databases(dir.path(), &primary, &replica, &world, &extra);
    let rails = "guard_rails: {cooldown: 0s, max_attempts: 10}\n";
    runbook(dir.path(), "FAILOVER", "  - id: failover\n    pg_failover: {database: main}\n", rails);
    runbook(
        dir.path(),
        "MAINT",
        "  - id: maintenance\n    pg_maintenance: {database: main, operations: [reload_conf, stat_reset]}\n",
        rails,
    );
    let catalog = runbook(
        dir.path(),
        "PROBES",
        "  - id: wrong\n    pg_select1: {database: wrong}\n  - id: gone\n    pg_select1: {database: gone}\n\
         \x20 - id: replica\n    pg_select1: {database: main, member: db-1}\n",
        rails,
    );
    let coordinator = start(dir.path(), &world, &catalog, &config).await;

    // Wrong credentials and a server nobody runs: each says why, and no
    // password reaches the timeline.
    let id = run_manual(&coordinator, "PROBES", false).await;
    let entries = run_end(&coordinator, &id).await;
    let log = show(&entries);
    let wrong = result_of(&entries, "wrong").expect("a result for wrong credentials");
    assert!(wrong.message.contains("password authentication failed"), "{log}");
    let gone = result_of(&entries, "gone").expect("a result for the server nobody runs");
    assert_eq!(gone.details.get("status").map(String::as_str), Some("failed"), "{log}");
    assert!(gone.message.contains("no member of `gone` takes writes") && gone.message.contains("unreachable"), "{log}");
    assert_eq!(status_of(&entries, "replica").as_deref(), Some("succeeded"), "{log}");
    assert_eq!(
        result_of(&entries, "replica").and_then(|e| e.details.get("evidence.role")).map(String::as_str),
        Some("replica")
    );
    assert!(!log.contains(PG_PASSWORD) && !log.contains("not-the-password"), "{log}");

    // Maintenance on the primary: the statements running before it are
    // attached, then the configuration is reloaded and statistics reset.
    let sleeper = primary.client().await;
    let slow = tokio::spawn(async move { sleeper.batch_execute("SELECT pg_sleep(30)").await });
    let watcher = primary.client().await;
    eventually("the slow statement running", Duration::from_secs(10), || async {
        let row = watcher
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep%' AND state = 'active'",
                &[],
            )
            .await
            .ok()?;
        (row.get::<_, i64>(0) > 0).then_some(())
    })
    .await;
    let id = run_manual(&coordinator, "MAINT", false).await;
    let entries = run_end(&coordinator, &id).await;
    let log = show(&entries);
    let maintenance = result_of(&entries, "maintenance").expect("a maintenance result");
    assert_eq!(maintenance.details.get("status").map(String::as_str), Some("succeeded"), "{log}");
    assert_eq!(maintenance.details.get("evidence.member").map(String::as_str), Some("db-0"), "{log}");
    assert_eq!(maintenance.details.get("evidence.operations.reload_conf").map(String::as_str), Some("t"), "{log}");
    assert!(
        maintenance
            .details
            .iter()
            .any(|(k, v)| k.starts_with("evidence.slow_queries.") && v.contains("SELECT pg_sleep(30)")),
        "the running statement is attached:\n{log}"
    );
    let reset: bool = watcher
        .query_one(
            "SELECT stats_reset > now() - interval '1 minute' FROM pg_stat_database WHERE datname = current_database()",
            &[],
        )
        .await
        .expect("read stats_reset")
        .get(0);
    assert!(reset, "statistics were reset just now");
    slow.abort();

    // The replica falls behind (replay paused while the primary writes):
    // promoting it would lose writes, so the failover is refused and
    // nothing changes.
    let standby = replica.client().await;
    standby.batch_execute("SELECT pg_wal_replay_pause()").await.expect("pause replay");
    let writer = primary.client().await;
    writer
        .batch_execute("CREATE TABLE filler AS SELECT g, repeat('x', 200) AS pad FROM generate_series(1, 20000) g")
        .await
        .expect("write WAL on the primary");
    let id = run_manual(&coordinator, "FAILOVER", false).await;
    let entries = run_end(&coordinator, &id).await;
    let log = show(&entries);
    println!("lagging replica:\n{log}");
    let refused = result_of(&entries, "failover").expect("a failover result");
    assert!(refused.message.contains("refused, nothing changed") && refused.message.contains("max_lag_bytes"), "{log}");
    assert_eq!(read_only_setting(&primary).await.as_deref(), Some("off"), "the primary was not fenced");
    let in_recovery: bool = standby.query_one("SELECT pg_is_in_recovery()", &[]).await.expect("ask").get(0);
    assert!(in_recovery, "the replica was not promoted");
    standby.batch_execute("SELECT pg_wal_replay_resume()").await.expect("resume replay");

    // No healthy replica: refused, with each member's state.
    replica.crash();
    let id = run_manual(&coordinator, "FAILOVER", false).await;
    let entries = run_end(&coordinator, &id).await;
    let log = show(&entries);
    let refused = result_of(&entries, "failover").expect("a failover result");
    assert!(
        refused.message.contains("no healthy replica") && refused.message.contains("db-1 does not answer"),
        "{log}"
    );
    assert_eq!(read_only_setting(&primary).await.as_deref(), Some("off"), "the primary was not fenced");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promotion_that_runs_out_of_time_says_what_was_done_and_completes_on_its_own() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut primary = Postgres::primary(dir.path(), "db-0", true).await;
    let replica = Postgres::replica_of(&primary, dir.path(), "db-1").await;
    primary.write_orders(100).await;
    let world = World::start().await;
    let extra = "    promote_timeout: 2s\nguard_rails: {approval: {kinds: []}}\n";
    let config = databases(dir.path(), &primary, &replica, &world, extra);
    let rails = "guard_rails: {cooldown: 0s, max_attempts: 10}\n";
    runbook(dir.path(), "FAILOVER", "  - id: failover\n    pg_failover: {database: main}\n", rails);
    let catalog = runbook(dir.path(), "PROBE", "  - id: primary\n    pg_select1: {database: main}\n", rails);
    let mut coordinator = start(dir.path(), &world, &catalog, &config).await;

    primary.crash();
    // The replica's recovery is frozen: it answers, but cannot finish a
    // promotion.
    let startup = replica.freeze_recovery().await;
    let id = run_manual(&coordinator, "FAILOVER", false).await;
    // No agent says the primary is down: a person accepts the risk.
    approve(&coordinator, &id, "failover").await;
    let entries = run_end(&coordinator, &id).await;
    let log = show(&entries);
    println!("frozen promotion:\n{log}");
    let result = result_of(&entries, "failover").expect("a failover result");
    assert_eq!(result.details.get("status").map(String::as_str), Some("timed_out"), "{log}");
    assert!(result.message.contains("promotion of db-1 not confirmed"), "{log}");
    assert!(result.message.contains("it may still complete on its own"), "{log}");
    assert!(result.message.contains("nobody fenced"), "what was and was not done is said:\n{log}");
    assert!(world.requests("POST", "/hooks/repoint").is_empty(), "nothing repointed to an unconfirmed primary");

    // A second failover is refused while the first promotion is unconfirmed.
    let id = run_manual(&coordinator, "FAILOVER", false).await;
    let entries = run_end(&coordinator, &id).await;
    let again = result_of(&entries, "failover").expect("a second failover result");
    assert!(again.message.contains("never confirmed"), "{}", show(&entries));
    // A coordinator that never asked for it (this one, restarted, remembers
    // nothing) still sees the promotion under way, on the replica itself.
    coordinator.restart().await;
    let id = run_manual(&coordinator, "FAILOVER", false).await;
    let entries = run_end(&coordinator, &id).await;
    let third = result_of(&entries, "failover").expect("a third failover result");
    assert!(third.message.contains("refused, nothing changed: db-1 is being promoted"), "{}", show(&entries));
    Postgres::thaw_recovery(startup);

    // Thawed, the promotion completes by itself, as the timeline said.
    eventually("db-1 taking writes after the thaw", Duration::from_secs(30), || async {
        let client = remedy_e2e::datastores::connect(replica.addr).await.ok()?;
        client.execute("INSERT INTO orders VALUES (101, 'late')", &[]).await.ok()
    })
    .await;
    let id = run_manual(&coordinator, "PROBE", false).await;
    let entries = run_end(&coordinator, &id).await;
    let probe = result_of(&entries, "primary").expect("a probe result");
    assert_eq!(probe.details.get("evidence.primary").map(String::as_str), Some("db-1"), "{}", show(&entries));
}

/// The primary as the coordinator and one node reach it: through a proxy
/// on the host side of a link to a network namespace, where an agent runs.
/// The proxy can refuse the coordinator alone (a partition between the two)
/// while the node is still served.
struct Partition {
    proxy: FaultProxy,
    agent: Proc,
    /// Held for the test: dropping it deletes the namespace and its link.
    _namespace: Netns,
}

impl Drop for Partition {
    fn drop(&mut self) {
        // The agent goes before its namespace.
        self.agent.kill();
    }
}

const HOST_SIDE: &str = "10.78.0.1";

async fn partition(dir: &Path, primary: &Postgres, grpc_port: u16) -> Partition {
    require_tools();
    let ns = Netns::new("rmd-dp");
    ns.link("rmddph", &format!("{HOST_SIDE}/24"), "10.78.0.2/24");
    let host: IpAddr = HOST_SIDE.parse().expect("an address");
    let proxy = FaultProxy::start_on(SocketAddr::new(host, 0), primary.addr).await;
    let agent = agent_in(&ns, dir, "node-dp", &format!("http://{HOST_SIDE}:{grpc_port}"), 7072);
    Partition { proxy, agent, _namespace: ns }
}

/// An agent for node `node` running in namespace `ns`, dialling the
/// coordinator at `coordinator`, its diagnostics on the namespace's
/// loopback port `diagnostics`.
fn agent_in(ns: &Netns, dir: &Path, node: &str, coordinator: &str, diagnostics: u16) -> Proc {
    let agent_dir = dir.join(node);
    std::fs::create_dir_all(&agent_dir).expect("create the agent's directory");
    let config = agent_dir.join("agent.yaml");
    std::fs::write(&config, "pods: {enabled: false}\nlogs: {enabled: false}\n").expect("write the agent config");
    let args = [
        "netns",
        "exec",
        &ns.0,
        bin("remedy-agent").to_str().expect("a path"),
        "--node-name",
        node,
        "--state-dir",
        agent_dir.join("state").to_str().expect("a path"),
        "--insecure",
        "--coordinator",
        coordinator,
        "--diagnostics-listen",
        &format!("127.0.0.1:{diagnostics}"),
        "--config",
        config.to_str().expect("a path"),
    ]
    .map(str::to_owned)
    .to_vec();
    Proc::spawn_program(&format!("agent {node}"), Path::new("ip"), &args, agent_dir.join("agent.log"))
}

/// Waits until the agents of `nodes` are connected and can check
/// reachability.
async fn agents_connected(coordinator: &remedy_e2e::procs::Coordinator, nodes: &[&str]) {
    let admin = coordinator.admin().await;
    eventually(&format!("the agents of {nodes:?} connected"), Duration::from_secs(30), || {
        let mut admin = admin.clone();
        async move {
            let agents = admin.list_agents(pb::ListAgentsRequest::default()).await.ok()?.into_inner().agents;
            nodes
                .iter()
                .all(|node| {
                    agents
                        .iter()
                        .any(|a| a.node_name == *node && a.connected && a.capabilities.iter().any(|c| c == "reach"))
                })
                .then_some(())
        }
    })
    .await;
}

/// The `evidence.step.NN` lines of a failover result.
fn steps_of(result: &pb::TimelineEntry) -> Vec<String> {
    result.details.iter().filter(|(k, _)| k.starts_with("evidence.step.")).map(|(_, v)| v.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_only_the_coordinator_cannot_reach_is_kept_and_a_restarted_coordinator_still_fences_the_old_one() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut primary = Postgres::primary(dir.path(), "db-0", true).await;
    let replica = Postgres::replica_of(&primary, dir.path(), "db-1").await;
    primary.write_orders(200).await;
    let world = World::start().await;
    let grpc: SocketAddr = format!("0.0.0.0:{}", free_addr().port()).parse().expect("an address");
    let cut = partition(dir.path(), &primary, grpc.port()).await;
    let password_file = pg_password_file(dir.path());
    let config = format!(
        "databases:\n  main:\n    primary: {{name: db-0, host: {HOST_SIDE}, port: {}, user: {COORDINATOR_ROLE}, password_file: {}}}\n\
         \x20   replicas:\n      - {}\n\
         \x20   connect_timeout: 2s\n    fence_watch_interval: 200ms\n    split_brain_check: 300ms\n\
         guard_rails: {{approval: {{kinds: []}}}}\n",
        cut.proxy.addr.port(),
        password_file.display(),
        replica.member_yaml(&password_file),
    );
    let rails = "guard_rails: {cooldown: 0s, max_attempts: 10}\n";
    let catalog = runbook(dir.path(), "FAILOVER", "  - id: failover\n    pg_failover: {database: main}\n", rails);
    let mut coordinator = start_on(dir.path(), &world, &catalog, &config, grpc).await;
    agents_connected(&coordinator, &["node-dp"]).await;

    // Cut between the coordinator and the primary only: the node still
    // reaches it, so the primary is not dead and nothing is promoted.
    cut.proxy.refuse_from(HOST_SIDE.parse().expect("an address"));
    let id = run_manual(&coordinator, "FAILOVER", false).await;
    let entries = run_end(&coordinator, &id).await;
    let log = show(&entries);
    println!("coordinator cut off:\n{log}");
    let refused = result_of(&entries, "failover").expect("a failover result");
    assert_eq!(refused.details.get("status").map(String::as_str), Some("failed"), "{log}");
    assert!(refused.message.contains("refused, nothing changed"), "{log}");
    assert!(refused.message.contains("db-0 does not answer the coordinator but answers from node-dp"), "{log}");
    let steps = steps_of(refused);
    assert!(
        steps.iter().any(|s| s.contains("agents' view: db-0 seen from 1 of 1 nodes: node-dp: reached in")),
        "{steps:?}"
    );
    let standby = replica.client().await;
    let in_recovery: bool = standby.query_one("SELECT pg_is_in_recovery()", &[]).await.expect("ask db-1").get(0);
    assert!(in_recovery, "db-1 was not promoted beside a primary the nodes still use");
    let writable = primary.client().await;
    writable.execute("INSERT INTO orders VALUES (201, 'still the primary')", &[]).await.expect("db-0 takes writes");

    // The primary dies: the node cannot reach it either (the proxy accepts
    // and closes, as a load balancer in front of a dead server does), and
    // the failover goes ahead.
    primary.crash();
    let id = run_manual(&coordinator, "FAILOVER", false).await;
    let entries = run_end(&coordinator, &id).await;
    let log = show(&entries);
    println!("primary down:\n{log}");
    let done = result_of(&entries, "failover").expect("a failover result");
    assert_eq!(done.details.get("status").map(String::as_str), Some("succeeded"), "{log}");
    let steps = steps_of(done);
    assert!(
        steps.iter().any(|s| s.contains("agents' view: db-0 seen from 0 of 1 nodes: node-dp: cannot reach")),
        "{steps:?}"
    );
    let count: i64 = standby.query_one("SELECT count(*) FROM orders", &[]).await.expect("count").get(0);
    assert_eq!(count, 201, "nothing committed before the crash was lost");

    // The coordinator that watched the old primary is gone; a new one knows
    // nothing of the failover. The old primary comes back writable, on the
    // timeline db-1 left: the new coordinator fences it from what the two
    // servers say.
    coordinator.kill();
    coordinator.restart().await;
    cut.proxy.serve_all();
    primary.start().await;
    // Logged once the fence is complete, its sessions ended included.
    eventually("the old primary fenced by the restarted coordinator", Duration::from_secs(30), || async {
        coordinator.log().contains("a member on an older timeline took writes beside the primary: fenced").then_some(())
    })
    .await;
    assert_eq!(read_only_setting(&primary).await.as_deref(), Some("on"), "the old primary is fenced");
    let roles = [("postgres", PG_PASSWORD), (COORDINATOR_ROLE, PG_PASSWORD)];
    let committed = writes_that_commit(&primary, &roles, &["postgres"], &[]).await;
    assert!(committed.is_empty(), "writes committed on the fenced old primary: {committed:?}");
    let new: bool = standby.query_one("SELECT pg_is_in_recovery()", &[]).await.expect("ask db-1").get(0);
    assert!(!new, "db-1 is still the primary");
    standby.execute("INSERT INTO orders VALUES (202, 'after the fence')", &[]).await.expect("db-1 takes writes");
    // People see what the guard did, and a runbook may act on it.
    let admin = coordinator.admin().await;
    let finding = eventually("the split-brain finding", Duration::from_secs(30), || {
        let mut admin = admin.clone();
        async move {
            let request = pb::ListFindingsRequest { kind: "database_split_brain".into(), ..Default::default() };
            let found = admin.list_findings(request).await.ok()?.into_inner().findings;
            found.into_iter().find_map(|f| f.finding)
        }
    })
    .await;
    assert_eq!(finding.target, "database/main", "{finding:?}");
    assert_eq!(finding.labels.get("fenced").map(String::as_str), Some("db-0"), "{finding:?}");
    assert_eq!(finding.labels.get("kept").map(String::as_str), Some("db-1"), "{finding:?}");
}

/// The primary as the network sees it: a proxy listening inside a
/// namespace the test made, forwarding to the primary on the host's
/// loopback. The coordinator (on the host, through the link) and the
/// agents (inside the namespace) reach the primary only there, and
/// nftables in the namespace drop what the test cuts, silently, as a
/// partition does: no reset, no answer. The test and the replica reach the
/// primary directly, so it stays alive and writable whatever is cut.
struct CutNetwork {
    ns: Netns,
    proxy: FaultProxy,
    agents: Vec<Proc>,
}

const CUT_HOST: &str = "10.77.0.1";
const CUT_INNER: &str = "10.77.0.2";
const CUT_TABLE: &str = "rmd_cut";

impl CutNetwork {
    fn new(primary: &Postgres) -> CutNetwork {
        require_tools();
        let ns = Netns::new("rmd-cut");
        ns.link("rmdcuth", &format!("{CUT_HOST}/24"), &format!("{CUT_INNER}/24"));
        let listener = ns.enter(|| std::net::TcpListener::bind((CUT_INNER, 0)).expect("bind in the namespace"));
        let proxy = FaultProxy::from_listener(listener, primary.addr);
        let table = format!(
            "table inet {CUT_TABLE} {{\n  chain input {{ type filter hook input priority 0; policy accept; }}\n}}\n"
        );
        ns.nft(&["-f", "-"], Some(&table));
        CutNetwork { ns, proxy, agents: Vec::new() }
    }

    /// Drops what reaches the primary's address from `from` (every source
    /// when `None`), and nothing else.
    fn cut(&self, from: Option<&str>) {
        self.heal();
        let port = self.proxy.addr.port().to_string();
        let mut rule = vec!["add", "rule", "inet", CUT_TABLE, "input"];
        if let Some(source) = from {
            rule.extend(["ip", "saddr", source]);
        }
        rule.extend(["tcp", "dport", port.as_str(), "drop"]);
        self.ns.nft(&rule, None);
    }

    fn heal(&self) {
        self.ns.nft(&["flush", "chain", "inet", CUT_TABLE, "input"], None);
    }

    /// An agent on node `node`, inside the namespace.
    fn start_agent(&mut self, dir: &Path, node: &str, grpc_port: u16, diagnostics: u16) {
        let agent = agent_in(&self.ns, dir, node, &format!("http://{CUT_HOST}:{grpc_port}"), diagnostics);
        self.agents.push(agent);
    }
}

impl Drop for CutNetwork {
    fn drop(&mut self) {
        // The agents go before their namespace.
        for agent in &mut self.agents {
            agent.kill();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_cut_off_from_the_coordinator_is_never_replaced_on_silence_but_is_once_its_client_nodes_cannot_reach_it()
 {
    let dir = tempfile::tempdir().expect("temp dir");
    // Not synchronous: alone, it keeps committing, as a live primary does.
    let primary = Postgres::primary(dir.path(), "db-0", false).await;
    let replica = Postgres::replica_of(&primary, dir.path(), "db-1").await;
    primary.write_orders(100).await;
    primary.client().await.batch_execute("CREATE DATABASE app").await.expect("create the application's database");
    let world = World::start().await;
    let grpc: SocketAddr = format!("0.0.0.0:{}", free_addr().port()).parse().expect("an address");
    let mut net = CutNetwork::new(&primary);
    let password_file = pg_password_file(dir.path());
    let config = format!(
        "databases:\n  main:\n    primary: {{name: db-0, host: {CUT_INNER}, port: {}, user: {COORDINATOR_ROLE}, \
         password_file: {}}}\n    replicas:\n      - {}\n    connect_timeout: 2s\n    fence_watch_interval: 200ms\n\
         \x20   client_nodes: [node-a, node-b]\nguard_rails: {{approval: {{kinds: []}}}}\n",
        net.proxy.addr.port(),
        password_file.display(),
        replica.member_yaml(&password_file),
    );
    let rails = "guard_rails: {cooldown: 0s, max_attempts: 10}\n";
    let catalog = runbook(dir.path(), "FAILOVER", "  - id: failover\n    pg_failover: {database: main}\n", rails);
    let coordinator = start_on(dir.path(), &world, &catalog, &config, grpc).await;

    // The coordinator alone is cut off from the primary, and no agent is
    // connected: nothing says the primary is down, so even with no approval
    // configured for failovers a person is asked, in plain words.
    net.cut(Some(CUT_HOST));
    let id = run_manual(&coordinator, "FAILOVER", false).await;
    let asked = deny(&coordinator, &id, "failover", "the primary may be alive").await;
    println!("asked: {}", asked.reason);
    assert!(asked.reason.contains(TWO_WRITERS_RISK), "{}", asked.reason);
    assert!(asked.reason.contains("db-0 does not answer the coordinator"), "{}", asked.reason);
    assert!(asked.reason.contains("no verdict from node-a, node-b"), "{}", asked.reason);
    let entries = run_end(&coordinator, &id).await;
    let log = show(&entries);
    println!("cut off, no agent:\n{log}");
    assert!(result_of(&entries, "failover").is_none(), "nothing ran:\n{log}");
    assert!(
        about(&entries, "failover")
            .iter()
            .any(|e| e.kind == "decision" && e.details.get("outcome").map(String::as_str) == Some("refused")),
        "refused once the person said no:\n{log}"
    );
    assert!(in_recovery(&replica).await, "nothing was promoted");
    primary
        .client()
        .await
        .execute("INSERT INTO orders VALUES (101, 'during the cut')", &[])
        .await
        .expect("the primary is alive and takes writes");

    // Agents on the two nodes that run its clients, and the primary cut
    // off from them too: they answer that they cannot reach it, which is
    // evidence, and the failover goes ahead without asking anyone.
    net.start_agent(dir.path(), "node-a", grpc.port(), 7072);
    net.start_agent(dir.path(), "node-b", grpc.port(), 7073);
    agents_connected(&coordinator, &["node-a", "node-b"]).await;
    net.cut(None);
    let id = run_manual(&coordinator, "FAILOVER", false).await;
    let entries = run_end(&coordinator, &id).await;
    let log = show(&entries);
    println!("cut off from everyone:\n{log}");
    let done = result_of(&entries, "failover").expect("a failover result");
    assert_eq!(done.details.get("status").map(String::as_str), Some("succeeded"), "{log}");
    assert_eq!(done.details.get("evidence.old_primary_down").map(String::as_str), Some("nodes_cannot_reach"));
    let steps = steps_of(done);
    assert!(steps.iter().any(|s| s.contains("agents' view: db-0 seen from 0 of 2 nodes")), "{steps:?}");
    assert!(
        steps
            .iter()
            .any(|s| s.contains("db-0 does not answer the coordinator, and cannot be reached from node-a, node-b")),
        "{steps:?}"
    );
    assert!(entries.iter().all(|e| e.kind != "approval"), "nobody was asked:\n{log}");
    assert!(!in_recovery(&replica).await, "db-1 was promoted");
    let count: i64 = replica.client().await.query_one("SELECT count(*) FROM orders", &[]).await.expect("count").get(0);
    assert_eq!(count, 101, "the write made during the cut is on the new primary");

    // Sessions on the old primary opened before it is seen again, as its
    // clients would hold; then the cut heals and the watch fences it.
    let held = primary.client().await;
    let held_app = remedy_e2e::datastores::connect_to(primary.addr, "app").await.expect("a session on app");
    net.heal();
    eventually("the returning old primary fenced, on the timeline", Duration::from_secs(30), || async {
        let entries = timeline(&coordinator, &id).await;
        entries
            .iter()
            .any(|e| e.message.contains("the old primary db-0 came back taking writes: fenced: logins closed"))
            .then_some(())
    })
    .await;
    let roles = [("postgres", PG_PASSWORD), (COORDINATOR_ROLE, PG_PASSWORD)];
    let sessions = [("a session of postgres on postgres", &held), ("a session of postgres on app", &held_app)];
    let committed = writes_that_commit(&primary, &roles, &["postgres", "app"], &sessions).await;
    assert!(committed.is_empty(), "writes committed on the fenced old primary: {committed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_primary_takes_no_write_from_any_session_on_any_database_and_the_promoted_replica_serves_them_all() {
    const APP_PASSWORD: &str = "app-secret";
    let dir = tempfile::tempdir().expect("temp dir");
    let primary = Postgres::primary(dir.path(), "db-0", true).await;
    let replica = Postgres::replica_of(&primary, dir.path(), "db-1").await;
    primary.write_orders(100).await;
    // The application's own role and database, beside the `postgres` one
    // the coordinator connects to.
    let admin_session = primary.client().await;
    admin_session
        .batch_execute(&format!("CREATE ROLE app LOGIN PASSWORD '{APP_PASSWORD}'"))
        .await
        .expect("create the application's role");
    admin_session.batch_execute("CREATE DATABASE app OWNER app").await.expect("create the application's database");
    let app = connect_as(primary.addr, "app", APP_PASSWORD, "app").await.expect("the application connects");
    app.batch_execute("CREATE TABLE accounts (id bigint PRIMARY KEY, note text)").await.expect("create a table");
    app.batch_execute("INSERT INTO accounts VALUES (1, 'before')").await.expect("write");
    // Sessions held when the fence comes: idle, inside a transaction with
    // a write not yet committed, and a superuser that turned read-only off.
    let open_tx = connect_as(primary.addr, "app", APP_PASSWORD, "app").await.expect("connect");
    open_tx.batch_execute("BEGIN; INSERT INTO accounts VALUES (2, 'never committed')").await.expect("write");
    let superuser = primary.client().await;
    superuser.batch_execute("SET default_transaction_read_only = off").await.expect("turn read-only off");

    let world = World::start().await;
    let config = databases(dir.path(), &primary, &replica, &world, "guard_rails: {approval: {kinds: []}}\n");
    let rails = "guard_rails: {cooldown: 0s, max_attempts: 10}\n";
    let catalog = runbook(dir.path(), "FAILOVER", "  - id: failover\n    pg_failover: {database: main}\n", rails);
    let coordinator = start(dir.path(), &world, &catalog, &config).await;

    // The primary answers the coordinator: it is fenced, then the replica
    // promoted. The fence's closed logins and databases reach the replica
    // through replication, and are opened again there.
    let id = run_manual(&coordinator, "FAILOVER", false).await;
    let entries = run_end(&coordinator, &id).await;
    let log = show(&entries);
    println!("fence, then promote:\n{log}");
    let done = result_of(&entries, "failover").expect("a failover result");
    assert_eq!(done.details.get("status").map(String::as_str), Some("succeeded"), "{log}");
    let steps = steps_of(done);
    let fenced = steps.iter().find(|s| s.starts_with("fenced db-0: ")).expect("the fence on the timeline");
    assert!(fenced.contains("logins closed for every role but remedy (NOLOGIN: app, postgres)"), "{fenced}");
    assert!(
        fenced.contains("connections refused to every database: app, postgres (ALLOW_CONNECTIONS false)"),
        "{fenced}"
    );
    assert!(fenced.contains("default_transaction_read_only = on"), "{fenced}");
    assert!(
        steps.iter().any(|s| s.contains(
            "reopened on db-1 what the fence closed and replication carried over: logins of app, postgres; \
             connections to app, postgres"
        )),
        "{steps:?}"
    );

    // On the fenced member, no session commits a write: not a new one of
    // any role on any database, asking for a read-write transaction with
    // read-only turned off, and not one held from before.
    let roles = [("app", APP_PASSWORD), ("postgres", PG_PASSWORD), (COORDINATOR_ROLE, PG_PASSWORD)];
    let sessions = [
        ("the application's idle session", &app),
        ("the application's open transaction", &open_tx),
        ("a superuser session with read-only off", &superuser),
    ];
    let committed = writes_that_commit(&primary, &roles, &["app", "postgres"], &sessions).await;
    assert!(committed.is_empty(), "writes committed on the fenced member: {committed:?}");
    assert_eq!(read_only_setting(&primary).await.as_deref(), Some("on"));

    // The promoted replica serves every role and database, with every
    // committed write and nothing of the transaction the fence ended.
    let roles = [("app", APP_PASSWORD, "app"), ("postgres", PG_PASSWORD, "postgres")];
    for (role, password, database) in roles {
        let client = connect_as(replica.addr, role, password, database)
            .await
            .unwrap_or_else(|e| panic!("{role} on {database} of the new primary: {e}"));
        client
            .batch_execute(DETERMINED_WRITE)
            .await
            .unwrap_or_else(|e| panic!("{role} writes on the new primary: {e}"));
    }
    let app = connect_as(replica.addr, "app", APP_PASSWORD, "app").await.expect("connect");
    let ids: Vec<i64> =
        app.query("SELECT id FROM accounts ORDER BY id", &[]).await.expect("read").iter().map(|r| r.get(0)).collect();
    assert_eq!(ids, vec![1], "committed writes kept, the uncommitted one gone");
}

async fn dbsize(redis: &Redis, db: u32) -> u64 {
    let mut c = redis.connection(db).await;
    redis::cmd("DBSIZE").query_async(&mut c).await.expect("DBSIZE")
}

/// Writes `count` keys named by `name` with MSET, a thousand at a time.
async fn fill(redis: &Redis, db: u32, count: u64, name: impl Fn(u64) -> String) {
    let mut c = redis.connection(db).await;
    let mut i = 0;
    while i < count {
        let mut cmd = redis::cmd("MSET");
        for j in i..(i + 1000).min(count) {
            cmd.arg(name(j)).arg("v");
        }
        let _: () = cmd.query_async(&mut c).await.expect("MSET");
        i += 1000;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_flushes_one_database_deletes_sessions_by_pattern_in_batches_and_warms() {
    let dir = tempfile::tempdir().expect("temp dir");
    let redis = Redis::start(dir.path()).await;
    let world = World::start().await;
    let password_file = dir.path().join("redis-password");
    std::fs::write(&password_file, format!("{REDIS_PASSWORD}\n")).expect("write the password");
    let wrong_file = dir.path().join("wrong-redis-password");
    std::fs::write(&wrong_file, "not-the-password").expect("write a wrong password");
    let config = format!(
        "caches:\n  auth-cache:\n    host: 127.0.0.1\n    port: {port}\n    password_file: {pw}\n    scan_batch: 1000\n\
         \x20   warm_sets:\n      critical: {{db: 2, commands: [[SET, 'config:flags', 'on'], [HSET, 'tenant:1', plan, pro]]}}\n\
         \x20 wrong:\n    host: 127.0.0.1\n    port: {port}\n    password_file: {wrong}\n\
         \x20 gone:\n    host: 127.0.0.1\n    port: {gone}\n    connect_timeout: 1s\n",
        port = redis.addr.port(),
        pw = password_file.display(),
        wrong = wrong_file.display(),
        gone = free_addr().port()
    );
    let rails = "guard_rails: {cooldown: 0s, max_attempts: 10}\n";
    runbook(dir.path(), "FLUSH", "  - id: flush\n    redis_flush: {instance: auth-cache, db: 1}\n", rails);
    runbook(
        dir.path(),
        "SESSIONS",
        "  - id: sessions\n    redis_delete_keys: {instance: auth-cache, db: 3, pattern: 'session:{user}:*', max_keys: 200000}\n",
        rails,
    );
    runbook(
        dir.path(),
        "SCOPED",
        "  - id: sessions\n    redis_delete_keys: {instance: auth-cache, db: 5, pattern: 'session:{user}:*', scoped_to_users: 'alice, bob'}\n",
        rails,
    );
    // A scope rendered from a finding that names no user.
    runbook(
        dir.path(),
        "UNSCOPED",
        "  - id: sessions\n    redis_delete_keys: {instance: auth-cache, db: 6, pattern: 'session:{user}:*', scoped_to_users: ' , '}\n",
        rails,
    );
    runbook(dir.path(), "WARM", "  - id: warm\n    cache_warm: {instance: auth-cache, set: critical}\n", rails);
    let catalog = runbook(
        dir.path(),
        "PINGS",
        "  - id: ok\n    redis_ping: {instance: auth-cache}\n  - id: wrong\n    redis_ping: {instance: wrong}\n\
         \x20 - id: gone\n    redis_ping: {instance: gone}\n",
        rails,
    );
    let coordinator = start(dir.path(), &world, &catalog, &config).await;

    // A flush of database 1 leaves database 0 alone.
    fill(&redis, 0, 500, |i| format!("keep:{i}")).await;
    fill(&redis, 1, 300, |i| format!("auth:{i}")).await;
    let id = run_manual(&coordinator, "FLUSH", false).await;
    let entries = run_end(&coordinator, &id).await;
    let log = show(&entries);
    assert_eq!(status_of(&entries, "flush").as_deref(), Some("succeeded"), "{log}");
    assert_eq!(
        result_of(&entries, "flush").and_then(|e| e.details.get("evidence.keys_before")).map(String::as_str),
        Some("300")
    );
    assert_eq!((dbsize(&redis, 1).await, dbsize(&redis, 0).await), (0, 500), "only database 1 was flushed");

    // 100,000 sessions among keys that look like them: exactly the
    // matching ones go, in batches, while another client keeps working.
    fill(&redis, 3, 100_000, |i| format!("session:u{}:{i}", i % 1000)).await;
    fill(&redis, 3, 1000, |i| format!("session-archive:{i}")).await;
    fill(&redis, 3, 5000, |i| format!("user:{i}")).await;
    fill(&redis, 3, 1, |_| "session:no-user".to_owned()).await;
    let busy = tokio::sync::watch::channel(false);
    let mut other = redis.connection(4).await;
    let mut done = busy.1.clone();
    let bystander = tokio::spawn(async move {
        let (mut ops, mut slowest) = (0u64, Duration::ZERO);
        // Bounded by the deletion: it stops when told, or after 100,000 rounds.
        while !*done.borrow_and_update() && ops < 100_000 {
            let started = std::time::Instant::now();
            let _: () =
                redis::cmd("SET").arg("bystander").arg(ops).query_async(&mut other).await.expect("SET during deletion");
            let back: u64 =
                redis::cmd("GET").arg("bystander").query_async(&mut other).await.expect("GET during deletion");
            assert_eq!(back, ops);
            slowest = slowest.max(started.elapsed());
            ops += 1;
        }
        (ops, slowest)
    });
    let started = std::time::Instant::now();
    let id = run_manual(&coordinator, "SESSIONS", false).await;
    let entries = run_end(&coordinator, &id).await;
    let took = started.elapsed();
    busy.0.send(true).expect("stop the bystander");
    let (ops, slowest) = bystander.await.expect("the bystander ran");
    let log = show(&entries);
    let result = result_of(&entries, "sessions").expect("a deletion result");
    assert_eq!(result.details.get("status").map(String::as_str), Some("succeeded"), "{log}");
    assert_eq!(result.details.get("evidence.deleted").map(String::as_str), Some("100000"), "{log}");
    let batches: u64 = result.details.get("evidence.scanned_batches").and_then(|b| b.parse().ok()).unwrap_or(0);
    assert!(batches > 1, "in batches: {log}");
    assert_eq!(dbsize(&redis, 3).await, 6001, "the look-alikes are all still there");
    let mut c = redis.connection(3).await;
    let (_, left): (u64, Vec<String>) = redis::cmd("SCAN")
        .arg(0)
        .arg("MATCH")
        .arg("session:u1:*")
        .arg("COUNT")
        .arg(100_000)
        .query_async(&mut c)
        .await
        .expect("SCAN");
    assert!(left.is_empty(), "{left:?}");
    assert!(ops > 0, "the other client was served during the deletion");
    println!(
        "deleted 100000 keys in {batches} SCAN batches, run {took:?} end to end; a bystander did {ops} SET+GET rounds, slowest {slowest:?}"
    );

    // Scoped to the users a finding names: only theirs.
    fill(&redis, 5, 60, |i| format!("session:{}:{i}", ["alice", "bob", "carol"][(i % 3) as usize])).await;
    let id = run_manual(&coordinator, "SCOPED", false).await;
    let entries = run_end(&coordinator, &id).await;
    let result = result_of(&entries, "sessions").expect("a scoped result");
    assert_eq!(result.details.get("evidence.deleted").map(String::as_str), Some("40"), "{}", show(&entries));
    assert_eq!(dbsize(&redis, 5).await, 20, "carol's sessions stay");

    // A scope that names nobody is not everybody: nothing is deleted, and
    // the step says why rather than reading as done.
    fill(&redis, 6, 30, |i| format!("session:{}:{i}", ["alice", "bob", "carol"][(i % 3) as usize])).await;
    let id = run_manual(&coordinator, "UNSCOPED", false).await;
    let entries = run_end(&coordinator, &id).await;
    let log = show(&entries);
    let result = result_of(&entries, "sessions").expect("a result for the empty scope");
    assert_ne!(result.details.get("status").map(String::as_str), Some("succeeded"), "{log}");
    assert!(result.message.contains("names no user") && result.message.contains("nothing deleted"), "{log}");
    assert_eq!(dbsize(&redis, 6).await, 30, "every session stays");

    // Warming runs the configured commands.
    let id = run_manual(&coordinator, "WARM", false).await;
    let entries = run_end(&coordinator, &id).await;
    assert_eq!(status_of(&entries, "warm").as_deref(), Some("succeeded"), "{}", show(&entries));
    let mut c = redis.connection(2).await;
    let flags: String = redis::cmd("GET").arg("config:flags").query_async(&mut c).await.expect("GET");
    assert_eq!(flags, "on");

    // PING as evidence; wrong credentials and a server nobody runs say so.
    let id = run_manual(&coordinator, "PINGS", false).await;
    let entries = run_end(&coordinator, &id).await;
    let log = show(&entries);
    assert_eq!(
        result_of(&entries, "ok").and_then(|e| e.details.get("evidence.answer")).map(String::as_str),
        Some("PONG"),
        "{log}"
    );
    let wrong = result_of(&entries, "wrong").expect("a result for wrong credentials");
    assert!(wrong.message.contains("Password authentication failed"), "{log}");
    let gone = result_of(&entries, "gone").expect("a result for the server nobody runs");
    assert_eq!(gone.details.get("status").map(String::as_str), Some("failed"), "{log}");
    assert!(!log.contains(REDIS_PASSWORD) && !log.contains("not-the-password"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_over_tls_as_an_acl_user_and_failed_connections_say_why_without_the_password() {
    const ACL_PASSWORD: &str = "acl-user-secret";
    const WRONG_PASSWORD: &str = "not-the-acl-password";
    let dir = tempfile::tempdir().expect("temp dir");
    let tls = RedisTlsFiles::generate(dir.path(), "cache", &["redis.test", "127.0.0.1"]);
    // The same names from a CA the server never heard of.
    let stranger = RedisTlsFiles::generate(dir.path(), "stranger", &["redis.test"]);
    let user = ["remedy", "on", &format!(">{ACL_PASSWORD}"), "~*", "&*", "+@all"];
    let setup = RedisSetup {
        tls: Some(tls.clone()),
        tls_auth_clients: true,
        users: vec![user.iter().map(|w| (*w).to_owned()).collect()],
    };
    let redis = Redis::start_with(dir.path(), setup).await;
    let world = World::start().await;
    let password_file = dir.path().join("acl-password");
    std::fs::write(&password_file, format!("{ACL_PASSWORD}\n")).expect("write the password");
    let wrong_file = dir.path().join("wrong-acl-password");
    std::fs::write(&wrong_file, WRONG_PASSWORD).expect("write a wrong password");
    let instance = |name: &str, ca: &Path, password: &Path| {
        format!(
            "  {name}:\n    host: 127.0.0.1\n    port: {}\n    username: remedy\n    password_file: {}\n\
             \x20   tls: {{ca: {}, cert: {}, key: {}, server_name: redis.test}}\n",
            redis.addr.port(),
            password.display(),
            ca.display(),
            tls.client.0.display(),
            tls.client.1.display()
        )
    };
    let config = format!(
        "caches:\n{}{}{}",
        instance("secure", &tls.ca, &password_file),
        instance("untrusted", &stranger.ca, &password_file),
        instance("wrong", &tls.ca, &wrong_file)
    );
    let rails = "guard_rails: {cooldown: 0s, max_attempts: 10}\n";
    runbook(dir.path(), "TLS-FLUSH", "  - id: flush\n    redis_flush: {instance: secure, db: 1}\n", rails);
    let catalog = runbook(
        dir.path(),
        "TLS-PINGS",
        "  - id: ok\n    redis_ping: {instance: secure}\n  - id: untrusted\n    redis_ping: {instance: untrusted}\n\
         \x20 - id: wrong\n    redis_ping: {instance: wrong}\n",
        rails,
    );
    let coordinator = start(dir.path(), &world, &catalog, &config).await;

    // Over TLS, as the ACL user: PING answers and a flush of database 1
    // leaves database 0 alone.
    fill(&redis, 0, 200, |i| format!("keep:{i}")).await;
    fill(&redis, 1, 100, |i| format!("auth:{i}")).await;
    let id = run_manual(&coordinator, "TLS-FLUSH", false).await;
    let flush = run_end(&coordinator, &id).await;
    assert_eq!(status_of(&flush, "flush").as_deref(), Some("succeeded"), "{}", show(&flush));
    assert_eq!((dbsize(&redis, 1).await, dbsize(&redis, 0).await), (0, 200), "only database 1 was flushed");

    let id = run_manual(&coordinator, "TLS-PINGS", false).await;
    let pings = run_end(&coordinator, &id).await;
    let log = show(&pings);
    assert_eq!(
        result_of(&pings, "ok").and_then(|e| e.details.get("evidence.answer")).map(String::as_str),
        Some("PONG"),
        "{log}"
    );
    // A server whose certificate the configured CA did not issue.
    let untrusted = result_of(&pings, "untrusted").expect("a result for the untrusted server");
    assert_eq!(untrusted.details.get("status").map(String::as_str), Some("failed"), "{log}");
    assert!(untrusted.message.contains("certificate was not trusted"), "{log}");
    // The right user with the wrong password.
    let wrong = result_of(&pings, "wrong").expect("a result for the wrong password");
    assert_eq!(wrong.details.get("status").map(String::as_str), Some("failed"), "{log}");
    assert!(wrong.message.contains("credentials were refused"), "{log}");

    let everything = format!("{}{log}{}", show(&flush), coordinator.log());
    for secret in [ACL_PASSWORD, WRONG_PASSWORD, REDIS_PASSWORD] {
        assert!(!everything.contains(secret), "a password was printed:\n{everything}");
    }
}
