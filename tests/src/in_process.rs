//! The coordinator's agent service run inside the test process, so a test
//! can drive the coordinator's actuators directly against real agent
//! processes.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use remedy_coordinator::agent_service::AgentService;
use remedy_coordinator::directives::Directives;
use remedy_coordinator::metrics::Metrics;
use remedy_coordinator::recorder::Recorder;
use remedy_coordinator::registry::Registry;
use remedy_coordinator::store::Store;
use remedy_coordinator::store::embedded::EmbeddedStore;
use remedy_proto::v1::agent_service_server::AgentServiceServer;
use remedy_shared::run::Catalog;

/// Serves the agent service on `listener`, keeping its store under `dir`;
/// returns the directive hub the actuators send through. No runbooks: the
/// actuators are driven directly.
pub fn serve_agents(dir: &Path, listener: tokio::net::TcpListener) -> Directives {
    std::fs::create_dir_all(dir).expect("the in-process coordinator's directory");
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(dir).expect("the in-process store"));
    let metrics = Metrics::new();
    let directives = Directives::default();
    let (recorder, _runs, _guard) =
        Recorder::start(store, metrics.clone(), Arc::new(Catalog::default())).expect("the in-process writer");
    let service = AgentService {
        coordinator_id: "in-process".into(),
        recorder,
        registry: Arc::new(Registry::default()),
        metrics,
        heartbeat_interval: Duration::from_secs(1),
        max_batch_findings: 1_000,
        directives: directives.clone(),
        auth: remedy_coordinator::auth::Authenticator::new(
            remedy_coordinator::auth::Transport::Insecure,
            &Default::default(),
        )
        .expect("an authenticator without a tokens file"),
        // Serves until the test ends: nothing stops it.
        stopping: tokio::sync::watch::channel(false).1,
        infrastructure: Default::default(),
    };
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AgentServiceServer::new(service))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    directives
}

/// [`serve_agents`] on an ephemeral loopback port: the URL agents dial,
/// and the hub.
pub async fn agent_service(dir: &Path) -> (String, Directives) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a loopback port");
    let url = format!("http://{}", listener.local_addr().expect("its address"));
    (url, serve_agents(dir, listener))
}
