//! A real Kubernetes control plane for tests.
//!
//! [`TestCluster::start`] starts etcd and kube-apiserver on 127.0.0.1 with
//! free ports, a generated PKI and RBAC; [`TestCluster::start_with`] adds
//! kube-controller-manager, kube-scheduler and kwok (simulated nodes). One
//! cluster is shared by all tests of a test binary; each test isolates itself
//! in a namespace of its own ([`TestCluster::new_namespace`]).
//!
//! The binaries come from `make cluster-bins` (see `tests/cluster/`); when
//! they are missing, starting a cluster panics and says so.
//!
//! Every process writes its log to `<cluster dir>/logs/`. The directory is
//! printed to stderr when the cluster starts (uncaptured) and named in every
//! error. No process outlives the test binary: a watchdog kills them all when
//! it exits, however it exits.

mod audit;
mod bins;
mod certs;
mod kwok;
mod process;
mod wait;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, Node, ServiceAccount};
use kube::api::{Api, ListParams, ObjectMeta, PostParams};
use kube::config::{AuthInfo, KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

pub use audit::AuditEvent;
pub use bins::{Binaries, bin_root, etcd_version, k8s_version, kwok_version};
pub use kwok::{
    KWOK_NODE_ANNOTATION, KWOK_NODE_LABEL, KWOK_NODE_VALUE, kwok_deployment, kwok_node, kwok_toleration, node_is_ready,
};
pub use wait::{wait_for, wait_until};

use certs::Pki;
use process::{Process, Watchdog, free_ports};

/// The issuer of service-account tokens (and their default audience).
pub const SERVICE_ACCOUNT_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
/// The Service IP range.
pub const SERVICE_CLUSTER_IP_RANGE: &str = "10.96.0.0/16";

const APISERVER_START_TIMEOUT: Duration = Duration::from_secs(120);
const COMPONENT_START_TIMEOUT: Duration = Duration::from_secs(60);

/// Which components run besides etcd and kube-apiserver.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClusterOptions {
    /// kube-controller-manager (Deployments, ReplicaSets, namespaces'
    /// default ServiceAccounts, garbage collection, node lifecycle...).
    pub controller_manager: bool,
    /// kube-scheduler.
    pub scheduler: bool,
    /// kwok, simulating the kubelets of nodes made by
    /// [`TestCluster::create_kwok_nodes`].
    pub kwok: bool,
}

impl ClusterOptions {
    /// Every component: a cluster where Deployments get Running pods on
    /// simulated nodes.
    pub fn full() -> Self {
        Self { controller_manager: true, scheduler: true, kwok: true }
    }
}

/// A process of the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Component {
    /// etcd.
    Etcd,
    /// kube-apiserver.
    ApiServer,
    /// kube-controller-manager.
    ControllerManager,
    /// kube-scheduler.
    Scheduler,
    /// kwok.
    Kwok,
}

impl Component {
    /// The binary's name, also the log file's (`logs/<name>.log`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Etcd => "etcd",
            Self::ApiServer => "kube-apiserver",
            Self::ControllerManager => "kube-controller-manager",
            Self::Scheduler => "kube-scheduler",
            Self::Kwok => "kwok",
        }
    }
}

/// A running control plane. See the module documentation.
#[derive(Debug)]
pub struct TestCluster {
    dir: PathBuf,
    bins: Binaries,
    pki: Pki,
    server: String,
    admin_kubeconfig: PathBuf,
    config: Config,
    procs: Mutex<Vec<(Component, Process)>>,
    watchdog: Watchdog,
    /// Serialises starting components.
    start_lock: tokio::sync::Mutex<()>,
    seq: AtomicUsize,
    node_seq: AtomicUsize,
    started_in: Duration,
    /// Set once Remedy's CRDs are installed and served.
    crds: tokio::sync::OnceCell<()>,
}

static SHARED: tokio::sync::OnceCell<TestCluster> = tokio::sync::OnceCell::const_new();
static CLUSTER_SEQ: AtomicUsize = AtomicUsize::new(0);

/// Writes to the real stderr, which the test harness does not capture, so the
/// line shows even for passing tests.
fn announce(msg: &str) {
    let _ = writeln!(std::io::stderr(), "{msg}");
}

fn new_cluster_dir() -> Result<PathBuf> {
    let base = std::env::var_os("REMEDY_CLUSTER_WORK_DIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("remedy-clusters"));
    prune_old_cluster_dirs(&base);
    let dir = base.join(format!("{}-{}", std::process::id(), CLUSTER_SEQ.fetch_add(1, Ordering::SeqCst)));
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir.join("logs")).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// Removes the directories (logs) of clusters whose test process is gone
/// and that are more than a day old, so that they do not pile up.
fn prune_old_cluster_dirs(base: &Path) {
    const KEEP: Duration = Duration::from_secs(24 * 3600);
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.split_once('-')).map(|(pid, _)| pid.to_string()) else {
            continue;
        };
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > KEEP);
        if old && !Path::new("/proc").join(&pid).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// The API server's audit log, in `logs/`.
const AUDIT_LOG: &str = "kube-apiserver-audit.log";

fn arg(name: &str, value: impl std::fmt::Display) -> String {
    format!("--{name}={value}")
}

fn path_arg(name: &str, value: &Path) -> String {
    format!("--{name}={}", value.display())
}

impl TestCluster {
    /// The cluster shared by this test binary: etcd and kube-apiserver at
    /// least. Starts it on first use. Panics (naming the log directory) when
    /// it cannot start, and asks for `make cluster-bins` when the binaries
    /// are missing.
    ///
    /// Must be called from within a tokio runtime.
    pub async fn start() -> &'static TestCluster {
        Self::start_with(ClusterOptions::default()).await
    }

    /// Like [`TestCluster::start`], also making sure the components in
    /// `options` run (starting them if an earlier caller did not ask for
    /// them).
    pub async fn start_with(options: ClusterOptions) -> &'static TestCluster {
        let cluster = SHARED
            .get_or_try_init(|| Self::start_dedicated(options))
            .await
            .unwrap_or_else(|e| panic!("the test cluster did not start: {e:#}"));
        if let Err(e) = cluster.ensure(options).await {
            panic!("{e:#}\n({})", cluster.where_());
        }
        cluster
    }

    /// A cluster of its own, not shared, stopped when dropped. For tests that
    /// stop or break components.
    pub async fn start_dedicated(options: ClusterOptions) -> Result<TestCluster> {
        let started = Instant::now();
        let bins = Binaries::locate()?;
        let dir = new_cluster_dir()?;
        announce(&format!(
            "test cluster: Kubernetes {} in {} (logs in {}/logs)",
            k8s_version(),
            dir.display(),
            dir.display()
        ));
        let watchdog = Watchdog::start(&dir)?;
        let pki = certs::generate(&dir.join("pki"))?;
        let ports = free_ports(3)?;
        let (etcd_port, etcd_peer_port, api_port) = (ports[0], ports[1], ports[2]);
        let server = format!("https://127.0.0.1:{api_port}");

        let admin_kubeconfig = dir.join("admin.kubeconfig");
        for (file, user) in [
            (&admin_kubeconfig, &pki.admin),
            (&dir.join("controller-manager.kubeconfig"), &pki.controller_manager),
            (&dir.join("scheduler.kubeconfig"), &pki.scheduler),
        ] {
            std::fs::write(file, certs::kubeconfig(&server, &pki.ca.cert, user))
                .with_context(|| format!("writing {}", file.display()))?;
        }

        let logs = dir.join("logs");
        let audit_policy = dir.join("audit-policy.yaml");
        std::fs::write(&audit_policy, audit::POLICY).context("writing the audit policy")?;
        let etcd_url = format!("https://127.0.0.1:{etcd_port}");
        let peer_url = format!("http://127.0.0.1:{etcd_peer_port}");
        let etcd_args = vec![
            arg("name", "etcd0"),
            path_arg("data-dir", &dir.join("etcd-data")),
            arg("listen-client-urls", &etcd_url),
            arg("advertise-client-urls", &etcd_url),
            arg("listen-peer-urls", &peer_url),
            arg("initial-advertise-peer-urls", &peer_url),
            arg("initial-cluster", format!("etcd0={peer_url}")),
            arg("initial-cluster-state", "new"),
            path_arg("cert-file", &pki.serving.cert),
            path_arg("key-file", &pki.serving.key),
            path_arg("trusted-ca-file", &pki.ca.cert),
            arg("client-cert-auth", true),
            // The data is thrown away after the test; durability only costs
            // time.
            arg("unsafe-no-fsync", true),
            arg("auto-compaction-mode", "periodic"),
            arg("auto-compaction-retention", "5m"),
            arg("log-level", "warn"),
        ];
        let etcd = Process::spawn(Component::Etcd.name(), &bins.path("etcd"), &etcd_args, &[], &logs, &watchdog)?;

        let apiserver_args = vec![
            arg("etcd-servers", &etcd_url),
            path_arg("etcd-cafile", &pki.ca.cert),
            path_arg("etcd-certfile", &pki.etcd_client.cert),
            path_arg("etcd-keyfile", &pki.etcd_client.key),
            arg("bind-address", "127.0.0.1"),
            arg("advertise-address", "127.0.0.1"),
            arg("secure-port", api_port),
            path_arg("cert-dir", &dir.join("pki")),
            path_arg("tls-cert-file", &pki.serving.cert),
            path_arg("tls-private-key-file", &pki.serving.key),
            path_arg("client-ca-file", &pki.ca.cert),
            arg("service-account-issuer", SERVICE_ACCOUNT_ISSUER),
            path_arg("service-account-key-file", &pki.service_account_pub),
            path_arg("service-account-signing-key-file", &pki.service_account_key),
            arg("service-cluster-ip-range", SERVICE_CLUSTER_IP_RANGE),
            arg("authorization-mode", "Node,RBAC"),
            // The request-header settings end up in the
            // extension-apiserver-authentication ConfigMap, which the
            // controller-manager's and scheduler's delegated authentication
            // read; they also let aggregated APIs work.
            path_arg("requestheader-client-ca-file", &pki.ca.cert),
            arg("requestheader-allowed-names", certs::FRONT_PROXY_CLIENT_CN),
            arg("requestheader-username-headers", "X-Remote-User"),
            arg("requestheader-group-headers", "X-Remote-Group"),
            arg("requestheader-extra-headers-prefix", "X-Remote-Extra-"),
            path_arg("proxy-client-cert-file", &pki.front_proxy_client.cert),
            path_arg("proxy-client-key-file", &pki.front_proxy_client.key),
            arg("allow-privileged", true),
            // The `kubernetes` Service's endpoints would point at loopback,
            // which Endpoints validation rejects; nothing here needs them.
            arg("endpoint-reconciler-type", "none"),
            arg("profiling", false),
            // Writes only, so tests can count what a component changed.
            path_arg("audit-policy-file", &audit_policy),
            path_arg("audit-log-path", &logs.join(AUDIT_LOG)),
            arg("audit-log-maxsize", 100),
        ];
        let apiserver = Process::spawn(
            Component::ApiServer.name(),
            &bins.path("kube-apiserver"),
            &apiserver_args,
            &[],
            &logs,
            &watchdog,
        )?;

        let kubeconfig = Kubeconfig::read_from(&admin_kubeconfig)
            .with_context(|| format!("reading {}", admin_kubeconfig.display()))?;
        let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .context("loading the admin kubeconfig")?;

        let mut cluster = TestCluster {
            dir,
            bins,
            pki,
            server,
            admin_kubeconfig,
            config,
            procs: Mutex::new(vec![(Component::Etcd, etcd), (Component::ApiServer, apiserver)]),
            watchdog,
            start_lock: tokio::sync::Mutex::new(()),
            seq: AtomicUsize::new(0),
            node_seq: AtomicUsize::new(0),
            started_in: Duration::ZERO,
            crds: tokio::sync::OnceCell::new(),
        };
        let where_ = cluster.where_();
        cluster
            .wait_https_ok(Component::ApiServer, api_port, "/readyz", APISERVER_START_TIMEOUT)
            .await
            .with_context(|| where_.clone())?;
        cluster.started_in = started.elapsed();
        announce(&format!("test cluster: kube-apiserver ready after {:.1?}", cluster.started_in));
        cluster.ensure(options).await.with_context(|| where_)?;
        Ok(cluster)
    }

    fn where_(&self) -> String {
        format!("test cluster logs: {}", self.log_dir().display())
    }

    fn running(&self, component: Component) -> bool {
        self.lock_procs().iter().any(|(c, _)| *c == component)
    }

    fn lock_procs(&self) -> std::sync::MutexGuard<'_, Vec<(Component, Process)>> {
        self.procs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Fails when any cluster process has exited, with the end of its log.
    pub fn check_processes(&self) -> Result<()> {
        for (_, p) in self.lock_procs().iter_mut() {
            p.check_running()?;
        }
        Ok(())
    }

    /// Starts whichever components of `options` are not running yet.
    async fn ensure(&self, options: ClusterOptions) -> Result<()> {
        let _guard = self.start_lock.lock().await;
        if options.controller_manager && !self.running(Component::ControllerManager) {
            self.start_controller_manager().await?;
        }
        if options.scheduler && !self.running(Component::Scheduler) {
            self.start_scheduler().await?;
        }
        if options.kwok && !self.running(Component::Kwok) {
            self.start_kwok().await?;
        }
        Ok(())
    }

    fn spawn(&self, component: Component, args: &[String], envs: &[(&str, &Path)]) -> Result<()> {
        let p = Process::spawn(
            component.name(),
            &self.bins.path(component.name()),
            args,
            envs,
            &self.log_dir(),
            &self.watchdog,
        )?;
        self.lock_procs().push((component, p));
        Ok(())
    }

    async fn start_controller_manager(&self) -> Result<()> {
        let started = Instant::now();
        let port = free_ports(1)?[0];
        let kubeconfig = self.dir.join("controller-manager.kubeconfig");
        let args = vec![
            path_arg("kubeconfig", &kubeconfig),
            path_arg("authentication-kubeconfig", &kubeconfig),
            path_arg("authorization-kubeconfig", &kubeconfig),
            arg("bind-address", "127.0.0.1"),
            arg("secure-port", port),
            path_arg("tls-cert-file", &self.pki.serving.cert),
            path_arg("tls-private-key-file", &self.pki.serving.key),
            arg("leader-elect", false),
            arg("use-service-account-credentials", true),
            path_arg("service-account-private-key-file", &self.pki.service_account_key),
            path_arg("root-ca-file", &self.pki.ca.cert),
            path_arg("cluster-signing-cert-file", &self.pki.ca.cert),
            path_arg("cluster-signing-key-file", &self.pki.ca.key),
            arg("service-cluster-ip-range", SERVICE_CLUSTER_IP_RANGE),
            arg("controllers", "*"),
            // The defaults (20 QPS, burst 30) make a 2,000-pod Deployment
            // take minutes; this is a single-user cluster.
            arg("kube-api-qps", 500),
            arg("kube-api-burst", 1000),
            arg("concurrent-replicaset-syncs", 10),
            arg("concurrent-deployment-syncs", 10),
            arg("node-monitor-period", "5s"),
            arg("node-monitor-grace-period", "40s"),
            // Otherwise it creates /usr/libexec/kubernetes/... on the host.
            path_arg("flex-volume-plugin-dir", &self.dir.join("flexvolume")),
            arg("profiling", false),
        ];
        self.spawn(Component::ControllerManager, &args, &[])?;
        self.wait_https_ok(Component::ControllerManager, port, "/healthz", COMPONENT_START_TIMEOUT).await?;
        // The ServiceAccount controller is the first sign that controllers
        // run; pods cannot be created in a namespace until it has worked.
        let sa: Api<ServiceAccount> = Api::namespaced(self.client(), "default");
        self.wait_alive(
            "the controller-manager to create default/default ServiceAccount",
            COMPONENT_START_TIMEOUT,
            || {
                let sa = sa.clone();
                async move { Ok(sa.get_opt("default").await?.map(|_| ())) }
            },
        )
        .await?;
        announce(&format!("test cluster: kube-controller-manager ready after {:.1?}", started.elapsed()));
        Ok(())
    }

    async fn start_scheduler(&self) -> Result<()> {
        let started = Instant::now();
        let port = free_ports(1)?[0];
        let kubeconfig = self.dir.join("scheduler.kubeconfig");
        let args = vec![
            path_arg("kubeconfig", &kubeconfig),
            path_arg("authentication-kubeconfig", &kubeconfig),
            path_arg("authorization-kubeconfig", &kubeconfig),
            arg("bind-address", "127.0.0.1"),
            arg("secure-port", port),
            path_arg("tls-cert-file", &self.pki.serving.cert),
            path_arg("tls-private-key-file", &self.pki.serving.key),
            arg("leader-elect", false),
            // Default 50 QPS would pace bindings of large tests.
            arg("kube-api-qps", 500),
            arg("kube-api-burst", 1000),
            arg("profiling", false),
        ];
        self.spawn(Component::Scheduler, &args, &[])?;
        self.wait_https_ok(Component::Scheduler, port, "/healthz", COMPONENT_START_TIMEOUT).await?;
        announce(&format!("test cluster: kube-scheduler ready after {:.1?}", started.elapsed()));
        Ok(())
    }

    async fn start_kwok(&self) -> Result<()> {
        let started = Instant::now();
        let port = free_ports(1)?[0];
        // kwok also reads ~/.kwok/kwok.yaml when it exists; a HOME of its own
        // keeps the configuration to exactly the files given here.
        let home = self.dir.join("kwok-home");
        std::fs::create_dir_all(&home).context("creating kwok's home")?;
        let mut args = vec![
            path_arg("kubeconfig", &self.admin_kubeconfig),
            arg("manage-all-nodes", false),
            arg("manage-nodes-with-annotation-selector", kwok::KWOK_NODE_SELECTOR),
            arg("node-lease-duration-seconds", 40),
            // Addresses that kwok writes into node and pod status; loopback,
            // so that anything following them stays on this machine.
            arg("node-ip", "127.0.0.1"),
            arg("node-port", port),
            arg("server-address", format!("127.0.0.1:{port}")),
            arg("cidr", "10.127.0.0/16"),
        ];
        for stage in self.bins.kwok_stages()? {
            args.push(path_arg("config", &stage));
        }
        self.spawn(Component::Kwok, &args, &[("HOME", &home)])?;
        self.wait_alive("kwok to serve /healthz", COMPONENT_START_TIMEOUT, || async move {
            Ok(http_get_ok(port, "/healthz").await?.then_some(()))
        })
        .await?;
        announce(&format!("test cluster: kwok ready after {:.1?}", started.elapsed()));
        Ok(())
    }

    /// Polls until `check` yields, failing at once when a cluster process
    /// exits.
    async fn wait_alive<T, F, Fut>(&self, what: &str, timeout: Duration, mut check: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<Option<T>>>,
    {
        wait_for(what, timeout, || {
            let alive = self.check_processes();
            let fut = check();
            async move {
                if let Err(e) = alive {
                    return Ok(Some(Err(e)));
                }
                Ok(fut.await?.map(Ok))
            }
        })
        .await?
    }

    /// Waits for `GET https://127.0.0.1:<port><path>` to answer `ok`.
    async fn wait_https_ok(&self, component: Component, port: u16, path: &str, timeout: Duration) -> Result<()> {
        let mut config = self.config.clone();
        config.cluster_url = format!("https://127.0.0.1:{port}").parse().context("component URL")?;
        config.read_timeout = Some(Duration::from_secs(10));
        let client = Client::try_from(config).context("client for a health check")?;
        let what = format!("{} to answer {path}", component.name());
        self.wait_alive(&what, timeout, || {
            let client = client.clone();
            async move {
                let req = http::Request::get(path).body(Vec::new())?;
                let body = client.request_text(req).await?;
                Ok((body.trim() == "ok").then_some(()))
            }
        })
        .await
    }

    /// The cluster's directory: PKI, kubeconfigs, etcd data, `logs/`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where each process's log is (`<component>.log`).
    pub fn log_dir(&self) -> PathBuf {
        self.dir.join("logs")
    }

    /// Remedy's CRDs (`deploy/base/crds`) and its namespace
    /// (`remedy-system`), installed as an operator would, once per cluster
    /// however many tests ask at once; returns when every CRD is
    /// Established and served.
    pub async fn install_remedy_crds(&self) -> Result<()> {
        self.crds
            .get_or_try_init(|| async {
                let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/base");
                let crds = deploy.join("crds");
                for file in [deploy.join("namespace.yaml"), crds.clone()] {
                    self.kubectl_ok(["apply", "-f", &file.display().to_string()]).await?;
                }
                let mut names = Vec::new();
                for entry in std::fs::read_dir(&crds).with_context(|| format!("reading {}", crds.display()))? {
                    let text = std::fs::read_to_string(entry?.path())?;
                    let name = text.lines().find_map(|l| l.strip_prefix("  name: ")).context("a CRD without a name")?;
                    names.push(name.trim().to_owned());
                }
                let mut wait = vec!["wait".to_owned(), "--for=condition=Established".into(), "--timeout=60s".into()];
                wait.extend(names.iter().map(|n| format!("crd/{n}")));
                self.kubectl_ok(&wait).await?;
                // Established is the CRD's condition; the resource is served
                // once discovery lists it.
                wait_until("the remedy.dev resources to be served", COMPONENT_START_TIMEOUT, || async {
                    let out = self.kubectl(["api-resources", "--api-group=remedy.dev", "-o", "name"]).await?;
                    let listed = String::from_utf8_lossy(&out.stdout).into_owned();
                    Ok(names.iter().all(|n| listed.lines().any(|l| l == n)))
                })
                .await
            })
            .await
            .map(|_| ())
    }

    /// Every write the API server has answered so far (controller-manager's
    /// and scheduler's left out), from its audit log.
    pub fn audit_writes(&self) -> Result<Vec<AuditEvent>> {
        audit::read(&self.log_dir().join(AUDIT_LOG))
    }

    /// The apiserver's URL (`https://127.0.0.1:<port>`).
    pub fn server_url(&self) -> &str {
        &self.server
    }

    /// A kubeconfig file for the admin user (`O=system:masters`).
    pub fn kubeconfig_path(&self) -> &Path {
        &self.admin_kubeconfig
    }

    /// The CA that signed every serving and client certificate (PEM file).
    pub fn ca_cert_path(&self) -> &Path {
        &self.pki.ca.cert
    }

    /// The CA certificate, DER.
    pub fn ca_cert_der(&self) -> &[u8] {
        &self.pki.ca_der
    }

    /// The binaries in use.
    pub fn binaries(&self) -> &Binaries {
        &self.bins
    }

    /// How long etcd and kube-apiserver took to become ready.
    pub fn apiserver_start_time(&self) -> Duration {
        self.started_in
    }

    /// The admin client configuration.
    pub fn config(&self) -> Config {
        self.config.clone()
    }

    /// A new admin client (`O=system:masters`, so RBAC does not apply).
    ///
    /// Clients belong to the tokio runtime that made them, and each test has
    /// its own runtime: get a client per test rather than keeping one.
    pub fn client(&self) -> Client {
        Client::try_from(self.config.clone()).expect("building a kube client from a valid config")
    }

    /// Resident memory of a component in KiB, when it runs.
    pub fn rss_kib(&self, component: Component) -> Option<u64> {
        self.lock_procs().iter().find(|(c, _)| *c == component).and_then(|(_, p)| p.rss_kib())
    }

    /// The PID of a component, when it runs.
    pub fn pid(&self, component: Component) -> Option<u32> {
        self.lock_procs().iter().find(|(c, _)| *c == component).map(|(_, p)| p.pid())
    }

    /// Creates a namespace named `<prefix>-<n>`, unique in this cluster, and
    /// waits until pods can be created in it (its `default` ServiceAccount
    /// exists; without a controller-manager this creates it).
    pub async fn new_namespace(&self, prefix: &str) -> Result<String> {
        ensure!(
            !prefix.is_empty()
                && prefix.len() <= 50
                && prefix.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
            "namespace prefix {prefix:?} must be 1-50 characters of a-z, 0-9 and '-'"
        );
        let name = format!("{prefix}-{}", self.seq.fetch_add(1, Ordering::SeqCst));
        let client = self.client();
        let namespaces: Api<Namespace> = Api::all(client.clone());
        namespaces
            .create(
                &PostParams::default(),
                &Namespace {
                    metadata: ObjectMeta { name: Some(name.clone()), ..Default::default() },
                    ..Default::default()
                },
            )
            .await
            .with_context(|| format!("creating namespace {name} ({})", self.where_()))?;
        let sas: Api<ServiceAccount> = Api::namespaced(client, &name);
        if self.running(Component::ControllerManager) {
            self.wait_alive(&format!("ServiceAccount {name}/default"), COMPONENT_START_TIMEOUT, || {
                let sas = sas.clone();
                async move { Ok(sas.get_opt("default").await?.map(|_| ())) }
            })
            .await
            .with_context(|| self.where_())?;
        } else {
            let sa = ServiceAccount {
                metadata: ObjectMeta { name: Some("default".to_string()), ..Default::default() },
                ..Default::default()
            };
            match sas.create(&PostParams::default(), &sa).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 409 => {}
                Err(e) => return Err(e).context(format!("creating {name}/default")),
            }
        }
        Ok(name)
    }

    /// A client that authenticates as ServiceAccount `namespace/name` with a
    /// token from the TokenRequest API (valid one hour), so RBAC applies to
    /// it as to a pod running under that account.
    pub async fn client_for_service_account(&self, namespace: &str, name: &str) -> Result<Client> {
        let sas: Api<ServiceAccount> = Api::namespaced(self.client(), namespace);
        let request = TokenRequest {
            spec: TokenRequestSpec { expiration_seconds: Some(3600), ..Default::default() },
            ..Default::default()
        };
        let token = sas
            .create_token_request(name, &PostParams::default(), &request)
            .await
            .with_context(|| format!("requesting a token for {namespace}/{name}"))?
            .status
            .context("TokenRequest without status")?
            .token;
        let mut config = self.config.clone();
        config.auth_info = AuthInfo { token: Some(token.into()), ..Default::default() };
        config.default_namespace = namespace.to_string();
        Ok(Client::try_from(config)?)
    }

    /// Creates `n` nodes for kwok to simulate (untainted: every node here is
    /// simulated) and waits until all are Ready. Needs
    /// [`ClusterOptions::kwok`]. Returns their names.
    pub async fn create_kwok_nodes(&self, n: usize) -> Result<Vec<String>> {
        self.create_kwok_nodes_with(n, false).await
    }

    /// Like [`TestCluster::create_kwok_nodes`]; `tainted` adds kwok's
    /// `kwok.x-k8s.io/node=fake:NoSchedule` taint (see [`kwok_toleration`]).
    pub async fn create_kwok_nodes_with(&self, n: usize, tainted: bool) -> Result<Vec<String>> {
        if !self.running(Component::Kwok) {
            bail!("kwok does not run: start the cluster with ClusterOptions {{ kwok: true, .. }}");
        }
        let nodes: Api<Node> = Api::all(self.client());
        let first = self.node_seq.fetch_add(n, Ordering::SeqCst);
        let mut names = Vec::with_capacity(n);
        for index in first..first + n {
            let name = format!("kwok-node-{index}");
            nodes
                .create(&PostParams::default(), &kwok_node(&name, &kwok::pod_cidr(index), tainted))
                .await
                .with_context(|| format!("creating node {name} ({})", self.where_()))?;
            names.push(name);
        }
        let wanted: std::collections::HashSet<&str> = names.iter().map(String::as_str).collect();
        let selector = format!("{}={}", KWOK_NODE_LABEL.0, KWOK_NODE_LABEL.1);
        let timeout = COMPONENT_START_TIMEOUT + Duration::from_millis(100) * n as u32;
        self.wait_alive(&format!("{n} kwok nodes to be Ready"), timeout, || {
            let nodes = nodes.clone();
            let selector = selector.clone();
            let wanted = &wanted;
            async move {
                let list = nodes.list(&ListParams::default().labels(&selector)).await?;
                let ready = list
                    .items
                    .iter()
                    .filter(|node| {
                        node.metadata.name.as_deref().is_some_and(|name| wanted.contains(name)) && node_is_ready(node)
                    })
                    .count();
                Ok((ready == wanted.len()).then_some(()))
            }
        })
        .await
        .with_context(|| self.where_())?;
        Ok(names)
    }

    /// Runs the built kubectl with the admin kubeconfig. Returns its output
    /// whatever the exit status.
    pub async fn kubectl<I, S>(&self, args: I) -> Result<std::process::Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut cmd = tokio::process::Command::new(self.bins.path("kubectl"));
        cmd.arg(format!("--kubeconfig={}", self.admin_kubeconfig.display()))
            .args(args)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        tokio::time::timeout(Duration::from_secs(120), cmd.output())
            .await
            .map_err(|_| anyhow!("kubectl did not finish within 120 s"))?
            .context("running kubectl")
    }

    /// Runs kubectl and fails, with its stderr, unless it exits 0. Returns
    /// its stdout.
    pub async fn kubectl_ok<I, S>(&self, args: I) -> Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let args: Vec<std::ffi::OsString> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
        let out = self.kubectl(&args).await?;
        if !out.status.success() {
            bail!(
                "kubectl {:?} failed ({}):\n{}{}",
                args,
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        let procs = std::mem::take(&mut *self.lock_procs());
        // Clients first, etcd last.
        for (_, mut p) in procs.into_iter().rev() {
            p.kill();
        }
        let _ = std::fs::remove_dir_all(self.dir.join("etcd-data"));
    }
}

/// `GET http://127.0.0.1:<port><path>` answers 200.
async fn http_get_ok(port: u16, path: &str) -> Result<bool> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes()).await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let status_line = response.split(|b| *b == b'\n').next().unwrap_or_default();
    Ok(String::from_utf8_lossy(status_line).split_whitespace().nth(1) == Some("200"))
}
