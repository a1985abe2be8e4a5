//! Which lines a setting or a rule applies to: by the workload that wrote
//! them (namespace, app, container) or by the file they were read from.

use serde::{Deserialize, Serialize};

use super::{InvalidLogConfig, LineRef, deployment_of};

/// A selection of log sources. Every list that is not empty must match; an
/// empty scope selects every line.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Scope {
    /// Pods' namespaces.
    pub namespaces: Vec<String>,
    /// Workloads by name: a Deployment's name read from its pods' names
    /// (`auth-service-7d9f8b6c5d-x2k7p` is `auth-service`), otherwise the
    /// pod's name without its last `-` suffix (`web-0` is `web`), or the
    /// pod's whole name.
    pub apps: Vec<String>,
    /// Containers' names.
    pub containers: Vec<String>,
    /// Plain files, by the path configured under `logs.files`.
    pub files: Vec<String>,
}

impl Scope {
    /// Whether `line` comes from a source this scope selects.
    pub fn matches(&self, line: &LineRef<'_>) -> bool {
        let any = |list: &[String], value: Option<&str>| {
            list.is_empty() || value.is_some_and(|v| list.iter().any(|l| l == v))
        };
        let app = || self.apps.is_empty() || line.pod.is_some_and(|pod| self.apps.iter().any(|a| app_matches(a, pod)));
        any(&self.namespaces, line.namespace)
            && any(&self.containers, line.container)
            && any(&self.files, line.file)
            && app()
    }

    /// Whether the scope selects every line.
    pub fn is_everything(&self) -> bool {
        self.namespaces.is_empty() && self.apps.is_empty() && self.containers.is_empty() && self.files.is_empty()
    }

    /// Checks the names; `field` is where the scope sits (for example
    /// `rules[2].match`).
    pub fn validate(&self, field: &str) -> Result<(), InvalidLogConfig> {
        for (name, list) in [
            ("namespaces", &self.namespaces),
            ("apps", &self.apps),
            ("containers", &self.containers),
            ("files", &self.files),
        ] {
            if let Some(i) = list.iter().position(|v| v.trim().is_empty() || v.trim() != v) {
                return Err(InvalidLogConfig::new(
                    format!("{field}.{name}[{i}]"),
                    "must be a name without surrounding spaces",
                ));
            }
        }
        if let Some(i) = self.files.iter().position(|f| !f.starts_with('/')) {
            return Err(InvalidLogConfig::new(format!("{field}.files[{i}]"), "must be an absolute path"));
        }
        Ok(())
    }
}

fn app_matches(app: &str, pod: &str) -> bool {
    if let Some(deployment) = deployment_of(pod) {
        return deployment == app;
    }
    pod == app || pod.rsplit_once('-').is_some_and(|(base, _)| base == app)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod<'a>(namespace: &'a str, pod: &'a str) -> LineRef<'a> {
        LineRef { namespace: Some(namespace), pod: Some(pod), container: Some("app"), ..LineRef::plain("x") }
    }

    #[test]
    fn scopes_select_by_workload_and_by_file() {
        let everything = Scope::default();
        assert!(everything.matches(&pod("prod", "web-0")) && everything.matches(&LineRef::plain("x")));
        let auth = Scope { apps: vec!["auth-service".into()], ..Scope::default() };
        assert!(auth.matches(&pod("prod", "auth-service-7d9f8b6c5d-x2k7p")));
        assert!(auth.matches(&pod("prod", "auth-service-0")));
        assert!(!auth.matches(&pod("prod", "auth-service-admin-7d9f8b6c5d-x2k7p")), "another Deployment");
        assert!(!auth.matches(&LineRef::plain("x")), "a plain file has no app");
        let edge = Scope { namespaces: vec!["edge".into()], containers: vec!["envoy".into()], ..Scope::default() };
        assert!(!edge.matches(&pod("edge", "gw-0")), "the container differs");
        let file = Scope { files: vec!["/var/log/auth.log".into()], ..Scope::default() };
        assert!(file.matches(&LineRef { file: Some("/var/log/auth.log"), ..LineRef::plain("x") }));
        assert!(!file.matches(&pod("prod", "web-0")));
        let bad = Scope { files: vec!["auth.log".into()], ..Scope::default() };
        assert_eq!(bad.validate("sources[0].match").map_err(|e| e.field), Err("sources[0].match.files[0]".into()));
    }
}
