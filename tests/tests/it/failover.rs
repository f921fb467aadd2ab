//! High availability on PostgreSQL: a primary with two synchronous standbys
//! (`ANY 1`) and broker nodes as child processes, under load from three
//! senders and an acking on-call client. The primary is SIGKILLed and the
//! most advanced standby promoted (as a failover manager would), the other
//! standby repointed; then the serving broker node is SIGKILLed and a
//! second node takes over the database. Every receipted referral must be
//! there exactly once, every receipted ack kept, nothing acked delivered
//! again, and the audit log must verify without a gap.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use integration_tests::postgres::{PgServer, USER};
use integration_tests::*;
use referral_proto::ids::AgencyId;

use crate::crash::{Ledger, acker, check_invariants, sender};

/// Starts the load against `node`: two senders police -> social, one
/// social -> police, one acking on-call client.
fn load(node: &ChildBroker, ledger: &Arc<Mutex<Ledger>>, stop: &Arc<AtomicBool>) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    for (profile, to) in [(POLICE_SYSTEM, SOCIAL), (POLICE_SYSTEM, SOCIAL), (SOCIAL_SYSTEM, POLICE)] {
        let to = AgencyId::new(to).unwrap();
        tasks.push(tokio::spawn(sender(node.profile(profile), to, ledger.clone(), stop.clone())));
    }
    tasks.push(tokio::spawn(acker(node.profile(SOCIAL_ONCALL), ledger.clone())));
    tasks
}

/// Waits until more than `before` submits are receipted; how long it took.
async fn next_receipt(ledger: &Arc<Mutex<Ledger>>, before: usize, since: Instant) -> Duration {
    let deadline = Instant::now() + Duration::from_secs(90);
    while ledger.lock().unwrap().receipted.len() <= before {
        assert!(Instant::now() < deadline, "no submit was receipted within 90 s of the failure");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    since.elapsed()
}

/// Waits for the senders (stopped, or ended by their node's death), then
/// for the acker: it ends by itself when its node died; on a live node it
/// gets a moment to acknowledge what is left and is then stopped.
async fn join(mut tasks: Vec<tokio::task::JoinHandle<()>>, node: &ChildBroker) {
    let acker = tasks.pop().expect("the acker is last");
    for (i, t) in tasks.into_iter().enumerate() {
        match tokio::time::timeout(Duration::from_secs(60), t).await {
            Ok(r) => r.expect("a sender's invariant held"),
            Err(_) => panic!("sender {i} hung; the node's log:\n{}", node.log()),
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    acker.abort();
    if let Err(e) = acker.await {
        assert!(e.is_cancelled(), "the acker's invariant held: {e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_primary_and_a_broker_node_fail_and_nothing_receipted_is_lost() {
    let tmp = tempfile::tempdir().unwrap();
    let mut primary = PgServer::start(&tmp.path().join("pg-1"));
    let s1 = primary.start_standby(&tmp.path().join("pg-2"), "s1");
    let s2 = primary.start_standby(&tmp.path().join("pg-3"), "s2");
    primary.require_synchronous(&["s1", "s2"]);
    let settings = primary.settings();
    let storage = format!(
        "engine = \"postgres\"\npostgres_url = \"postgresql://{USER}@localhost:{},localhost:{},localhost:{}/referral?target_session_attrs=read-write&connect_timeout=2\"\n\
         postgres_ca = \"{}\"\npostgres_password_file = \"{}\"\n",
        primary.addr.port(),
        s1.addr.port(),
        s2.addr.port(),
        settings.ca_file.display(),
        settings.password_file.unwrap().display()
    );
    let exe = Path::new(env!("CARGO_BIN_EXE_under-test"));
    let mut a = ChildBroker::start_on(exe, &tmp.path().join("fed"), &tmp.path().join("node-a"), &storage, "").await;
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = load(&a, &ledger, &stop);
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // The primary dies; the standby that received the most WAL is promoted
    // (under ANY 1 a commit may be on either), the other follows it.
    let before = ledger.lock().unwrap().receipted.len();
    let killed = Instant::now();
    primary.kill();
    let (new_primary, other) = if s1.received_lsn() >= s2.received_lsn() { (&s1, &s2) } else { (&s2, &s1) };
    new_primary.promote();
    other.follow(new_primary);
    let promoted = killed.elapsed();
    let db_failover = next_receipt(&ledger, before, killed).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;

    // The broker node dies; a second node of the same federation takes over
    // the database (and the writer epoch); clients repoint to it.
    a.kill().await;
    let killed = Instant::now();
    let before = ledger.lock().unwrap().receipted.len();
    let b = a.another_node(&tmp.path().join("node-b")).await;
    let node_started = killed.elapsed();
    let old_stop = stop;
    let stop = Arc::new(AtomicBool::new(false));
    let new_tasks = load(&b, &ledger, &stop);
    let node_failover = next_receipt(&ledger, before, killed).await;
    // The first node's clients: a submit cut off by the kill is retried
    // against the dead node until the client gives up (it was never
    // receipted, so nothing is owed for it).
    old_stop.store(true, Ordering::Relaxed);
    join(tasks, &a).await;
    let tasks = new_tasks;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop.store(true, Ordering::Relaxed);
    join(tasks, &b).await;

    let snapshot = {
        let l = ledger.lock().unwrap();
        Ledger { receipted: l.receipted.clone(), acked: l.acked.clone(), submit_errors: l.submit_errors }
    };
    check_invariants(&b, &snapshot, &tmp.path().join("audit-state.json")).await;
    eprintln!(
        "failover: {} submits receipted and all found exactly once, {} acks receipted and all kept, 0 lost, 0 duplicated; \
         database: standby promoted {:.1} s after the primary was killed, first receipt after {:.1} s; \
         broker node: second node serving {:.1} s after the first was killed, first receipt after {:.1} s; \
         {} submits cut off by a kill were given up by their senders (never receipted)",
        snapshot.receipted.len(),
        snapshot.acked.len(),
        promoted.as_secs_f64(),
        db_failover.as_secs_f64(),
        node_started.as_secs_f64(),
        node_failover.as_secs_f64(),
        snapshot.submit_errors
    );
    assert!(snapshot.receipted.len() > before, "load ran on the second node");
}
