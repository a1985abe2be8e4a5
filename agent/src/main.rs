//! `remedy-agent`: watches one node, reports findings to the coordinator,
//! and serves a local diagnostics endpoint.

#![forbid(unsafe_code)]

mod clock;
mod config;
mod detectors;
mod diagnostics;
mod directives;
mod identity;
mod local;
mod logs;
mod metrics;
mod nft;
mod pods;
mod procsig;
mod reach;
mod signals;
mod spool;
mod state;
mod stream;

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use remedy_shared::config::EXIT_BAD_CONFIG;
use tokio::sync::watch;

use crate::clock::now;
use crate::config::{Cli, Config, CoordinatorSecurity};
use crate::state::Shared;

fn main() -> ExitCode {
    remedy_proto::tls::install_default_provider();
    let cli = Cli::parse();
    init_tracing(&cli.log_format);
    let config = match Config::load(&cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("remedy-agent: {e}");
            return ExitCode::from(EXIT_BAD_CONFIG as u8);
        }
    };
    // Certificates are read now, so an unusable one is bad configuration.
    let client_tls = match &config.security {
        CoordinatorSecurity::Tls { files, .. } => match remedy_proto::tls::client(files.clone()) {
            Ok(tls) => Some(tls),
            Err(e) => {
                eprintln!("remedy-agent: tls: {e}");
                return ExitCode::from(EXIT_BAD_CONFIG as u8);
            }
        },
        CoordinatorSecurity::Insecure => None,
    };
    // Two worker threads: the agent must stay small on a busy node.
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("remedy-agent: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Pod watching needs a Kubernetes client; `pods.enabled: true` without
    // one is bad configuration, like any other.
    let source = cli.config.as_ref().map_or_else(|| "defaults".to_owned(), |p| p.display().to_string());
    let kube = match runtime.block_on(pods::connect(&config.pods, &source)) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("remedy-agent: {e}");
            return ExitCode::from(EXIT_BAD_CONFIG as u8);
        }
    };
    match runtime.block_on(run(config, kube, client_tls)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("remedy-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("REMEDY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // A log sink that went away (a closed pipe) must not stop the
        // process: by default a failed write is reported with `eprintln!`,
        // which panics on that same closed stderr, in whichever task logged,
        // and the signal task that logs "stopping" was one of them.
        .log_internal_errors(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn run(
    config: Config,
    kube: pods::Connection,
    client_tls: Option<Arc<remedy_proto::tls::ClientTls>>,
) -> anyhow::Result<()> {
    let shutdown = remedy_proto::shutdown::listen().context("cannot listen for SIGTERM and SIGINT")?;
    let agent_id = identity::agent_id(config.agent_id.as_deref(), &config.state_dir, &config.node_name)
        .with_context(|| format!("cannot read or create the agent id in {}", config.state_dir.display()))?;
    let spool = spool::Spool::open(&config.state_dir, config.spool_capacity).context("cannot open the spool")?;
    let metrics = metrics::Metrics::new();
    let shared =
        Shared::new(agent_id.clone(), config.node_name.clone(), config.coordinator.clone(), spool, metrics, now());

    let listener = tokio::net::TcpListener::bind(config.diagnostics_listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.diagnostics_listen))?;
    tracing::info!(
        agent = %agent_id,
        node = %config.node_name,
        coordinator = %config.coordinator,
        diagnostics = %listener.local_addr()?,
        "agent started"
    );

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = {
        let rx = stop_rx.clone();
        move || {
            let mut rx = rx.clone();
            async move {
                let _ = rx.wait_for(|s| *s).await;
            }
        }
    };
    let tls = match (&config.security, client_tls) {
        (CoordinatorSecurity::Tls { server_name, reload_every, .. }, Some(tls)) => {
            tokio::spawn(tls.clone().keep_reloading(*reload_every, stopped()));
            Some((tls, server_name.clone()))
        }
        _ => {
            let what = format!(
                "the stream to the coordinator {} is plaintext (--insecure): neither side is authenticated",
                config.coordinator
            );
            tokio::spawn(remedy_proto::tls::warn_plaintext_every_minute(what, stopped()));
            None
        }
    };
    let stream_config = stream::StreamConfig {
        coordinator: config.coordinator.clone(),
        tls,
        heartbeat_interval: config.heartbeat_interval,
        reconnect_initial: config.reconnect_initial,
        reconnect_max: config.reconnect_max,
        keepalive_interval: config.keepalive_interval,
        keepalive_timeout: config.keepalive_timeout,
        labels: config.labels.clone(),
    };
    // Pods first: a restart_pod directive that arrives on the first stream
    // finds the restarter in place.
    let pods_task = start_pods(&shared, &config, kube, stopped());
    // Before the stream: the hello announces the block directives only
    // once the table is in place.
    let blocking_task = nft::start(&shared, &config.blocking, &config.state_dir, stopped()).await;
    local::start(&shared, &config.local_actions);
    let stream_task = tokio::spawn(stream::run(shared.clone(), stream_config, stop_rx.clone()));
    let sampler = signals::Sampler::new(config.top_processes).context("cannot read this node's resources")?;
    let sampler_task = tokio::spawn(sample_loop(shared.clone(), sampler, config.clone(), stopped()));
    let gate = match (&config.diagnostics_tokens, &config.security) {
        (Some(path), _) => {
            diagnostics::SubmitGate::Tokens(remedy_proto::tokens::load(path).map_err(anyhow::Error::msg)?)
        }
        (None, CoordinatorSecurity::Insecure) => diagnostics::SubmitGate::AnyLocalProcess,
        (None, CoordinatorSecurity::Tls { .. }) => diagnostics::SubmitGate::Closed,
    };
    let diagnostics_task = tokio::spawn(diagnostics::serve(listener, shared.clone(), Arc::new(gate), stopped()));
    let log_tasks = start_logs(&shared, &config)?;
    let processes_task = procsig::start(&shared, &config, stopped());

    shutdown.await;
    tracing::info!("stopping");
    let _ = stop_tx.send(true);
    if let Some(tasks) = log_tasks {
        tasks.stop().await;
    }
    let _ = stream_task.await;
    let _ = sampler_task.await;
    if let Some(task) = processes_task {
        let _ = task.await;
    }
    if let Some(task) = blocking_task {
        let _ = task.await;
    }
    if let Some(task) = pods_task {
        let _ = task.await;
    }
    diagnostics_task.await.context("diagnostics task failed")?.context("diagnostics endpoint failed")?;
    Ok(())
}

/// Starts watching this node's pods when there is a client; says which way
/// it went either way.
fn start_pods(
    shared: &Arc<Shared>,
    config: &Config,
    kube: pods::Connection,
    stopped: impl Future<Output = ()> + Send + 'static,
) -> Option<tokio::task::JoinHandle<()>> {
    let mode = match config.pods.mode {
        config::PodsMode::Auto => "auto",
        config::PodsMode::On => "true",
        config::PodsMode::Off => "false",
    };
    let restart = config.pods.restart_failed;
    let mut status = shared.status();
    status.pods.restarts.enabled = restart.enabled;
    status.pods.restarts.max_per_hour = restart.max_per_hour;
    match kube {
        pods::Connection::On(client, from) => {
            tracing::info!(
                pods_enabled = mode,
                client = %from,
                restart_failed = restart.enabled,
                max_per_hour = restart.max_per_hour,
                "pod watching on: Kubernetes client from {from}"
            );
            status.pods.enabled = true;
            status.pods.client = from;
            drop(status);
            // One restarter, so the local rule and directives spend one budget.
            let restarter =
                Arc::new(pods::restart::Restarter::new(config.node_name.clone(), client.clone(), restart.max_per_hour));
            shared.set_restarter(restarter.clone());
            Some(tokio::spawn(pods::watch(shared.clone(), client, config.pods.clone(), restarter, stopped)))
        }
        pods::Connection::Off(why) => {
            tracing::info!(pods_enabled = mode, "pod watching off: {why}");
            status.pods.client = why;
            None
        }
    }
}

/// The log tailer and the task that hands what its detectors raise to the
/// spool, when tailing is on.
struct LogTasks {
    tailer: logs::TailerHandle,
    flush: tokio::task::JoinHandle<()>,
    stop_flush: tokio::sync::oneshot::Sender<()>,
}

impl LogTasks {
    /// Stops the tailer first (its final checkpoint is what makes a clean
    /// restart read every line once), then spools what the detectors raised
    /// from the last lines, so no line is checkpointed without its finding.
    async fn stop(self) {
        match tokio::task::spawn_blocking(move || self.tailer.stop()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "log tailer stopped without its checkpoint"),
            Err(e) => tracing::error!(error = %e, "log tailer did not stop"),
        }
        let _ = self.stop_flush.send(());
        let _ = self.flush.await;
    }
}

/// Starts the log tailer feeding the error classifier and the brute-force
/// detector, when enabled.
fn start_logs(shared: &Arc<Shared>, config: &Config) -> anyhow::Result<Option<LogTasks>> {
    let c = &config.logs;
    if !c.enabled {
        tracing::info!("log tailing off (logs.enabled: false)");
        return Ok(None);
    }
    let tailer_config = logs::TailerConfig {
        cri_root: Some(c.root.clone()),
        plain_files: c.files.clone(),
        max_line_bytes: c.max_line_bytes,
        discover_interval: c.discover_interval,
        poll_interval: c.poll_interval,
        checkpoint_interval: c.checkpoint_interval,
        checkpoint_path: config.state_dir.join("log-checkpoint.json"),
        first_start: c.first_start,
    };
    // Validated with the configuration; a failure here is a bug, not input.
    let detectors = logs::detect::LogDetectors::new(c.errors.clone(), c.brute_force.clone())
        .map_err(|e| anyhow::anyhow!("log detectors: {}: {}", e.field, e.message))?;
    let (stop_flush, flush_stopped) = tokio::sync::oneshot::channel::<()>();
    let flush = tokio::spawn(detectors.clone().flush(shared.clone(), async move {
        let _ = flush_stopped.await;
    }));
    shared.set_log_detectors(detectors.clone());
    let sink = detectors.sink(shared.metrics.logs.lines_accepted.clone());
    let published = shared.clone();
    let publish: logs::tailer::Publish = Box::new(move |status| published.status().logs = status);
    let tailer = logs::spawn(tailer_config, sink, shared.metrics.logs.clone(), publish)
        .context("cannot start the log tailer")?;
    tracing::info!(root = %c.root.display(), files = c.files.len(), "log tailing on");
    Ok(Some(LogTasks { tailer, flush, stop_flush }))
}

/// Samples resources, runs the detectors and spools what they raise.
async fn sample_loop(
    shared: Arc<Shared>,
    mut sampler: signals::Sampler,
    config: Config,
    stopped: impl Future<Output = ()>,
) {
    let mut detectors = detectors::NodeDetectors::new(config.detectors, config.node_name.clone(), sampler.cores());
    let mut tick = tokio::time::interval(config.sample_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(stopped);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = &mut stopped => return,
        }
        let at = now();
        let snapshot = sampler.sample(at);
        shared.metrics.samples.inc();
        let findings = detectors.observe(&snapshot, at);
        {
            let mut status = shared.status();
            status.snapshot = Some(snapshot);
            status.active_findings = detectors.raised().cloned().collect();
        }
        if let Err(e) = shared.submit(findings).await {
            tracing::error!(error = %e, "cannot spool findings");
        }
    }
}
