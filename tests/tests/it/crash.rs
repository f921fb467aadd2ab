//! Crash safety: the broker process is SIGKILLed at random moments while
//! submits and acks are in flight, restarted, and checked after every
//! cycle. Nothing that was receipted may be lost or doubled, nothing acked
//! may be redelivered, and the audit log must keep verifying.
//!
//! `CRASH_CYCLES` sets the number of cycles (default 20, for CI).

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agency_client::Client;
use agency_client::alerts::AlertEvent;
use integration_tests::*;
use referral_proto::ids::{AgencyId, MessageId};
use referral_proto::notice::example_notice;
use referral_proto::receipt::ReceiptStatus;

/// A small xorshift generator; the seed is printed so a run can be repeated.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo)
    }
}

#[derive(Default)]
pub(crate) struct Ledger {
    /// Receipted submits: id -> sending agency.
    pub receipted: HashMap<MessageId, AgencyId>,
    /// Acks answered with an ACKNOWLEDGED receipt.
    pub acked: HashSet<MessageId>,
    pub submit_errors: u64,
}

pub(crate) async fn sender(
    profile: certs::profile::Profile,
    to: AgencyId,
    ledger: Arc<Mutex<Ledger>>,
    stop: Arc<AtomicBool>,
) {
    let Ok(client) = Client::connect(profile).await else { return };
    let from = client.principal().agency.clone();
    // The client retries a failed submit with the same message id for up to
    // ~11 s, so a submit cut off by the kill lands on the restarted broker.
    while !stop.load(Ordering::Relaxed) {
        match client.send(&to, &example_notice()).await {
            Ok(sent) => {
                ledger.lock().unwrap().receipted.insert(sent.message_id, from.clone());
            }
            Err(_) => {
                ledger.lock().unwrap().submit_errors += 1;
                return;
            }
        }
    }
}

pub(crate) async fn acker(profile: certs::profile::Profile, ledger: Arc<Mutex<Ledger>>) {
    let Ok(client) = Client::connect(profile).await else { return };
    let Ok(mut alerts) = client.subscribe().await else { return };
    while let Ok(Some(ev)) = alerts.next().await {
        if let AlertEvent::Referral(r) = ev {
            assert!(
                !ledger.lock().unwrap().acked.contains(&r.message_id),
                "message {} delivered after its ack was receipted",
                r.message_id
            );
            match client.ack_digest(r.message_id, r.envelope_digest, "jour-1").await {
                Ok(_) => {
                    ledger.lock().unwrap().acked.insert(r.message_id);
                }
                Err(_) => return,
            }
        }
    }
}

pub(crate) async fn check_invariants(b: &ChildBroker, ledger: &Ledger, audit_state: &Path) {
    for (profile, agency) in [(POLICE_SYSTEM, POLICE), (SOCIAL_SYSTEM, SOCIAL)] {
        let client = b.client(profile).await.unwrap();
        let ids: Vec<MessageId> =
            ledger.receipted.iter().filter(|(_, a)| a.as_str() == agency).map(|(id, _)| *id).collect();
        for chunk in ids.chunks(1000) {
            let found = client.receipts(chunk).await.expect("every receipted message is still known");
            assert_eq!(found.len(), chunk.len());
            for (id, receipts) in found {
                assert_eq!(receipts[0].statement.status, ReceiptStatus::Accepted, "message {id}");
                if ledger.acked.contains(&id) {
                    assert!(
                        receipts.iter().any(|r| r.statement.status == ReceiptStatus::Acknowledged),
                        "ack of {id} lost"
                    );
                }
            }
        }
    }
    // Nothing acknowledged comes back.
    let oncall = b.client(SOCIAL_ONCALL).await.unwrap();
    let mut alerts = oncall.subscribe().await.unwrap();
    loop {
        match alerts.next().await.unwrap().unwrap() {
            AlertEvent::Referral(r) => {
                assert!(!ledger.acked.contains(&r.message_id), "acked {} redelivered", r.message_id)
            }
            AlertEvent::CaughtUp { .. } => break,
            _ => {}
        }
    }
    // The log verifies, and extends the one verified after the last cycle.
    let auditor = b.client(AUDITOR).await.unwrap();
    let v = auditor.verify_log(audit_state, |_, _| {}).await.unwrap();
    assert!(v.ok, "{:?}", v.report.failures);
    // Exactly once: every receipted message has one Submitted entry in the log.
    let mut submitted: HashMap<MessageId, u32> = HashMap::new();
    let mut entries =
        auditor.auditor_rpc().replay(referral_proto::pb::ReplayRequest { from: 0, to: 0 }).await.unwrap().into_inner();
    while let Some(e) = entries.message().await.unwrap() {
        let entry: referral_proto::pb::AuditEntry = prost::Message::decode(e.entry.as_slice()).unwrap();
        if let Some(referral_proto::pb::audit_entry::Event::Submitted(s)) = entry.event {
            *submitted.entry(MessageId::from_bytes(&s.header.unwrap().message_id).unwrap()).or_default() += 1;
        }
    }
    for id in ledger.receipted.keys() {
        assert_eq!(submitted.get(id), Some(&1), "message {id} is in the log {:?} times", submitted.get(id));
    }
    assert!(submitted.values().all(|&n| n == 1), "a message submitted twice");
}

/// What a run of kill cycles did.
pub(crate) struct Figures {
    pub receipted: usize,
    pub acked: usize,
    pub submit_errors: u64,
    pub slowest_restart: Duration,
}

/// How one cycle ends.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ending {
    Sigkill,
    Sigterm,
}

/// Runs `endings.len()` cycles on `b`: load from three senders and an acker,
/// the broker stopped as the cycle says at a random moment, `after_stop`
/// (with the process reaped), a restart that must succeed by itself, and
/// every invariant checked. `label` prefixes the progress lines.
pub(crate) async fn kill_cycles(
    b: &mut ChildBroker,
    endings: &[Ending],
    rng_seed: u64,
    label: &str,
    audit_state: &Path,
    mut after_stop: impl FnMut(),
) -> Figures {
    let mut rng = Rng(rng_seed);
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let mut restarts = Vec::new();
    for (cycle, &ending) in endings.iter().enumerate() {
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for (profile, to) in [(POLICE_SYSTEM, SOCIAL), (POLICE_SYSTEM, SOCIAL), (SOCIAL_SYSTEM, POLICE)] {
            let to = AgencyId::new(to).unwrap();
            tasks.push(tokio::spawn(sender(b.profile(profile), to, ledger.clone(), stop.clone())));
        }
        tasks.push(tokio::spawn(acker(b.profile(SOCIAL_ONCALL), ledger.clone())));
        tokio::time::sleep(Duration::from_millis(rng.between(50, 400))).await;
        match ending {
            Ending::Sigterm => {
                let status = b.terminate().await;
                assert!(status.success(), "SIGTERM under load exits cleanly ({status}); log:\n{}", b.log());
            }
            Ending::Sigkill => b.kill().await,
        }
        after_stop();
        let started = Instant::now();
        b.spawn().await;
        restarts.push(started.elapsed());
        // Senders retrying across the restart land their submits now.
        tokio::time::sleep(Duration::from_millis(rng.between(100, 300))).await;
        stop.store(true, Ordering::Relaxed);
        let t0 = Instant::now();
        for t in tasks {
            // Workers end on their first error; an assertion inside one fails the test here.
            match tokio::time::timeout(Duration::from_secs(30), t).await {
                Ok(r) => r.expect("a worker's invariant held"),
                Err(_) => panic!("a worker hung after the broker was killed"),
            }
        }
        let joined = t0.elapsed();
        let snapshot = {
            let l = ledger.lock().unwrap();
            Ledger { receipted: l.receipted.clone(), acked: l.acked.clone(), submit_errors: l.submit_errors }
        };
        let t1 = Instant::now();
        check_invariants(b, &snapshot, audit_state).await;
        eprintln!(
            "{label} cycle {cycle}{}: {} receipted, {} acked so far (join {:?}, restart {:?}, check {:?})",
            if ending == Ending::Sigterm { " (SIGTERM)" } else { "" },
            snapshot.receipted.len(),
            snapshot.acked.len(),
            joined,
            restarts.last().unwrap(),
            t1.elapsed()
        );
    }
    let l = ledger.lock().unwrap();
    Figures {
        receipted: l.receipted.len(),
        acked: l.acked.len(),
        submit_errors: l.submit_errors,
        slowest_restart: restarts.iter().max().copied().unwrap_or_default(),
    }
}

/// The seed for a run: `CRASH_SEED`, or the clock (printed, so a run can be repeated).
pub(crate) fn seed() -> u64 {
    std::env::var("CRASH_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or_else(|| certs::now().0 as u64 | 1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_loses_nothing() {
    sigkills("sled").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_fjall_sigkill_at_random_moments_loses_nothing() {
    sigkills("fjall").await
}

/// The test, on the embedded engine named.
async fn sigkills(engine: &str) {
    let cycles: u64 = std::env::var("CRASH_CYCLES").ok().and_then(|v| v.parse().ok()).unwrap_or(20);
    let seed = seed();
    eprintln!("crash test on {engine}: {cycles} cycles, CRASH_SEED={seed}");
    let tmp = tempfile::tempdir().unwrap();
    let exe = Path::new(env!("CARGO_BIN_EXE_under-test"));
    let storage = format!("engine = \"{engine}\"\n");
    let mut b = ChildBroker::start_on(exe, tmp.path(), &tmp.path().join("data"), &storage, "").await;
    // `cycles` SIGKILLs, then one SIGTERM under the same load: in-flight
    // work must finish and be kept, and the exit must be clean.
    let mut endings = vec![Ending::Sigkill; cycles as usize];
    endings.push(Ending::Sigterm);
    let f = kill_cycles(&mut b, &endings, seed, "crash", &tmp.path().join("audit-state.json"), || {}).await;
    eprintln!(
        "crash test on {engine} done: {cycles} SIGKILL cycles and 1 SIGTERM cycle, {} submits receipted and all found exactly once, {} acks receipted and all kept, 0 lost; {} submits cut off by a kill; slowest restart to serving {:.0} ms",
        f.receipted,
        f.acked,
        f.submit_errors,
        f.slowest_restart.as_secs_f64() * 1000.0
    );
    assert!(f.receipted as u64 >= cycles, "the workload ran");
}
