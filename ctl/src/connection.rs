//! Where remedyctl connects and as whom: flags, then the current context of
//! the config file (shaped like a kubeconfig: `contexts`, `current-context`,
//! certificate paths), then defaults.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Connection flags given on the command line.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ConnectionFlags {
    /// Coordinator gRPC URL (default: the context's, else
    /// https://127.0.0.1:7070).
    #[arg(long, global = true, env = "REMEDY_COORDINATOR")]
    pub coordinator: Option<String>,
    /// The config file with contexts (default: $REMEDYCONFIG, else
    /// ~/.remedy/config).
    #[arg(long, global = true, env = "REMEDYCONFIG")]
    pub remedyconfig: Option<PathBuf>,
    /// The context to use instead of `current-context`.
    #[arg(long, global = true)]
    pub context: Option<String>,
    /// CAs that sign the coordinator's certificate (PEM).
    #[arg(long, global = true)]
    pub ca: Option<PathBuf>,
    /// Client certificate (PEM).
    #[arg(long, global = true)]
    pub cert: Option<PathBuf>,
    /// Client key (PEM).
    #[arg(long, global = true)]
    pub key: Option<PathBuf>,
    /// A file holding a bearer token (instead of a client certificate).
    #[arg(long, global = true)]
    pub token_file: Option<PathBuf>,
    /// Plaintext to an http:// coordinator started with --insecure.
    #[arg(long, global = true)]
    pub insecure: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct ConfigFile {
    current_context: Option<String>,
    #[serde(default)]
    contexts: Vec<NamedContext>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct NamedContext {
    name: String,
    context: ContextFile,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct ContextFile {
    coordinator: Option<String>,
    certificate_authority: Option<PathBuf>,
    client_certificate: Option<PathBuf>,
    client_key: Option<PathBuf>,
    token_file: Option<PathBuf>,
    server_name: Option<String>,
    #[serde(default)]
    insecure: bool,
}

/// Where and how to connect, settled.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    /// The URL.
    pub url: String,
    /// TLS files and the name to check; `None`: plaintext.
    pub tls: Option<(remedy_proto::tls::TlsFiles, Option<String>)>,
    /// A bearer token's file.
    pub token_file: Option<PathBuf>,
}

fn default_config_path() -> Option<PathBuf> {
    std::env::var_os("HOME").map(|home| Path::new(&home).join(".remedy/config"))
}

/// Resolves flags over the context file.
pub fn resolve(flags: &ConnectionFlags) -> anyhow::Result<Target> {
    let explicit = flags.remedyconfig.is_some();
    let path = flags.remedyconfig.clone().or_else(default_config_path);
    let file = match &path {
        Some(p) if p.exists() || explicit => {
            let text = std::fs::read_to_string(p).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", p.display()))?;
            let name = p.display().to_string();
            remedy_shared::config::parse_yaml::<ConfigFile>(&name, &text).map_err(|e| anyhow::anyhow!("{e}"))?
        }
        _ => ConfigFile::default(),
    };
    let context = match flags.context.clone().or(file.current_context.clone()) {
        None => ContextFile::default(),
        Some(name) => {
            let where_ = path.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "the config file".into());
            file.contexts
                .iter()
                .find(|c| c.name == name)
                .map(|c| c.context.clone())
                .ok_or_else(|| anyhow::anyhow!("no context `{name}` in {where_}"))?
        }
    };
    let url = flags.coordinator.clone().or(context.coordinator).unwrap_or_else(|| "https://127.0.0.1:7070".into());
    let insecure = flags.insecure || context.insecure;
    let token_file = flags.token_file.clone().or(context.token_file);
    if url.starts_with("http://") {
        if !insecure {
            anyhow::bail!(
                "`{url}` is plaintext: use https:// (the default), or pass --insecure for a coordinator started with --insecure"
            );
        }
        return Ok(Target { url, tls: None, token_file });
    }
    if !url.starts_with("https://") {
        anyhow::bail!("`{url}` is not a URL like https://127.0.0.1:7070");
    }
    let ca = flags.ca.clone().or(context.certificate_authority).ok_or_else(|| {
        anyhow::anyhow!(
            "no CA to check the coordinator against: give --ca or a context with certificate-authority (see `remedyctl pki init`)"
        )
    })?;
    let files = remedy_proto::tls::TlsFiles {
        cert: flags.cert.clone().or(context.client_certificate),
        key: flags.key.clone().or(context.client_key),
        ca,
    };
    Ok(Target { url, tls: Some((files, context.server_name)), token_file })
}

/// Writes a config file with one context, `name`, and makes it current.
pub fn write_context(path: &Path, name: &str, url: &str, pki: &remedy_proto::pki::LocalPki) -> std::io::Result<()> {
    let text = format!(
        "# remedyctl contexts (written by `remedyctl pki init`).\ncurrent-context: {name}\ncontexts:\n  - name: {name}\n    context:\n      coordinator: {url}\n      certificate-authority: {}\n      client-certificate: {}\n      client-key: {}\n",
        pki.ca.display(),
        pki.user.0.display(),
        pki.user.1.display()
    );
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(config: &Path) -> ConnectionFlags {
        ConnectionFlags { remedyconfig: Some(config.to_path_buf()), ..Default::default() }
    }

    #[test]
    fn the_current_context_supplies_what_flags_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config");
        std::fs::write(
            &path,
            "current-context: prod\ncontexts:\n  - name: prod\n    context:\n      coordinator: https://remedy:7070\n      certificate-authority: /ca.crt\n      client-certificate: /u.crt\n      client-key: /u.key\n  - name: dev\n    context:\n      coordinator: http://127.0.0.1:7070\n      insecure: true\n",
        )
        .unwrap();
        let t = resolve(&flags(&path)).unwrap();
        assert_eq!(t.url, "https://remedy:7070");
        let (files, _) = t.tls.unwrap();
        assert_eq!(files.ca, PathBuf::from("/ca.crt"));
        assert_eq!(files.cert, Some(PathBuf::from("/u.crt")));

        let mut f = flags(&path);
        f.context = Some("dev".into());
        assert_eq!(resolve(&f).unwrap().tls, None);
        f.context = Some("nope".into());
        assert!(resolve(&f).unwrap_err().to_string().contains("no context `nope`"));

        let mut f = flags(&path);
        f.coordinator = Some("http://127.0.0.1:1".into());
        assert!(resolve(&f).unwrap_err().to_string().contains("--insecure"));
    }
}
