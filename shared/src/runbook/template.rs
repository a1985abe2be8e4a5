//! Templates in step parameters, and the context they render against.
//!
//! Any text parameter of an action may be a minijinja template. Undefined
//! values are strict: a placeholder that names nothing is an error, never a
//! blank (a URL with a blank host, a config value set to ""). The `default`
//! filter still works: `{{ params.api_base | default("http://...") }}`.
//!
//! Every template renders against one context, whatever triggered the run:
//!
//! ```text
//! incident.id           "INC-000042"
//! incident.started_at   when the condition began (Incident::started), RFC 3339
//! incident.priority     "P0" .. "P3", "security"
//! incident.runbook      the runbook's id, "P0-001"
//! incident.title        the runbook's title
//! incident.summary      the incident's latest summary
//! incident.mode         "live", "dry_run" or "shadow"
//! alert.name            alertname; alert.status, alert.starts_at, alert.fingerprint
//! alert.labels.<k>      alert labels;  alert.annotations.<k>
//! finding.kind          finding.target, finding.severity, finding.source, finding.summary
//! finding.labels.<k>    finding labels; finding.evidence.<k>
//! params.<name>         the runbook's declared params, overridden by the caller
//! steps.<id>.<key>      results of evidence steps that ran before
//! ```
//!
//! `alert` and `finding` are always present, with empty maps when the run
//! was not started by one, so `{{ finding.labels.ip | default(alert.labels.ip) }}`
//! works whichever started it. The same context, as JSON, is what `when`
//! and `expect` conditions read.
//!
//! At load, templates render against a sample context: `incident` and
//! `params` exactly as they will be, label, annotation and evidence maps
//! that accept any key, and `steps` holding only the evidence steps that
//! come earlier. So a misspelt param, an unknown incident field, or a step
//! read before it runs fails the load.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use minijinja::value::{Enumerator, Object, ObjectRepr};
use minijinja::{Environment, ErrorKind, UndefinedBehavior, Value};
use serde::{Deserialize, Serialize};

use super::action::Action;

/// What the incident says about itself.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct IncidentContext {
    /// `INC-000042`.
    pub id: String,
    /// RFC 3339.
    pub started_at: String,
    /// `P0`..`P3`, `security`.
    pub priority: String,
    /// The runbook's id.
    pub runbook: String,
    /// The runbook's title.
    pub title: String,
    /// The incident's latest summary.
    pub summary: String,
    /// `live`, `dry_run` or `shadow`.
    pub mode: String,
}

/// The alert that started the run; empty when none did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AlertContext {
    /// `alertname`.
    pub name: String,
    /// `firing` or `resolved`.
    pub status: String,
    /// `startsAt`, RFC 3339.
    pub starts_at: String,
    /// Alertmanager's fingerprint.
    pub fingerprint: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Annotations.
    pub annotations: BTreeMap<String, String>,
}

/// The finding that started the run; empty when none did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FindingContext {
    /// Finding kind, snake_case.
    pub kind: String,
    /// `<type>/<name>`.
    pub target: String,
    /// `info`, `warning`, `critical`.
    pub severity: String,
    /// The agent that reported it.
    pub source: String,
    /// One line for humans.
    pub summary: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Evidence.
    pub evidence: BTreeMap<String, String>,
}

impl FindingContext {
    /// The context of `finding`, reported by `source`.
    pub fn from_finding(finding: &crate::finding::Finding, source: &str) -> Self {
        FindingContext {
            kind: finding.kind.to_string(),
            target: finding.target.clone(),
            severity: finding.severity.to_string(),
            source: source.to_owned(),
            summary: finding.summary.clone(),
            labels: finding.labels.clone(),
            evidence: finding.evidence.clone(),
        }
    }
}

/// Everything templates and conditions can read during a run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TemplateContext {
    /// The incident.
    pub incident: IncidentContext,
    /// The alert that started the run, or empty.
    pub alert: AlertContext,
    /// The finding that started the run, or empty.
    pub finding: FindingContext,
    /// Params: declared defaults overridden by the caller's.
    pub params: BTreeMap<String, String>,
    /// Results of evidence steps so far, by step id.
    pub steps: BTreeMap<String, serde_json::Value>,
}

impl TemplateContext {
    /// The context as JSON, for conditions.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }

    /// The context as a template value.
    pub fn to_value(&self) -> Value {
        json_to_value(&self.to_json())
    }
}

/// A template that could not be rendered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("template `{template}`: {message}")]
pub struct TemplateError {
    /// The template's text.
    pub template: String,
    /// What went wrong, naming the undefined placeholder when that is it.
    pub message: String,
    /// The template's line (1-based) where it went wrong, when known.
    pub line: Option<usize>,
}

/// Whether `text` contains template syntax. Plain text is used as is, so
/// a JSON body or a shell-like string cannot be misread as a template.
pub fn is_template(text: &str) -> bool {
    text.contains("{{") || text.contains("{%") || text.contains("{#")
}

/// Most instructions one template may run. Templates fill in a URL, a
/// message or a list of targets; a loop over a few thousand pods stays far
/// below this, while nested loops over large ranges (which would run for
/// hours, at load while a runbook is validated or in a run) stop here.
pub const TEMPLATE_FUEL: u64 = 1_000_000;

/// Renders templates with strict undefined values.
#[derive(Debug)]
pub struct Renderer {
    env: Environment<'static>,
}

impl Default for Renderer {
    fn default() -> Self {
        Self::new()
    }
}

impl Renderer {
    /// A renderer with strict undefined values and no auto-escaping (the
    /// output goes into URLs, JSON and Kubernetes objects, not HTML).
    pub fn new() -> Self {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
        env.set_fuel(Some(TEMPLATE_FUEL));
        Renderer { env }
    }

    /// Renders one template; plain text comes back unchanged.
    pub fn render_str(&self, text: &str, context: &Value) -> Result<String, TemplateError> {
        if !is_template(text) {
            return Ok(text.to_owned());
        }
        let fail = |e: &minijinja::Error, message: String| TemplateError {
            template: text.to_owned(),
            message,
            line: e.line(),
        };
        let template = self.env.template_from_str(text).map_err(|e| fail(&e, e.to_string()))?;
        template.render(context.clone()).map_err(|e| {
            if e.kind() == ErrorKind::UndefinedError
                && let Some(path) = first_undefined(&template.undeclared_variables(true), context)
            {
                return fail(&e, format!("`{path}` is not defined"));
            }
            if e.kind() == ErrorKind::OutOfFuel {
                return fail(
                    &e,
                    format!("runs more than {TEMPLATE_FUEL} instructions; templates must not loop this much"),
                );
            }
            fail(&e, e.to_string())
        })
    }

    /// The top-level names `text` reads that it does not set itself and
    /// that are not the renderer's own (`range`, `namespace`...), sorted.
    /// This looks at every branch, taken or not, so a name checked against
    /// it cannot hide in an `{% if %}` that a sample context never enters.
    /// Empty for plain text and for text that does not parse (rendering
    /// reports that).
    pub fn undeclared_names(&self, text: &str) -> Vec<String> {
        if !is_template(text) {
            return Vec::new();
        }
        let Ok(template) = self.env.template_from_str(text) else { return Vec::new() };
        let mut names: Vec<String> = template
            .undeclared_variables(false)
            .into_iter()
            .filter(|name| self.env.globals().all(|(global, _)| global != name))
            .collect();
        names.sort();
        names
    }

    /// The params `action`'s templates read, by name, in every branch; `None`
    /// when one reads `params` as a whole (a loop over it, an index by a
    /// variable), which may reach any of them.
    pub fn params_read(&self, action: &Action) -> Option<std::collections::BTreeSet<String>> {
        let json = serde_json::to_value(action).unwrap_or_default();
        let mut names = std::collections::BTreeSet::new();
        let mut texts = Vec::new();
        collect_strings(&json, &mut texts);
        for text in texts.into_iter().filter(|t| is_template(t)) {
            let Ok(template) = self.env.template_from_str(text) else { continue };
            for path in template.undeclared_variables(true) {
                if path == "params" {
                    return None;
                }
                if let Some(name) = path.strip_prefix("params.") {
                    names.insert(name.split('.').next().unwrap_or(name).to_owned());
                }
            }
        }
        Some(names)
    }

    /// The action with every text parameter rendered.
    pub fn render_action(&self, action: &Action, context: &TemplateContext) -> Result<Action, TemplateError> {
        let value = context.to_value();
        let mut json = serde_json::to_value(action).map_err(|e| TemplateError {
            template: String::new(),
            message: e.to_string(),
            line: None,
        })?;
        self.render_strings(&mut json, &value)?;
        serde_json::from_value(json).map_err(|e| TemplateError {
            template: String::new(),
            message: e.to_string(),
            line: None,
        })
    }

    /// Renders every string inside `json` in place.
    pub(crate) fn render_strings(&self, json: &mut serde_json::Value, context: &Value) -> Result<(), TemplateError> {
        match json {
            serde_json::Value::String(s) if is_template(s) => *s = self.render_str(s, context)?,
            serde_json::Value::Array(items) => {
                for item in items {
                    self.render_strings(item, context)?;
                }
            }
            serde_json::Value::Object(map) => {
                for item in map.values_mut() {
                    self.render_strings(item, context)?;
                }
            }
            _ => {}
        }
        Ok(())
    }
}

fn collect_strings<'a>(json: &'a serde_json::Value, out: &mut Vec<&'a str>) {
    match json {
        serde_json::Value::String(s) => out.push(s),
        serde_json::Value::Array(items) => items.iter().for_each(|v| collect_strings(v, out)),
        serde_json::Value::Object(map) => map.values().for_each(|v| collect_strings(v, out)),
        _ => {}
    }
}

/// The first dotted path of `paths` (sorted, for a stable message) that does
/// not resolve in `context`, cut at the segment that fails.
fn first_undefined(paths: &std::collections::HashSet<String>, context: &Value) -> Option<String> {
    let mut sorted: Vec<&String> = paths.iter().collect();
    sorted.sort();
    sorted.into_iter().find_map(|path| unresolved_prefix(path, context))
}

pub(crate) fn unresolved_prefix(path: &str, context: &Value) -> Option<String> {
    let mut at = context.clone();
    let mut walked = Vec::new();
    for segment in path.split('.') {
        walked.push(segment);
        match at.get_attr(segment) {
            Ok(next) if !next.is_undefined() => at = next,
            _ => return Some(walked.join(".")),
        }
    }
    None
}

/// Converts JSON into a template value.
pub fn json_to_value(json: &serde_json::Value) -> Value {
    match json {
        serde_json::Value::Null => Value::from(()),
        serde_json::Value::Bool(b) => Value::from(*b),
        serde_json::Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Value::from(i),
            (None, Some(u)) => Value::from(u),
            (None, None) => Value::from(n.as_f64().unwrap_or(f64::NAN)),
        },
        serde_json::Value::String(s) => Value::from(s.as_str()),
        serde_json::Value::Array(items) => Value::from(items.iter().map(json_to_value).collect::<Vec<_>>()),
        serde_json::Value::Object(map) => {
            Value::from(map.iter().map(|(k, v)| (k.clone(), json_to_value(v))).collect::<BTreeMap<String, Value>>())
        }
    }
}

// ---------------------------------------------------------------- sample context

/// A map that has every key: stands for label, annotation, evidence and
/// step-result maps whose keys are only known at run time. Nested lookups
/// work too, so `steps.snapshot.nodes.a` checks.
#[derive(Debug)]
struct AnyKey {
    what: &'static str,
}

impl Object for AnyKey {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Map
    }

    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        key.as_str()?;
        Some(Value::from_object(AnyKey { what: self.what }))
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        Enumerator::Empty
    }

    fn render(self: &Arc<Self>, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<{}>", self.what)
    }
}

fn any_key(what: &'static str) -> Value {
    Value::from_object(AnyKey { what })
}

/// The context templates are checked against when a runbook loads.
/// `incident` and `params` are exact; label, annotation and evidence maps
/// accept any key; `steps` holds the given step ids, each accepting any key.
pub fn sample_context(incident: &IncidentContext, params: &BTreeMap<String, String>, steps: &[&str]) -> Value {
    let ctx = TemplateContext { incident: incident.clone(), params: params.clone(), ..TemplateContext::default() };
    let base = ctx.to_json();
    let mut top: BTreeMap<String, Value> = BTreeMap::new();
    if let serde_json::Value::Object(map) = &base {
        for (k, v) in map {
            top.insert(k.clone(), json_to_value(v));
        }
    }
    let open = |fixed: &serde_json::Value, maps: &[&'static str]| {
        let mut out: BTreeMap<String, Value> = BTreeMap::new();
        if let serde_json::Value::Object(map) = fixed {
            for (k, v) in map {
                out.insert(k.clone(), json_to_value(v));
            }
        }
        for m in maps {
            out.insert((*m).to_owned(), any_key(m));
        }
        Value::from(out)
    };
    top.insert("alert".into(), open(&base["alert"], &["labels", "annotations"]));
    top.insert("finding".into(), open(&base["finding"], &["labels", "evidence"]));
    let step_map: BTreeMap<String, Value> = steps.iter().map(|id| ((*id).to_owned(), any_key("step result"))).collect();
    top.insert("steps".into(), Value::from(step_map));
    Value::from(top)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn incident() -> IncidentContext {
        IncidentContext {
            id: "INC-000042".into(),
            started_at: "2026-11-26T10:00:00.000Z".into(),
            priority: "P0".into(),
            runbook: "P0-001".into(),
            title: "System Complete Outage".into(),
            summary: "api down".into(),
            mode: "live".into(),
        }
    }

    fn params() -> BTreeMap<String, String> {
        BTreeMap::from([("api_base".to_owned(), "http://api:8080".to_owned())])
    }

    fn render(text: &str, ctx: &Value) -> Result<String, TemplateError> {
        Renderer::new().render_str(text, ctx)
    }

    #[test]
    fn a_template_that_loops_without_end_in_sight_is_stopped_with_a_reason() {
        let v = TemplateContext::default().to_value();
        let nested = "{% for a in range(100000) %}{% for b in range(100000) %}{{ a }}{% endfor %}{% endfor %}";
        let err = render(nested, &v).unwrap_err();
        assert!(err.message.contains("runs more than"), "{err}");
        // A loop over a few thousand items, as over a node's pods, renders.
        let pods = render("{% for p in range(5000) %}{{ p }},{% endfor %}", &v).unwrap();
        assert_eq!(pods.matches(',').count(), 5000);
    }

    #[test]
    fn placeholders_render_from_the_incident_params_and_steps() {
        let mut ctx = TemplateContext { incident: incident(), params: params(), ..TemplateContext::default() };
        ctx.alert.labels.insert("source_ip".into(), "203.0.113.9".into());
        ctx.steps.insert("errors".into(), serde_json::json!({"database": 12}));
        let v = ctx.to_value();
        assert_eq!(render("{{ params.api_base }}/health", &v).as_deref(), Ok("http://api:8080/health"));
        assert_eq!(
            render("{{ incident.id }} at {{ incident.started_at }}", &v).as_deref(),
            Ok("INC-000042 at 2026-11-26T10:00:00.000Z")
        );
        assert_eq!(render("{{ alert.labels.source_ip }}", &v).as_deref(), Ok("203.0.113.9"));
        assert_eq!(render("{{ steps.errors.database + 1 }}", &v).as_deref(), Ok("13"));
        assert_eq!(render("no template, {\"json\": true}", &v).as_deref(), Ok("no template, {\"json\": true}"));
    }

    #[test]
    fn an_undefined_placeholder_is_an_error_that_names_it() {
        let v = TemplateContext { incident: incident(), params: params(), ..TemplateContext::default() }.to_value();
        let err = render("{{ params.api_bse }}/health", &v).err().map(|e| e.message);
        assert_eq!(err.as_deref(), Some("`params.api_bse` is not defined"));
        let err = render("{{ incident.nope }}", &v).err().map(|e| e.message);
        assert_eq!(err.as_deref(), Some("`incident.nope` is not defined"));
        let err = render("{{ steps.errors.database }}", &v).err().map(|e| e.message);
        assert_eq!(err.as_deref(), Some("`steps.errors` is not defined"));
        assert!(render("{{ alert.labels.source_ip }}", &v).is_err(), "a missing label is not blank");
        assert!(render("{% if params.nope %}x{% endif %}", &v).is_err(), "strict even in conditions");
    }

    #[test]
    fn the_default_filter_works_under_strict_undefined() {
        let v = TemplateContext { incident: incident(), params: params(), ..TemplateContext::default() }.to_value();
        assert_eq!(render(r#"{{ params.other | default("http://fallback") }}"#, &v).as_deref(), Ok("http://fallback"));
        assert_eq!(
            render(r#"{{ params.api_base | default("http://fallback") }}"#, &v).as_deref(),
            Ok("http://api:8080")
        );
        // Whichever started the run: finding first, else the alert's label.
        let mut ctx = TemplateContext::default();
        ctx.alert.labels.insert("source_ip".into(), "198.51.100.7".into());
        let v = ctx.to_value();
        assert_eq!(
            render("{{ finding.labels.source_ip | default(alert.labels.source_ip) }}", &v).as_deref(),
            Ok("198.51.100.7")
        );
    }

    #[test]
    fn the_sample_context_accepts_any_label_but_only_declared_params_and_earlier_steps() {
        let v = sample_context(&incident(), &params(), &["health"]);
        assert!(render("{{ alert.labels.anything }} {{ finding.evidence.database }}", &v).is_ok());
        assert!(render("{{ steps.health.status }} {{ steps.health.nodes.a }}", &v).is_ok());
        assert!(render("{{ params.api_base }} {{ incident.priority }}", &v).is_ok());
        assert!(render("{{ params.nope }}", &v).is_err());
        assert!(render("{{ steps.later.status }}", &v).is_err());
        assert!(render("{{ incident.nope }}", &v).is_err());
        assert!(render("{{ nothing }}", &v).is_err());
    }

    #[test]
    fn undeclared_names_cover_every_branch_but_not_what_the_template_sets_or_the_renderer_has() {
        let r = Renderer::new();
        let text = "{% set n = 2 %}{% for i in range(n) %}{{ loop.index }}{{ a }}{% endfor %}\
                    {% if b %}{{ c.d }}{% else %}{{ namespace() }}{% endif %}";
        assert_eq!(r.undeclared_names(text), ["a", "b", "c"]);
        assert!(r.undeclared_names("plain {text}").is_empty());
        assert!(r.undeclared_names("{{ broken").is_empty(), "rendering reports syntax errors");
    }

    #[test]
    fn errors_carry_the_template_line() {
        let v = sample_context(&incident(), &params(), &[]);
        let err = render("one\ntwo\n{{ params.nope }}", &v).unwrap_err();
        assert_eq!(err.line, Some(3));
        let err = render("one\n{{ params.api_base", &v).unwrap_err();
        assert_eq!(err.line, Some(2));
    }

    #[test]
    fn syntax_errors_are_reported() {
        let v = sample_context(&incident(), &params(), &[]);
        let err = render("{{ params.api_base", &v).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("syntax error"), "{err}");
    }

    #[test]
    fn actions_render_every_text_parameter() {
        let action: Action = serde_json::from_value(serde_json::json!({"http": {
            "method": "POST",
            "url": "{{ params.api_base }}/admin/circuit-breaker/reset",
            "headers": {"X-Incident": "{{ incident.id }}"},
            "body": {"incident": "{{ incident.id }}", "n": 3, "list": ["{{ incident.priority }}"]}
        }}))
        .unwrap_or_else(|e| panic!("{e}"));
        let ctx = TemplateContext { incident: incident(), params: params(), ..TemplateContext::default() };
        let rendered = Renderer::new().render_action(&action, &ctx).unwrap_or_else(|e| panic!("{e}"));
        let Action::Http(call) = rendered else { panic!("kind changed") };
        assert_eq!(call.url, "http://api:8080/admin/circuit-breaker/reset");
        assert_eq!(call.headers["X-Incident"], "INC-000042");
        assert_eq!(call.body, Some(serde_json::json!({"incident": "INC-000042", "n": 3, "list": ["P0"]})));
    }
}
