use super::*;
use crate::finding::{ConditionKey, ConditionKind, Severity};
use crate::incident::IncidentId;

const P0_CHAIN: &str = "\
apiVersion: remedy.dev/v1
kind: EscalationPolicy
metadata: {id: p0-chain, title: P0 escalation chain}
levels:
  - {name: primary on-call, after: 0m, notify: [{schedule: primary}]}
  - {name: secondary on-call, after: 2m, notify: [{schedule: secondary}]}
  - {name: engineering manager, after: 5m, notify: [{person: em}]}
  - {name: CTO, after: 10m, notify: [{person: cto}]}
  - {name: CEO, after: 15m, notify: [{person: ceo}], customer_impacting_only: true}
ack_timeout: 30m
";

fn policy(text: &str) -> EscalationPolicy {
    load_policy("p0.yaml", text).expect("the policy loads")
}

fn at(secs: i64) -> Timestamp {
    Timestamp::from_millis(1_800_000_000_000 + secs * 1000)
}

fn incident(tags: &[&str]) -> Incident {
    Incident {
        id: IncidentId(42),
        key: ConditionKey { kind: ConditionKind::Alert("P0_SystemDown".into()), target: "alert/x".into() },
        severity: Severity::Critical,
        state: IncidentState::Escalated,
        summary: "down".into(),
        opened_at: at(0),
        started_at: None,
        updated_at: at(0),
        resolved_at: None,
        finding_count: 1,
        active_sources: BTreeMap::new(),
        runbook: Some("P0-001".into()),
        mttr_target_ms: Some(300_000),
        mttr_status: None,
        priority: None,
        tags: tags.iter().map(|t| (*t).to_owned()).collect(),
        acknowledged_at: None,
        acknowledged_by: None,
        escalation: None,
        drill: false,
        conversations: Default::default(),
    }
}

/// Advances minute by minute (as a timer would wake), committing each
/// step, and returns (second, level names told) in order.
fn walk(policy: &EscalationPolicy, incident: &Incident, progress: &mut Progress, until: i64) -> Vec<(i64, String)> {
    let mut told = Vec::new();
    let mut now = 0;
    while now <= until {
        let step = advance(policy, incident, progress, at(now));
        told.extend(step.pages.iter().map(|p| (now, p.name.clone())));
        *progress = step.progress;
        now += 30;
    }
    told
}

#[test]
fn the_p0_chain_climbs_level_by_level_and_asks_the_ceo_only_when_customers_are_hit() {
    let p0 = policy(P0_CHAIN);
    let mut progress = Progress::start(&p0.id, "opened", at(0));
    let told = walk(&p0, &incident(&[]), &mut progress, 1200);
    assert_eq!(
        told,
        [
            (0, "primary on-call".to_owned()),
            (120, "secondary on-call".to_owned()),
            (300, "engineering manager".to_owned()),
            (600, "CTO".to_owned()),
        ]
    );
    let mut progress = Progress::start(&p0.id, "opened", at(0));
    let told = walk(&p0, &incident(&["total_outage"]), &mut progress, 1200);
    assert_eq!(told.last(), Some(&(900, "CEO".to_owned())), "customer-impacting: {told:?}");
}

#[test]
fn the_first_step_says_when_to_look_again() {
    let p0 = policy(P0_CHAIN);
    let step = advance(&p0, &incident(&[]), &Progress::start(&p0.id, "opened", at(0)), at(0));
    assert_eq!(step.pages.len(), 1);
    assert_eq!(step.wake_at, Some(at(120)));
    let again = advance(&p0, &incident(&[]), &step.progress, at(60));
    assert!(again.pages.is_empty(), "nobody is told twice");
    assert_eq!(again.wake_at, Some(at(120)));
}

#[test]
fn an_acknowledgement_stops_the_climb_until_it_lapses() {
    let p0 = policy(P0_CHAIN);
    let mut i = incident(&[]);
    let first = advance(&p0, &i, &Progress::start(&p0.id, "opened", at(0)), at(0));
    let mut progress = first.progress;
    // alice acknowledges at 1m: the hold is on the progress and the state.
    i.state = IncidentState::Acknowledged;
    progress.held_since = Some(at(60));
    progress.held_by = Some("alice".into());
    let held = advance(&p0, &i, &progress, at(60));
    assert_eq!(held.follow_up, Some(FollowUp::Acknowledged), "paged channels hear of it");
    assert_eq!(held.wake_at, Some(at(60 + 1800)), "looks again when it lapses");
    let quiet = advance(&p0, &i, &held.progress, at(600));
    assert!(quiet.pages.is_empty() && quiet.follow_up.is_none(), "{quiet:?}");
    // 30 minutes without a resolution: the climb starts again at the first level.
    let lapsed = advance(&p0, &i, &quiet.progress, at(60 + 1800));
    assert_eq!(lapsed.state, Some(IncidentState::Escalated));
    assert!(lapsed.entries[0].message.contains("acknowledgement by alice lapsed"), "{:?}", lapsed.entries);
    assert_eq!(lapsed.pages.iter().map(|p| p.level).collect::<Vec<_>>(), [0]);
}

#[test]
fn resolution_stops_the_climb_and_tells_the_channels_once() {
    let p0 = policy(P0_CHAIN);
    let mut i = incident(&[]);
    let first = advance(&p0, &i, &Progress::start(&p0.id, "opened", at(0)), at(0));
    i.state = IncidentState::Resolved;
    let resolved = advance(&p0, &i, &first.progress, at(400));
    assert!(resolved.pages.is_empty(), "{resolved:?}");
    assert_eq!(resolved.follow_up, Some(FollowUp::Resolved));
    assert_eq!(resolved.wake_at, None);
    let after = advance(&p0, &i, &resolved.progress, at(500));
    assert!(after.is_empty(), "said once: {after:?}");
}

#[test]
fn time_to_recovery_at_risk_tells_the_next_level_at_once_and_keeps_the_spacing() {
    let p0 = policy(P0_CHAIN);
    let mut i = incident(&[]);
    let first = advance(&p0, &i, &Progress::start(&p0.id, "opened", at(0)), at(0));
    i.mttr_status = Some("at_risk".into());
    let risk = advance(&p0, &i, &first.progress, at(30));
    assert_eq!(risk.pages.len(), 1);
    assert_eq!(risk.pages[0].name, "secondary on-call");
    assert!(risk.pages[0].why.contains("at risk"), "{:?}", risk.pages[0]);
    // The engineering manager is due 3m after the secondary, as written.
    assert_eq!(risk.wake_at, Some(at(30 + 180)));
    let again = advance(&p0, &i, &risk.progress, at(31));
    assert!(again.pages.is_empty(), "a mark is acted on once");
}

#[test]
fn a_restart_mid_climb_resumes_at_the_right_level_without_telling_anyone_twice() {
    let p0 = policy(P0_CHAIN);
    let i = incident(&[]);
    let mut progress = Progress::start(&p0.id, "opened", at(0));
    let before = walk(&p0, &i, &mut progress, 150);
    assert_eq!(before.len(), 2);
    // The progress goes through the store and comes back.
    let stored = serde_json::to_string(&progress).unwrap();
    let mut restored: Progress = serde_json::from_str(&stored).unwrap();
    // Down for three minutes: the engineering manager came due meanwhile.
    let step = advance(&p0, &i, &restored, at(330));
    assert_eq!(step.pages.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["engineering manager"]);
    restored = step.progress;
    assert!(advance(&p0, &i, &restored, at(340)).pages.is_empty());
}

#[test]
fn a_policy_with_repeats_climbs_again_after_the_last_level() {
    let text = "apiVersion: remedy.dev/v1\nkind: EscalationPolicy\nmetadata: {id: p2}\n\
                levels: [{name: oncall, after: 0m, notify: [{person: a}]}, {name: lead, after: 5m, notify: [{person: b}]}]\n\
                repeat: {times: 1, after: 10m}\n";
    let p = policy(text);
    let mut progress = Progress::start(&p.id, "escalated", at(0));
    let told = walk(&p, &incident(&[]), &mut progress, 3600);
    let names: Vec<(i64, &str)> = told.iter().map(|(s, n)| (*s, n.as_str())).collect();
    assert_eq!(names, [(0, "oncall"), (300, "lead"), (900, "oncall"), (1200, "lead")]);
}

#[test]
fn periodic_updates_come_due_every_interval_and_the_resolution_is_a_follow_up_not_another_update() {
    let text = "apiVersion: remedy.dev/v1\nkind: EscalationPolicy\nmetadata: {id: p0}\n\
                levels: [{name: oncall, after: 0m, notify: [{channel: ops}]}]\n\
                updates: {template: customer-notification, channels: [status], every: 30m}\n";
    let p = policy(text);
    let mut i = incident(&[]);
    let mut progress = Progress::start(&p.id, "opened", at(0));
    let mut due = Vec::new();
    for now in (0..=3600).step_by(60) {
        let step = advance(&p, &i, &progress, at(now));
        if step.update_due {
            due.push(now);
        }
        progress = step.progress;
    }
    assert_eq!(due, [1800, 3600], "the first notice is the runbook's; updates follow every 30m");
    i.state = IncidentState::Resolved;
    let last = advance(&p, &i, &progress, at(3700));
    // Customer channels hear the resolution once, as their story's last
    // state; a periodic update beside it would tell them twice.
    assert!(!last.update_due && last.follow_up == Some(FollowUp::Resolved));
}

#[test]
fn each_level_keeps_trying_until_the_next_one_is_due() {
    let text = "apiVersion: remedy.dev/v1\nkind: EscalationPolicy\nmetadata: {id: p0}\n\
                levels: [{name: primary, after: 0m, notify: [{channel: a}]}, \
                         {name: secondary, after: 2m, notify: [{channel: b}]}, \
                         {name: lead, after: 5m, notify: [{channel: c}]}]\n";
    let p = policy(text);
    let i = incident(&[]);
    let start = Progress::start(&p.id, "opened", at(0));
    let first = advance(&p, &i, &start, at(0));
    assert_eq!(first.pages.len(), 1);
    assert_eq!(first.pages[0].deadline, at(120), "the primary's pages try until the secondary is due");
    let second = advance(&p, &i, &first.progress, at(120));
    assert_eq!(second.pages[0].deadline, at(300));
    let last = advance(&p, &i, &second.progress, at(300));
    assert_eq!(last.pages[0].deadline, at(300).plus(LAST_LEVEL_PATIENCE), "nothing follows the last level");
    // A coordinator down for ten minutes tells every level it missed at
    // once: their deadlines have passed, so each tries its configured
    // attempts and no more.
    let late = advance(&p, &i, &start, at(600));
    let deadlines: Vec<Timestamp> = late.pages.iter().map(|p| p.deadline).collect();
    assert_eq!(deadlines, [at(600), at(600), at(600).plus(LAST_LEVEL_PATIENCE)]);
}

#[test]
fn a_level_that_reached_nobody_makes_the_next_one_due_at_once() {
    let text = "apiVersion: remedy.dev/v1\nkind: EscalationPolicy\nmetadata: {id: p0}\n\
                levels: [{name: primary, after: 0m, notify: [{channel: a}]}, \
                         {name: secondary, after: 10m, notify: [{channel: b}]}, \
                         {name: lead, after: 20m, notify: [{channel: c}]}]\n";
    let p = policy(text);
    let i = incident(&[]);
    let first = advance(&p, &i, &Progress::start(&p.id, "opened", at(0)), at(0));
    let mut unreached = first.progress.clone();
    unreached.unreached = Some("nobody at primary could be told".into());
    // Three minutes on, long before the secondary's time.
    let next = advance(&p, &i, &unreached, at(180));
    assert_eq!(next.pages.len(), 1, "{next:?}");
    assert_eq!(next.pages[0].name, "secondary");
    assert_eq!(next.pages[0].why, "nobody at primary could be told");
    assert_eq!(next.progress.unreached, None, "acted on once");
    // The levels after it keep their spacing from this moment.
    assert_eq!(next.pages[0].deadline, at(180 + 600));
    assert_eq!(next.wake_at, Some(at(180 + 600)));
    // Without the mark, nothing is due then.
    assert!(advance(&p, &i, &first.progress, at(180)).pages.is_empty());
}

#[test]
fn bad_policies_are_refused_naming_the_field() {
    let cases = [
        ("levels: []", "levels"),
        (
            "levels: [{name: a, after: 5m, notify: [{person: x}]}, {name: b, after: 1m, notify: [{person: y}]}]",
            "levels[1].after",
        ),
        ("levels: [{name: a, after: 0m, notify: []}]", "levels[0].notify"),
        ("levels: [{name: a, after: 0m, notify: [{pager: x}]}]", "levels[0].notify[0]"),
        ("levels: [{name: a, after: 0m, notify: [{person: x}]}]\nack_timeout: 5s", "ack_timeout"),
        ("levels: [{name: a, after: 0m, notify: [{person: x}]}]\nrepeat: {times: 99, after: 5m}", "repeat.times"),
        ("levels: [{name: a, after: soon, notify: [{person: x}]}]", "levels[0].after"),
    ];
    for (body, field) in cases {
        let text = format!("apiVersion: remedy.dev/v1\nkind: EscalationPolicy\nmetadata: {{id: p}}\n{body}\n");
        let e = load_policy("p.yaml", &text).expect_err(body);
        assert_eq!(e.field, field, "{body}: {e}");
    }
}

#[test]
fn recipients_follow_the_schedule_and_say_who_cannot_be_reached() {
    let people = BTreeMap::from([
        (
            "alice".to_owned(),
            Person { email: Some("alice@example.com".into()), notify: vec!["pager".into(), "mail".into()] },
        ),
        ("em".to_owned(), Person { email: None, notify: vec!["slack".into()] }),
    ]);
    let targets = [
        Target::Schedule("primary".into()),
        Target::Person("em".into()),
        Target::Person("ghost".into()),
        Target::Schedule("empty".into()),
        Target::Channel("ops".into()),
        Target::Person("alice".into()),
    ];
    let (found, missing) = recipients(&targets, &people, |s| Ok((s == "primary").then(|| "alice".to_owned())));
    let who: Vec<&str> = found.iter().map(|r| r.who.as_str()).collect();
    assert_eq!(who, ["alice", "em", "channel ops"], "alice once, though named twice");
    assert_eq!(found[0].channels, ["pager", "mail"]);
    assert_eq!(found[0].via, "schedule primary");
    assert_eq!(missing.len(), 2, "{missing:?}");
}
