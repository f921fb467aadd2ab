//! The ledger without a disk: unit tests of single transitions, and a
//! property test that runs random batches of commands (submits, repeats,
//! conflicting repeats, acks good and bad, deliveries, the clock moving and
//! deadlines falling due) against a small model of the lifecycle, on a
//! store in memory, checking every answer and the stored state after each
//! batch.

use std::collections::{BTreeMap, HashMap};

use proptest::prelude::*;
use referral_proto::ack::{SignedAck, sign_ack};
use referral_proto::envelope::{Envelope, Urgency};
use referral_proto::ids::{MessageId, Principal};
use referral_proto::receipt::ReceiptStatus;
use referral_proto::test_vectors::{self, Vectors};
use referral_proto::time::Timestamp;

use super::*;
use crate::audit::AuditLog;
use crate::config::AckDeadlines;
use crate::store::memory::MemoryStore;
use crate::store::tables::Tables;
use crate::store::{Store, Table};

const ACK_DEADLINE_MS: i64 = 1_000;
const UNACKED_RETENTION_MS: i64 = 5_000;
const ACKED_RETENTION_MS: i64 = 3_000;

fn timing() -> Timing {
    Timing {
        ack_deadlines: AckDeadlines {
            immediate_ms: ACK_DEADLINE_MS,
            urgent_ms: ACK_DEADLINE_MS,
            routine_ms: ACK_DEADLINE_MS,
        },
        unacked_retention_ms: UNACKED_RETENTION_MS,
        acked_retention_ms: ACKED_RETENTION_MS,
    }
}

/// A broker's writer state over a memory store: what the committer keeps.
struct Ledger {
    v: Vectors,
    store: MemoryStore,
    log: AuditLog,
    counters: HashMap<Vec<u8>, u64>,
    now: Timestamp,
    /// The writes of the last batch.
    last: crate::store::Batch,
}

/// One command of a batch.
#[derive(Debug, Clone)]
enum Cmd {
    /// Submit message `n`, in `variant` (another variant is other content under the same id).
    Submit { n: u8, variant: u8 },
    /// Acknowledge message `n` (of `variant`'s digest), as the recipient or as the sender's agency.
    Ack { n: u8, variant: u8, by_sender: bool },
    /// Deliver message `n` to on-call person `p`.
    Deliver { n: u8, p: u8 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    Accepted,
    Duplicate,
    Acked,
    AlreadyAcked,
    Sent,
    NotWaiting,
    Refused(&'static str),
}

impl Ledger {
    fn new() -> Self {
        let v = test_vectors::build();
        let now = Timestamp(test_vectors::CREATED_AT.0 + 1_000);
        Self {
            v,
            store: MemoryStore::default(),
            log: AuditLog::default(),
            counters: HashMap::new(),
            now,
            last: Default::default(),
        }
    }

    fn id(&self, n: u8) -> MessageId {
        let mut b = *self.v.message_id.as_bytes();
        b[15] = n;
        MessageId::from_bytes(&b).unwrap()
    }

    fn envelope(&self, n: u8, variant: u8) -> Envelope {
        let mut e = self.v.envelope.clone();
        e.header.message_id = self.id(n);
        e.header.urgency = Urgency::Urgent;
        e.ciphertext[0] ^= variant;
        e
    }

    fn ack(&self, n: u8, variant: u8, at: Timestamp, by_sender: bool) -> SignedAck {
        let bundle = if by_sender { &self.v.sender } else { &self.v.recipient };
        sign_ack(self.id(n), self.envelope(n, variant).digest(), at, "jour-1", bundle).unwrap()
    }

    fn principal(&self, by_sender: bool, p: u8) -> Principal {
        let agency = if by_sender { self.v.sender.agency() } else { self.v.recipient.agency() };
        Principal::parse_uri(&format!("spiffe://igor.example.se/agency/{agency}/oncall/jour-{p}")).unwrap()
    }

    /// Runs `cmds` as one batch at the current time (with the deadlines due
    /// then when `deadlines`), commits it, and returns the answers.
    fn batch(&mut self, cmds: &[Cmd], deadlines: bool) -> Vec<Answer> {
        let dir = self.v.directory.clone();
        let mut step = Step::new(Tables(&self.store), &self.log, &self.counters, &dir, timing(), self.now);
        let mut answers = Vec::new();
        for c in cmds {
            let a = match *c {
                Cmd::Submit { n, variant } => {
                    let e = self.envelope(n, variant);
                    let encoded = e.encode();
                    match step.submit(&e, encoded, "spiffe://igor.example.se/agency/polisen-huddinge/system/s", None) {
                        Ok(o) if o.duplicate => Answer::Duplicate,
                        Ok(_) => Answer::Accepted,
                        Err(e) => Answer::Refused(e.reason()),
                    }
                }
                Cmd::Ack { n, variant, by_sender } => {
                    let ack = self.ack(n, variant, self.now, by_sender);
                    match step.ack(ack, &self.principal(by_sender, 1)) {
                        Ok(o) if o.already_acknowledged => Answer::AlreadyAcked,
                        Ok(_) => Answer::Acked,
                        Err(e) => Answer::Refused(e.reason()),
                    }
                }
                Cmd::Deliver { n, p } => match step.deliver(self.id(n), &self.principal(false, p).uri()) {
                    Ok(DeliveryOutcome::Sent) => Answer::Sent,
                    Ok(_) => Answer::NotWaiting,
                    Err(e) => Answer::Refused(e.reason()),
                },
            };
            answers.push(a);
        }
        if deadlines {
            for d in Tables(&self.store).due_deadlines(self.now.0, usize::MAX).unwrap() {
                step.deadline(d).unwrap();
            }
        }
        let t = step.finish().expect("no read fails in memory");
        self.last = t.writes.into_batch();
        self.store.commit(&self.last).unwrap();
        self.log = t.log;
        self.counters.extend(t.counters);
        answers
    }

    fn tables(&self) -> Tables<'_> {
        Tables(&self.store)
    }

    fn statuses(&self, n: u8) -> Vec<ReceiptStatus> {
        let t = self.tables();
        let rec = t.message(&self.id(n)).unwrap().unwrap();
        t.receipts(&self.id(n), &rec)
            .unwrap()
            .iter()
            .map(|r| ReceiptStatus::from_code(r.statement.as_ref().unwrap().status).unwrap())
            .collect()
    }
}

#[test]
fn a_message_is_accepted_delivered_acknowledged_and_purged() {
    let mut l = Ledger::new();
    assert_eq!(l.batch(&[Cmd::Submit { n: 1, variant: 0 }], false), [Answer::Accepted]);
    assert_eq!(l.batch(&[Cmd::Deliver { n: 1, p: 1 }, Cmd::Deliver { n: 1, p: 1 }], false), [Answer::Sent; 2]);
    assert_eq!(l.batch(&[Cmd::Ack { n: 1, variant: 0, by_sender: false }], false), [Answer::Acked]);
    assert_eq!(l.statuses(1), [ReceiptStatus::Accepted, ReceiptStatus::Delivered, ReceiptStatus::Acknowledged]);
    assert_eq!(l.batch(&[Cmd::Deliver { n: 1, p: 2 }], false), [Answer::NotWaiting], "never sent once settled");
    assert!(l.tables().envelope(&l.id(1)).unwrap().is_some(), "kept for the acked retention");
    l.now = Timestamp(l.now.0 + ACKED_RETENTION_MS);
    l.batch(&[], true);
    assert!(l.tables().envelope(&l.id(1)).unwrap().is_none(), "purged");
    // Entries: submitted, delivered, acknowledged, purged; nothing for the repeat delivery.
    assert_eq!(l.log.size(), 4);
    assert_eq!(AuditLog::restore(&l.store).unwrap().root(), l.log.root());
}

/// The last batch's writes per table: puts, and deletes as `-table`.
fn written(l: &Ledger) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for op in &l.last.ops {
        let name = match op {
            crate::store::Op::Put(t, _, _) => t.name().to_owned(),
            crate::store::Op::Delete(t, _) => format!("-{}", t.name()),
        };
        *out.entry(name).or_default() += 1;
    }
    out
}

fn counts(pairs: &[(&str, usize)]) -> BTreeMap<String, usize> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

/// What each step of a referral's life writes, table by table (BENCHMARKS.md
/// counts the store writes per referral from this): nothing twice, and a
/// later delivery or a repeated ack leaves the message record alone.
#[test]
fn each_step_writes_only_what_it_changes() {
    let mut l = Ledger::new();
    l.batch(&[Cmd::Submit { n: 1, variant: 0 }], false);
    // The meta counters: the queue sequence, the receipt cursor, the pending
    // count and the log size, once per batch.
    let submit = [
        ("messages", 1),
        ("envelopes", 1),
        ("queue", 1),
        ("deadlines", 1),
        ("receipts", 1),
        ("receipt_feed", 1),
        ("audit", 1),
        ("meta", 4),
    ];
    assert_eq!(written(&l), counts(&submit));
    l.batch(&[Cmd::Submit { n: 2, variant: 0 }, Cmd::Submit { n: 3, variant: 0 }], false);
    let two = [
        ("messages", 2),
        ("envelopes", 2),
        ("queue", 2),
        ("deadlines", 2),
        ("receipts", 2),
        ("receipt_feed", 2),
        ("audit", 2),
        ("meta", 4),
    ];
    assert_eq!(written(&l), counts(&two), "counters once per batch, not per submit");
    l.batch(&[Cmd::Deliver { n: 1, p: 1 }], false);
    let first_delivery =
        [("deliveries", 1), ("audit", 1), ("messages", 1), ("receipts", 1), ("receipt_feed", 1), ("meta", 2)];
    assert_eq!(written(&l), counts(&first_delivery));
    l.batch(&[Cmd::Deliver { n: 1, p: 2 }], false);
    assert_eq!(written(&l), counts(&[("deliveries", 1), ("audit", 1), ("meta", 1)]), "the record is unchanged");
    l.batch(&[Cmd::Deliver { n: 1, p: 2 }], false);
    assert_eq!(written(&l), counts(&[]), "a redelivery records nothing");
    l.batch(&[Cmd::Ack { n: 1, variant: 0, by_sender: false }], false);
    let ack = [
        ("audit", 1),
        ("messages", 1),
        ("-queue", 1),
        ("-deadlines", 1),
        ("deadlines", 1),
        ("receipts", 1),
        ("receipt_feed", 1),
        ("meta", 3),
    ];
    assert_eq!(written(&l), counts(&ack));
    l.batch(&[Cmd::Ack { n: 1, variant: 0, by_sender: false }], false);
    assert_eq!(written(&l), counts(&[]), "a repeated ack is answered from the store");
}

#[test]
fn an_unacknowledged_message_escalates_then_expires() {
    let mut l = Ledger::new();
    l.batch(&[Cmd::Submit { n: 1, variant: 0 }], false);
    l.now = Timestamp(l.now.0 + ACK_DEADLINE_MS);
    l.batch(&[], true);
    assert_eq!(l.statuses(1), [ReceiptStatus::Accepted, ReceiptStatus::Escalated]);
    l.now = Timestamp(l.now.0 + UNACKED_RETENTION_MS);
    l.batch(&[], true);
    assert_eq!(l.statuses(1), [ReceiptStatus::Accepted, ReceiptStatus::Escalated, ReceiptStatus::Expired]);
    assert_eq!(
        l.batch(&[Cmd::Ack { n: 1, variant: 0, by_sender: false }], false),
        [Answer::Refused("ack_after_expiry")]
    );
    assert!(l.tables().envelope(&l.id(1)).unwrap().is_none());
    assert!(l.tables().due_deadlines(i64::MAX, 10).unwrap().is_empty(), "no deadline is left behind");
}

#[test]
fn refusals_are_logged_one_by_one_and_carried_as_effects() {
    let l = Ledger::new();
    let dir = l.v.directory.clone();
    let mut step = Step::new(Tables(&l.store), &l.log, &l.counters, &dir, timing(), l.now);
    let e = step.ack(l.ack(9, 0, l.now, false), &l.principal(false, 1)).unwrap_err();
    assert_eq!(e.reason(), "unknown_message");
    let t = step.finish().unwrap();
    assert_eq!(t.log.size(), 1, "one Rejected entry");
    let refused: Vec<_> = t
        .effects
        .iter()
        .filter_map(|e| match e {
            Effect::Refused(r) => Some(r.reason()),
            _ => None,
        })
        .collect();
    assert_eq!(refused, ["unknown_message"]);
}

#[test]
fn a_read_error_fails_the_whole_batch() {
    #[derive(Debug)]
    struct Broken;
    impl Store for Broken {
        fn commit(&self, _: &crate::store::Batch) -> Result<(), StoreError> {
            unreachable!("nothing is committed")
        }
        fn get(&self, _: Table, _: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
            Err(StoreError::Io("the disk went away".into()))
        }
        fn range(&self, _: Table, _: &[u8], _: &[u8], _: usize) -> Result<crate::store::Entries, StoreError> {
            Err(StoreError::Io("the disk went away".into()))
        }
        fn size_on_disk(&self) -> Result<u64, StoreError> {
            Ok(0)
        }
        fn backup_to(&self, _: &std::path::Path) -> Result<u64, StoreError> {
            unreachable!()
        }
    }
    let l = Ledger::new();
    let dir = l.v.directory.clone();
    let mut step = Step::new(Tables(&Broken), &l.log, &l.counters, &dir, timing(), l.now);
    step.meta(b"x".to_vec(), b"y".to_vec());
    let e = l.envelope(1, 0);
    assert_eq!(step.submit(&e, e.encode(), "p", None).unwrap_err().reason(), "storage_failed");
    assert!(matches!(step.finish(), Err(StoreError::Io(_))), "nothing of the batch is written");
}

/// What the model knows of a message.
#[derive(Debug, Clone, PartialEq)]
enum Model {
    Pending { variant: u8, accepted_at: i64, escalated: bool, delivered: bool },
    Acked { variant: u8, purge_at: i64, purged: bool },
    Expired { variant: u8 },
}

fn variant_of(m: &Model) -> u8 {
    match m {
        Model::Pending { variant, .. } | Model::Acked { variant, .. } | Model::Expired { variant } => *variant,
    }
}

/// The model's answer to `c`, and its new state.
fn model_step(m: &mut BTreeMap<u8, Model>, c: &Cmd, now: i64) -> Answer {
    match *c {
        Cmd::Submit { n, variant } => match m.get(&n) {
            Some(s) if variant_of(s) == variant => Answer::Duplicate,
            Some(_) => Answer::Refused("duplicate_conflict"),
            None => {
                m.insert(n, Model::Pending { variant, accepted_at: now, escalated: false, delivered: false });
                Answer::Accepted
            }
        },
        Cmd::Ack { n, variant, by_sender } => match m.get(&n).cloned() {
            None => Answer::Refused("unknown_message"),
            Some(_) if by_sender => Answer::Refused("ack_other_agency"),
            Some(s) if variant_of(&s) != variant => Answer::Refused("ack_digest_mismatch"),
            Some(Model::Expired { .. }) => Answer::Refused("ack_after_expiry"),
            Some(Model::Acked { .. }) => Answer::AlreadyAcked,
            Some(Model::Pending { variant, .. }) => {
                m.insert(n, Model::Acked { variant, purge_at: now + ACKED_RETENTION_MS, purged: false });
                Answer::Acked
            }
        },
        Cmd::Deliver { n, .. } => match m.get_mut(&n) {
            Some(Model::Pending { delivered, .. }) => {
                *delivered = true;
                Answer::Sent
            }
            _ => Answer::NotWaiting,
        },
    }
}

/// Deadlines due at `now`, in the model (which the escalation's expiry
/// follows, as in the ledger).
fn model_deadlines(m: &mut BTreeMap<u8, Model>, now: i64) {
    for s in m.values_mut() {
        match s {
            // One step per batch: the expiry is stored when the escalation
            // fires, so it is carried out by a later batch at the earliest.
            Model::Pending { variant, accepted_at, escalated, .. } => {
                if !*escalated {
                    *escalated = *accepted_at + ACK_DEADLINE_MS <= now;
                } else if *accepted_at + UNACKED_RETENTION_MS <= now {
                    *s = Model::Expired { variant: *variant };
                }
            }
            Model::Acked { purge_at, purged, .. } if *purge_at <= now => *purged = true,
            _ => {}
        }
    }
}

fn cmd() -> impl Strategy<Value = Cmd> {
    prop_oneof![
        3 => (0u8..5, 0u8..2).prop_map(|(n, variant)| Cmd::Submit { n, variant }),
        3 => (0u8..5, 0u8..2, proptest::bool::weighted(0.1))
            .prop_map(|(n, variant, by_sender)| Cmd::Ack { n, variant: variant * (n % 2), by_sender }),
        2 => (0u8..5, 0u8..3).prop_map(|(n, p)| Cmd::Deliver { n, p }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn the_ledger_follows_the_model(
        batches in proptest::collection::vec((proptest::collection::vec(cmd(), 0..6), 0i64..2_500), 1..12)
    ) {
        let mut l = Ledger::new();
        let mut model = BTreeMap::new();
        for (cmds, advance) in &batches {
            l.now = Timestamp(l.now.0 + advance);
            // Deadlines run in the batch after its commands, as the committer does.
            let expected: Vec<Answer> = cmds.iter().map(|c| model_step(&mut model, c, l.now.0)).collect();
            model_deadlines(&mut model, l.now.0);
            let got = l.batch(cmds, true);
            prop_assert_eq!(got, expected);
            check_state(&l, &model)?;
        }
    }
}

/// The stored state agrees with the model: records, the queue, the
/// pending count, envelopes, deadlines, receipts, and the audit log.
fn check_state(l: &Ledger, model: &BTreeMap<u8, Model>) -> Result<(), TestCaseError> {
    let t = l.tables();
    let recipient = l.v.recipient.agency().clone();
    let mut waiting = Vec::new();
    for (&n, s) in model {
        let id = l.id(n);
        let rec = t.message(&id).unwrap().expect("a record per accepted message");
        let statuses = l.statuses(n);
        prop_assert_eq!(statuses.first(), Some(&ReceiptStatus::Accepted));
        let has = |st| statuses.contains(&st);
        let once = |st| statuses.iter().filter(|s| **s == st).count() <= 1;
        prop_assert!(once(ReceiptStatus::Delivered) && once(ReceiptStatus::Escalated), "{statuses:?}");
        let deadlines: Vec<_> = t
            .due_deadlines(i64::MAX, usize::MAX)
            .unwrap()
            .into_iter()
            .map(Result::unwrap)
            .filter(|d| d.message_id == id)
            .collect();
        match s {
            Model::Pending { escalated, delivered, .. } => {
                prop_assert_eq!(rec.state, MessageState::Pending);
                prop_assert_eq!(rec.escalated, *escalated);
                prop_assert_eq!(has(ReceiptStatus::Delivered), *delivered);
                prop_assert_eq!(has(ReceiptStatus::Escalated), *escalated);
                prop_assert!(t.envelope(&id).unwrap().is_some());
                prop_assert_eq!(deadlines.len(), 1, "one deadline while waiting");
                waiting.push((rec.sequence, id));
            }
            Model::Acked { purged, .. } => {
                prop_assert!(matches!(rec.state, MessageState::Acknowledged { .. }), "acknowledged");
                prop_assert_eq!(statuses.last(), Some(&ReceiptStatus::Acknowledged));
                prop_assert_eq!(t.envelope(&id).unwrap().is_none(), *purged);
                prop_assert_eq!(deadlines.len(), usize::from(!*purged));
            }
            Model::Expired { .. } => {
                prop_assert!(matches!(rec.state, MessageState::Expired { .. }), "expired");
                prop_assert_eq!(statuses.last(), Some(&ReceiptStatus::Expired));
                prop_assert!(t.envelope(&id).unwrap().is_none());
                prop_assert!(deadlines.is_empty());
            }
        }
    }
    waiting.sort();
    let queued = t.queue(&recipient, 0, u64::MAX, usize::MAX).unwrap();
    prop_assert_eq!(queued, waiting.clone(), "the queue holds exactly the waiting messages, in order");
    prop_assert_eq!(t.counter(&meta::pending(&recipient)).unwrap(), waiting.len() as u64);
    prop_assert_eq!(t.counter(&meta::last_seq(&recipient)).unwrap(), model.len() as u64);
    // The stored log is the writer's log: same size and root after a restore,
    // every entry present.
    let restored = AuditLog::restore(&l.store).unwrap();
    prop_assert_eq!((restored.size(), restored.root()), (l.log.size(), l.log.root()));
    prop_assert_eq!(t.audit_entries(0, u64::MAX, usize::MAX).unwrap().len() as u64, l.log.size());
    Ok(())
}
