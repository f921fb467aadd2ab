//! The PostgreSQL engine (`storage.engine = "postgres"`) against a real
//! PostgreSQL server on loopback (Debian's, started by the test, TLS only):
//! the whole exchange, a broker restart, a database killed with SIGKILL,
//! certificate verification, schema versions, and two writers.

use std::sync::Arc;

use broker::config::Engine;
use broker::store::postgres::{PgSettings, PgStore, SCHEMA_VERSION};
use broker::store::{Batch, Store, StoreError, Table};
use integration_tests::postgres::PgServer;
use integration_tests::*;
use referral_proto::ids::AgencyId;
use referral_proto::notice::example_notice;
use referral_proto::receipt::ReceiptStatus;

/// A fresh server in its own folder (kept alive by the returned guard).
fn server() -> (tempfile::TempDir, PgServer) {
    let dir = tempfile::tempdir().unwrap();
    let pg = PgServer::start(&dir.path().join("pg"));
    (dir, pg)
}

fn on(settings: PgSettings) -> Options {
    Options { tweak: Box::new(move |c| c.storage.engine = Engine::Postgres(settings.clone())), ..Options::default() }
}

fn refused_message(e: StoreError) -> String {
    match e {
        StoreError::Refused { message, .. } => message,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_exchange_runs_on_postgres_and_the_log_verifies_after_a_restart() {
    let (_dir, pg) = server();
    let mut h = Harness::start_with(on(pg.settings())).await;
    crate::audit::traffic(&h, 6).await;
    let state = h.dir().join("auditor-state");
    let first = crate::audit::verify(&h, &state).await;
    assert!(first.ok, "{}", crate::audit::failures(&first));
    // Everything is in PostgreSQL, not in a sled folder.
    assert!(!h.config.storage.data_dir.join("db").exists(), "no sled store was made");
    let rows: u64 = pg.psql("SELECT count(*) FROM kv WHERE tbl = 7").parse().unwrap();
    assert_eq!(rows, h.state().hub.tree.borrow().0, "one audit row per log entry");

    h.restart().await;
    let police = h.client(POLICE_SYSTEM).await;
    let sent = police.send(&AgencyId::new(SOCIAL).unwrap(), &example_notice()).await.unwrap();
    // Six were sent before the restart; the queue's sequence continues.
    assert_eq!(sent.receipt.statement.recipient_sequence, 7);
    let again = crate::audit::verify(&h, &state).await;
    assert!(again.ok && !again.restore_suspected, "{}", crate::audit::failures(&again));
    assert!(again.report.tree_size > first.report.tree_size);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_receipted_referral_survives_the_database_being_killed() {
    let (_dir, mut pg) = server();
    let mut h = Harness::start_with(on(pg.settings())).await;
    let police = h.client(POLICE_SYSTEM).await;
    let mut ids = Vec::new();
    for _ in 0..20 {
        ids.push(police.send(&AgencyId::new(SOCIAL).unwrap(), &example_notice()).await.unwrap().message_id);
    }
    h.stop().await;
    // SIGKILL: no shutdown checkpoint; only what PostgreSQL fsynced survives.
    pg.kill();
    pg.restart();
    h.restart().await;
    let oncall = h.client(SOCIAL_ONCALL).await;
    assert_eq!(crate::support::waiting(&oncall).await, ids, "every receipted referral is there, once, in order");
    let receipts = police.receipts(&ids).await.unwrap();
    for (id, list) in receipts {
        assert_eq!(list[0].statement.status, ReceiptStatus::Accepted, "{id}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_whose_certificate_another_ca_signed_is_refused() {
    let (_dir, pg) = server();
    let (_other_dir, other) = server();
    let mut settings = pg.settings();
    settings.ca_file = other.ca_file.clone();
    let message = refused_message(PgStore::open(&settings).unwrap_err());
    assert!(message.contains("invalid peer certificate: UnknownIssuer"), "{message}");
    // Nothing was created in the database it could not verify.
    assert_eq!(pg.psql("SELECT to_regclass('kv') IS NULL"), "t");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_and_an_unreachable_database_are_named() {
    let (_dir, pg) = server();
    let mut settings = pg.settings();
    let wrong = pg.dir.join("wrong-password");
    std::fs::write(&wrong, "not-the-password").unwrap();
    std::fs::set_permissions(&wrong, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    settings.password_file = Some(wrong);
    let message = refused_message(PgStore::open(&settings).unwrap_err());
    assert!(message.contains("password authentication failed for user \"broker\""), "{message}");
    assert!(!message.contains("not-the-password"), "{message}");

    let mut settings = pg.settings();
    settings.url = format!("postgresql://broker@localhost:{}/referral?connect_timeout=2", free_port().port());
    let message = refused_message(PgStore::open(&settings).unwrap_err());
    assert!(message.contains("Connection refused"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_file_others_can_read_is_refused() {
    let (_dir, pg) = server();
    let settings = pg.settings();
    let path = settings.password_file.clone().unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let message = refused_message(PgStore::open(&settings).unwrap_err());
    assert_eq!(message, format!("{} can be read by others (mode 644); chmod 600 it", path.display()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_schema_is_migrated_once_and_a_newer_one_is_refused() {
    let (_dir, pg) = server();
    let store = PgStore::open(&pg.settings()).unwrap();
    assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
    drop(store);
    // A second start finds the schema and migrates nothing.
    let store = PgStore::open(&pg.settings()).unwrap();
    assert_eq!(pg.psql("SELECT count(*) FROM broker_schema"), SCHEMA_VERSION.to_string());
    drop(store);
    pg.psql("INSERT INTO broker_schema (version) VALUES (99)");
    let message = refused_message(PgStore::open(&pg.settings()).unwrap_err());
    assert!(
        message.ends_with(&format!(
            "has schema version 99, newer than this broker's {SCHEMA_VERSION}; upgrade the broker (never downgrade a database)"
        )),
        "{message}"
    );
}

fn audit_entry(index: u64, v: &[u8]) -> Batch {
    let mut batch = Batch::default();
    batch.put(Table::Audit, index.to_be_bytes().to_vec(), v.to_vec());
    batch.put(Table::Meta, b"test".to_vec(), v.to_vec());
    batch
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_audit_entry_is_never_overwritten() {
    let (_dir, pg) = server();
    let store = PgStore::open(&pg.settings()).unwrap();
    store.commit(&audit_entry(0, b"first")).unwrap();
    let err = store.commit(&audit_entry(0, b"second")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "storage I/O failed: postgres: another writer appended to the audit log first; the batch was not written"
    );
    // The whole batch was rolled back, not just the audit row.
    assert_eq!(store.get(Table::Audit, &0u64.to_be_bytes()).unwrap().as_deref(), Some(&b"first"[..]));
    assert_eq!(store.get(Table::Meta, b"test").unwrap().as_deref(), Some(&b"first"[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_another_has_replaced_writes_nothing_more() {
    let (_dir, pg) = server();
    let old = Arc::new(PgStore::open(&pg.settings()).unwrap());
    old.commit(&audit_entry(0, b"old")).unwrap();
    let new = PgStore::open(&pg.settings()).unwrap();
    let err = old.commit(&audit_entry(1, b"old again")).unwrap_err().to_string();
    assert!(err.starts_with("storage I/O failed: postgres: fenced: another broker node ("), "{err}");
    assert!(
        err.contains("writer epoch 2) took over writing at ")
            && err.ends_with("this node (epoch 1) writes nothing more"),
        "{err}"
    );
    assert_eq!(new.get(Table::Audit, &1u64.to_be_bytes()).unwrap(), None, "nothing of the fenced batch was written");
    new.commit(&audit_entry(1, b"new")).unwrap();
    // Reading still works for the fenced node (tools, and its clients until it stops).
    assert_eq!(old.get(Table::Audit, &1u64.to_be_bytes()).unwrap().as_deref(), Some(&b"new"[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_node_replaced_by_another_refuses_writes_and_the_log_stays_whole() {
    let (_dir, pg) = server();
    let first = Harness::start_with(on(pg.settings())).await;
    crate::audit::traffic(&first, 2).await;
    // A second node of the same federation on the same database, as an
    // operator starts a standby broker: it takes over writing.
    let mut config = first.config.clone();
    config.storage.data_dir = first.dir().join("node-2");
    config.admin.endpoint = None;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let second_addr = listener.local_addr().unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let clock: Arc<dyn broker::clock::Clock> = Arc::new(broker::clock::SystemClock);
    let _second = broker::server::start(
        listener,
        config,
        broker::server::StartOptions { clock, sighup: false },
        shutdown.clone(),
    )
    .await
    .unwrap();

    let err = first.client(POLICE_SYSTEM).await.send(&AgencyId::new(SOCIAL).unwrap(), &example_notice()).await;
    let err = err.unwrap_err().to_string();
    assert!(err.contains("broker storage failed; the request was not carried out, retry later"), "{err}");

    let mut profile = crate::support::profile(&first, POLICE_SYSTEM);
    profile.broker = profile.broker.replace(&first.addr.port().to_string(), &second_addr.port().to_string());
    let police = agency_client::Client::connect(profile).await.unwrap();
    let sent = police.send(&AgencyId::new(SOCIAL).unwrap(), &example_notice()).await.unwrap();
    assert_eq!(sent.receipt.statement.recipient_sequence, 3, "the second node continues the queue");
    let mut auditor = crate::support::profile(&first, AUDITOR);
    auditor.broker = auditor.broker.replace(&first.addr.port().to_string(), &second_addr.port().to_string());
    let auditor = agency_client::Client::connect(auditor).await.unwrap();
    let v = auditor.verify_log(&first.dir().join("auditor-state"), |_, _| {}).await.unwrap();
    assert!(v.ok, "{}", crate::audit::failures(&v));
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plaintext_connection_is_refused_by_the_server_too() {
    // The broker never offers plaintext; the test cluster also rejects it,
    // so a misconfigured client could not fall back to it.
    let (_dir, pg) = server();
    let out = std::process::Command::new(integration_tests::postgres::bin_dir().join("psql"))
        .args([&format!("postgresql://broker@127.0.0.1:{}/referral?sslmode=disable", pg.addr.port()), "-c", "SELECT 1"])
        .env("PGPASSWORD", std::fs::read_to_string(&pg.password_file).unwrap())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no encryption"), "{}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_reaches_the_database_and_backup_names_postgresql_tools() {
    let (dir, pg) = server();
    let fed = dir.path().join("fed");
    let (code, _, err) = run_tool(crate::support::exe(), "certs", &["dev", "--dir", fed.to_str().unwrap()]).await;
    assert_eq!(code, 0, "{err}");
    let config = fed.join("broker.toml");
    let s = pg.settings();
    let storage = format!(
        "engine = \"postgres\"\npostgres_url = \"{}\"\npostgres_ca = \"{}\"\npostgres_password_file = \"{}\"\n",
        s.url,
        s.ca_file.display(),
        s.password_file.unwrap().display()
    );
    let text = broker::config::dev_config_text("127.0.0.1:7443".parse().unwrap(), &dir.path().join("data")).replacen(
        "[storage]\n",
        &format!("[storage]\n{storage}"),
        1,
    );
    std::fs::write(&config, &text).unwrap();
    let target = format!("postgres://broker@localhost port {} database referral", pg.addr.port());
    let args = ["check-config", "--config", config.to_str().unwrap()];
    let check = || run_tool(crate::support::exe(), "broker", &args);

    let (code, out, err) = check().await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&format!(
            "data in {target} (reachable over verified TLS; no schema yet, the broker creates version {SCHEMA_VERSION} at start)"
        )),
        "{out}"
    );
    assert_eq!(pg.psql("SELECT to_regclass('kv') IS NULL"), "t", "check-config changed nothing");

    drop(PgStore::open(&pg.settings()).unwrap());
    let (code, out, err) = check().await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&format!("data in {target} (reachable over verified TLS; schema version {SCHEMA_VERSION})")),
        "{out}"
    );

    pg.psql("INSERT INTO broker_schema (version) VALUES (99)");
    let (code, _, err) = check().await;
    assert_eq!(code, 1);
    assert!(err.contains("1 problem(s)"), "{err}");
    assert!(
        err.contains(&format!(
            "storage.postgres_url: {target} has schema version 99, newer than this broker's {SCHEMA_VERSION}"
        )),
        "{err}"
    );

    let (code, _, err) = run_tool(
        crate::support::exe(),
        "broker",
        &["backup", "--config", config.to_str().unwrap(), "--to", dir.path().join("b").to_str().unwrap()],
    )
    .await;
    assert_eq!(code, 1);
    assert!(err.contains(broker::store::postgres::NO_BROKER_BACKUP), "{err}");
    assert!(!dir.path().join("b").exists());
}
