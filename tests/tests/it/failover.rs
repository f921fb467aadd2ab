//! High availability on PostgreSQL: a primary with two synchronous standbys
//! (`ANY 1`) and two broker nodes serving at once (child processes), under
//! load from senders and acking subscribers connected to both. The primary
//! is SIGKILLed and the most advanced standby promoted (as a failover
//! manager would), the other standby repointed; then one broker node is
//! SIGKILLed and its clients repoint to the other (as a load balancer
//! would). Every receipted referral must be there exactly once, every
//! receipted ack kept, nothing delivered after its ack (in the audit log's
//! order), and the audit log must verify without a gap.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use integration_tests::postgres::{PgServer, USER};
use integration_tests::*;
use referral_proto::ids::AgencyId;

use crate::crash::{Ledger, acker, check_invariants, sender};

/// Starts the load against `node`: a sender police -> social and one
/// social -> police, and the acking on-call client of `acks_for`.
fn load(
    node: &ChildBroker,
    acks_for: &str,
    ledger: &Arc<Mutex<Ledger>>,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    for (profile, to) in [(POLICE_SYSTEM, SOCIAL), (SOCIAL_SYSTEM, POLICE)] {
        let to = AgencyId::new(to).unwrap();
        tasks.push(tokio::spawn(sender(node.profile(profile), to, ledger.clone(), stop.clone())));
    }
    tasks.push(tokio::spawn(acker(node.profile(acks_for), ledger.clone())));
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

/// In the audit log: no message has a Delivered entry after its
/// Acknowledged one, and indexes run from 0 without a gap; the number of
/// deliveries.
async fn nothing_delivered_after_its_ack(node: &ChildBroker) -> usize {
    use referral_proto::pb::audit_entry::Event;
    let auditor = node.client(AUDITOR).await.unwrap();
    let mut entries =
        auditor.auditor_rpc().replay(referral_proto::pb::ReplayRequest { from: 0, to: 0 }).await.unwrap().into_inner();
    let mut acked = std::collections::HashSet::new();
    let (mut next, mut deliveries) = (0, 0);
    while let Some(e) = entries.message().await.unwrap() {
        let entry: referral_proto::pb::AuditEntry = prost::Message::decode(e.entry.as_slice()).unwrap();
        assert_eq!(entry.index, next, "the log has no gap");
        next += 1;
        match entry.event {
            Some(Event::Acknowledged(a)) => {
                acked.insert(a.ack.unwrap().statement.unwrap().message_id);
            }
            Some(Event::Delivered(d)) => {
                assert!(!acked.contains(&d.message_id), "a message was delivered after its ack");
                deliveries += 1;
            }
            _ => {}
        }
    }
    deliveries
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_primary_and_one_of_two_serving_broker_nodes_fail_and_nothing_receipted_is_lost() {
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
    // Node B serves beside node A, on the same database.
    let b = a.another_node(&tmp.path().join("node-b")).await;
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let stop_a = Arc::new(AtomicBool::new(false));
    let stop_b = Arc::new(AtomicBool::new(false));
    // Social services' on-call acks on node A, the police's on node B: each
    // is alerted to referrals sent on both nodes.
    let tasks_a = load(&a, SOCIAL_ONCALL, &ledger, &stop_a);
    let tasks_b = load(&b, POLICE_ONCALL, &ledger, &stop_b);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let acked_before_failures = ledger.lock().unwrap().acked.len();

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

    // Node A dies; node B was serving all along. A's clients repoint to B.
    a.kill().await;
    let killed = Instant::now();
    let before = ledger.lock().unwrap().receipted.len();
    let repointed = load(&b, SOCIAL_ONCALL, &ledger, &stop_b);
    let node_failover = next_receipt(&ledger, before, killed).await;
    // Node A's clients: a submit cut off by the kill is retried against the
    // dead node until the client gives up (never receipted, nothing owed).
    stop_a.store(true, Ordering::Relaxed);
    join(tasks_a, &a).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop_b.store(true, Ordering::Relaxed);
    join(tasks_b, &b).await;
    join(repointed, &b).await;

    let snapshot = {
        let l = ledger.lock().unwrap();
        Ledger { receipted: l.receipted.clone(), acked: l.acked.clone(), submit_errors: l.submit_errors }
    };
    check_invariants(&b, &snapshot, &tmp.path().join("audit-state.json")).await;
    let deliveries = nothing_delivered_after_its_ack(&b).await;
    eprintln!(
        "failover (two broker nodes serving at once): {} submits receipted and all found exactly once, {} acks receipted \
         and all kept ({} before the failures), {} deliveries, none after its ack, 0 lost, 0 duplicated; \
         database: standby promoted {:.1} s after the primary was killed, first receipt after {:.1} s; \
         broker node: node A killed, its clients repointed to node B, first receipt after {:.1} s; \
         {} submits cut off by a kill or the database failover were given up by their senders (never receipted)",
        snapshot.receipted.len(),
        snapshot.acked.len(),
        acked_before_failures,
        deliveries,
        promoted.as_secs_f64(),
        db_failover.as_secs_f64(),
        node_failover.as_secs_f64(),
        snapshot.submit_errors
    );
    assert!(acked_before_failures > 0, "acks ran across nodes before the failures");
    assert!(snapshot.receipted.len() > before, "load ran on node B after node A died");
}
