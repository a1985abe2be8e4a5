//! Parsing and validation of whole runbooks.

use super::*;

const VALID: &str = r#"apiVersion: remedy.dev/v1
kind: Runbook
metadata:
  id: T-001
  title: Test runbook
priority: P1
mttr_target: 15m
params:
  api_base: http://api.test.svc:8080
triggers:
  alerts:
    - name: P1_HighErrorRate
      matchers: ['namespace="saas-idp-production"']
  findings:
    - kind: high_error_rate
      evidence: database
      above: 10
      for: 1m
      aggregate: sum_across_nodes
  manual: true
steps:
  - id: errors
    agent_snapshot:
      agents: all
      include: [error_counts]
      window: 10m
      combine: sum
  - id: restart_api
    when: steps.errors.database > 10
    rollout_restart:
      namespace: saas-idp-production
      name: saas-idp-api
  - id: reset
    http:
      method: POST
      url: "{{ params.api_base }}/admin/circuit-breaker/reset"
      body: {incident: "{{ incident.id }}"}
    on_failure: next
verification:
  within: 2m
  checks:
    - id: healthy
      probe_http:
        url: "{{ params.api_base }}/health"
escalation:
  policy: p1-chain
guard_rails:
  cooldown: 10m
  max_attempts: 2
  budgets:
    - actions: {kinds: [rollout_restart]}
      window: 1h
      max_actions: 3
      max_percent: 50
  requires_approval: [pg_failover]
"#;

fn engine_catalog() -> ActionCatalog {
    [ActionKind::Http, ActionKind::Agent, ActionKind::Notify, ActionKind::ProbeHttp, ActionKind::AgentSnapshot]
        .into_iter()
        .fold(ActionCatalog::every_kind(Availability::Later), |c, k| c.with(k, Availability::Now))
}

fn parse(text: &str) -> Result<Runbook, RunbookError> {
    parse_runbook("t.yaml", text)
}

fn load(text: &str) -> Result<(Runbook, ValidationReport), InvalidRunbook> {
    load_runbook("t.yaml", text, &engine_catalog())
}

/// The valid runbook with `from` replaced by `to` (which must occur).
fn edited(from: &str, to: &str) -> String {
    assert!(VALID.contains(from), "`{from}` is not in the test runbook");
    VALID.replacen(from, to, 1)
}

fn errors(text: &str) -> Vec<RunbookError> {
    match load(text) {
        Ok(_) => panic!("loaded:\n{text}"),
        Err(e) => e.errors,
    }
}

fn one_error(text: &str) -> RunbookError {
    let errors = errors(text);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    errors.into_iter().next().unwrap_or_else(|| unreachable!())
}

#[test]
fn a_complete_runbook_parses_validates_and_reports_unavailable_actions() {
    let (rb, report) = load(VALID).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(rb.id(), "T-001");
    assert_eq!(rb.source, "t.yaml");
    assert_eq!(rb.priority, Priority::P1);
    assert_eq!(rb.mttr_target, Duration::from_secs(900));
    assert_eq!(rb.steps.len(), 3);
    assert_eq!(rb.steps[1].kind(), ActionKind::RolloutRestart);
    assert_eq!(rb.steps[1].when.as_ref().map(Condition::as_str), Some("steps.errors.database > 10"));
    assert_eq!(rb.guard_rails.cooldown, Duration::from_secs(600));
    assert_eq!(rb.guard_rails.budgets[0].max_percent, Some(50.0));
    assert!(rb.guard_rails.budgets[0].counts(ActionKind::RolloutRestart));
    assert_eq!(
        report.unavailable,
        [UnavailableAction { step: "restart_api".into(), kind: ActionKind::RolloutRestart }]
    );
    assert!(!report.fully_available());
}

#[test]
fn steps_default_their_failure_handling_destructiveness_and_approval_by_kind() {
    let (rb, _) = load(VALID).unwrap_or_else(|e| panic!("{e}"));
    let (errors, restart, reset) = (&rb.steps[0], &rb.steps[1], &rb.steps[2]);
    assert_eq!(errors.on_failure(), OnFailure::Continue, "evidence is best effort");
    assert_eq!(restart.on_failure(), OnFailure::Escalate, "a failed change goes to people");
    assert_eq!(reset.on_failure(), OnFailure::Next, "as written");
    assert!(restart.is_destructive() && !reset.is_destructive());
    assert!(!restart.requires_approval(&rb.guard_rails));
    let mut failover = restart.clone();
    failover.action = Action::PgFailover(PgFailover { database: "a".into(), replica: None, fence_primary: true });
    assert!(failover.requires_approval(&rb.guard_rails), "listed in guard_rails.requires_approval");
    failover.requires_approval = Some(false);
    assert!(!failover.requires_approval(&rb.guard_rails), "the step's own word wins");
}

#[test]
fn a_runbook_round_trips_through_json() {
    let (rb, _) = load(VALID).unwrap_or_else(|e| panic!("{e}"));
    let json = serde_json::to_value(&rb).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(json["steps"][1]["rollout_restart"]["name"], "saas-idp-api");
    assert_eq!(json["triggers"]["alerts"][0]["matchers"][0], r#"namespace="saas-idp-production""#);
    let mut back: Runbook = serde_json::from_value(json).unwrap_or_else(|e| panic!("{e}"));
    back.source = rb.source.clone();
    assert_eq!(back, rb);
}

#[test]
fn parse_errors_name_the_file_line_and_field() {
    let err = parse(&edited("  cooldown: 10m", "  cooldwn: 10m")).err().unwrap_or_else(|| panic!("parsed"));
    assert_eq!((err.file.as_str(), err.line, err.field.as_str()), ("t.yaml", Some(48), "guard_rails.cooldwn"));
    assert!(err.message.contains("unknown field `cooldwn`"), "{}", err.message);
    let shown = err.to_string();
    assert!(shown.starts_with("t.yaml:48:"), "{shown}");
    assert!(shown.contains("field `guard_rails.cooldwn`"), "{shown}");

    let err = parse(&edited("mttr_target: 15m", "mttr_target: soon")).err().unwrap_or_else(|| panic!("parsed"));
    assert_eq!((err.line, err.field.as_str()), (Some(7), "mttr_target"));
    assert!(err.message.contains("invalid duration `soon`"), "{}", err.message);

    let config: crate::config::ConfigError = err.into();
    assert!(config.to_string().contains("(line 7)"), "{config}");
}

#[test]
fn unknown_kinds_fail_the_parse_where_they_are_written() {
    let err = parse(&edited("kind: high_error_rate", "kind: high_eror_rate")).err().unwrap_or_else(|| panic!("parsed"));
    assert_eq!((err.line, err.field.as_str()), (Some(15), "triggers.findings[0].kind"));
    assert!(err.message.contains("high_eror_rate"), "{}", err.message);

    let err = parse(&edited("    rollout_restart:", "    rollout_restrat:")).err().unwrap_or_else(|| panic!("parsed"));
    assert_eq!((err.line, err.field.as_str()), (Some(31), "steps[1].rollout_restrat"), "{err}");
    assert!(err.message.contains("unknown field `rollout_restrat`"), "{}", err.message);
    assert!(err.message.contains("rollout_restart"), "lists the kinds: {}", err.message);

    let err = parse(&edited("  - id: errors\n", "  - id: errors\n    notify: {webhook: x, message: y}\n")).err();
    assert!(err.is_some_and(|e| e.message.contains("exactly one action")));

    let err = parse(&edited("    on_failure: next\n", "")).map(|_| ());
    assert!(err.is_ok());
    let err = parse(&edited("    http:\n      method: POST\n", "    nothing: 1\n    x:\n      method: POST\n")).err();
    assert!(err.is_some());
}

#[test]
fn bad_matchers_and_conditions_fail_the_parse_with_a_line() {
    let err = parse(&edited(r#"['namespace="saas-idp-production"']"#, r#"['namespace=~"("']"#))
        .err()
        .unwrap_or_else(|| panic!("parsed"));
    assert_eq!(err.line, Some(13), "{err}");
    assert_eq!(err.message, r#"invalid label matcher `namespace=~"("`: invalid regex: unclosed group"#);
    let err = parse(&edited("when: steps.errors.database > 10", "when: steps.errors.database >"))
        .err()
        .unwrap_or_else(|| panic!("parsed"));
    assert_eq!((err.line, err.field.as_str()), (Some(29), "steps[1].when"), "{err}");
}

#[test]
fn the_header_is_checked() {
    assert!(parse(&edited("apiVersion: remedy.dev/v1", "apiVersion: remedy.dev/v2")).is_err());
    assert!(parse(&edited("kind: Runbook", "kind: Playbook")).is_err());
    assert!(parse(&edited("priority: P1", "priority: P7")).is_err());
    assert_eq!(parse(&edited("priority: P1", "priority: security")).map(|r| r.priority).ok(), Some(Priority::Security));
}

#[test]
fn validation_refuses_duplicate_and_malformed_step_ids_with_lines() {
    let err = one_error(&edited("  - id: reset", "  - id: errors"));
    assert_eq!((err.field.as_str(), err.line), ("steps[2].id", Some(33)));
    assert!(err.message.contains("duplicate step id `errors`"));
    assert!(err.to_string().starts_with("t.yaml:33:"), "{err}");
    let err = one_error(&edited("  - id: reset", "  - id: reset-cb"));
    assert!(err.message.contains("lowercase identifiers"), "{err}");
    // Checks share the namespace.
    let err = one_error(&edited("    - id: healthy", "    - id: reset"));
    assert_eq!(err.field, "verification.checks[0].id");
}

#[test]
fn conditions_may_read_only_earlier_evidence_steps() {
    let err = one_error(&edited("steps.errors.database > 10", "steps.nope.database > 10"));
    assert_eq!((err.field.as_str(), err.line), ("steps[1].when", Some(29)));
    assert!(err.message.contains("does not exist"), "{err}");
    let err = one_error(&edited("steps.errors.database > 10", "steps.reset.status == 200"));
    assert!(err.message.contains("is not an evidence step"), "{err}");
    let err = one_error(&edited("steps.errors.database > 10", "steps.healthy.status == 200"));
    assert!(err.message.contains("does not exist"), "checks are not steps: {err}");
    let err =
        one_error(&edited("  - id: restart_api\n", "  - id: restart_api\n    when: params.nope == 'x'\n").replacen(
            "    when: steps.errors.database > 10\n",
            "",
            1,
        ));
    assert!(err.message.contains("`params.nope` is not defined"), "{err}");
    // Params, incident fields and alert labels are readable.
    assert!(
        load(&edited(
            "steps.errors.database > 10",
            "params.api_base != '' and incident.priority == 'P1' and alert.labels.x == 'y'"
        ))
        .is_ok()
    );
}

#[test]
fn a_later_evidence_step_is_not_readable_yet() {
    let text = edited(
        "  - id: reset\n",
        "  - id: late\n    when: steps.probe.status == 200\n    notify: {webhook: ops, message: hi}\n  - id: probe\n    probe_http: {url: 'http://x'}\n  - id: reset\n",
    );
    let err = one_error(&text);
    assert!(err.message.contains("comes later"), "{err}");
}

#[test]
fn templates_with_unknown_placeholders_are_refused_at_load() {
    let err = one_error(&edited("{{ params.api_base }}/admin", "{{ params.api_bse }}/admin"));
    assert_eq!((err.field.as_str(), err.line), ("steps[2].http.url", Some(36)));
    assert!(err.message.contains("`params.api_bse` is not defined"), "{err}");
    let err = one_error(&edited("{incident: \"{{ incident.id }}\"}", "{incident: \"{{ incident.identifier }}\"}"));
    assert_eq!(err.field, "steps[2].http.body.incident");
    let err = one_error(&edited("{{ params.api_base }}/health", "{{ steps.reset.status }}/health"));
    assert!(err.message.contains("`steps.reset` is not defined"), "{err}");
    let err = one_error(&edited("{{ params.api_base }}/health", "{{ params.api_base }/health"));
    assert!(err.message.contains("syntax error"), "{err}");
    // Evidence from before, labels and the default filter are fine.
    assert!(
        load(&edited(
            "{{ params.api_base }}/health",
            "{{ steps.errors.database }}{{ alert.labels.instance | default('x') }}{{ params.other | default('y') }}"
        ))
        .is_ok()
    );
}

#[test]
fn actions_the_coordinator_does_not_offer_are_refused() {
    let catalog = engine_catalog();
    let without_restart = ActionKind::ALL
        .iter()
        .filter(|k| **k != ActionKind::RolloutRestart)
        .fold(ActionCatalog::new(), |c, k| c.with(*k, catalog.availability(*k).unwrap_or(Availability::Later)));
    let rb = parse(VALID).unwrap_or_else(|e| panic!("{e}"));
    let err = validate(&rb, &without_restart).err().unwrap_or_else(|| panic!("valid"));
    assert_eq!(err.errors[0].field, "steps[1].rollout_restart");
    assert!(err.errors[0].message.contains("offers no `rollout_restart`"));
    assert_eq!(err.errors[0].line, None, "validate alone has no text to find lines in");
    assert_eq!(
        validate(&rb, &ActionCatalog::every_kind(Availability::Now)).map(|r| r.fully_available()).ok(),
        Some(true)
    );
}

#[test]
fn unsafe_action_parameters_are_refused() {
    let cases = [
        (
            "    rollout_restart:\n      namespace: saas-idp-production\n      name: saas-idp-api\n",
            "    delete_pods: {namespace: n, selector: '', max_count: 0}\n",
            &["steps[1].delete_pods.selector", "steps[1].delete_pods.max_count"][..],
        ),
        (
            "    rollout_restart:\n      namespace: saas-idp-production\n      name: saas-idp-api\n",
            "    scale: {namespace: n, name: w, replicas: 1, floor: 2}\n",
            &["steps[1].scale.replicas"][..],
        ),
        (
            "    rollout_restart:\n      namespace: saas-idp-production\n      name: saas-idp-api\n",
            "    scale: {namespace: n, name: w, replicas: 60, ceiling: 50}\n",
            &["steps[1].scale.replicas"][..],
        ),
        (
            "    rollout_restart:\n      namespace: saas-idp-production\n      name: saas-idp-api\n",
            "    redis_flush: {instance: cache}\n",
            &["steps[1].redis_flush.db"][..],
        ),
        (
            "    rollout_restart:\n      namespace: saas-idp-production\n      name: saas-idp-api\n",
            "    redis_delete_keys: {instance: s, pattern: '*'}\n",
            &["steps[1].redis_delete_keys.pattern"][..],
        ),
        (
            "    rollout_restart:\n      namespace: saas-idp-production\n      name: saas-idp-api\n",
            "    redis_delete_keys: {instance: s, pattern: 'session:*', scoped_to_users: 'alice'}\n",
            &["steps[1].redis_delete_keys.pattern"][..],
        ),
        (
            "    rollout_restart:\n      namespace: saas-idp-production\n      name: saas-idp-api\n",
            "    redis_flush: {instance: cache, all_databases: true}\n",
            &["steps[1].redis_flush.all_databases"][..],
        ),
        (
            "    rollout_restart:\n      namespace: saas-idp-production\n      name: saas-idp-api\n",
            "    pg_failover: {database: ' ', replica: ''}\n",
            &["steps[1].pg_failover.database", "steps[1].pg_failover.replica"][..],
        ),
        (
            "    rollout_restart:\n      namespace: saas-idp-production\n      name: saas-idp-api\n",
            "    log_cleanup: {agents: all, roots: [{path: /var/../etc, older_than: 1d}, {path: /, older_than: 1d}]}\n",
            &["steps[1].log_cleanup.roots[0].path", "steps[1].log_cleanup.roots[1].path"][..],
        ),
        (
            "    rollout_restart:\n      namespace: saas-idp-production\n      name: saas-idp-api\n",
            "    patch_hpa: {namespace: n, name: h, min_replicas: 20, max_replicas: 5}\n",
            &["steps[1].patch_hpa.max_replicas"][..],
        ),
        (
            "    rollout_restart:\n      namespace: saas-idp-production\n      name: saas-idp-api\n",
            "    rollout_restart: {namespace: n, name: w}\n    destructive: false\n",
            &["steps[1].destructive"][..],
        ),
        (
            "      probe_http:\n        url: \"{{ params.api_base }}/health\"\n",
            "      http:\n        url: \"{{ params.api_base }}/health\"\n",
            &["verification.checks[0].http"][..],
        ),
        ("      max_percent: 50\n", "      max_percent: 150\n", &["guard_rails.budgets[0].max_percent"][..]),
        ("      max_actions: 3\n      max_percent: 50\n", "", &["guard_rails.budgets[0]"][..]),
    ];
    for (from, to, fields) in cases {
        let got: Vec<String> = errors(&edited(from, to)).into_iter().map(|e| e.field).collect();
        assert_eq!(got, fields, "{to}");
    }
}

#[test]
fn flushing_every_redis_database_loads_only_with_an_approval() {
    let approved = edited(
        "    rollout_restart:\n      namespace: saas-idp-production\n      name: saas-idp-api\n",
        "    redis_flush: {instance: cache, all_databases: true}\n    requires_approval: true\n",
    );
    assert!(load(&approved).is_ok(), "{:?}", load(&approved).err());
}

#[test]
fn finding_triggers_need_a_key_with_their_threshold() {
    let err = one_error(&edited("      above: 10\n", ""));
    assert_eq!(err.field, "triggers.findings[0].evidence");
    let err = one_error(&edited("  manual: true\n", "  manual: false\n").replace("  alerts:\n    - name: P1_HighErrorRate\n      matchers: ['namespace=\"saas-idp-production\"']\n", "").replace("  findings:\n    - kind: high_error_rate\n      evidence: database\n      above: 10\n      for: 1m\n      aggregate: sum_across_nodes\n", ""));
    assert_eq!(err.field, "triggers");
}

#[test]
fn every_problem_is_reported_at_once() {
    let text = edited("  - id: reset", "  - id: errors").replace("{{ params.api_base }}/health", "{{ params.x }}");
    let found: Vec<String> = errors(&text).into_iter().map(|e| e.field).collect();
    assert_eq!(found, ["steps[2].id", "verification.checks[0].probe_http.url"]);
}

#[test]
fn params_resolve_with_overrides_and_refuse_unknown_names() {
    let rb = parse(VALID).unwrap_or_else(|e| panic!("{e}"));
    let got = rb.resolve_params(&BTreeMap::from([("api_base".to_owned(), "http://127.0.0.1:9".to_owned())]));
    assert_eq!(got.ok().and_then(|p| p.get("api_base").cloned()).as_deref(), Some("http://127.0.0.1:9"));
    let refused = rb.resolve_params(&BTreeMap::from([("api_bse".to_owned(), "x".to_owned())]));
    let err = refused.as_ref().err().map(ToString::to_string).unwrap_or_default();
    assert!(err.contains("no param `api_bse`") && err.contains("api_base"), "{err}");
    assert!(refused.is_err_and(|e| e.name == "api_bse" && e.declared.contains(&"api_base".to_owned())));
}

#[test]
fn a_rendered_step_takes_its_values_from_the_run() {
    let rb = parse(VALID).unwrap_or_else(|e| panic!("{e}"));
    let ctx = TemplateContext {
        incident: IncidentContext { id: "INC-000007".into(), ..IncidentContext::default() },
        params: rb.resolve_params(&BTreeMap::new()).unwrap_or_default(),
        ..TemplateContext::default()
    };
    let Ok(Action::Http(call)) = Renderer::new().render_action(&rb.steps[2].action, &ctx) else { panic!("renders") };
    assert_eq!(call.url, "http://api.test.svc:8080/admin/circuit-breaker/reset");
    assert_eq!(call.body, Some(serde_json::json!({"incident": "INC-000007"})));
    let when = rb.steps[1].when.as_ref().unwrap_or_else(|| panic!("has a condition"));
    let mut ctx = ctx;
    ctx.steps.insert("errors".into(), serde_json::json!({"database": 11}));
    assert_eq!(when.evaluate(&ctx.to_json()), Ok(true));
}

#[test]
fn hostile_input_is_an_error_not_a_panic() {
    for text in [
        "",
        "[]",
        "apiVersion: [",
        "\u{0}",
        "a: &a [*a]",
        &"- ".repeat(10_000),
        &format!("steps: {}", "[".repeat(5_000)),
    ] {
        assert!(parse(text).is_err(), "{text:.40}");
    }
}

#[test]
fn secret_params_are_declared_or_named_so_and_kept_out_of_the_record() {
    let text = VALID.replace(
        "params:\n  api_base: http://api.test.svc:8080\n",
        "params:\n  api_base: http://api.test.svc:8080\n  api_token: default-t0ken\n  note: {secret: true}\n  plain: {default: x}\n",
    );
    let rb = parse(&text).unwrap_or_else(|e| panic!("{e}"));
    assert!(rb.is_secret_param("api_token") && rb.is_secret_param("note"));
    assert!(!rb.is_secret_param("api_base") && !rb.is_secret_param("plain"));
    let shown = format!("{:?} {}", rb.shown_params(), rb.to_yaml());
    assert!(!shown.contains("default-t0ken"), "a secret default is not shown: {shown}");
    assert_eq!(rb.shown_params()["plain"], "x");
    let bad = VALID
        .replace("params:\n  api_base: http://api.test.svc:8080\n", "params:\n  note: {secret: true, hidden: 1}\n");
    let err = parse(&bad).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains("params") && err.contains("hidden"), "{err}");

    let catalog = crate::run::Catalog::new(vec![rb.clone()]);
    let request = crate::run::ManualRun {
        runbook_id: "T-001".into(),
        params: BTreeMap::from([("note".to_owned(), "n0te-value".to_owned())]),
        dry_run: false,
        drill: false,
        by: "user:ada".into(),
    };
    let started =
        crate::run::manual_run(&catalog, &request, crate::incident::IncidentId(1), crate::Timestamp::from_millis(0))
            .unwrap_or_else(|e| panic!("{e}"));
    let mut run = started.run;
    let written =
        format!("{} {:?} {:?}", serde_json::to_string(&run).unwrap_or_default(), started.entries, started.incident);
    assert!(!written.contains("n0te-value") && !written.contains("default-t0ken"), "{written}");
    assert_eq!(run.secret_params, ["note".to_owned()].into());
    let context = run.template_context(&rb);
    assert_eq!(
        (context.params["note"].as_str(), context.params["api_token"].as_str()),
        ("n0te-value", "default-t0ken")
    );

    // After a restart the person's value is gone: a step reading it cannot
    // run; one reading only the runbook's secret default can.
    run.secret_values = crate::audit::SecretValues::default();
    let reads = |url: &str| {
        let step = format!("http: {{url: \"{url}\"}}");
        serde_saphyr::from_str::<Action>(&step).unwrap_or_else(|e| panic!("{e}"))
    };
    assert_eq!(run.lost_secrets(&reads("http://x/{{ params.note }}"), None), ["note".to_owned()]);
    assert_eq!(
        run.lost_secrets(&reads("http://x/{% for k in params %}{{ k }}{% endfor %}"), None),
        ["note".to_owned()]
    );
    assert!(run.lost_secrets(&reads("http://x/{{ params.api_token }}"), None).is_empty());
    let when = Condition::parse("params.note == 'x'").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(run.lost_secrets(&reads("http://x/"), Some(&when)), ["note".to_owned()]);
}
