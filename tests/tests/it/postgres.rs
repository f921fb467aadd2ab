//! The PostgreSQL engine (`storage.engine = "postgres"`) against a real
//! PostgreSQL server on loopback (Debian's, started by the test, TLS only):
//! the whole exchange, a broker restart, a database killed with SIGKILL,
//! certificate verification, schema versions, and two broker nodes
//! serving at once (one writer at a time under the writer row lock).

use std::sync::Arc;

use agency_client::alerts::AlertEvent;
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

/// A call that times out midway (the database stops answering while a
/// batch holds the writer lock) must not hand its connection back to the
/// pool with the transaction still open: the lock would stay taken for
/// every node, and a later batch on that connection could commit the half
/// of the failed one. The connection is closed instead, so the server
/// rolls the transaction back and frees the lock.
#[test]
fn a_batch_whose_database_call_times_out_leaves_no_open_transaction_behind() {
    let (_dir, pg) = server();
    let a = PgStore::open(&pg.settings()).unwrap();
    let b = PgStore::open(&pg.settings()).unwrap();
    a.commit(&audit_entry(0, b"before")).unwrap();
    let g = a.begin_batch().unwrap().unwrap();
    // Freeze the backend serving A's locked transaction, then let A's
    // commit (on the batch it began, this thread) run into the call timeout.
    let pid =
        pg.psql("SELECT pid FROM pg_stat_activity WHERE state = 'idle in transaction' AND query LIKE '%FOR UPDATE%'");
    assert!(pid.parse::<u32>().is_ok(), "one backend holds the writer lock: {pid:?}");
    let signal = |sig: &str| {
        assert!(std::process::Command::new("kill").args([sig, &pid]).status().unwrap().success(), "kill {sig}");
    };
    signal("-STOP");
    let err = a.commit(&audit_entry(1, b"half")).unwrap_err();
    signal("-CONT");
    assert_eq!(err.to_string(), "storage I/O failed: postgres: no answer within 15s");
    // The lock is free for the other node, and nothing of the failed batch is there.
    assert_eq!(b.begin_batch().unwrap(), Some(g), "B takes the lock; the failed batch did not advance the generation");
    assert_eq!(b.get(Table::Audit, &1u64.to_be_bytes()).unwrap(), None, "the failed batch left nothing");
    b.end_batch();
    // A goes on: its pool holds no connection stuck in the old transaction.
    for i in 1..4u64 {
        assert_eq!(a.begin_batch().unwrap(), Some(g + i - 1));
        assert_eq!(a.get(Table::Audit, &i.to_be_bytes()).unwrap(), None);
        a.commit(&audit_entry(i, b"after")).unwrap();
        assert_eq!(a.get(Table::Meta, b"test").unwrap().as_deref(), Some(&b"after"[..]));
    }
    assert_eq!(pg.psql("SELECT count(*) FROM pg_stat_activity WHERE state LIKE 'idle in transaction%'"), "0");
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
async fn nodes_write_one_batch_at_a_time_and_each_sees_the_other_under_the_lock() {
    let (_dir, pg) = server();
    let a = Arc::new(PgStore::open(&pg.settings()).unwrap());
    let b = Arc::new(PgStore::open(&pg.settings()).unwrap());
    // Neither start fenced the other: both write.
    a.commit(&audit_entry(0, b"a")).unwrap();
    b.commit(&audit_entry(1, b"b")).unwrap();

    let g = a.begin_batch().unwrap().expect("a shared store has a generation");
    // B's batch waits for A's to end (the writer row lock) ...
    let b2 = b.clone();
    let waiting = std::thread::spawn(move || {
        let g = b2.begin_batch().unwrap().unwrap();
        // ... and then reads what A committed, through its own batch.
        let seen = b2.get(Table::Audit, &2u64.to_be_bytes()).unwrap();
        b2.commit(&audit_entry(3, b"b again")).unwrap();
        (g, seen)
    });
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(!waiting.is_finished(), "B's batch waits while A holds the writer lock");
    assert_eq!(a.get(Table::Audit, &2u64.to_be_bytes()).unwrap(), None);
    a.commit(&audit_entry(2, b"a again")).unwrap();
    let (g_b, seen) = waiting.join().unwrap();
    assert_eq!(g_b, g + 1, "each commit advances the generation by one");
    assert_eq!(seen.as_deref(), Some(&b"a again"[..]));
    assert_eq!(a.begin_batch().unwrap(), Some(g + 2));
    a.end_batch();
    assert_eq!(pg.psql("SELECT generation FROM broker_writer"), (g + 2).to_string());
    // A batch begun and ended without writing changes nothing and frees the lock.
    assert_eq!(b.begin_batch().unwrap(), Some(g + 2));
    b.end_batch();

    // A stale append (index 3 is B's) fails whole, under the lock too.
    a.begin_batch().unwrap();
    let err = a.commit(&audit_entry(3, b"stale")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "storage I/O failed: postgres: another writer appended to the audit log first; the batch was not written"
    );
    assert_eq!(a.get(Table::Meta, b"test").unwrap().as_deref(), Some(&b"b again"[..]), "rolled back whole");
    // The failed batch released the lock: B writes at once.
    assert_eq!(b.begin_batch().unwrap(), Some(g + 2));
    b.commit(&audit_entry(4, b"b last")).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_nodes_changes_arrive_by_notification_and_by_the_poll_when_one_is_lost() {
    let (_dir, pg) = server();
    let store = PgStore::open(&pg.settings()).unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<Option<Vec<u8>>>();
    let tx = std::sync::Mutex::new(tx);
    store.watch_changes(
        Box::new(move |c| {
            let _ = tx.lock().unwrap().send(c.map(<[u8]>::to_vec));
            true
        }),
        std::time::Duration::from_millis(300),
    );
    // Where it starts, it has the hub re-read the store once (what other
    // nodes wrote between the hub's start and the listener's is in the
    // counters, not in later rows).
    let first = rx.recv_timeout(std::time::Duration::from_secs(5)).expect("the re-read at the start");
    assert_eq!(first, None);
    // Another node's batch, committed and notified.
    let other = PgStore::open(&pg.settings()).unwrap();
    let mut batch = audit_entry(0, b"x");
    batch.changes = vec![9, 9];
    other.commit(&batch).unwrap();
    let got = rx.recv_timeout(std::time::Duration::from_secs(5)).expect("the notified change arrives");
    assert_eq!(got.as_deref(), Some(&[9u8, 9][..]));
    // One whose notification was lost (written by hand, no NOTIFY): the poll finds it.
    pg.psql(
        "BEGIN; UPDATE broker_writer SET generation = generation + 1; \
         INSERT INTO broker_changes (generation, node, changes) SELECT generation, 1, '\\x0102'::bytea FROM broker_writer; COMMIT",
    );
    let got = rx.recv_timeout(std::time::Duration::from_secs(5)).expect("the poll finds the unannounced change");
    assert_eq!(got.as_deref(), Some(&[1u8, 2][..]));
    // This node's own batches are not handed back to it.
    let mut batch = audit_entry(1, b"y");
    batch.changes = vec![8];
    store.commit(&batch).unwrap();
    assert!(rx.recv_timeout(std::time::Duration::from_millis(1500)).is_err(), "its own change came back");
    // Each batch with changes has its row, this node's own too.
    assert_eq!(pg.psql("SELECT count(*) FROM broker_changes"), "3");
}

/// A second broker node, in this process, on `h`'s database and clock.
async fn second_node(
    h: &Harness,
) -> (std::net::SocketAddr, tokio_util::sync::CancellationToken, broker::server::Running) {
    let mut config = h.config.clone();
    config.storage.data_dir = h.dir().join("node-2");
    config.admin.endpoint = None;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let clock: Arc<dyn broker::clock::Clock> = match &h.manual_clock {
        Some(c) => c.clone(),
        None => Arc::new(broker::clock::SystemClock),
    };
    let running = broker::server::start(
        listener,
        config,
        broker::server::StartOptions { clock, sighup: false },
        shutdown.clone(),
    )
    .await
    .unwrap();
    (addr, shutdown, running)
}

/// `h`'s client `name`, connected to the node at `addr` instead.
async fn client_on(h: &Harness, addr: std::net::SocketAddr, name: &str) -> agency_client::Client {
    let mut profile = crate::support::profile(h, name);
    profile.broker = profile.broker.replace(&h.addr.port().to_string(), &addr.port().to_string());
    agency_client::Client::connect(profile).await.unwrap()
}

async fn next_event(alerts: &mut agency_client::alerts::Alerts<'_>) -> AlertEvent {
    loop {
        let event = tokio::time::timeout(std::time::Duration::from_secs(10), alerts.next())
            .await
            .expect("an alert within 10 s")
            .unwrap()
            .expect("stream open");
        match event {
            AlertEvent::CaughtUp { .. } | AlertEvent::Heartbeat { .. } => {}
            other => return other,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_serve_at_once_a_referral_sent_on_one_is_alerted_and_acked_on_the_other() {
    let (_dir, pg) = server();
    let h = Harness::start_with(on(pg.settings())).await;
    let (b_addr, shutdown, _b) = second_node(&h).await;
    let police = h.client(POLICE_SYSTEM).await; // on node A
    let oncall = client_on(&h, b_addr, SOCIAL_ONCALL).await; // on node B
    let mut alerts = oncall.subscribe().await.unwrap();
    let mut receipts = police.watch_receipts(0).await.unwrap();

    let started = std::time::Instant::now();
    let sent = police.send(&AgencyId::new(SOCIAL).unwrap(), &example_notice()).await.unwrap();
    match next_event(&mut alerts).await {
        AlertEvent::Referral(r) => assert_eq!(r.message_id, sent.message_id),
        other => panic!("expected the referral, got {other:?}"),
    }
    let alerted = started.elapsed();
    let acked = oncall.ack_digest(sent.message_id, sent.envelope_digest, "jour-1").await.unwrap();
    assert!(!acked.already_acknowledged);
    // Node B's subscriber sees the settlement it made; node A's sender the receipt.
    match next_event(&mut alerts).await {
        AlertEvent::Settled { message_id, acknowledged_by, .. } => {
            assert_eq!((message_id, acknowledged_by.as_str()), (sent.message_id, "jour-1"));
        }
        other => panic!("expected the settlement, got {other:?}"),
    }
    let receipt = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        crate::deadlines::wait_status(&mut receipts, sent.message_id, ReceiptStatus::Acknowledged),
    )
    .await
    .expect("the ACKNOWLEDGED receipt reaches node A's sender within 10 s");
    assert_eq!(receipt.ack.unwrap().statement.acknowledged_by, "jour-1");
    eprintln!("alerted on the other node {:.0} ms after the submit", alerted.as_secs_f64() * 1000.0);

    // A subscriber on node A hears of an ack made on node B (the other way round).
    let system = h.client(SOCIAL_SYSTEM).await;
    let mut on_a = system.subscribe().await.unwrap();
    let second = police.send(&AgencyId::new(SOCIAL).unwrap(), &example_notice()).await.unwrap();
    assert!(matches!(next_event(&mut on_a).await, AlertEvent::Referral(r) if r.message_id == second.message_id));
    oncall.ack_digest(second.message_id, second.envelope_digest, "jour-2").await.unwrap();
    match next_event(&mut on_a).await {
        AlertEvent::Settled { message_id, acknowledged_by, .. } => {
            assert_eq!((message_id, acknowledged_by.as_str()), (second.message_id, "jour-2"));
        }
        other => panic!("expected the settlement on node A, got {other:?}"),
    }
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_racing_on_two_nodes_one_wins_and_the_other_is_told_already_acknowledged() {
    let (_dir, pg) = server();
    let h = Harness::start_with(on(pg.settings())).await;
    let (b_addr, shutdown, _b) = second_node(&h).await;
    let police = h.client(POLICE_SYSTEM).await;
    let on_a = h.client(SOCIAL_ONCALL).await;
    let on_b = client_on(&h, b_addr, SOCIAL_SYSTEM).await;
    for round in 0..10 {
        let sent = police.send(&AgencyId::new(SOCIAL).unwrap(), &example_notice()).await.unwrap();
        let (x, y) = tokio::join!(
            on_a.ack_digest(sent.message_id, sent.envelope_digest, "jour-a"),
            on_b.ack_digest(sent.message_id, sent.envelope_digest, "handlaggare-b"),
        );
        let (x, y) = (x.unwrap(), y.unwrap());
        assert_ne!(x.already_acknowledged, y.already_acknowledged, "round {round}: exactly one ack wins");
        let (won, lost) = if x.already_acknowledged { (y, x) } else { (x, y) };
        assert_eq!(lost.receipt, won.receipt, "round {round}: the loser gets the winner's receipt");
    }
    // One Acknowledged entry per message in the log, and it verifies.
    let acks = crate::support::audit_entries(&h)
        .await
        .into_iter()
        .filter(|e| matches!(e.event, Some(referral_proto::pb::audit_entry::Event::Acknowledged(_))))
        .count();
    assert_eq!(acks, 10);
    let v = crate::audit::verify(&h, &h.dir().join("auditor-state")).await;
    assert!(v.ok, "{}", crate::audit::failures(&v));
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_fires_once_with_two_nodes_running() {
    let (_dir, pg) = server();
    let opts = Options { manual_clock: true, ..on(pg.settings()) };
    let h = Harness::start_with(opts).await;
    let (b_addr, shutdown, _b) = second_node(&h).await;
    let police = h.client(POLICE_SYSTEM).await;
    let mut n = example_notice();
    n.urgency = referral_proto::envelope::Urgency::Urgent;
    let sent = police.send(&AgencyId::new(SOCIAL).unwrap(), &n).await.unwrap();
    let mut receipts = client_on(&h, b_addr, POLICE_SYSTEM).await.watch_receipts(0).await.unwrap();
    // Both nodes' committers look for due deadlines every tick.
    h.advance(std::time::Duration::from_secs(5 * 3600));
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        crate::deadlines::wait_status(&mut receipts, sent.message_id, ReceiptStatus::Escalated),
    )
    .await
    .expect("escalated within 10 s");
    // Give the other node several ticks to (wrongly) fire it again.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let escalations = crate::support::audit_entries(&h)
        .await
        .into_iter()
        .filter(|e| matches!(e.event, Some(referral_proto::pb::audit_entry::Event::Escalated(_))))
        .count();
    assert_eq!(escalations, 1, "the deadline fired exactly once");
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_load_on_two_nodes_leaves_one_gap_free_log_that_verifies() {
    let (_dir, pg) = server();
    let h = Harness::start_with(on(pg.settings())).await;
    let (b_addr, shutdown, _b) = second_node(&h).await;
    let mut senders = Vec::new();
    for (i, node) in [None, Some(b_addr), None, Some(b_addr)].into_iter().enumerate() {
        let client = match node {
            None => h.client(POLICE_SYSTEM).await,
            Some(addr) => client_on(&h, addr, POLICE_SYSTEM).await,
        };
        senders.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for _ in 0..15 {
                ids.push(client.send(&AgencyId::new(SOCIAL).unwrap(), &example_notice()).await.unwrap().message_id);
            }
            (i, ids)
        }));
    }
    let mut all = Vec::new();
    for s in senders {
        all.extend(s.await.unwrap().1);
    }
    let oncall = client_on(&h, b_addr, SOCIAL_ONCALL).await;
    let waiting = crate::support::waiting(&oncall).await;
    assert_eq!(waiting.len(), 60, "every receipted referral is in the queue once");
    let mut sorted = waiting.clone();
    sorted.sort();
    sorted.dedup();
    all.sort();
    assert_eq!(sorted, all);
    let v = crate::audit::verify(&h, &h.dir().join("auditor-state")).await;
    assert!(v.ok, "{}", crate::audit::failures(&v));
    let entries = crate::support::audit_entries(&h).await;
    for (i, e) in entries.iter().enumerate() {
        assert_eq!(e.index, i as u64, "the log has no gap and no repeated index");
    }
    let rows: usize = pg.psql("SELECT count(*) FROM kv WHERE tbl = 7").parse().unwrap();
    assert_eq!(rows, entries.len(), "one audit row per index");
    let submitted = entries
        .iter()
        .filter(|e| matches!(e.event, Some(referral_proto::pb::audit_entry::Event::Submitted(_))))
        .count();
    assert_eq!(submitted, 60);
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
