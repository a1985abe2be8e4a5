//! How the coordinator protects a PostgreSQL password, against a real
//! server (Debian's `postgresql`) whose pg_hba.conf asks the coordinator's
//! role for a cleartext password (`password`) and which serves TLS too:
//! without `sslmode` the password is not sent and the step says why;
//! `sslmode: disable` sends it; `require` and `verify-full` send it inside
//! TLS.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use remedy_e2e::datastores::{COORDINATOR_ROLE, Postgres, RedisTlsFiles, give_to_postgres, pg_password_file};
use remedy_e2e::procs::eventually;
use remedy_e2e::runs::{result_of, run_end, run_manual, runbook, show, start, status_of};
use remedy_e2e::world::World;

/// Makes `pg` ask `COORDINATOR_ROLE` for a cleartext password on loopback
/// TCP and serve TLS with a certificate for 127.0.0.1; returns the CA file.
async fn cleartext_and_tls(dir: &Path, pg: &Postgres) -> std::path::PathBuf {
    let files = RedisTlsFiles::generate(dir, "pg", &["127.0.0.1"]);
    let root = pg.data.parent().expect("the server's directory").to_path_buf();
    let (cert, key) = (root.join("server.crt"), root.join("server.key"));
    std::fs::copy(&files.server.0, &cert).expect("copy the certificate");
    std::fs::copy(&files.server.1, &key).expect("copy the key");
    give_to_postgres(&root);
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("key mode");
    let hba = pg.data.join("pg_hba.conf");
    let rest = std::fs::read_to_string(&hba).expect("read pg_hba.conf");
    // The first matching line wins: the coordinator's role only.
    std::fs::write(&hba, format!("host all {COORDINATOR_ROLE} 127.0.0.1/32 password\n{rest}"))
        .expect("write pg_hba.conf");
    let client = pg.client().await;
    // One statement at a time: ALTER SYSTEM refuses a transaction block.
    for statement in [
        format!("ALTER SYSTEM SET ssl_cert_file = '{}'", cert.display()),
        format!("ALTER SYSTEM SET ssl_key_file = '{}'", key.display()),
        "ALTER SYSTEM SET ssl = on".to_owned(),
        "SELECT pg_reload_conf()".to_owned(),
    ] {
        client.simple_query(&statement).await.unwrap_or_else(|e| panic!("{statement}: {e}"));
    }
    eventually("the server serving TLS", Duration::from_secs(30), || async {
        let row = client.query_one("SHOW ssl", &[]).await.ok()?;
        (row.get::<_, String>(0) == "on").then_some(())
    })
    .await;
    files.ca
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cleartext_password_is_sent_only_inside_tls_or_where_sslmode_disable_allows_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let pg = Postgres::primary(dir.path(), "db-0", false).await;
    let ca = cleartext_and_tls(dir.path(), &pg).await;
    let other_ca = RedisTlsFiles::generate(dir.path(), "other", &["127.0.0.1"]).ca;
    let world = World::start().await;
    let password = pg_password_file(dir.path());
    let member = format!(
        "{{name: db-0, host: 127.0.0.1, port: {}, user: {COORDINATOR_ROLE}, password_file: {}}}",
        pg.addr.port(),
        password.display()
    );
    let database = |name: &str, tls: &str| {
        format!("  {name}:\n    primary: {member}\n    split_brain_check: null\n    connect_timeout: 5s\n{tls}")
    };
    let config = [
        "databases:\n".to_owned(),
        database("unset", ""),
        database("cleartext", "    sslmode: disable\n"),
        database("encrypted", "    sslmode: require\n"),
        database("verified", &format!("    sslmode: verify-full\n    sslrootcert: {}\n", ca.display())),
        database("wrong_ca", &format!("    sslmode: verify-full\n    sslrootcert: {}\n", other_ca.display())),
    ]
    .concat();
    let steps = ["unset", "cleartext", "encrypted", "verified", "wrong_ca"]
        .iter()
        .map(|db| format!("  - id: {db}\n    pg_select1: {{database: {db}}}\n    on_failure: continue\n"))
        .collect::<String>();
    let catalog = runbook(dir.path(), "PROBES", &steps, "guard_rails: {cooldown: 0s}\n");
    let coordinator = start(dir.path(), &world, &catalog, &config).await;

    let id = run_manual(&coordinator, "PROBES", false).await;
    let entries = run_end(&coordinator, &id).await;
    let log = show(&entries);
    let unset = result_of(&entries, "unset").expect("a result for the database without sslmode");
    assert_eq!(unset.details.get("status").map(String::as_str), Some("failed"), "{log}");
    assert!(
        unset.message.contains("member db-0 asked for a cleartext password without TLS; not sent")
            && unset.message.contains("sslmode: disable"),
        "{log}"
    );
    for allowed in ["cleartext", "encrypted", "verified"] {
        assert_eq!(status_of(&entries, allowed).as_deref(), Some("succeeded"), "{allowed}:\n{log}");
    }
    // verify-full checks the certificate: one from another CA is refused.
    let wrong = result_of(&entries, "wrong_ca").expect("a result for the database trusting another CA");
    assert_eq!(wrong.details.get("status").map(String::as_str), Some("failed"), "{log}");
    assert!(wrong.message.contains("certificate"), "{log}");
}
