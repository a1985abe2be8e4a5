//! Remedy's own binaries as real processes on loopback.
//!
//! Each process writes its log to a file in the test's directory; when a
//! test fails, the guard prints the tail of every log so the failure can be
//! read without re-running. Processes are killed when their handle drops,
//! so a panicking test leaves nothing behind.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use remedy_proto::v1::admin_service_client::AdminServiceClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::{Channel, Endpoint};

/// Where cargo put the workspace's binaries.
pub fn bin(name: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let profile = if cfg!(debug_assertions) { "debug" } else { "release" };
    let path = target.join(profile).join(name);
    assert!(
        path.exists(),
        "{} is missing: build the binaries first (`cargo build --workspace --bins`, which `make test` does)",
        path.display()
    );
    path
}

/// A loopback address with a port nobody is listening on right now.
pub fn free_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port on loopback");
    listener.local_addr().expect("local address of an ephemeral listener")
}

/// Polls `check` until it returns `Some`, or panics after `limit` naming
/// `what`. Waiting is bounded and condition-driven; never a fixed sleep.
pub async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "gave up waiting for {what} after {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A running process of ours, killed on drop.
#[derive(Debug)]
pub struct Proc {
    name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Proc {
    fn spawn(name: &str, binary: &str, args: &[String], log: PathBuf) -> Proc {
        Self::spawn_program(name, &bin(binary), args, log)
    }

    /// Starts any program, with its output in `log`.
    pub fn spawn_program(name: &str, program: &Path, args: &[String], log: PathBuf) -> Proc {
        let out = std::fs::OpenOptions::new().create(true).append(true).open(&log).expect("open a process log");
        let err = out.try_clone().expect("clone the log handle");
        let child = Command::new(program)
            .args(args)
            .env("REMEDY_LOG", "info")
            .env_remove("REMEDY_COORDINATOR")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));
        Proc { name: name.to_owned(), child: Some(child), log }
    }

    /// Kills the process with SIGKILL: no chance to flush or say goodbye.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// How the process ended; `None` while it runs.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    /// Its process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("---- last lines of {} ({}) ----", self.name, self.log.display());
            for line in tail.into_iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

/// The bearer token the harness gives Alertmanager (and tests posting as
/// it) for the coordinators it starts.
pub const ALERTMANAGER_TOKEN: &str = "test-alertmanager-token";

/// A coordinator with its ports and data directory, restartable in place.
#[derive(Debug)]
pub struct Coordinator {
    /// gRPC address.
    pub grpc: SocketAddr,
    /// HTTP address.
    pub http: SocketAddr,
    dir: PathBuf,
    extra: Vec<String>,
    proc: Option<Proc>,
}

impl Coordinator {
    /// Starts a coordinator keeping its data under `dir`.
    pub async fn start(dir: &Path) -> Coordinator {
        Self::start_with(dir, &[]).await
    }

    /// Starts a coordinator with extra command-line arguments.
    pub async fn start_with(dir: &Path, extra: &[&str]) -> Coordinator {
        Self::start_on(dir, free_addr(), extra).await
    }

    /// Starts a coordinator serving gRPC on `grpc`.
    pub async fn start_on(dir: &Path, grpc: SocketAddr, extra: &[&str]) -> Coordinator {
        let mut c = Coordinator {
            grpc,
            http: free_addr(),
            dir: dir.to_path_buf(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            proc: None,
        };
        c.restart().await;
        c
    }

    /// The URL agents and remedyctl use.
    pub fn url(&self) -> String {
        format!("http://{}", self.grpc)
    }

    /// Starts a coordinator serving mutual TLS with `server`'s certificate
    /// and key, trusting clients `client_ca` signed, configured by `config`
    /// (written to `dir/coordinator.yaml`), with `extra` arguments after.
    pub async fn start_tls(
        dir: &Path,
        server: &(PathBuf, PathBuf),
        client_ca: &Path,
        config: &str,
        extra: &[&str],
    ) -> Coordinator {
        let config_path = dir.join("coordinator.yaml");
        std::fs::write(&config_path, config).expect("write the configuration");
        let path = |p: &Path| p.to_str().expect("a UTF-8 path").to_owned();
        let mut args = vec![
            "--tls-cert".to_owned(),
            path(&server.0),
            "--tls-key".to_owned(),
            path(&server.1),
            "--tls-client-ca".to_owned(),
            path(client_ca),
            "--config".to_owned(),
            path(&config_path),
        ];
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Coordinator::start_with(&dir.join("c"), &args).await
    }

    /// The gRPC URL of a coordinator serving TLS.
    pub fn https_url(&self) -> String {
        format!("https://{}", self.grpc)
    }

    /// Kills it with SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
    }

    /// How the process ended; `None` while it runs (or was killed by us).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.proc.as_mut().and_then(Proc::exited)
    }

    /// Starts it again on the same ports and data, and waits until it serves.
    pub async fn restart(&mut self) {
        self.kill();
        let mut args = vec![
            "--data-dir".to_owned(),
            self.dir.join("data").display().to_string(),
            "--grpc-listen".to_owned(),
            self.grpc.to_string(),
            "--http-listen".to_owned(),
            self.http.to_string(),
            "--id".to_owned(),
            "test-coordinator".to_owned(),
        ];
        // Plaintext unless the test configures TLS itself.
        if !self.extra.iter().any(|a| a.starts_with("--tls")) {
            args.push("--insecure".to_owned());
        }
        // The webhook takes nothing anonymous: the harness's Alertmanager
        // holds a token, unless the test names a tokens file itself.
        if !self.extra.iter().any(|a| a.starts_with("--alertmanager-tokens-file")) {
            let tokens = self.dir.join("alertmanager-tokens.yaml");
            std::fs::create_dir_all(&self.dir).expect("create the coordinator's directory");
            std::fs::write(&tokens, format!("- {{user: alertmanager, token: {ALERTMANAGER_TOKEN}}}\n"))
                .expect("write the webhook's tokens");
            args.push("--alertmanager-tokens-file".to_owned());
            args.push(tokens.display().to_string());
        }
        args.extend(self.extra.iter().cloned());
        std::fs::create_dir_all(&self.dir).expect("create the coordinator's directory");
        self.proc = Some(Proc::spawn("coordinator", "remedy-coordinator", &args, self.dir.join("coordinator.log")));
        let http = self.http;
        eventually("the coordinator's /healthz", Duration::from_secs(30), || async move {
            http_request(http, "GET", "/healthz", None).await.ok().filter(|(code, _)| *code == 200)
        })
        .await;
    }

    /// An admin client.
    pub async fn admin(&self) -> AdminServiceClient<Channel> {
        let channel =
            Endpoint::from_shared(self.url()).expect("valid URL").connect().await.expect("connect to admin API");
        AdminServiceClient::new(channel).max_decoding_message_size(remedy_proto::MAX_MESSAGE_BYTES)
    }

    /// Posts an Alertmanager notification as the harness's Alertmanager
    /// does (`application/json`, its bearer token); the webhook's answer.
    pub async fn notify(&self, payload: &str) -> (u16, String) {
        let bearer = format!("Bearer {ALERTMANAGER_TOKEN}");
        http_request_with(self.http, "POST", "/api/v1/alertmanager", &[("Authorization", &bearer)], Some(payload))
            .await
            .expect("post to the webhook")
    }

    /// The value of a metric on /metrics (0 if absent).
    pub async fn metric(&self, name: &str) -> f64 {
        let (_, body) = http_request(self.http, "GET", "/metrics", None).await.expect("read /metrics");
        metric_value(&body, name)
    }

    /// The process log.
    pub fn log(&self) -> String {
        self.proc.as_ref().map(Proc::log).unwrap_or_default()
    }
}

/// A metric's value in a Prometheus text exposition (0 if absent).
pub fn metric_value(exposition: &str, name: &str) -> f64 {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// An agent with its state directory, restartable in place.
#[derive(Debug)]
pub struct Agent {
    /// Diagnostics address.
    pub diagnostics: SocketAddr,
    /// Node name it reports.
    pub node: String,
    dir: PathBuf,
    coordinator: String,
    extra: Vec<String>,
    /// A program (and its arguments) the agent is started through, given
    /// the agent's binary and arguments after its own; empty: none.
    wrapper: Vec<String>,
    proc: Option<Proc>,
}

impl Agent {
    /// Starts an agent for `node`, keeping its state under `dir`.
    pub async fn start(dir: &Path, node: &str, coordinator: &str) -> Agent {
        Self::start_with(dir, node, coordinator, &[]).await
    }

    /// Starts an agent with extra command-line arguments.
    pub async fn start_with(dir: &Path, node: &str, coordinator: &str, extra: &[&str]) -> Agent {
        Self::start_wrapped(dir, node, coordinator, extra, &[]).await
    }

    /// Starts an agent through `wrapper`, a program and its arguments that
    /// end by running the agent's binary and arguments given after them
    /// (`unshare --mount ... sh -c '...; exec "$@"'`), so it runs in a
    /// namespace the test made for it. The wrapper must exec the agent, so
    /// that [`pid`](Self::pid) is the agent's.
    pub async fn start_wrapped(dir: &Path, node: &str, coordinator: &str, extra: &[&str], wrapper: &[String]) -> Agent {
        let mut a = Agent {
            diagnostics: free_addr(),
            node: node.to_owned(),
            dir: dir.to_path_buf(),
            coordinator: coordinator.to_owned(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            wrapper: wrapper.to_vec(),
            proc: None,
        };
        a.restart().await;
        a
    }

    /// Its process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().and_then(Proc::pid)
    }

    /// Kills it with SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
    }

    /// Starts it again with the same state and waits for its endpoint.
    pub async fn restart(&mut self) {
        self.kill();
        std::fs::create_dir_all(&self.dir).expect("create the agent's directory");
        let mut args = vec![
            "--node-name".to_owned(),
            self.node.clone(),
            "--state-dir".to_owned(),
            self.dir.join("state").display().to_string(),
            "--coordinator".to_owned(),
            self.coordinator.clone(),
            "--diagnostics-listen".to_owned(),
            self.diagnostics.to_string(),
        ];
        if self.coordinator.starts_with("http://") {
            args.push("--insecure".to_owned());
        }
        args.extend(self.extra.iter().cloned());
        let name = format!("agent {}", self.node);
        let log = self.dir.join("agent.log");
        self.proc = Some(match self.wrapper.split_first() {
            None => Proc::spawn(&name, "remedy-agent", &args, log),
            Some((program, wrapper_args)) => {
                let mut all = wrapper_args.to_vec();
                all.push(bin("remedy-agent").display().to_string());
                all.extend(args);
                Proc::spawn_program(&name, Path::new(program), &all, log)
            }
        });
        let addr = self.diagnostics;
        eventually("the agent's /healthz", Duration::from_secs(30), || async move {
            http_request(addr, "GET", "/healthz", None).await.ok().filter(|(code, _)| *code == 200)
        })
        .await;
    }

    /// Submits findings through the local endpoint; returns the HTTP status and body.
    pub async fn submit(&self, findings: &serde_json::Value) -> (u16, serde_json::Value) {
        let (code, body) = http_request(self.diagnostics, "POST", "/v1/findings", Some(&findings.to_string()))
            .await
            .expect("POST /v1/findings");
        (code, serde_json::from_str(&body).unwrap_or(serde_json::Value::String(body)))
    }

    /// `/debug/state` as JSON.
    pub async fn debug_state(&self) -> serde_json::Value {
        let (_, body) = http_request(self.diagnostics, "GET", "/debug/state", None).await.expect("GET /debug/state");
        serde_json::from_str(&body).expect("/debug/state is JSON")
    }

    /// The status code of `/readyz`.
    pub async fn readyz(&self) -> u16 {
        http_request(self.diagnostics, "GET", "/readyz", None).await.map(|(c, _)| c).unwrap_or(0)
    }

    /// The process log.
    pub fn log(&self) -> String {
        self.proc.as_ref().map(Proc::log).unwrap_or_default()
    }
}

/// A minimal HTTP/1.1 request on loopback: (status, body).
pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> std::io::Result<(u16, String)> {
    http_request_with(addr, method, path, &[], body).await
}

/// As [`http_request`], with more headers; a `Content-Type` among them
/// replaces `application/json`.
pub async fn http_request_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> std::io::Result<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let body = body.unwrap_or("");
    let mut head = String::new();
    if !headers.iter().any(|(name, _)| name.eq_ignore_ascii_case("content-type")) {
        head.push_str("Content-Type: application/json\r\n");
    }
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{head}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let chunked = head.to_ascii_lowercase().contains("transfer-encoding: chunked");
    Ok((code, if chunked { dechunk(rest) } else { rest.to_owned() }))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else { break };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// Runs `remedyctl` with `args`; returns (exit status, stdout, stderr).
pub fn remedyctl(coordinator: &str, args: &[&str]) -> (ExitStatus, String, String) {
    let mut cmd = Command::new(bin("remedyctl"));
    cmd.arg("--coordinator").arg(coordinator);
    if coordinator.starts_with("http://") {
        cmd.arg("--insecure");
    }
    let out =
        cmd.env_remove("REMEDYCONFIG").env("HOME", std::env::temp_dir()).args(args).output().expect("run remedyctl");
    (out.status, String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Every stored finding, through the admin API, keyed by (agent id, sequence).
pub async fn all_findings(
    admin: &mut AdminServiceClient<Channel>,
) -> BTreeMap<(String, u64), remedy_proto::v1::StoredFinding> {
    let mut out = BTreeMap::new();
    let mut page_token = String::new();
    loop {
        let page = admin
            .list_findings(remedy_proto::v1::ListFindingsRequest { page_size: 5_000, page_token, ..Default::default() })
            .await
            .expect("list findings")
            .into_inner();
        for f in page.findings {
            let previous = out.insert((f.agent_id.clone(), f.sequence), f);
            assert!(previous.is_none(), "the store returned a finding twice");
        }
        page_token = page.next_page_token;
        if page_token.is_empty() {
            return out;
        }
    }
}
