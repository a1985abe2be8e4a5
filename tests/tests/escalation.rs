//! Escalation end to end inside the coordinator: the seed's P0 chain, its
//! schedules and templates loaded from `deploy/runbooks`, an incident
//! opened by an Alertmanager notification, the real writer and embedded
//! store, the real channels posting to a local world server (one webhook
//! per person, so each page is counted per person), and a clock that moves
//! only when the test moves it: minutes pass at once, and nothing depends
//! on how fast this machine is.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use remedy_coordinator::channels::{ChannelConfig, Channels};
use remedy_coordinator::escalator::{Clock, Directory, Escalator, ManualClock};
use remedy_coordinator::metrics::Metrics;
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
    target
}

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
    for channel in ["status-page", "customer-notifications", "security-slack"] {
        text.push_str(&format!("{channel}: {{type: webhook, url: '{}/hooks/{channel}', {retries}}}\n", world.url()));
    }
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
            metrics,
        );
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(escalator.run(async move {
            let _ = stopped.wait_for(|s| *s).await;
        }));
        Running { recorder, store, stop, task }
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
    let starts = Timestamp::from_millis(now_ms()).to_string();
    let payload = alert_payload("TestPlatformDown", &[("severity", "critical")], "firing", &starts);
    let alerts = alertmanager::parse(payload.as_bytes()).expect("a valid payload");
    recorder.alerts(alerts).await.expect("the alert is recorded");
    let open = store.list_incidents(false, 10).expect("list incidents");
    open.iter().find(|i| i.runbook.as_deref() == Some("P0-TEST")).map(|i| i.id).expect("the incident opened")
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
