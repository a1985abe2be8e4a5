//! `remedy-coordinator`: takes findings from agents, keeps incidents, and
//! serves the admin API.

#![forbid(unsafe_code)]

use std::collections::BTreeSet;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use remedy_proto::MAX_MESSAGE_BYTES;
use remedy_proto::listen::{self, ActivityLayer, Gate};
use remedy_proto::v1::admin_service_server::AdminServiceServer;
use remedy_proto::v1::agent_service_server::AgentServiceServer;
use remedy_shared::config::{ConfigError, EXIT_BAD_CONFIG};
use remedy_shared::finding::FindingState;
use tokio::sync::watch;

use remedy_coordinator::actuators;
use remedy_coordinator::auth::{Authenticator, Transport};
use remedy_coordinator::config::{Cli, Config, GrpcSecurity, KubernetesConfig, LeaderElectionConfig};
use remedy_coordinator::directives::Directives;
use remedy_coordinator::engine::Engine;
use remedy_coordinator::escalator::{self, Clock, Directory, Escalator};
use remedy_coordinator::infrastructure::{self, InfrastructureMap};
use remedy_coordinator::leader::{LeaderElector, PodLabeler};
use remedy_coordinator::metrics::Metrics;
use remedy_coordinator::recorder::Recorder;
use remedy_coordinator::registry::Registry;
use remedy_coordinator::store::Store;
use remedy_coordinator::store::cluster::ClusterStore;
use remedy_coordinator::store::embedded::EmbeddedStore;
use remedy_coordinator::{admin_service, agent_service, http, runbooks};
use remedy_shared::run::Catalog;
use remedy_shared::runbook::ActionCatalog;

fn main() -> ExitCode {
    remedy_proto::tls::install_default_provider();
    let cli = Cli::parse();
    remedy_proto::logging::init_tracing(&cli.log_format);
    let config = match Config::load(&cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("remedy-coordinator: {e}");
            return ExitCode::from(EXIT_BAD_CONFIG as u8);
        }
    };
    let catalog = match &config.runbooks_dir {
        Some(dir) => match runbooks::load_dir(dir, &ActionCatalog::this_release()) {
            Ok(loaded) => loaded,
            Err(e) => {
                eprintln!("remedy-coordinator: {e}");
                return ExitCode::from(EXIT_BAD_CONFIG as u8);
            }
        },
        None => runbooks::LoadedCatalog::default(),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("remedy-coordinator: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let directory = Directory {
        policies: catalog.policies,
        schedules: catalog.schedules,
        templates: catalog.templates,
        people: config.people.clone(),
        links: config.links.clone(),
    };
    let catalog = Arc::new(Catalog::new(catalog.runbooks.into_iter().map(|l| l.runbook).collect()));
    match runtime.block_on(run(config, catalog, Arc::new(directory))) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is::<BadConfig>() => {
            eprintln!("remedy-coordinator: {e:#}");
            ExitCode::from(EXIT_BAD_CONFIG as u8)
        }
        Err(e) => {
            eprintln!("remedy-coordinator: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: Config, catalog: Arc<Catalog>, directory: Arc<Directory>) -> anyhow::Result<()> {
    // One clock for everything that stamps or schedules by the time of day.
    let clock = Clock::System;
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = move || until_stopped(stop_rx.clone());
    let signal_stop = stop_tx.clone();
    let shutdown = remedy_proto::shutdown::listen().context("cannot listen for SIGTERM and SIGINT")?;
    tokio::spawn(async move {
        shutdown.await;
        tracing::info!("stopping");
        let _ = signal_stop.send(true);
    });

    // Certificates and tokens are read before anything else starts, so a
    // bad path or an unusable key is a configuration error (exit 64).
    let (transport, server_tls) = match &config.security {
        GrpcSecurity::Tls { files, reload_every } => {
            let tls = remedy_proto::tls::server(files.clone()).map_err(|e| bad_config("tls", e.to_string()))?;
            (Transport::Tls, Some((tls, *reload_every)))
        }
        GrpcSecurity::Insecure => (Transport::Insecure, None),
    };
    let auth =
        Authenticator::new(transport, &config.authorization).map_err(|e| bad_config("authorization.tokens_file", e))?;

    let kube = match &config.kubernetes {
        None => None,
        Some(k) => Some(kube_clients(k).await?),
    };
    let election = match (&kube, config.kubernetes.as_ref().and_then(|k| k.leader_election.as_ref())) {
        (Some(clients), Some(le)) => Some(start_election(&clients.control, le, &config.id, &clock, &stopped)?),
        _ => None,
    };
    // Every listener, a standby's included, closes connections that hold
    // a place without a request, and counts what it closes.
    let metrics = Metrics::new();
    let http_gate = Gate::new(config.connections, metrics.on_close("http"));
    if let Some((elector, _)) = &election
        && !stand_by(elector, config.http_listen, http_gate.clone(), stopped()).await?
    {
        return finish_election(election).await;
    }

    let local = EmbeddedStore::open(&config.data_dir)
        .with_context(|| format!("cannot open the store in {}", config.data_dir.display()))?;
    // Replicas that take turns must share what they know: with an election,
    // incidents, runs, the rails' memory and the counters live in the
    // cluster beside the Lease, and this term starts from them.
    let state_namespace = config.kubernetes.as_ref().and_then(|k| k.leader_election.as_ref()).map(|le| &le.namespace);
    let store: Arc<dyn Store> = match (&kube, state_namespace) {
        (Some(clients), Some(namespace)) => {
            tracing::info!(namespace = %namespace, "state in the cluster (remedy.dev objects)");
            Arc::new(ClusterStore::new(local, clients.control.clone(), namespace, tokio::runtime::Handle::current()))
        }
        _ => Arc::new(local),
    };
    let registry = Arc::new(Registry::default());
    let start = clock.now();
    let own = remedy_proto::interfaces::local_addresses().map_err(anyhow::Error::msg)?;
    let infrastructure =
        InfrastructureMap::new(infrastructure::fixed_ranges(&own, &config.guard_rails.protected.never_block));
    for agent in store.list_agents().context("cannot read agents from the store")? {
        registry.seed(&agent.agent_id, &agent.node_name, start);
        infrastructure.announce(&agent.node_name, agent.node_addresses.iter().copied());
    }
    if let Some(clients) = &kube {
        let api_server = infrastructure::api_server_address(&clients.server_url);
        tokio::spawn(infrastructure.clone().keep_watching_cluster(clients.control.clone(), api_server, stopped()));
    }
    let (recorder, runs, guard) =
        Recorder::start_with_clock(store.clone(), metrics.clone(), catalog.clone(), clock.clone())
            .context("cannot start the writer")?;
    let directives = Directives::new(clock.clone());
    let mut bans = remedy_coordinator::bans::Bans::new(store.clone(), directives.clone());
    if let Some(edge) = &config.edge {
        let edge = remedy_coordinator::edge::Edge::new(edge.clone()).map_err(anyhow::Error::msg)?;
        bans = bans.with_edge(Arc::new(edge));
    }
    let postgres = actuators::postgres::PostgresActuator::new(config.databases.clone())
        .context("cannot build the HTTP client for the PostgreSQL repoint hook")?
        .with_recorder(recorder.clone())
        .with_agents(directives.clone());
    let actuators =
        actuators::this_release(directives.clone(), store.clone(), kube.as_ref().map(|k| k.actuators.clone()))
            .context("cannot build the HTTP client for the http actuator")?
            .with(Arc::new(actuators::block::BlockActuator::new(bans.clone())))
            .with(Arc::new(postgres.clone()))
            .with(Arc::new(actuators::redis::RedisActuator::new(config.caches.clone())))
            .with(Arc::new(
                actuators::notify::NotifyActuator::new(config.channels.with_clock(clock.clone()))
                    .with_recorder(recorder.clone()),
            ));
    let channel_names: BTreeSet<String> = config.channels.names().map(str::to_owned).collect();
    let mut engine = Engine::new(
        catalog.clone(),
        &config.guard_rails,
        actuators,
        recorder.clone(),
        channel_names.clone(),
        guard,
        infrastructure.clone(),
    );
    // People and channels are this site's; a policy naming one that is not
    // configured still loads (the default catalog runs anywhere) and says
    // so here and, when it pages, on the incident's timeline.
    for (field, problem) in escalator::missing_references(&directory, &channel_names) {
        tracing::warn!(field = %field, "{problem}: pages to it will say nobody was told");
    }
    if let Some((field, problem)) = escalator::audience_conflicts(&directory, &config.channels).into_iter().next() {
        return Err(bad_config(&field, format!("{problem}: internal words would reach customers")));
    }
    if let Some((elector, _)) = &election {
        engine = engine.fenced_by(elector.clone());
    }
    engine.report_rails();
    if kube.is_none() {
        tracing::warn!(
            kinds = %actuators::kube::KINDS.join(", "),
            "no Kubernetes cluster configured (`kubernetes:` or --kubeconfig): these action kinds rehearse"
        );
    }
    for runbook in catalog.runbooks() {
        tracing::info!(
            runbook = runbook.id(),
            priority = %runbook.priority,
            rehearsed = %engine.rehearsed_steps(runbook).into_iter().map(|(id, _)| id).collect::<Vec<_>>().join(", "),
            "runbook loaded"
        );
    }

    let grpc_listener = remedy_proto::listen::bind(config.grpc_listen)
        .with_context(|| format!("cannot listen for gRPC on {}", config.grpc_listen))?;
    let http_listener = remedy_proto::listen::bind(config.http_listen)
        .with_context(|| format!("cannot listen for HTTP on {}", config.http_listen))?;
    tracing::info!(
        id = %config.id,
        grpc = %grpc_listener.local_addr()?,
        http = %http_listener.local_addr()?,
        data_dir = %config.data_dir.display(),
        leader = election.as_ref().map(|(e, _)| e.identity().to_owned()).unwrap_or_else(|| "standalone".into()),
        "coordinator started"
    );

    // A leader that loses its lease stops: what it holds in memory may be
    // stale next to the new leader's, and a new term starts from the
    // cluster's state. Kubernetes restarts the process as a candidate.
    let lost = Arc::new(std::sync::atomic::AtomicBool::new(false));
    if let Some((elector, _)) = &election {
        let mut leadership = elector.subscribe();
        let (lost, stop) = (lost.clone(), stop_tx.clone());
        tokio::spawn(async move {
            if leadership.wait_for(|l| !l.leader).await.is_ok() && !*stop.borrow() {
                tracing::error!("lost the lease: stopping so that only the leader acts");
                lost.store(true, std::sync::atomic::Ordering::SeqCst);
                let _ = stop.send(true);
            }
        });
    }

    let agent_service = agent_service::AgentService {
        coordinator_id: config.id.clone(),
        recorder: recorder.clone(),
        registry: registry.clone(),
        metrics: metrics.clone(),
        heartbeat_interval: config.heartbeat_interval,
        max_batch_findings: config.max_batch_findings,
        directives: directives.clone(),
        auth: auth.clone(),
        stopping: stop_tx.subscribe(),
        infrastructure: infrastructure.clone(),
    };
    let admin = admin_service::Admin {
        store: store.clone(),
        registry: registry.clone(),
        recorder: recorder.clone(),
        engine: engine.clone(),
        bans: bans.clone(),
        two_person_approvals: auth.two_person_approvals(),
        catalog: catalog.clone(),
    };
    let chatops = remedy_coordinator::chatops::ChatOps::new(
        admin.clone(),
        config.authorization.bindings.clone(),
        config.chatops.clone(),
    );
    tokio::spawn(chatops.clone().announce_approvals(stopped()));
    let admin_service = admin_service::AdminService::new(admin, auth.clone(), metrics.clone());
    tokio::spawn(auth.clone().keep_reloading_tokens(std::time::Duration::from_secs(30), stopped()));
    tokio::spawn(bans.keep_reasserting(stopped()));
    tokio::spawn(postgres.keep_guarding(stopped.clone()));
    tokio::spawn(engine.drive(runs, stopped()));
    let escalator = Escalator::new(
        recorder.clone(),
        store.clone(),
        config.channels.with_clock(clock.clone()),
        directory.clone(),
        clock.clone(),
        metrics.clone(),
    );
    tokio::spawn(escalator.run(stopped()));
    tokio::spawn(remedy_coordinator::reports::keep_metrics(
        store.clone(),
        metrics.clone(),
        clock.clone(),
        recorder.subscribe(),
        stopped(),
    ));

    tokio::spawn(watch_staleness(agent_service.clone(), config.clone(), clock.clone(), stopped()));
    tokio::spawn(sweep_expired(recorder.clone(), config.expiry_sweep_interval, stopped()));
    tokio::spawn(forget_past_retention(recorder.clone(), config.retention, stopped()));

    let limits = config.connections;
    let grpc_gate = Gate::new(limits, metrics.on_close("grpc"));
    // Pings find a peer that vanished with a stream open; the activity
    // layer keeps open streams from counting as idle.
    let router = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(limits.keepalive_interval))
        .http2_keepalive_timeout(Some(limits.keepalive_timeout))
        .layer(ActivityLayer)
        .add_service(
            AgentServiceServer::new(agent_service)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(
            AdminServiceServer::new(admin_service)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        );
    let grpc: GrpcServing = match server_tls {
        Some((tls, reload_every)) => {
            tokio::spawn(tls.clone().keep_reloading(reload_every, stopped()));
            Box::pin(
                router.serve_with_incoming_shutdown(
                    remedy_proto::tls::incoming(grpc_listener, tls, grpc_gate),
                    stopped(),
                ),
            )
        }
        None => {
            let what = format!(
                "gRPC on {} is served in plaintext (--insecure); agents and admin callers are not authenticated by certificate",
                config.grpc_listen
            );
            tokio::spawn(remedy_proto::tls::warn_plaintext_every_minute(what, stopped()));
            Box::pin(router.serve_with_incoming_shutdown(
                listen::incoming(grpc_listener, grpc_gate, listen::plaintext()),
                stopped(),
            ))
        }
    };
    let senders = remedy_coordinator::auth::TokenFile::load(config.alertmanager_tokens.as_deref())
        .map_err(|e| bad_config("alertmanager.tokens_file", e))?;
    if !senders.is_configured() {
        tracing::warn!("the Alertmanager webhook accepts no notification: alertmanager.tokens_file is not configured");
    }
    tokio::spawn(senders.clone().keep_reloading(std::time::Duration::from_secs(30), stopped()));
    let webhook = remedy_coordinator::alertmanager::Webhook {
        recorder: recorder.clone(),
        senders,
        scopes: config.alertmanager_scopes.clone(),
        catalog: catalog.clone(),
    };
    let http = http::serve(http_listener, http_gate, metrics.clone(), webhook, chatops, stopped());

    let grpc_task = tokio::spawn(grpc);
    let http_task = tokio::spawn(http);
    stopped().await;
    grpc_task.await.context("gRPC server task failed")?.context("gRPC server failed")?;
    http_task.await.context("HTTP server task failed")?.context("HTTP server failed")?;
    finish_election(election).await?;
    if lost.load(std::sync::atomic::Ordering::SeqCst) {
        anyhow::bail!("lost the lease; a new term starts from the state in the cluster");
    }
    Ok(())
}

/// Clients for the configured cluster: one for the actuators, which must
/// see every refusal as it is (no automatic retries: a 429 from a
/// disruption budget is an answer), and one for the election and the
/// store, which ride out a busy or restarting API server with kube's
/// retries. A kubeconfig that cannot be used is a configuration error.
async fn kube_clients(k: &KubernetesConfig) -> anyhow::Result<KubeClients> {
    let config = match &k.kubeconfig {
        Some(path) => actuators::kube::config_from_kubeconfig(path).await,
        None => actuators::kube::config_from_environment().await,
    }
    .map_err(|e| bad_config("kubernetes.kubeconfig", e.to_string()))?;
    let actuators = actuators::kube::client_from_config(config.clone())
        .map_err(|e| bad_config("kubernetes.kubeconfig", e.to_string()))?;
    let server_url = config.cluster_url.to_string();
    let control = ::kube::Client::try_from(config).map_err(|e| bad_config("kubernetes.kubeconfig", e.to_string()))?;
    Ok(KubeClients { actuators, control, server_url })
}

/// See [`kube_clients`].
#[derive(Clone)]
struct KubeClients {
    actuators: ::kube::Client,
    control: ::kube::Client,
    /// The API server, as the kubeconfig names it.
    server_url: String,
}

/// Starts taking part in the election, and the labeling of this pod while it
/// leads (when the downward API names the pod). The identity is the
/// replica's id with a random suffix, so a restarted process never mistakes
/// its previous life's term for its own.
fn start_election(
    client: &::kube::Client,
    le: &LeaderElectionConfig,
    id: &str,
    clock: &Clock,
    stopped: &impl Fn() -> StopFuture,
) -> anyhow::Result<(LeaderElector, tokio::task::JoinHandle<()>)> {
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    let identity = format!("{id}-{}", &suffix[..8]);
    let elector = LeaderElector::new(client.clone(), &le.namespace, &le.lease, &identity, le.timings, clock.clone())
        .map_err(|e| bad_config("kubernetes.leader_election", e))?;
    let task = tokio::spawn(elector.clone().run(stopped()));
    if let Some(labeler) = PodLabeler::from_env(client.clone()) {
        tokio::spawn(labeler.follow(elector.subscribe(), stopped()));
    }
    Ok((elector, task))
}

/// Waits for the lease, answering health checks meanwhile. `false`: stopped
/// before leading.
async fn stand_by(
    elector: &LeaderElector,
    http_listen: std::net::SocketAddr,
    gate: Arc<Gate>,
    stopped: impl Future<Output = ()>,
) -> anyhow::Result<bool> {
    let listener =
        remedy_proto::listen::bind(http_listen).with_context(|| format!("cannot listen for HTTP on {http_listen}"))?;
    tracing::info!(lease = %elector.lease(), identity = %elector.identity(), "standing by for the lease");
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(http::serve_standby(listener, gate, async move {
        let _ = done_rx.await;
    }));
    let mut leadership = elector.subscribe();
    let leading = tokio::select! {
        got = leadership.wait_for(|l| l.leader) => got.is_ok(),
        () = stopped => false,
    };
    let _ = done_tx.send(());
    server.await.context("standby HTTP task failed")?.context("standby HTTP server failed")?;
    if leading {
        tracing::info!(identity = %elector.identity(), "leading: starting");
    }
    Ok(leading)
}

/// Waits for the election task to step down and release the lease.
async fn finish_election(election: Option<(LeaderElector, tokio::task::JoinHandle<()>)>) -> anyhow::Result<()> {
    if let Some((_, task)) = election {
        task.await.context("leader election task failed")?;
    }
    Ok(())
}

type StopFuture = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

/// Resolves once the stop flag is raised.
fn until_stopped(mut rx: watch::Receiver<bool>) -> StopFuture {
    Box::pin(async move {
        let _ = rx.wait_for(|s| *s).await;
    })
}

type GrpcServing = std::pin::Pin<Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send>>;

/// A configuration problem found after the file was read (exit 64).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct BadConfig(ConfigError);

fn bad_config(field: &str, message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(BadConfig(ConfigError::new("the coordinator's configuration", field, message)))
}

/// Marks agents stale when they miss their heartbeats, which is itself a
/// finding: a silent node is an incident until it is back.
async fn watch_staleness(
    service: agent_service::AgentService,
    config: Config,
    clock: Clock,
    stopped: impl Future<Output = ()>,
) {
    let mut tick = tokio::time::interval(config.heartbeat_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(stopped);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = &mut stopped => return,
        }
        for (agent_id, node) in service.registry.mark_stale(clock.now(), config.stale_after) {
            tracing::warn!(agent = %agent_id, node = %node, "agent missed its heartbeats");
            service.raise_stale(&agent_id, &node, FindingState::Active).await;
        }
        let (streams, stale) = service.registry.counts();
        service.metrics.stale_agents.set(stale as i64);
        tracing::trace!(streams, stale, "staleness check");
    }
}

/// Forgets the records past their retention, once at start and then every
/// `retention.check_every`.
async fn forget_past_retention(
    recorder: Recorder,
    retention: remedy_coordinator::store::Retention,
    stopped: impl Future<Output = ()>,
) {
    let mut tick = tokio::time::interval(retention.check_every);
    tokio::pin!(stopped);
    loop {
        tokio::select! {
            _ = tick.tick() => recorder.prune(retention).await,
            () = &mut stopped => return,
        }
    }
}

async fn sweep_expired(recorder: Recorder, every: std::time::Duration, stopped: impl Future<Output = ()>) {
    let mut tick = tokio::time::interval(every);
    tokio::pin!(stopped);
    loop {
        tokio::select! {
            _ = tick.tick() => recorder.sweep().await,
            () = &mut stopped => return,
        }
    }
}
