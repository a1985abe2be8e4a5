//! Talking to one PostgreSQL server: connecting with the configured
//! credentials (the password read from its file at each connection),
//! bounded queries, and what a member says about itself.
//!
//! A member a fence closed refuses connections to every database, the
//! coordinator's `dbname` included; the coordinator then reaches it through
//! `template1` (see `fence` in the module above), which is where it reads
//! what the member is, and where it reopens a promoted replica that
//! replayed its old primary's fence.

use remedy_shared::failover::{MemberState, Role, Status, parse_lsn, timeline_of_walfile};
use std::time::Duration;

use tokio_postgres::config::SslMode;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls};

use super::tls;

use super::config::{DatabaseConfig, MemberConfig};

/// The database a fenced member is still reached through: a template, so
/// it holds no application data, and open to connections unless a person
/// closed it.
pub(crate) const FENCED_DOOR: &str = "template1";

/// An open connection to one member, closed when dropped.
pub(crate) struct Session {
    client: Client,
    query_timeout: Duration,
    member: String,
    /// The database connected to: the configured `dbname`, or
    /// [`FENCED_DOOR`] when that one takes no connections.
    pub(crate) database: String,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Session({})", self.member)
    }
}

/// A PostgreSQL error as one line: the server's own message when it sent
/// one (`FATAL: password authentication failed for user "remedy"`), else
/// the client's reason with its causes.
pub(crate) fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{}: {}", db.severity(), db.message());
    }
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// Why a connection did not open, before it is sorted.
enum Failed {
    /// The server or the client said why.
    Postgres(tokio_postgres::Error),
    /// Before PostgreSQL was spoken (TCP, the TLS settings).
    Other(String),
}

fn refused(e: &tokio_postgres::Error) -> Refused {
    // `database "…" is not currently accepting connections`.
    if e.code() == Some(&SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE) {
        return Refused::Closed(describe(e));
    }
    Refused::Other(describe(e))
}

/// Opens the connection as the database's `sslmode` says (see `tls.rs`);
/// the connection task ends when the client is dropped.
async fn connect_with_sslmode(
    db: &DatabaseConfig,
    member: &MemberConfig,
    config: &mut tokio_postgres::Config,
) -> Result<Client, Failed> {
    let tls = tls::client_config(db).map_err(Failed::Other)?;
    let tcp = tokio::net::TcpStream::connect((member.host.as_str(), member.port))
        .await
        .map_err(|e| Failed::Other(format!("cannot connect to {}: {e}", member.address())))?;
    let _ = tcp.set_nodelay(true);
    match (tls, db.sslmode) {
        (Some(config_tls), _) => {
            config.ssl_mode(SslMode::Require);
            let tls = tls::Tls { config: config_tls, host: member.host.clone() };
            let (client, connection) = config.connect_raw(tcp, tls).await.map_err(Failed::Postgres)?;
            tokio::spawn(async move {
                let _ = connection.await;
            });
            Ok(client)
        }
        (None, Some(super::config::SslMode::Disable)) => {
            config.ssl_mode(SslMode::Disable);
            let (client, connection) = config.connect_raw(tcp, NoTls).await.map_err(Failed::Postgres)?;
            tokio::spawn(async move {
                let _ = connection.await;
            });
            Ok(client)
        }
        (None, _) => {
            config.ssl_mode(SslMode::Disable);
            let guarded = tls::Guarded::new(tcp, member);
            let (client, connection) = config.connect_raw(guarded, NoTls).await.map_err(Failed::Postgres)?;
            tokio::spawn(async move {
                let _ = connection.await;
            });
            Ok(client)
        }
    }
}

/// Why a connection did not open.
enum Refused {
    /// The database takes no connections (`ALLOW_CONNECTIONS false`).
    Closed(String),
    /// Anything else, in one line.
    Other(String),
}

impl Session {
    /// Connects to `member`'s `dbname` within the cluster's connect
    /// timeout, or, when a fence closed that database, to [`FENCED_DOOR`].
    pub(crate) async fn open(db: &DatabaseConfig, member: &MemberConfig) -> Result<Session, String> {
        match Session::connect(db, member, &member.dbname).await {
            Ok(session) => Ok(session),
            Err(Refused::Closed(why)) if member.dbname != FENCED_DOOR => Session::open_to(db, member, FENCED_DOOR)
                .await
                .map_err(|e| format!("{why}; through {FENCED_DOOR}: {e}")),
            Err(Refused::Closed(e) | Refused::Other(e)) => Err(e),
        }
    }

    /// Connects to database `dbname` of `member`, whatever the configured
    /// one.
    pub(crate) async fn open_to(db: &DatabaseConfig, member: &MemberConfig, dbname: &str) -> Result<Session, String> {
        Session::connect(db, member, dbname).await.map_err(|(Refused::Closed(e) | Refused::Other(e))| e)
    }

    async fn connect(db: &DatabaseConfig, member: &MemberConfig, dbname: &str) -> Result<Session, Refused> {
        let mut config = tokio_postgres::Config::new();
        config
            .host(&member.host)
            .port(member.port)
            .user(&member.user)
            .dbname(dbname)
            .application_name("remedy-coordinator")
            .connect_timeout(db.connect_timeout);
        if let Some(file) = &member.password_file {
            let password = std::fs::read_to_string(file)
                .map_err(|e| Refused::Other(format!("cannot read the password file {}: {e}", file.display())))?;
            config.password(password.trim_end_matches(['\r', '\n']));
        }
        let connecting = connect_with_sslmode(db, member, &mut config);
        let client = match tokio::time::timeout(db.connect_timeout, connecting).await {
            Ok(Ok(client)) => client,
            Ok(Err(Failed::Other(e))) => return Err(Refused::Other(e)),
            Ok(Err(Failed::Postgres(e))) => return Err(refused(&e)),
            Err(_) => return Err(Refused::Other(format!("no connection within {:?}", db.connect_timeout))),
        };
        Ok(Session {
            client,
            query_timeout: db.query_timeout,
            member: member.name().to_owned(),
            database: dbname.to_owned(),
        })
    }

    /// Runs `sql` (no parameters) and returns its rows as text, within the
    /// query timeout, or `limit` when longer.
    pub(crate) async fn rows(&self, sql: &str, limit: Option<Duration>) -> Result<Vec<Vec<Option<String>>>, String> {
        let limit = limit.unwrap_or(self.query_timeout);
        let messages = match tokio::time::timeout(limit, self.client.simple_query(sql)).await {
            Ok(Ok(m)) => m,
            Ok(Err(e)) => return Err(describe(&e)),
            Err(_) => return Err(format!("no answer within {limit:?}")),
        };
        Ok(messages
            .into_iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(row) => {
                    Some((0..row.len()).map(|i| row.get(i).map(str::to_owned)).collect())
                }
                _ => None,
            })
            .collect())
    }

    /// The first column of the first row.
    pub(crate) async fn value(&self, sql: &str) -> Result<Option<String>, String> {
        Ok(self.rows(sql, None).await?.into_iter().next().and_then(|r| r.into_iter().next().flatten()))
    }

    /// Runs a statement that returns nothing.
    pub(crate) async fn execute(&self, sql: &str) -> Result<(), String> {
        self.rows(sql, None).await.map(|_| ())
    }
}

/// What a member is. The last column says whether a fence sealed it:
/// nobody but the coordinator's own role may log in (see `fence`).
const STATUS_SQL: &str = "SELECT 1, pg_is_in_recovery(), current_setting('default_transaction_read_only'), \
     CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_lsn()::text END, \
     pg_last_wal_receive_lsn()::text, pg_last_wal_replay_lsn()::text, \
     CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_walfile_name(pg_current_wal_lsn()) END, \
     NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolcanlogin AND rolname <> current_user)";

const PROMOTE_SIGNAL_SQL: &str = "SELECT (pg_stat_file('promote', true)).size IS NOT NULL";

/// Asks one member `SELECT 1` and what it is.
pub(crate) async fn probe(db: &DatabaseConfig, member: &MemberConfig) -> MemberState {
    let started = tokio::time::Instant::now();
    let answer = async {
        let session = Session::open(db, member).await?;
        let row = session.rows(STATUS_SQL, None).await?.into_iter().next().ok_or("no row for SELECT 1")?;
        let text = |i: usize| row.get(i).cloned().flatten();
        if text(0).as_deref() != Some("1") {
            return Err("SELECT 1 did not answer 1".to_owned());
        }
        let in_recovery = text(1).as_deref() == Some("t");
        let read_only = text(2).as_deref() == Some("on");
        let sealed = text(7).as_deref() == Some("t");
        // Read-only by default alone is not fenced: any session may still
        // ask for a read-write transaction, so such a member takes writes.
        let role = match (in_recovery, read_only && sealed) {
            (true, _) => Role::Replica,
            (false, true) => Role::Fenced,
            (false, false) => Role::Primary,
        };
        Ok(Status {
            role,
            // Asked only while a failover is planned: see `mark_promotions`.
            promoting: false,
            current_lsn: text(3).as_deref().and_then(parse_lsn),
            receive_lsn: text(4).as_deref().and_then(parse_lsn),
            replay_lsn: text(5).as_deref().and_then(parse_lsn),
            timeline: text(6).as_deref().and_then(timeline_of_walfile),
            millis: started.elapsed().as_millis(),
        })
    }
    .await;
    MemberState { name: member.name().to_owned(), answer }
}

/// Marks the replicas of `members` with a promotion under way. A promotion
/// asked of a replica leaves its signal file until the replica acts on it,
/// so it is known after whoever asked is gone. Asked only while a failover
/// is planned, not by every probe: reading the file needs superuser or a
/// grant on pg_stat_file, and a role without one (which then sees no
/// promotion under way) would put an error in the server's log each time.
pub(crate) async fn mark_promotions(db: &DatabaseConfig, members: &mut [MemberState]) {
    let asks = members.iter_mut().filter_map(|m| {
        let config = db.member(&m.name)?;
        let status = m.answer.as_mut().ok().filter(|s| s.role == Role::Replica)?;
        Some(async move {
            let Ok(session) = Session::open(db, config).await else { return };
            status.promoting = session.value(PROMOTE_SIGNAL_SQL).await.ok().flatten().as_deref() == Some("t");
        })
    });
    futures::future::join_all(asks).await;
}

/// Asks every member at once.
pub(crate) async fn probe_all(db: &DatabaseConfig) -> Vec<MemberState> {
    futures::future::join_all(db.members().map(|m| probe(db, m))).await
}
