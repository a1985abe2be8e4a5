//! Real PostgreSQL and Redis servers for the data-plane tests, from the
//! Debian packages `scripts/deps.sh` installs, on free loopback ports.
//!
//! PostgreSQL refuses to run as root, so its processes run as the
//! `postgres` user the package creates (through `setpriv`, which execs, so
//! the process we hold is the postmaster itself). A primary is made with
//! `initdb` (scram passwords, loopback only) and a streaming replica with
//! `pg_basebackup -R`. A Redis can serve TLS only, with certificates from a
//! CA made for the test, and have ACL users. Every server is stopped when
//! its handle drops; the tests stop, kill and restart them to play failures.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::procs::{eventually, free_addr};

/// The superuser's password in every test cluster (the coordinator's role
/// has the same one).
pub const PG_PASSWORD: &str = "remedy-test-secret";
/// The role the coordinator logs in as in every test cluster: a superuser
/// of its own, as README asks, apart from `postgres`, which the tests use
/// as the applications do. A fence leaves this role alone able to log in.
pub const COORDINATOR_ROLE: &str = "remedy";
/// The password every test Redis requires.
pub const REDIS_PASSWORD: &str = "redis-test-secret";

/// The directory holding the packaged PostgreSQL's programs (the newest
/// major version installed). Panics, naming the fix, when there is none.
pub fn pg_bin_dir() -> PathBuf {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("pg_basebackup").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin).unwrap_or_else(|| {
        panic!("no PostgreSQL under /usr/lib/postgresql/*/bin: run scripts/deps.sh (Debian package `postgresql`)")
    })
}

fn postgres_ids() -> (String, String) {
    let out = |args: &[&str]| {
        let o = Command::new("id").args(args).arg("postgres").output().expect("run id");
        assert!(o.status.success(), "no `postgres` user: run scripts/deps.sh (Debian package `postgresql`)");
        String::from_utf8_lossy(&o.stdout).trim().to_owned()
    };
    (out(&["-u"]), out(&["-g"]))
}

/// A command run as the `postgres` user.
fn as_postgres(program: &Path) -> Command {
    let (uid, gid) = postgres_ids();
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid", &uid, "--regid", &gid, "--init-groups", "--"]).arg(program);
    cmd.env("PGPASSWORD", PG_PASSWORD).env_remove("PGUSER").env_remove("PGDATABASE");
    cmd
}

fn run_ok(cmd: &mut Command, what: &str) {
    let out = cmd.stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Makes `dir` (and its parents up to the test's temporary directory)
/// reachable by the `postgres` user and owned by it.
pub fn give_to_postgres(dir: &Path) {
    std::fs::create_dir_all(dir).expect("create a directory for postgres");
    let mut parent = dir.parent();
    while let Some(p) = parent {
        if p == Path::new("/") || p == Path::new("/tmp") {
            break;
        }
        if let Ok(meta) = std::fs::metadata(p) {
            let mut perms = meta.permissions();
            perms.set_mode(perms.mode() | 0o711);
            let _ = std::fs::set_permissions(p, perms);
        }
        parent = p.parent();
    }
    run_ok(Command::new("chown").args(["-R", "postgres:postgres"]).arg(dir), "chown to postgres");
}

/// One PostgreSQL server: a primary or a streaming replica.
#[derive(Debug)]
pub struct Postgres {
    /// Its name in logs and in the coordinator's configuration.
    pub name: String,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its data directory.
    pub data: PathBuf,
    log: PathBuf,
    extra: Vec<String>,
    child: Option<Child>,
}

impl Postgres {
    /// `initdb`s a primary under `dir/<name>` and starts it. `synchronous`:
    /// commits wait until a standby has flushed them, so a crash of the
    /// primary loses nothing a client was told is committed.
    pub async fn primary(dir: &Path, name: &str, synchronous: bool) -> Postgres {
        let root = dir.join(name);
        give_to_postgres(&root);
        let pwfile = root.join("pwfile");
        std::fs::write(&pwfile, PG_PASSWORD).expect("write the password file");
        give_to_postgres(&root);
        let data = root.join("data");
        run_ok(
            as_postgres(&pg_bin_dir().join("initdb"))
                .args(["--auth=scram-sha-256", "--username=postgres", "--no-sync", "--encoding=UTF8"])
                .arg(format!("--pwfile={}", pwfile.display()))
                .arg("-D")
                .arg(&data),
            "initdb",
        );
        let mut extra = vec![];
        if synchronous {
            // On the command line, not in postgresql.conf: the replica's copy
            // of the configuration must not wait for standbys once promoted.
            extra.push("synchronous_standby_names=*".to_owned());
        }
        let mut pg = Postgres {
            name: name.to_owned(),
            addr: free_addr(),
            data,
            log: root.join("server.log"),
            extra,
            child: None,
        };
        pg.start().await;
        // Replicas copy it with everything else. Committed locally: a
        // synchronous primary has no standby to wait for yet.
        pg.client()
            .await
            .batch_execute(&format!(
                "SET synchronous_commit = local; CREATE ROLE {COORDINATOR_ROLE} LOGIN SUPERUSER PASSWORD '{PG_PASSWORD}'"
            ))
            .await
            .expect("create the coordinator's role");
        pg
    }

    /// A streaming replica of `primary` under `dir/<name>`, made with
    /// `pg_basebackup -R`, started and streaming.
    pub async fn replica_of(primary: &Postgres, dir: &Path, name: &str) -> Postgres {
        let root = dir.join(name);
        give_to_postgres(&root);
        let data = root.join("data");
        let conninfo = format!(
            "host=127.0.0.1 port={} user=postgres password={PG_PASSWORD} application_name={name}",
            primary.addr.port()
        );
        run_ok(
            as_postgres(&pg_bin_dir().join("pg_basebackup"))
                .args(["-R", "-X", "stream", "--no-sync", "-c", "fast", "-d", &conninfo])
                .arg("-D")
                .arg(&data),
            "pg_basebackup",
        );
        let mut pg = Postgres {
            name: name.to_owned(),
            addr: free_addr(),
            data,
            log: root.join("server.log"),
            extra: vec![],
            child: None,
        };
        pg.start().await;
        let replica = pg.addr;
        eventually(&format!("{name} streaming from the primary"), Duration::from_secs(30), || async move {
            let client = connect(replica).await.ok()?;
            let row = client.query_one("SELECT status FROM pg_stat_wal_receiver", &[]).await.ok()?;
            (row.get::<_, String>(0) == "streaming").then_some(())
        })
        .await;
        pg
    }

    /// Starts the server on its port and waits until it answers.
    pub async fn start(&mut self) {
        assert!(self.child.is_none(), "{} is already running", self.name);
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("open the server log");
        let err = log.try_clone().expect("clone the log handle");
        let socket_dir = self.data.parent().expect("a data directory's parent").to_path_buf();
        let mut cmd = as_postgres(&pg_bin_dir().join("postgres"));
        cmd.arg("-D")
            .arg(&self.data)
            .args(["-c", "listen_addresses=127.0.0.1", "-c", &format!("port={}", self.addr.port())])
            .args(["-c", &format!("unix_socket_directories={}", socket_dir.display())])
            .args(["-c", "fsync=off", "-c", "wal_sender_timeout=5s", "-c", "wal_receiver_status_interval=1s"]);
        for setting in &self.extra {
            cmd.args(["-c", setting]);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start postgres {}: {e}", self.name));
        self.child = Some(child);
        let addr = self.addr;
        let name = self.name.clone();
        eventually(&format!("postgres {name} accepting connections"), Duration::from_secs(60), || async move {
            connect(addr).await.ok().map(|_| ())
        })
        .await;
    }

    /// Stops it the way a crash would: immediate shutdown (SIGQUIT), no
    /// checkpoint; what was committed is in the WAL and the replicas.
    pub fn crash(&mut self) {
        self.signal_and_wait("-QUIT");
    }

    /// Freezes the replica's startup (recovery) process, so a promotion
    /// asked of it cannot finish until [`Postgres::thaw_recovery`].
    pub async fn freeze_recovery(&self) -> u32 {
        let client = connect(self.addr).await.expect("connect to freeze recovery");
        let row = client
            .query_one("SELECT pid FROM pg_stat_activity WHERE backend_type = 'startup'", &[])
            .await
            .expect("find the startup process");
        let pid: i32 = row.get(0);
        run_ok(Command::new("kill").args(["-STOP", &pid.to_string()]), "kill -STOP");
        pid as u32
    }

    /// Lets a frozen startup process go on.
    pub fn thaw_recovery(pid: u32) {
        run_ok(Command::new("kill").args(["-CONT", &pid.to_string()]), "kill -CONT");
    }

    fn signal_and_wait(&mut self, signal: &str) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").args([signal, &child.id().to_string()]).status();
            // Bounded: a postmaster that ignores the signal is killed.
            for _ in 0..200 {
                if child.try_wait().ok().flatten().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The server log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A client on this server, as the superuser.
    pub async fn client(&self) -> tokio_postgres::Client {
        connect(self.addr).await.unwrap_or_else(|e| panic!("connect to {}: {e}", self.name))
    }

    /// A client as the coordinator's role, on the `postgres` database or,
    /// when a fence closed it, on `template1`, the one door a fence leaves
    /// the coordinator: to look at the server as the coordinator does.
    pub async fn coordinator_client(&self) -> tokio_postgres::Client {
        match connect_as(self.addr, COORDINATOR_ROLE, PG_PASSWORD, "postgres").await {
            Ok(client) => client,
            Err(_) => connect_as(self.addr, COORDINATOR_ROLE, PG_PASSWORD, "template1")
                .await
                .unwrap_or_else(|e| panic!("connect to {} as {COORDINATOR_ROLE}: {e}", self.name)),
        }
    }

    /// What the coordinator reports as this member's `app_url` when none
    /// is configured.
    pub fn app_url(&self) -> String {
        format!("postgresql://127.0.0.1:{}/postgres", self.addr.port())
    }

    /// This server as a member under `databases:` (one flow mapping), the
    /// coordinator logging in as [`COORDINATOR_ROLE`].
    pub fn member_yaml(&self, password_file: &Path) -> String {
        format!(
            "{{name: {}, host: 127.0.0.1, port: {}, user: {COORDINATOR_ROLE}, password_file: {}}}",
            self.name,
            self.addr.port(),
            password_file.display()
        )
    }

    /// Writes orders 1..=`rows` in commits of 20; on a synchronous primary
    /// each commit returns only once the standby has it.
    pub async fn write_orders(&self, rows: i64) {
        let client = self.client().await;
        client
            .batch_execute("CREATE TABLE IF NOT EXISTS orders (id bigint PRIMARY KEY, note text NOT NULL)")
            .await
            .expect("create the table");
        for start in (1..=rows).step_by(20) {
            let end = (start + 19).min(rows);
            client
                .execute(
                    "INSERT INTO orders SELECT g, 'order ' || g FROM generate_series($1::bigint, $2::bigint) g",
                    &[&start, &end],
                )
                .await
                .expect("insert orders");
        }
    }
}

/// Writes [`PG_PASSWORD`] to a file under `dir`, as the coordinator reads it.
pub fn pg_password_file(dir: &Path) -> PathBuf {
    let file = dir.join("pg-password");
    std::fs::write(&file, format!("{PG_PASSWORD}\n")).expect("write the password file");
    file
}

/// `databases:` for one cluster named `main` (as the seed runbooks name
/// it) with `primary` and `replica`, short timeouts, and `extra` lines
/// under it.
pub fn databases_yaml(dir: &Path, primary: &Postgres, replica: &Postgres, extra: &str) -> String {
    let password_file = pg_password_file(dir);
    format!(
        "databases:\n  main:\n    primary: {}\n    replicas:\n      - {}\n    connect_timeout: 2s\n    query_timeout: 5s\n\
         \x20   fence_watch_interval: 200ms\n{extra}",
        primary.member_yaml(&password_file),
        replica.member_yaml(&password_file),
    )
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            eprintln!("---- last lines of postgres {} ----", self.name);
            for line in tail.into_iter().rev() {
                eprintln!("{line}");
            }
        }
        self.signal_and_wait("-QUIT");
    }
}

/// Connects to the server at `addr` as the superuser, within 5 seconds.
pub async fn connect(addr: SocketAddr) -> Result<tokio_postgres::Client, String> {
    connect_to(addr, "postgres").await
}

/// Connects to database `dbname` on the server at `addr` as the superuser,
/// within 5 seconds; the error is the server's message when it sent one.
pub async fn connect_to(addr: SocketAddr, dbname: &str) -> Result<tokio_postgres::Client, String> {
    connect_as(addr, "postgres", PG_PASSWORD, dbname).await
}

/// Connects to database `dbname` on the server at `addr` as `user`, within
/// 5 seconds; the error is the server's message when it sent one.
pub async fn connect_as(
    addr: SocketAddr,
    user: &str,
    password: &str,
    dbname: &str,
) -> Result<tokio_postgres::Client, String> {
    let mut config = tokio_postgres::Config::new();
    config
        .host("127.0.0.1")
        .port(addr.port())
        .user(user)
        .password(password)
        .dbname(dbname)
        .connect_timeout(Duration::from_secs(5));
    let (client, connection) = config.connect(tokio_postgres::NoTls).await.map_err(|e| match e.as_db_error() {
        Some(db) => db.message().to_owned(),
        None => e.to_string(),
    })?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// Certificates for a TLS Redis, all PEM files under one directory: a CA of
/// its own, a serving certificate it issued, and a client certificate it
/// issued (what `--tls-auth-clients yes` asks for).
#[derive(Debug, Clone)]
pub struct RedisTlsFiles {
    /// The CA certificate.
    pub ca: PathBuf,
    /// The serving certificate and key.
    pub server: (PathBuf, PathBuf),
    /// A client certificate and key.
    pub client: (PathBuf, PathBuf),
}

impl RedisTlsFiles {
    /// A new CA named `name` under `dir`, a serving certificate for
    /// `server_names` (DNS names or IP addresses), and a client certificate.
    pub fn generate(dir: &Path, name: &str, server_names: &[&str]) -> RedisTlsFiles {
        use remedy_proto::pki::{Authority, Leaf};
        let dir = dir.join(format!("tls-{name}"));
        std::fs::create_dir_all(&dir).expect("create the certificate directory");
        let authority = Authority::generate(&format!("{name} test CA")).expect("generate a CA");
        let ca = dir.join("ca.crt");
        std::fs::write(&ca, &authority.certificate().cert_pem).expect("write the CA");
        let day = Duration::from_secs(24 * 3600);
        let names = server_names.iter().map(|n| (*n).to_owned()).collect();
        let server = authority.issue(&Leaf::Server(names), day).expect("issue the serving certificate");
        let identity = remedy_shared::auth::Identity::User { name: "remedy-coordinator".into() };
        let client = authority.issue(&Leaf::Client(identity), day).expect("issue a client certificate");
        RedisTlsFiles {
            ca,
            server: server.write(&dir, "server").expect("write the serving certificate"),
            client: client.write(&dir, "client").expect("write the client certificate"),
        }
    }
}

/// How a test Redis is set up beyond the defaults (plain TCP, the default
/// user with [`REDIS_PASSWORD`]).
#[derive(Debug, Clone, Default)]
pub struct RedisSetup {
    /// TLS only (`--port 0`): the serving certificate and the CA it trusts
    /// for clients; the harness connects with the client certificate.
    pub tls: Option<RedisTlsFiles>,
    /// `--tls-auth-clients yes`: a client must present a certificate the
    /// CA issued.
    pub tls_auth_clients: bool,
    /// ACL users, one `user` directive each, as its words
    /// (`["app", "on", ">secret", "~*", "+@all"]`).
    pub users: Vec<Vec<String>>,
}

/// A Redis server with no persistence, whose default user requires
/// [`REDIS_PASSWORD`].
#[derive(Debug)]
pub struct Redis {
    /// Where it listens (its TLS port when it serves TLS).
    pub addr: SocketAddr,
    tls: Option<RedisTlsFiles>,
    child: Option<Child>,
    log: PathBuf,
}

impl Redis {
    /// Starts `redis-server` under `dir` on a free loopback port.
    pub async fn start(dir: &Path) -> Redis {
        Redis::start_with(dir, RedisSetup::default()).await
    }

    /// Starts `redis-server` under `dir` on a free loopback port, set up as
    /// `setup` says.
    pub async fn start_with(dir: &Path, setup: RedisSetup) -> Redis {
        let addr = free_addr();
        let root = dir.join(format!("redis-{}-{}", std::process::id(), addr.port()));
        std::fs::create_dir_all(&root).expect("create the redis directory");
        let program = Path::new("/usr/bin/redis-server");
        assert!(program.exists(), "no /usr/bin/redis-server: run scripts/deps.sh (Debian package `redis-server`)");
        let log = root.join("redis.log");
        let mut command = Command::new(program);
        match &setup.tls {
            None => {
                command.args(["--port", &addr.port().to_string()]);
            }
            Some(tls) => {
                remedy_proto::tls::install_default_provider();
                command.args(["--port", "0", "--tls-port", &addr.port().to_string(), "--tls-cert-file"]);
                command.arg(&tls.server.0).arg("--tls-key-file").arg(&tls.server.1);
                command.arg("--tls-ca-cert-file").arg(&tls.ca);
                command.args(["--tls-auth-clients", if setup.tls_auth_clients { "yes" } else { "no" }]);
            }
        }
        for user in &setup.users {
            command.arg("--user").args(user);
        }
        let child = command
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--requirepass", REDIS_PASSWORD, "--databases", "16", "--logfile"])
            .arg(&log)
            .arg("--dir")
            .arg(&root)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start redis-server: {e}"));
        let redis = Redis { addr, tls: setup.tls, child: Some(child), log };
        let client = redis.client(0);
        eventually("redis-server answering PING", Duration::from_secs(30), || {
            let client = client.clone();
            async move {
                let mut c = client.get_multiplexed_async_connection().await.ok()?;
                redis::cmd("PING").query_async::<String>(&mut c).await.ok()
            }
        })
        .await;
        redis
    }

    /// A URL for database `db` with the password, on a server without TLS.
    pub fn url(&self, db: u32) -> String {
        format!("redis://:{REDIS_PASSWORD}@{}/{db}", self.addr)
    }

    /// A client for database `db` as the default user, over TLS (with the
    /// client certificate) when the server serves TLS.
    pub fn client(&self, db: u32) -> redis::Client {
        let Some(tls) = &self.tls else {
            return redis::Client::open(self.url(db)).expect("a Redis URL");
        };
        let read = |path: &Path| std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        let certificates = redis::TlsCertificates {
            client_tls: Some(redis::ClientTlsConfig {
                client_cert: read(&tls.client.0),
                client_key: read(&tls.client.1),
            }),
            root_cert: Some(read(&tls.ca)),
        };
        let addr = redis::ConnectionAddr::TcpTls {
            host: self.addr.ip().to_string(),
            port: self.addr.port(),
            insecure: false,
            tls_params: None,
        };
        let settings = redis::RedisConnectionInfo::default().set_db(i64::from(db)).set_password(REDIS_PASSWORD);
        let info = redis::IntoConnectionInfo::into_connection_info(addr)
            .expect("connection info")
            .set_redis_settings(settings);
        redis::Client::build_with_tls(info, certificates).expect("a TLS client")
    }

    /// A connection to database `db`.
    pub async fn connection(&self, db: u32) -> redis::aio::MultiplexedConnection {
        self.client(db).get_multiplexed_async_connection().await.unwrap_or_else(|e| panic!("connect to redis: {e}"))
    }

    /// The server log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            eprintln!("---- last lines of redis-server ----");
            for line in tail.into_iter().rev() {
                eprintln!("{line}");
            }
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
