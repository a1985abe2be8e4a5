//! `remedy-agent`: watches one node, reports findings to the coordinator,
//! and serves a local diagnostics endpoint.

#![forbid(unsafe_code)]

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use remedy_shared::config::EXIT_BAD_CONFIG;
use tokio::sync::watch;

use remedy_agent::clock::now;
use remedy_agent::config::{Cli, Config, CoordinatorSecurity};
use remedy_agent::diagnostics::{self, Board};
use remedy_agent::handler::Handlers;
use remedy_agent::infrastructure::OwnInfrastructure;
use remedy_agent::local::{self, LocalActions};
use remedy_agent::metrics::Metrics;
use remedy_agent::outbox::Outbox;
use remedy_agent::published::Published;
use remedy_agent::stream::{self, Connection, Link};
use remedy_agent::{detectors, identity, logs, nft, pods, procsig, reach, signals, snapshot, spool};

fn main() -> ExitCode {
    remedy_proto::tls::install_default_provider();
    let cli = Cli::parse();
    remedy_proto::logging::init_tracing(&cli.log_format);
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

async fn run(
    config: Config,
    kube: pods::Connection,
    client_tls: Option<Arc<remedy_proto::tls::ClientTls>>,
) -> anyhow::Result<()> {
    let shutdown = remedy_proto::shutdown::listen().context("cannot listen for SIGTERM and SIGINT")?;
    let agent_id = identity::agent_id(config.agent_id.as_deref(), &config.state_dir, &config.node_name)
        .with_context(|| format!("cannot read or create the agent id in {}", config.state_dir.display()))?;
    let spool = spool::Spool::open(&config.state_dir, config.spool_capacity).context("cannot open the spool")?;
    let metrics = Metrics::new();
    let outbox = Outbox::new(spool, metrics.outbox.clone());

    let listener = remedy_proto::listen::bind(config.diagnostics_listen)
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

    // Every feature is in place before the stream opens, so the hello
    // announces exactly the directives this agent can run.
    let pods = pods::start(&config.node_name, &config.pods, kube, outbox.clone(), metrics.pods.clone(), stopped());
    let blocking = nft::start(&config.blocking, &config.state_dir, metrics.blocks.clone(), stopped()).await;
    // This node's addresses and the cluster's: never reported by the
    // detectors, never blocked, whatever asks.
    let own = OwnInfrastructure::default();
    own.refresh_node();
    let logs = logs::start(&config.logs, &config.state_dir, outbox.clone(), metrics.logs.clone(), own.clone())?;
    let local = Arc::new(LocalActions::new(config.local_actions.clone(), metrics.local.clone(), logs.status.clone()));
    let processes =
        procsig::start(&config.processes, &config.node_name, outbox.clone(), metrics.processes.clone(), stopped());
    let sampler = signals::Sampler::new(config.top_processes).context("cannot read this node's resources")?;
    let node_detectors = detectors::NodeDetectors::new(config.detectors, config.node_name.clone(), sampler.cores());
    let node = Published::default();
    let sampler_task = tokio::spawn(signals::run(
        sampler,
        node_detectors,
        outbox.clone(),
        node.clone(),
        metrics.samples.clone(),
        config.sample_interval,
        stopped(),
    ));

    let mut handlers = Handlers::new();
    snapshot::register(&mut handlers, node.clone(), logs.detectors.clone());
    pods::directive::register(&mut handlers, &pods);
    reach::register(&mut handlers);
    nft::directive::register(&mut handlers, &blocking, &own);
    local::register(&mut handlers, &local);

    let connection = Published::new(Connection::connecting(config.coordinator.clone(), now()));
    let link = Link {
        agent_id: agent_id.clone(),
        node_name: config.node_name.clone(),
        outbox: outbox.clone(),
        handlers: Arc::new(handlers),
        node: node.clone(),
        connection: connection.clone(),
        metrics: metrics.stream.clone(),
        infrastructure: own.clone(),
    };
    let stream_task = tokio::spawn(stream::run(link, stream_config, stop_rx.clone()));
    let gate = match (&config.diagnostics_tokens, &config.security) {
        (Some(path), _) => {
            diagnostics::SubmitGate::Tokens(remedy_proto::tokens::load(path).map_err(anyhow::Error::msg)?)
        }
        (None, CoordinatorSecurity::Insecure) => diagnostics::SubmitGate::AnyLocalProcess,
        (None, CoordinatorSecurity::Tls { .. }) => diagnostics::SubmitGate::Closed,
    };
    let board = Board {
        agent_id,
        node_name: config.node_name.clone(),
        outbox,
        metrics,
        connection,
        node,
        pods: pods.report.status.clone(),
        logs: logs.status.clone(),
        blocking: blocking.status.clone(),
        log_detectors: logs.detectors_status.clone(),
        processes: processes.status.clone(),
        local_actions: local.status(),
        infrastructure: own.clone(),
    };
    let diagnostics_task = tokio::spawn(diagnostics::serve(listener, board, Arc::new(gate), stopped()));

    shutdown.await;
    tracing::info!("stopping");
    let _ = stop_tx.send(true);
    if let Some(tasks) = logs.tasks {
        tasks.stop().await;
    }
    let _ = stream_task.await;
    let _ = sampler_task.await;
    for task in [processes.task, blocking.task, pods.task].into_iter().flatten() {
        let _ = task.await;
    }
    diagnostics_task.await.context("diagnostics task failed")?.context("diagnostics endpoint failed")?;
    Ok(())
}
