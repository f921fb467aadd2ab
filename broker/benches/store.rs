//! Criterion benchmarks of the broker's embedded stores, sled and fjall:
//! `Store::commit` (apply, then the engine's sync) of a batch holding the
//! writes of 1 and of 100 submits, and the same batches through
//! `commit_unflushed` (no durability), so that the cost of making a commit
//! durable can be read off as the difference.
//!
//! One "submit" is the set of writes the committer makes for an accepted
//! referral, at realistic sizes: the message record, a ~2.5 KB envelope
//! (2 KiB padding bucket), the queue entry, two deadlines, the signed
//! ACCEPTED receipt, its feed entry, the audit entry, a Merkle node, and the
//! meta counters. Message ids cycle through a fixed window so that the store
//! stays at a bounded size however many iterations criterion runs (each
//! write then replaces an earlier one, as sled sees it: a log append either
//! way).
//!
//! A third variant, `unflushed_envelope_outside`, stores a 24-byte pointer
//! in place of each envelope: what applying a batch would cost if envelope
//! bodies lived outside the tree (a value log), for comparison.
//!
//! Run with `cargo bench -p broker --bench store`. The store lives in a
//! temporary directory under `$TMPDIR` (default `/tmp`): its filesystem is
//! what the durable figures measure.

use std::hint::black_box;
use std::time::Duration;

use broker::store::fjall_store::FjallStore;
use broker::store::keys::{self, DeadlineKind, meta};
use broker::store::sled_store::SledStore;
use broker::store::{Batch, Store, Table};
use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use referral_proto::ids::{AgencyId, MessageId};

/// Distinct message ids written before they repeat.
const WINDOW: usize = 20_000;
/// Bytes of an encoded envelope with a notice in the 2 KiB padding bucket.
const ENVELOPE_BYTES: usize = 2_480;
const MESSAGE_RECORD_BYTES: usize = 150;
const RECEIPT_BYTES: usize = 240;
const AUDIT_ENTRY_BYTES: usize = 420;
/// Batch sizes, in submits.
const SUBMITS_PER_BATCH: [usize; 2] = [1, 100];

/// Builds batches the way the committer does, with fresh sequence numbers.
struct Workload {
    envelope_bytes: usize,
    ids: Vec<MessageId>,
    sender: AgencyId,
    recipient: AgencyId,
    next: u64,
    now_ms: i64,
}

impl Workload {
    fn new(envelope_bytes: usize) -> Self {
        let now_ms = 1_790_000_000_000;
        Self {
            envelope_bytes,
            ids: (0..WINDOW as i64).map(|i| MessageId::generate(now_ms + i)).collect(),
            sender: AgencyId::new("polisen-huddinge").expect("constant agency id"),
            recipient: AgencyId::new("huddinge-socialtjanst").expect("constant agency id"),
            next: 1,
            now_ms,
        }
    }

    /// The writes of `submits` accepted referrals, in one batch.
    fn batch(&mut self, submits: usize) -> Batch {
        let mut b = Batch::default();
        for _ in 0..submits {
            let n = self.next;
            self.next += 1;
            let id = self.ids[(n as usize) % WINDOW];
            let fill = n as u8;
            b.put(Table::Messages, keys::message(&id), vec![fill; MESSAGE_RECORD_BYTES]);
            b.put(Table::Envelopes, keys::message(&id), vec![fill; self.envelope_bytes]);
            b.put(Table::Queue, keys::queue(&self.recipient, n), id.as_bytes().to_vec());
            b.put(Table::Deadlines, keys::deadline(self.now_ms + 900_000, DeadlineKind::Escalate, &id), vec![]);
            b.put(Table::Deadlines, keys::deadline(self.now_ms + 2_592_000_000, DeadlineKind::Expire, &id), vec![]);
            b.put(Table::Receipts, keys::receipt(&id, 0), vec![fill; RECEIPT_BYTES]);
            b.put(Table::ReceiptFeed, keys::receipt_feed(&self.sender, n), vec![fill; 18]);
            b.put(Table::Audit, keys::audit(n), vec![fill; AUDIT_ENTRY_BYTES]);
            b.put(Table::MerkleNodes, keys::merkle(0, n), vec![fill; 32]);
        }
        let n = self.next - 1;
        b.put(Table::Meta, meta::last_seq(&self.recipient), n.to_be_bytes().to_vec());
        b.put(Table::Meta, meta::last_cursor(&self.sender), n.to_be_bytes().to_vec());
        b.put(Table::Meta, meta::AUDIT_SIZE.to_vec(), n.to_be_bytes().to_vec());
        b
    }
}

/// The engine under measurement.
enum Engine {
    Sled(SledStore),
    Fjall(FjallStore),
}

impl Engine {
    fn open(name: &str, dir: &tempfile::TempDir) -> Self {
        let path = dir.path().join("data");
        match name {
            "sled" => Engine::Sled(SledStore::open(&path).expect("open a sled store in a temporary directory")),
            _ => Engine::Fjall(FjallStore::open(&path).expect("open a fjall store in a temporary directory")),
        }
    }

    fn commit(&self, batch: &Batch, durable: bool) {
        match (self, durable) {
            (Engine::Sled(s), true) => s.commit(batch).expect("commit"),
            (Engine::Sled(s), false) => s.commit_unflushed(batch).expect("commit_unflushed"),
            (Engine::Fjall(s), true) => s.commit(batch).expect("commit"),
            (Engine::Fjall(s), false) => s.commit_unflushed(batch).expect("commit_unflushed"),
        }
    }
}

/// Bytes of the pointer that would replace an envelope kept outside the tree.
const POINTER_BYTES: usize = 24;

fn commit(c: &mut Criterion) {
    let mut group = c.benchmark_group("store_commit");
    group.measurement_time(Duration::from_secs(8)).sample_size(30);
    let variants: [(&str, usize, bool, &[usize]); 3] = [
        ("durable", ENVELOPE_BYTES, true, &SUBMITS_PER_BATCH),
        ("unflushed", ENVELOPE_BYTES, false, &SUBMITS_PER_BATCH),
        ("unflushed_envelope_outside", POINTER_BYTES, false, &[100]),
    ];
    for engine in ["sled", "fjall"] {
        for (name, envelope_bytes, durable, sizes) in variants {
            for &submits in sizes {
                group.throughput(Throughput::Elements(submits as u64));
                let dir = tempfile::tempdir().expect("temporary directory");
                let store = Engine::open(engine, &dir);
                let mut work = Workload::new(envelope_bytes);
                group.bench_function(BenchmarkId::new(format!("{engine}_{name}"), submits), |b| {
                    b.iter_batched(
                        || work.batch(submits),
                        |batch| store.commit(black_box(&batch), durable),
                        BatchSize::SmallInput,
                    )
                });
            }
        }
    }
    group.finish();
}

criterion_group!(benches, commit);
criterion_main!(benches);
