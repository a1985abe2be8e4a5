//! Escalation end to end inside the coordinator: the seed's P0 chain, its
//! schedules and templates loaded from `deploy/runbooks`, an incident
//! opened by an Alertmanager notification, the real writer and embedded
//! store, the real channels posting to a local world server (one webhook
//! per person, so each page is counted per person; channels the world
//! leaves hanging or answers with 500), and a clock that moves only when
//! the test moves it: minutes pass at once.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use remedy_coordinator::actuators::notify::NotifyActuator;
use remedy_coordinator::actuators::{ActionCall, ActionStatus, Actuator};
use remedy_coordinator::channels::{ChannelConfig, Channels};
use remedy_coordinator::escalator::{Clock, Directory, Escalator, ManualClock};
use remedy_coordinator::metrics::{Metrics, NotificationLabels};
use remedy_coordinator::recorder::{EscalationUpdate, Recorder, RunUpdate};
use remedy_coordinator::store::Store;
use remedy_coordinator::store::embedded::EmbeddedStore;
use remedy_coordinator::{alertmanager, runbooks};
use remedy_e2e::procs::eventually;
use remedy_e2e::runs::SEED_PEOPLE;
use remedy_e2e::world::{World, alert_payload};
use remedy_shared::Timestamp;
use remedy_shared::escalation::Progress;
use remedy_shared::incident::{Incident, IncidentId, IncidentState, TimelineEntry};
use remedy_shared::run::Catalog;
use remedy_shared::runbook::ActionCatalog;
use tokio::sync::watch;

const MINUTE: Duration = Duration::from_secs(60);

/// The seed's policies, schedules and templates, and a P0 runbook that
/// pages when its incident opens.
fn catalog_dir(dir: &Path) -> PathBuf {
    let seed = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/runbooks");
    let target = dir.join("catalog");
    std::fs::create_dir_all(&target).expect("catalog dir");
    for entry in std::fs::read_dir(&seed).expect("deploy/runbooks") {
        let path = entry.expect("entry").path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_owned();
        if ["escalation-", "oncall-", "comms-"].iter().any(|p| name.starts_with(p)) {
            std::fs::copy(&path, target.join(&name)).expect("copy a catalog file");
        }
    }
    let runbook = "apiVersion: remedy.dev/v1\nkind: Runbook\n\
                   metadata: {id: P0-TEST, title: Test platform outage, tags: [total_outage]}\n\
                   priority: P0\nmttr_target: 2h\ntriggers: {alerts: [{name: TestPlatformDown}]}\n\
                   steps: [{id: look, probe_http: {url: 'http://127.0.0.1:9/health'}}]\n\
                   escalation: {policy: p0-chain, page_on_open: true}\n";
    std::fs::write(target.join("p0-test.yaml"), runbook).expect("write the runbook");
    // Two more, each paging on open through a policy of its own: one level
    // telling two people at once; a third person, then the CTO a minute on.
    for (id, alert, policy, levels) in [
        (
            "FANOUT-TEST",
            FANOUT_ALERT,
            "fanout",
            // The next level 2 s on: the flaky-person's failing channel
            // gets half of that before their fallback is tried.
            "[{name: both, after: 0m, notify: [{person: hung-person}, {person: flaky-person}]}, \
              {name: next, after: 2s, notify: [{person: ceo}]}]",
        ),
        (
            "OTHER-TEST",
            OTHER_ALERT,
            "other",
            "[{name: third, after: 0m, notify: [{person: third-person}]}, {name: cto, after: 1m, notify: [{person: cto}]}]",
        ),
        (
            "PUBLIC-TEST",
            PUBLIC_ALERT,
            "public",
            "[{name: third, after: 0m, notify: [{person: third-person}]}]\n\
             updates: {template: customer-notification, channels: [public-page, customer-notifications], every: 30m}",
        ),
        // A pager that is down for a while, and a person whose first
        // channel stays down: the next level is two minutes on.
        (
            "OUTAGE-TEST",
            OUTAGE_ALERT,
            "outage",
            "[{name: first, after: 0m, notify: [{person: outage-person}, {person: fallback-person}]}, \
              {name: second, after: 2m, notify: [{person: cto}]}]",
        ),
        // A person nobody can reach; the next level is 20 s on.
        (
            "UNREACHED-TEST",
            UNREACHED_ALERT,
            "unreached",
            "[{name: first, after: 0m, notify: [{person: unreachable-person}]}, \
              {name: second, after: 20s, notify: [{person: engineering-manager}]}]",
        ),
    ] {
        let runbook = format!(
            "apiVersion: remedy.dev/v1\nkind: Runbook\nmetadata: {{id: {id}, title: {id}}}\n\
             priority: P0\nmttr_target: 2h\ntriggers: {{alerts: [{{name: {alert}}}]}}\n\
             steps: [{{id: look, probe_http: {{url: 'http://127.0.0.1:9/health'}}}}]\n\
             escalation: {{policy: {policy}, page_on_open: true}}\n"
        );
        std::fs::write(target.join(format!("{policy}-test.yaml")), runbook).expect("write the runbook");
        let levels = format!(
            "apiVersion: remedy.dev/v1\nkind: EscalationPolicy\nmetadata: {{id: {policy}}}\nlevels: {levels}\n"
        );
        std::fs::write(target.join(format!("escalation-{policy}.yaml")), levels).expect("write the policy");
    }
    target
}

/// The alerts that open the fan-out and the other incident.
const FANOUT_ALERT: &str = "TestFanoutDown";
const OTHER_ALERT: &str = "TestOtherDown";
/// The alert whose policy keeps the public status page updated.
const PUBLIC_ALERT: &str = "TestPublicDown";
/// The alerts whose pages meet a pager outage, and nobody reachable.
const OUTAGE_ALERT: &str = "TestOutageDown";
const UNREACHED_ALERT: &str = "TestUnreachedDown";

/// How long the `outage-pager` channel's service answers 500.
const PAGER_OUTAGE: Duration = Duration::from_secs(60);

/// Where the `public-page` Statuspage channel's incidents are, on the world.
const PUBLIC_INCIDENTS: &str = "/statuspage/pages/page1/incidents";

/// How long the `hangs` channel holds a delivery before it gives up: the
/// world never answers it, so each of its 3 attempts runs into its 5 s
/// timeout.
const HUNG_FOR: Duration = Duration::from_secs(15);

/// Every person of the seed catalog has a webhook of their own
/// (`/hooks/<name>`); the updates' channels post to theirs.
fn channels(world: &World, dir: &Path) -> (Channels, BTreeMap<String, remedy_shared::escalation::Person>) {
    let mut text = String::new();
    let mut people = BTreeMap::new();
    let secret = remedy_e2e::runs::webhook_secret(dir);
    let retries = format!("secret_file: '{}', retries: {{attempts: 2, initial: 10ms, max: 20ms}}", secret.display());
    for person in SEED_PEOPLE {
        text.push_str(&format!("page-{person}: {{type: webhook, url: '{}/hooks/{person}', {retries}}}\n", world.url()));
        people.insert(
            (*person).to_owned(),
            remedy_shared::escalation::Person { email: None, notify: vec![format!("page-{person}")] },
        );
    }
    // The site's customer notification service reads only what is
    // written for customers.
    for (channel, audience) in
        [("status-page", "internal"), ("customer-notifications", "customers"), ("security-slack", "internal")]
    {
        text.push_str(&format!(
            "{channel}: {{type: webhook, url: '{}/hooks/{channel}', audience: {audience}, {retries}}}\n",
            world.url()
        ));
    }
    // A pager down for a while (PagerDuty answering 500), retried with
    // the defaults' shape but faster; and one down for good.
    let patient = "retries: {attempts: 3, initial: 1s, max: 4s}";
    text.push_str(&format!(
        "outage-pager: {{type: webhook, url: '{}/outage/outage-person', secret_file: '{}', {patient}}}\n",
        world.url(),
        secret.display()
    ));
    text.push_str(&format!(
        "down-pager: {{type: webhook, url: '{}/fail/down', secret_file: '{}', {patient}}}\n",
        world.url(),
        secret.display()
    ));
    // Channels that fail: one the world holds open without ever answering
    // (`/hang/`), one it answers with 500 (`/fail/`). The hung-person has
    // only the first; the flaky-person falls back from the second to a
    // webhook of their own, as the third-person has.
    text.push_str(&format!(
        "hangs: {{type: webhook, url: '{}/hang/hung-person', timeout: 5s, secret_file: '{}', \
         retries: {{attempts: 3, initial: 10ms, max: 20ms}}}}\n",
        world.url(),
        secret.display()
    ));
    text.push_str(&format!("fails: {{type: webhook, url: '{}/fail/flaky-person', {retries}}}\n", world.url()));
    for person in ["flaky-person", "third-person", "fallback-person"] {
        text.push_str(&format!("page-{person}: {{type: webhook, url: '{}/hooks/{person}', {retries}}}\n", world.url()));
    }
    for (person, notify) in [
        ("hung-person", &["hangs"][..]),
        ("flaky-person", &["fails", "page-flaky-person"]),
        ("third-person", &["page-third-person"]),
        ("outage-person", &["outage-pager"]),
        ("fallback-person", &["down-pager", "page-fallback-person"]),
        ("unreachable-person", &["down-pager"]),
    ] {
        let notify = notify.iter().map(|c| (*c).to_owned()).collect();
        people.insert(person.to_owned(), remedy_shared::escalation::Person { email: None, notify });
    }
    // A Statuspage page played by the world: a POST opens an incident, a
    // PATCH updates it.
    let key = dir.join("statuspage-key");
    std::fs::write(&key, "statuspage-test-key").expect("write the Statuspage key");
    text.push_str(&format!(
        "public-page: {{type: statuspage, api_base: '{}/statuspage', page_id: page1, api_key_file: '{}', \
         components: {{api: cmp1}}, retries: {{attempts: 2, initial: 10ms, max: 20ms}}}}\n",
        world.url(),
        key.display()
    ));
    let config: BTreeMap<String, ChannelConfig> =
        remedy_shared::config::parse_yaml("channels", &text).expect("the channels parse");
    (Channels::from_config("channels", &config).expect("the channels build"), people)
}

struct Rig {
    world: World,
    dir: tempfile::TempDir,
    clock: Arc<ManualClock>,
    catalog: Arc<Catalog>,
    directory: Arc<Directory>,
    channels: Channels,
}

/// A running writer and escalator over the rig's store.
struct Running {
    recorder: Recorder,
    store: Arc<dyn Store>,
    metrics: Metrics,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Rig {
    async fn new() -> Rig {
        let world = World::start().await;
        let dir = tempfile::tempdir().expect("temp dir");
        let loaded = runbooks::load_dir(&catalog_dir(dir.path()), &ActionCatalog::this_release()).expect("catalog");
        let (channels, people) = channels(&world, dir.path());
        let directory = Directory {
            policies: loaded.policies,
            schedules: loaded.schedules,
            templates: loaded.templates,
            people,
            links: Default::default(),
        };
        let catalog = Arc::new(Catalog::new(loaded.runbooks.into_iter().map(|l| l.runbook).collect()));
        let clock = ManualClock::new(Timestamp::from_millis(now_ms()));
        Rig { world, dir, clock, catalog, directory: Arc::new(directory), channels }
    }

    /// The writer alone, over the rig's store: what the escalator commits
    /// through, without the escalator.
    fn writer(&self) -> (Recorder, Arc<dyn Store>, Metrics) {
        let store: Arc<dyn Store> = Arc::new(open_store(&self.dir.path().join("data")));
        let metrics = Metrics::new();
        let clock = Clock::Manual(self.clock.clone());
        let (recorder, _runs, _guard) =
            Recorder::start_with_clock(store.clone(), metrics.clone(), self.catalog.clone(), clock)
                .expect("start the writer");
        (recorder, store, metrics)
    }

    fn start(&self) -> Running {
        let (recorder, store, metrics) = self.writer();
        let clock = Clock::Manual(self.clock.clone());
        let escalator = Escalator::new(
            recorder.clone(),
            store.clone(),
            self.channels.clone(),
            self.directory.clone(),
            clock,
            metrics.clone(),
        );
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(escalator.run(async move {
            let _ = stopped.wait_for(|s| *s).await;
        }));
        Running { recorder, store, metrics, stop, task }
    }

    /// Who a schedule names now.
    fn on_call(&self, schedule: &str) -> String {
        self.directory.schedules[schedule].on_call(self.clock.now()).expect("somebody is on call")
    }

    fn pages(&self, person: &str) -> Vec<serde_json::Value> {
        self.world
            .requests("POST", &format!("/hooks/{person}"))
            .iter()
            .map(|r| serde_json::from_str(&r.body).expect("a JSON page"))
            .collect()
    }

    async fn wait_pages(&self, person: &str, n: usize) -> Vec<serde_json::Value> {
        self.world.wait_for("POST", &format!("/hooks/{person}"), n).await;
        self.pages(person)
    }
}

impl Running {
    /// Fires `TestPlatformDown`; returns the incident it opened.
    async fn open_incident(&self) -> IncidentId {
        fire(&self.recorder, self.store.as_ref()).await
    }

    /// Fires `alert`; returns the incident `runbook` opened for it.
    async fn open(&self, alert: &str, runbook: &str) -> IncidentId {
        fire_alert(&self.recorder, self.store.as_ref(), alert, runbook).await
    }

    /// Deliveries to `channel` that came to `outcome`, as `/metrics` counts them.
    fn deliveries(&self, channel: &str, outcome: &str) -> u64 {
        let labels = NotificationLabels { channel: channel.to_owned(), outcome: outcome.to_owned() };
        self.metrics.notifications.get_or_create(&labels).get()
    }

    /// The incident and its timeline, as committed.
    fn incident(&self, id: IncidentId) -> (Incident, Vec<TimelineEntry>) {
        self.store.get_incident(id).expect("read the store").expect("the incident exists")
    }

    /// Stops the escalator and the writer, as a coordinator that exits.
    async fn stop(self) {
        let _ = self.stop.send(true);
        self.task.await.expect("the escalator ends");
    }
}

/// Fires `TestPlatformDown` through `recorder`; returns the incident it
/// opened.
async fn fire(recorder: &Recorder, store: &dyn Store) -> IncidentId {
    fire_alert(recorder, store, "TestPlatformDown", "P0-TEST").await
}

/// Fires `alert` through `recorder`; returns the incident `runbook` opened.
async fn fire_alert(recorder: &Recorder, store: &dyn Store, alert: &str, runbook: &str) -> IncidentId {
    fire_alert_since(recorder, store, alert, runbook, Timestamp::from_millis(now_ms())).await
}

/// Fires `alert`, firing since `starts`; returns the incident `runbook` opened.
async fn fire_alert_since(
    recorder: &Recorder,
    store: &dyn Store,
    alert: &str,
    runbook: &str,
    starts: Timestamp,
) -> IncidentId {
    let starts = starts.to_string();
    let payload = alert_payload(alert, &[("severity", "critical")], "firing", &starts);
    let alerts = alertmanager::parse(payload.as_bytes()).expect("a valid payload");
    recorder.alerts(alerts).await.expect("the alert is recorded");
    let open = store.list_incidents(false, 10).expect("list incidents");
    open.iter().find(|i| i.runbook.as_deref() == Some(runbook)).map(|i| i.id).expect("the incident opened")
}

/// The embedded store, once the previous writer let go of its file.
fn open_store(dir: &Path) -> EmbeddedStore {
    let mut last = None;
    for _ in 0..200 {
        match EmbeddedStore::open(dir) {
            Ok(store) => return store,
            Err(e) => last = Some(e),
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("the store did not open: {last:?}");
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_p0_chain_is_walked_level_by_level_as_the_clock_moves() {
    let rig = Rig::new().await;
    let running = rig.start();
    let (primary, secondary) = (rig.on_call("primary"), rig.on_call("secondary"));
    assert_ne!(primary, secondary, "the seed schedules name different people at once");
    let id = running.open_incident().await;

    // 0 min: the primary on-call, written with the seed's P0 notice.
    let page = &rig.wait_pages(&primary, 1).await[0];
    let text = page.to_string();
    assert!(text.contains(&id.to_string()), "{text}");
    assert!(text.contains("[P0 INCIDENT]"), "the p0-internal template wrote it: {text}");
    assert!(rig.pages(&secondary).is_empty(), "the secondary waits its 2 minutes");

    // 2, 5, 10 and 15 minutes: each level in turn, the CEO because the
    // incident is a total outage (customer-impacting).
    for (minutes, who) in [(2, secondary.as_str()), (3, "engineering-manager"), (5, "cto"), (5, "ceo")] {
        rig.clock.advance(MINUTE * minutes);
        rig.wait_pages(who, 1).await;
    }
    for who in [primary.as_str(), secondary.as_str(), "engineering-manager", "cto", "ceo"] {
        assert_eq!(rig.pages(who).len(), 1, "{who} was told exactly once");
    }
    // 30 minutes: the customers and the status page hear an update.
    rig.clock.advance(MINUTE * 15);
    let update = rig.world.wait_for("POST", "/hooks/customer-notifications", 1).await;
    assert!(update[0].body.contains(&id.to_string()), "{}", update[0].body);
    assert_eq!(rig.world.wait_for("POST", "/hooks/status-page", 1).await.len(), 1);
    let (incident, timeline) = running.incident(id);
    assert_eq!(incident.escalation.as_ref().map(|p| p.told), Some(5), "{incident:?}");
    let told: Vec<&str> =
        timeline.iter().filter(|e| e.kind.as_str() == "notified").map(|e| e.message.as_str()).collect();
    assert!(told.iter().any(|m| m.contains("told ceo (CEO")), "{told:#?}");
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledgement_stops_the_climb_and_the_resolution_is_told_to_every_channel() {
    let rig = Rig::new().await;
    let running = rig.start();
    let (primary, secondary) = (rig.on_call("primary"), rig.on_call("secondary"));
    let id = running.open_incident().await;
    rig.wait_pages(&primary, 1).await;
    rig.clock.advance(MINUTE);
    let incident = running.recorder.acknowledge(id, "user:alice".into()).await.expect("acknowledge");
    assert_eq!(incident.state, IncidentState::Acknowledged);
    // The primary's channel hears of the acknowledgement.
    let pages = rig.wait_pages(&primary, 2).await;
    assert_eq!(pages[1]["event"], "acknowledge", "{:?}", pages[1]);
    // Half an hour on, still acknowledged: the update to customers goes
    // out (so the escalator looked at the incident at minute 30), and
    // nobody above the primary was called.
    rig.clock.advance(MINUTE * 29);
    rig.world.wait_for("POST", "/hooks/customer-notifications", 1).await;
    assert!(rig.pages(&secondary).is_empty(), "an acknowledged incident climbs no further");
    assert!(rig.pages("engineering-manager").is_empty());

    // The resolution: every channel told hears of it once, and the
    // customers get the last update.
    running.recorder.resolve(id, "user:alice".into(), "fixed".into()).await.expect("resolve");
    let pages = rig.wait_pages(&primary, 3).await;
    assert_eq!(pages[2]["event"], "resolve", "{:?}", pages[2]);
    rig.world.wait_for("POST", "/hooks/customer-notifications", 2).await;
    assert_eq!(rig.pages(&primary).len(), 3, "page, acknowledgement, resolution");
    assert!(rig.pages(&secondary).is_empty() && rig.pages("engineering-manager").is_empty());
    // The deliveries are committed together once the last is done.
    let timeline = eventually("the resolution's deliveries to be recorded", Duration::from_secs(10), || async {
        let (incident, timeline) = running.incident(id);
        incident.escalation.as_ref().is_some_and(|p| p.resolution_told).then_some(timeline)
    })
    .await;
    assert!(timeline.iter().any(|e| e.message.contains("told the incident is resolved")), "{timeline:#?}");
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_mid_climb_resumes_at_the_right_level_without_telling_anyone_twice() {
    let rig = Rig::new().await;
    let running = rig.start();
    let (primary, secondary) = (rig.on_call("primary"), rig.on_call("secondary"));
    let id = running.open_incident().await;
    rig.wait_pages(&primary, 1).await;
    rig.clock.advance(MINUTE * 2);
    rig.wait_pages(&secondary, 1).await;
    // Wait until the secondary's page is committed, then stop everything.
    eventually("the second level to be recorded", Duration::from_secs(10), || async {
        let (incident, _) = running.incident(id);
        (incident.escalation.as_ref().map(|p| p.told) == Some(2)).then_some(())
    })
    .await;
    running.stop().await;

    // Down for three minutes: the engineering manager came due meanwhile.
    rig.clock.advance(MINUTE * 3);
    let running = rig.start();
    rig.wait_pages("engineering-manager", 1).await;
    rig.clock.advance(MINUTE * 5);
    rig.wait_pages("cto", 1).await;
    assert_eq!(rig.pages(&primary).len(), 1, "the primary was not told again");
    assert_eq!(rig.pages(&secondary).len(), 1, "the secondary was not told again");
    assert_eq!(rig.pages("engineering-manager").len(), 1);
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_arrives_while_the_escalator_delivers_survives_its_commit() {
    let rig = Rig::new().await;
    let (recorder, store, _) = rig.writer();
    let id = fire(&recorder, store.as_ref()).await;
    // What the escalator read before it started telling the first level.
    let seen = store.get_incident(id).expect("read").expect("exists").0.escalation.expect("page on open");
    // Meanwhile a person acknowledges and automation gives up.
    recorder.acknowledge(id, "user:alice".into()).await.expect("acknowledge");
    let gave_up = RunUpdate {
        incident: Some(id),
        escalate: Some(("p0-chain".into(), "verification did not pass".into())),
        ..RunUpdate::default()
    };
    recorder.run_update(gave_up).await.expect("escalate");
    // The escalator commits what it did from what it had read.
    let told = Progress { told: 1, ..seen.clone() };
    let update = EscalationUpdate {
        id,
        seen_hold: seen.held_since,
        seen_news: seen.news.clone(),
        progress: told,
        entries: Vec::new(),
        state: Some(IncidentState::Escalated),
    };
    recorder.escalation_update(update).await.expect("commit the progress");
    let (incident, _) = store.get_incident(id).expect("read").expect("exists");
    let progress = incident.escalation.expect("progress");
    assert_eq!(progress.told, 1, "the escalator's progress is kept");
    assert_eq!(progress.held_by.as_deref(), Some("user:alice"), "the acknowledgement keeps its hold");
    assert_eq!(incident.state, IncidentState::Acknowledged, "and the state it set");
    assert_eq!(progress.news.as_deref(), Some("verification did not pass"), "the news is still to be sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_channel_holds_up_no_other_page_and_failed_deliveries_are_recorded_as_failed() {
    // Every page that can go out must arrive within this of its level
    // coming due: a small fraction of the time the hung channel holds its
    // delivery, so a page queued behind that delivery cannot make it.
    const PROMPTLY: Duration = Duration::from_secs(3);
    assert!(PROMPTLY * 4 < HUNG_FOR);
    let rig = Rig::new().await;
    let running = rig.start();

    // The fan-out's only level comes due as it opens: the hung-person's
    // channel hangs, the flaky-person's first channel answers 500. At the
    // same moment another incident pages the third-person.
    let due = tokio::time::Instant::now();
    let fanout = running.open(FANOUT_ALERT, "FANOUT-TEST").await;
    let other = running.open(OTHER_ALERT, "OTHER-TEST").await;
    assert_ne!(fanout, other);
    let deadline = due + PROMPTLY;
    for (who, hook) in [("the flaky-person", "/hooks/flaky-person"), ("the third-person", "/hooks/third-person")] {
        let arrived = tokio::time::timeout_at(deadline, rig.world.wait_for("POST", hook, 1)).await;
        assert!(arrived.is_ok(), "{who}'s page did not arrive within {PROMPTLY:?} of its level coming due");
    }
    for (person, incident) in [("flaky-person", fanout), ("third-person", other)] {
        let page = &rig.pages(person)[0];
        assert_eq!(page["event"], "trigger", "{page}");
        assert_eq!(page["incident_id"], incident.to_string(), "{page}");
    }
    // Both failing channels were really tried.
    assert!(rig.world.requests("POST", "/fail/flaky-person").len() >= 2, "the 500 was retried");
    rig.world.wait_for("POST", "/hang/hung-person", 1).await;
    // The other incident's level was committed meanwhile, and its next
    // level goes out when the clock reaches it, hung channel or not.
    eventually("the other incident's level to be recorded", Duration::from_secs(10), || async {
        let (incident, _) = running.incident(other);
        (incident.escalation.as_ref().map(|p| p.told) == Some(1)).then_some(())
    })
    .await;
    rig.clock.advance(MINUTE);
    let deadline = tokio::time::Instant::now() + PROMPTLY;
    let arrived = tokio::time::timeout_at(deadline, rig.world.wait_for("POST", "/hooks/cto", 1)).await;
    assert!(arrived.is_ok(), "the other incident's second level did not arrive within {PROMPTLY:?} of coming due");
    assert_eq!(rig.pages("cto")[0]["incident_id"], other.to_string());

    // Once the hung delivery gives up, the level is committed with every
    // delivery: the failed ones as failed, never as told.
    // (The minute that passed made the fan-out's next level due too: it is
    // told once this level is recorded.)
    let timeline = eventually("the fan-out's level to be recorded", HUNG_FOR * 4, || async {
        let (incident, timeline) = running.incident(fanout);
        incident.escalation.as_ref().is_some_and(|p| p.told >= 1).then_some(timeline)
    })
    .await;
    let notified: Vec<&TimelineEntry> = timeline.iter().filter(|e| e.kind.as_str() == "notified").collect();
    let about = |who: &str| {
        let found: Vec<&&TimelineEntry> =
            notified.iter().filter(|e| e.details.get("who").map(String::as_str) == Some(who)).collect();
        assert_eq!(found.len(), 1, "one entry for {who}: {notified:#?}");
        *found[0]
    };
    let hung = about("hung-person");
    assert_eq!(hung.details.get("outcome").map(String::as_str), Some("failed"), "{hung:?}");
    assert!(hung.message.starts_with("could not tell hung-person"), "{}", hung.message);
    assert!(hung.message.contains("hangs failed: no answer within 5s"), "{}", hung.message);
    let flaky = about("flaky-person");
    assert_eq!(flaky.details.get("outcome").map(String::as_str), Some("told"), "{flaky:?}");
    assert!(flaky.message.contains("through page-flaky-person"), "{}", flaky.message);
    assert!(
        flaky.message.contains("fails failed: HTTP 500"),
        "the failed channel is on the timeline: {}",
        flaky.message
    );
    assert!(notified.iter().all(|e| !e.message.contains("told hung-person")), "{notified:#?}");
    let progress = running.incident(fanout).0.escalation.expect("progress");
    assert!(!progress.channels.contains_key("hangs") && !progress.channels.contains_key("fails"), "{progress:?}");
    // And counted: one failed delivery on each failing channel.
    assert_eq!(running.deliveries("hangs", "failed"), 1);
    assert_eq!(running.deliveries("fails", "failed"), 1);
    assert_eq!(running.deliveries("page-flaky-person", "delivered"), 1);
    assert_eq!(running.deliveries("page-third-person", "delivered"), 1);
    running.stop().await;
}

/// The P0-001 story on the public page: the runbook's status page step
/// opens the Statuspage incident; the policy's updates (after a restart),
/// another run of the step and the resolution all continue that same
/// incident, and the last message resolves it. What people read as the
/// start is when the alert began, not when Remedy heard of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_status_page_incident_per_incident_from_the_first_step_to_the_resolution() {
    let rig = Rig::new().await;
    let running = rig.start();
    // Firing for ten minutes (whole seconds, as templates show) before
    // Remedy heard of it.
    let starts = Timestamp::from_millis((now_ms() / 1000 - 600) * 1000);
    let id = fire_alert_since(&running.recorder, running.store.as_ref(), PUBLIC_ALERT, "PUBLIC-TEST", starts).await;
    let (incident, _) = running.incident(id);
    assert_eq!(incident.started(), starts, "the incident started when the alert did");
    assert!(incident.opened_at > starts);

    // P0-001's `status_page` step, as the engine calls it.
    let step = NotifyActuator::new(rig.channels.clone()).with_recorder(running.recorder.clone());
    let call = ActionCall {
        incident_id: id.to_string(),
        step_id: "status_page".into(),
        kind: "notify".into(),
        params: serde_json::json!({"channel": "public-page", "title": "Major Outage", "message": "We are on it."}),
        dry_run: false,
        deadline: Duration::from_secs(30),
        accepted_risk: None,
    };
    let report = step.execute(&call).await;
    assert_eq!(report.status, ActionStatus::Succeeded, "{report:?}");
    let created = rig.world.requests("POST", PUBLIC_INCIDENTS);
    assert_eq!(created.len(), 1, "{created:?}");
    let opened: serde_json::Value = serde_json::from_str(&created[0].body).expect("a JSON incident");
    assert_eq!(opened["incident"]["components"]["cmp1"], "major_outage", "{opened}");
    let public = eventually("the public incident's id to be kept", Duration::from_secs(10), || async {
        running.incident(id).0.conversation("public-page").map(str::to_owned)
    })
    .await;
    let one = format!("{PUBLIC_INCIDENTS}/{public}");
    drop(step);

    // A coordinator restart: the update half an hour on continues the
    // incident the step opened, and shows when the alert began.
    running.stop().await;
    let running = rig.start();
    rig.clock.advance(MINUTE * 30);
    let patches = rig.world.wait_for("PATCH", PUBLIC_INCIDENTS, 1).await;
    assert_eq!(patches[0].path, one);
    let start_time = starts.to_string().replace(".000Z", "Z");
    assert!(patches[0].body.contains(&format!("START TIME: {start_time}")), "{}", patches[0].body);

    // The step runs again (a second run of the runbook): the same incident.
    let step = NotifyActuator::new(rig.channels.clone()).with_recorder(running.recorder.clone());
    assert_eq!(step.execute(&call).await.status, ActionStatus::Succeeded);
    drop(step);
    rig.world.wait_for("PATCH", PUBLIC_INCIDENTS, 2).await;

    // The resolution closes it.
    running.recorder.resolve(id, "user:alice".into(), "fixed".into()).await.expect("resolve");
    eventually("the resolution to be told", Duration::from_secs(10), || async {
        running.incident(id).0.escalation.as_ref().is_some_and(|p| p.resolution_told).then_some(())
    })
    .await;
    assert_eq!(rig.world.requests("POST", PUBLIC_INCIDENTS).len(), 1, "never a second public incident");
    let patches = rig.world.requests("PATCH", PUBLIC_INCIDENTS);
    assert!(patches.len() >= 3, "{patches:?}");
    assert!(patches.iter().all(|p| p.path == one), "{patches:?}");
    let last: serde_json::Value = serde_json::from_str(&patches[patches.len() - 1].body).expect("a JSON update");
    assert_eq!(last["incident"]["status"], "resolved", "{last}");
    assert_eq!(last["incident"]["components"]["cmp1"], "operational", "{last}");
    running.stop().await;
}

/// PagerDuty answering 500 for a minute: the page is retried past the
/// channel's three attempts and arrives once when the service is back,
/// before the next level is due; a person whose first channel stays down
/// hears through their next one within the level's time, and the
/// timeline says so. The manual clock stands still: a level's time is
/// spent on tokio's clock, as the deliveries' own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pager_down_for_a_minute_still_gets_the_page_and_a_pager_down_for_good_falls_back_within_the_level() {
    let rig = Rig::new().await;
    let running = rig.start();
    rig.world.outage_until(tokio::time::Instant::now() + PAGER_OUTAGE);
    let opened = tokio::time::Instant::now();
    let id = running.open(OUTAGE_ALERT, "OUTAGE-TEST").await;
    // The second level is due two minutes after the first.
    let level_deadline = opened + MINUTE * 2;

    let fell_back =
        tokio::time::timeout_at(level_deadline, rig.world.wait_for("POST", "/hooks/fallback-person", 1)).await;
    assert!(fell_back.is_ok(), "the fallback-person was not told through their next channel within the level's time");
    let timeline = tokio::time::timeout_at(
        level_deadline,
        eventually("the first level to be recorded", MINUTE * 3, || async {
            let (incident, timeline) = running.incident(id);
            (incident.escalation.as_ref().map(|p| p.told) == Some(1)).then_some(timeline)
        }),
    )
    .await
    .expect("the first level was recorded before the second came due");
    let about = |who: &str| {
        let found: Vec<&TimelineEntry> =
            timeline.iter().filter(|e| e.details.get("who").map(String::as_str) == Some(who)).collect();
        assert_eq!(found.len(), 1, "one entry for {who}: {timeline:#?}");
        found[0].clone()
    };

    // The pager came back: one page through it, none through the fallback.
    let outage = about("outage-person");
    assert_eq!(outage.details.get("outcome").map(String::as_str), Some("told"), "{outage:?}");
    assert!(outage.message.contains("through outage-pager: outage-pager: HTTP 202"), "{}", outage.message);
    assert_eq!(outage.details.get("via").map(String::as_str), Some("person outage-person"), "{outage:?}");
    let tries = rig.world.requests("POST", "/outage/outage-person").len();
    assert!(tries > 3, "retried past the configured 3 attempts while the level had time: {tries}");
    assert!(outage.message.contains(&format!("({tries} attempts)")), "each attempt counted: {}", outage.message);
    assert_eq!(running.deliveries("outage-pager", "delivered"), 1, "delivered once");

    // The pager that stayed down: given up when its share of the level's
    // time was spent, then the next channel.
    let fallback = about("fallback-person");
    assert_eq!(fallback.details.get("outcome").map(String::as_str), Some("told"), "{fallback:?}");
    assert!(fallback.message.contains("through page-fallback-person"), "{}", fallback.message);
    assert!(fallback.message.contains("down-pager failed: HTTP 500"), "{}", fallback.message);
    assert!(fallback.message.contains("its time was up"), "{}", fallback.message);
    assert!(rig.world.requests("POST", "/fail/down").len() > 3, "retried past the configured attempts");
    assert!(rig.pages("cto").is_empty(), "the second level waits for its time");
    running.stop().await;
}

/// A level whose every delivery failed is never recorded as told, and
/// the next level is told at once rather than when its time comes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_level_that_reaches_nobody_is_a_failure_on_the_record_and_escalates_at_once() {
    let rig = Rig::new().await;
    let running = rig.start();
    let id = running.open(UNREACHED_ALERT, "UNREACHED-TEST").await;
    // The clock never moves: only the failure can bring the second level.
    rig.wait_pages("engineering-manager", 1).await;
    let timeline = eventually("the second level to be recorded", MINUTE, || async {
        let (incident, timeline) = running.incident(id);
        (incident.escalation.as_ref().map(|p| p.told) == Some(2)).then_some(timeline)
    })
    .await;
    let failed = timeline
        .iter()
        .find(|e| e.details.get("who").map(String::as_str) == Some("unreachable-person"))
        .expect("an entry for the unreachable person");
    assert_eq!(failed.details.get("outcome").map(String::as_str), Some("failed"), "{failed:?}");
    assert!(failed.message.starts_with("could not tell unreachable-person (first)"), "{}", failed.message);
    assert!(failed.message.contains("its time was up"), "{}", failed.message);
    let escalated = timeline
        .iter()
        .find(|e| e.message == "nobody at first could be told: second is told now")
        .unwrap_or_else(|| panic!("the escalation is on the timeline: {timeline:#?}"));
    assert_eq!(escalated.kind.as_str(), "escalated");
    let em = timeline
        .iter()
        .find(|e| e.details.get("who").map(String::as_str) == Some("engineering-manager"))
        .expect("the second level's entry");
    assert!(em.message.contains("nobody at first could be told"), "why it came early: {}", em.message);
    assert_eq!(running.deliveries("down-pager", "failed"), 1);
    assert_eq!(running.metrics.levels_unreached.get(), 1);
    running.stop().await;
}

/// P0-001's public story: the runbook's steps open the status page
/// incident and tell customers; an acknowledgement and the resolution
/// each reach both once, in words written for customers, while the
/// people's channel hears who acknowledged. Internal words sent to a
/// customer channel are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn customers_hear_one_public_story_once_per_state_and_never_internal_words() {
    let rig = Rig::new().await;
    let running = rig.start();
    let id = running.open(PUBLIC_ALERT, "PUBLIC-TEST").await;
    rig.wait_pages("third-person", 1).await;
    let step = NotifyActuator::new(rig.channels.clone()).with_recorder(running.recorder.clone());
    let call = |step_id: &str, params: serde_json::Value| ActionCall {
        incident_id: id.to_string(),
        step_id: step_id.into(),
        kind: "notify".into(),
        params,
        dry_run: false,
        deadline: Duration::from_secs(30),
        accepted_risk: None,
    };
    let opened = step
        .execute(&call(
            "status_page",
            serde_json::json!({"channel": "public-page", "title": "Major Outage", "message": "We are on it."}),
        ))
        .await;
    assert_eq!(opened.status, ActionStatus::Succeeded, "{opened:?}");
    let notice = serde_json::json!({"channel": "customer-notifications", "title": "Service Disruption",
                                    "message": "We are currently experiencing a service disruption."});
    assert_eq!(step.execute(&call("customer_notice", notice)).await.status, ActionStatus::Succeeded);
    // A step that says its words are internal cannot send them to customers.
    let internal = serde_json::json!({"channel": "customer-notifications", "title": "INC details",
                                      "message": "db-1 lag 30s", "audience": "internal"});
    let refused = step.execute(&call("leak", internal)).await;
    assert_eq!(refused.status, ActionStatus::Failed, "{refused:?}");
    assert!(refused.message.contains("reaches customers"), "{}", refused.message);
    assert_eq!(rig.world.requests("POST", "/hooks/customer-notifications").len(), 1, "the refused text never left");
    eventually("the steps' results to be on the timeline", Duration::from_secs(10), || async {
        running.incident(id).0.conversation("public-page").map(|_| ())
    })
    .await;

    running.recorder.acknowledge(id, "user:alice".into()).await.expect("acknowledge");
    rig.world.wait_for("POST", "/hooks/customer-notifications", 2).await;
    rig.world.wait_for("PATCH", PUBLIC_INCIDENTS, 1).await;
    running.recorder.resolve(id, "user:alice".into(), "fixed".into()).await.expect("resolve");
    rig.world.wait_for("POST", "/hooks/customer-notifications", 3).await;
    rig.world.wait_for("PATCH", PUBLIC_INCIDENTS, 2).await;
    eventually("the resolution to be told", Duration::from_secs(10), || async {
        running.incident(id).0.escalation.as_ref().is_some_and(|p| p.resolution_told).then_some(())
    })
    .await;

    // The status page: one incident, opened once, then identified and
    // resolved, each once.
    assert_eq!(rig.world.requests("POST", PUBLIC_INCIDENTS).len(), 1, "never a second public incident");
    let patches = rig.world.requests("PATCH", PUBLIC_INCIDENTS);
    let states: Vec<String> = patches
        .iter()
        .map(|p| serde_json::from_str::<serde_json::Value>(&p.body).expect("JSON")["incident"]["status"].to_string())
        .collect();
    assert_eq!(states, ["\"identified\"", "\"resolved\""], "{patches:?}");

    // The customers: the step's notice, then one message per state, in
    // their words: no incident id, nobody's name, no internal link.
    let told: Vec<serde_json::Value> = rig
        .world
        .requests("POST", "/hooks/customer-notifications")
        .iter()
        .map(|r| serde_json::from_str(&r.body).expect("JSON"))
        .collect();
    assert_eq!(told.len(), 3, "{told:#?}");
    let public_states: Vec<&str> =
        told[1..].iter().map(|m| m["status"]["incident_status"].as_str().unwrap_or("")).collect();
    assert_eq!(public_states, ["identified", "resolved"]);
    for m in &told {
        assert_eq!(m["audience"], "customers", "{m}");
        let words = format!("{} {} {}", m["title"], m["body"], m["links"]);
        assert!(!words.contains("INC-") && !words.contains("alice"), "internal words reached customers: {words}");
    }
    assert!(told[2]["body"].as_str().unwrap_or("").contains("has been resolved"), "{}", told[2]);
    assert!(!told[2]["body"].as_str().unwrap_or("").contains("currently experiencing"), "{}", told[2]);

    // The people: the page, who acknowledged, and the resolution.
    let pages = rig.wait_pages("third-person", 3).await;
    let events: Vec<&str> = pages.iter().map(|p| p["event"].as_str().unwrap_or("")).collect();
    assert_eq!(events, ["trigger", "acknowledge", "resolve"]);
    assert!(pages[1]["title"].as_str().unwrap_or("").contains("acknowledged by user:alice"), "{}", pages[1]);
    running.stop().await;
}

/// A page still retrying a pager that is down stops as soon as someone
/// acknowledges the incident: the record says it stopped, not that it
/// failed or told, and the acknowledgement's follow-up is not held up
/// for the rest of the level's time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledgement_stops_the_pages_still_retrying() {
    let rig = Rig::new().await;
    let running = rig.start();
    // Never set to end: the pager stays down.
    let id = running.open(OUTAGE_ALERT, "OUTAGE-TEST").await;
    rig.world.wait_for("POST", "/outage/outage-person", 2).await;
    running.recorder.acknowledge(id, "user:alice".into()).await.expect("acknowledge");
    // Well inside the level's two minutes: only a stop ends it this soon.
    let timeline = eventually("the stopped level to be recorded", Duration::from_secs(30), || async {
        let (incident, timeline) = running.incident(id);
        (incident.escalation.as_ref().map(|p| p.told) == Some(1)).then_some(timeline)
    })
    .await;
    let entry = timeline
        .iter()
        .find(|e| e.details.get("who").map(String::as_str) == Some("outage-person"))
        .expect("an entry for the outage-person");
    assert_eq!(entry.details.get("outcome").map(String::as_str), Some("stopped"), "{entry:?}");
    assert!(entry.message.starts_with("stopped paging outage-person (first)"), "{}", entry.message);
    let tries = rig.world.requests("POST", "/outage/outage-person").len();
    assert_eq!(running.deliveries("outage-pager", "stopped"), 1);
    assert_eq!(running.metrics.levels_unreached.get(), 0, "a stopped page is no reason to escalate");
    // No attempt starts after the stop.
    let later = eventually("the incident's next look", Duration::from_secs(10), || async {
        let (incident, _) = running.incident(id);
        incident.escalation.as_ref().is_some_and(|p| p.hold_told).then_some(())
    });
    later.await;
    assert_eq!(rig.world.requests("POST", "/outage/outage-person").len(), tries, "no attempt after the stop");
    running.stop().await;
}
