//! The committer: the single writer. Every state change (submit, ack,
//! delivery, deadline, rejection) is a job sent here; the committer takes
//! all jobs waiting, applies them to one [`Batch`] together with their audit
//! entries, Merkle nodes and signed receipts, commits the batch durably once
//! (group commit), and only then answers the callers and wakes subscribers.
//!
//! Being the only writer, it assigns audit indexes, queue sequences and
//! receipt cursors without locks, checks idempotency without races, and
//! keeps the Merkle frontier in memory.
//!
//! Architecture invariant: nothing is answered, delivered or announced
//! before the batch that records it is durable.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

use referral_proto::Digest;
use referral_proto::ack::SignedAck;
use referral_proto::envelope::{Envelope, Urgency};
use referral_proto::ids::{AgencyId, KeyId, MessageId, Principal};
use referral_proto::keys::SigningKey;
use referral_proto::merkle::{Frontier, leaf_hash};
use referral_proto::pb;
use referral_proto::pb::audit_entry::Event;
use referral_proto::receipt::{ReceiptStatement, ReceiptStatus};
use referral_proto::time::Timestamp;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::audit::{StoreNodes, entry_bytes};
use crate::clock::Clock;
use crate::config::AckDeadlines;
use crate::directory::DirectoryState;
use crate::error::BrokerError;
use crate::hub::{Hub, HubEvent, read_u64};
use crate::store::keys::{self, DeadlineKind, meta};
use crate::store::records::{self, FeedEntry, MessageRecord, MessageState};
use crate::store::{Batch, Store, StoreError, Table};

/// Most jobs folded into one commit.
const MAX_BATCH_JOBS: usize = 1024;
/// Jobs waiting before senders have to wait too (backpressure).
const QUEUE_CAPACITY: usize = 8192;

/// Retention and deadline settings the committer applies.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub ack_deadlines: AckDeadlines,
    pub unacked_retention_ms: i64,
    pub acked_retention_ms: i64,
}

#[derive(Debug, Clone)]
pub struct SubmitOutcome {
    pub receipt: pb::Receipt,
    pub duplicate: bool,
}

#[derive(Debug, Clone)]
pub struct AckOutcome {
    pub receipt: pb::Receipt,
    pub already_acknowledged: bool,
}

type Reply<T> = oneshot::Sender<Result<T, BrokerError>>;

/// Puts a delivery into its subscriber's stream. The committer calls it
/// once the `Delivered` entry is durable and before it publishes anything
/// of that batch, and only if the message is still waiting in the writer's
/// own view: so whether a message is sent is decided against the same
/// state that settles it, and a delivery is in its stream before any
/// settlement after it is announced (issue: an alert after its ack).
pub type Handoff = Box<dyn FnOnce() + Send>;

/// What became of a delivery handed to the committer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryOutcome {
    /// Recorded durably and put into the stream.
    Sent,
    /// The message was settled (acknowledged or expired) first: not sent.
    NotWaiting,
    /// The receiving connection's trust ended: nothing recorded or sent.
    Untrusted,
}

enum Job {
    Submit {
        envelope: Box<Envelope>,
        encoded: Vec<u8>,
        principal: String,
        /// Set when the envelope failed the broker's checks: it is then
        /// answered only if it repeats an accepted envelope exactly.
        refused: Option<BrokerError>,
        reply: Reply<SubmitOutcome>,
    },
    Ack {
        ack: Box<SignedAck>,
        principal: Principal,
        reply: Reply<AckOutcome>,
    },
    Delivered {
        message_id: MessageId,
        principal: String,
        /// The receiving connection's trust; nothing is recorded once it ended.
        trusted: CancellationToken,
        handoff: Handoff,
        reply: Reply<DeliveryOutcome>,
    },
    Reject {
        principal: String,
        reason: &'static str,
        message_id: Option<MessageId>,
        digest: Option<Digest>,
    },
    Deadline {
        key: Vec<u8>,
        reply: Reply<()>,
    },
    Summarise {
        summaries: Vec<pb::RejectionSummary>,
        reply: Reply<()>,
    },
    Meta {
        key: Vec<u8>,
        value: Vec<u8>,
    },
    Probe {
        reply: Reply<()>,
    },
    Backup {
        dir: PathBuf,
        reply: Reply<BackupCopy>,
    },
    Barrier {
        reply: oneshot::Sender<()>,
    },
}

/// A cheap handle for sending jobs to the committer.
#[derive(Debug, Clone)]
pub struct Committer {
    tx: mpsc::Sender<Job>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Job::Submit { .. } => "Submit",
            Job::Ack { .. } => "Ack",
            Job::Delivered { .. } => "Delivered",
            Job::Reject { .. } => "Reject",
            Job::Deadline { .. } => "Deadline",
            Job::Summarise { .. } => "Summarise",
            Job::Meta { .. } => "Meta",
            Job::Probe { .. } => "Probe",
            Job::Backup { .. } => "Backup",
            Job::Barrier { .. } => "Barrier",
        })
    }
}

async fn ask<T>(tx: &mpsc::Sender<Job>, make: impl FnOnce(Reply<T>) -> Job) -> Result<T, BrokerError> {
    let (reply, rx) = oneshot::channel();
    tx.send(make(reply)).await.map_err(|_| BrokerError::ShuttingDown)?;
    rx.await.map_err(|_| BrokerError::ShuttingDown)?
}

impl Committer {
    /// Stores an envelope that has passed every check; answers with the
    /// ACCEPTED receipt once it is durable.
    pub async fn submit(
        &self,
        envelope: Envelope,
        encoded: Vec<u8>,
        principal: String,
    ) -> Result<SubmitOutcome, BrokerError> {
        ask(&self.tx, |reply| Job::Submit { envelope: Box::new(envelope), encoded, principal, refused: None, reply })
            .await
    }

    /// An envelope that failed the checks (`refused`): answered with the
    /// original receipt if it repeats an accepted envelope byte for byte (a
    /// late retry), else refused with `refused`, which the caller records
    /// (see [`crate::refusals`]).
    pub async fn submit_if_duplicate(
        &self,
        envelope: Envelope,
        principal: String,
        refused: BrokerError,
    ) -> Result<SubmitOutcome, BrokerError> {
        let refused = Some(refused);
        ask(&self.tx, |reply| Job::Submit {
            envelope: Box::new(envelope),
            encoded: Vec::new(),
            principal,
            refused,
            reply,
        })
        .await
    }

    /// Settles a message with a verified ack.
    pub async fn ack(&self, ack: SignedAck, principal: Principal) -> Result<AckOutcome, BrokerError> {
        ask(&self.tx, |reply| Job::Ack { ack: Box::new(ack), principal, reply }).await
    }

    /// Records, durably, that `message_id` is being sent to `principal`;
    /// answers once the record (and the sender's DELIVERED receipt, for the
    /// first delivery) is durable. The caller sends the delivery only then,
    /// and only on `Ok(true)`: `false` means the connection's trust ended
    /// (`trusted` is cancelled) before the record was made, and nothing was
    /// recorded. Checked here, on the single writer, so that no DELIVERED
    /// receipt can name a principal after the reload that ended its trust.
    pub async fn delivered(
        &self,
        message_id: MessageId,
        principal: String,
        trusted: CancellationToken,
        handoff: Handoff,
    ) -> Result<DeliveryOutcome, BrokerError> {
        ask(&self.tx, |reply| Job::Delivered { message_id, principal, trusted, handoff, reply }).await
    }

    /// Logs a rejected request.
    pub async fn reject(
        &self,
        principal: String,
        reason: &'static str,
        message_id: Option<MessageId>,
        digest: Option<Digest>,
    ) {
        let _ = self.tx.send(Job::Reject { principal, reason, message_id, digest }).await;
    }

    /// Logs the rejection summaries of a closed interval; answers once durable.
    pub async fn summarise(&self, summaries: Vec<pb::RejectionSummary>) -> Result<(), BrokerError> {
        ask(&self.tx, |reply| Job::Summarise { summaries, reply }).await
    }

    /// Carries out the deadline stored under `key`.
    pub async fn deadline(&self, key: Vec<u8>) -> Result<(), BrokerError> {
        ask(&self.tx, |reply| Job::Deadline { key, reply }).await
    }

    /// [`Committer::meta`] from synchronous code: queued at once (in order
    /// with everything sent before), or logged if the queue is full.
    pub fn meta_nowait(&self, key: &[u8], value: Vec<u8>) {
        if self.tx.try_send(Job::Meta { key: key.to_vec(), value }).is_err() {
            tracing::warn!(key = %String::from_utf8_lossy(key), "the commit queue is full; a meta value was not stored");
        }
    }

    /// Stores a value in the meta table (tree heads, the directory version).
    pub async fn meta(&self, key: &[u8], value: Vec<u8>) {
        let _ = self.tx.send(Job::Meta { key: key.to_vec(), value }).await;
    }

    /// Copies the whole store to `dir` between two commits.
    pub async fn backup(&self, dir: PathBuf) -> Result<BackupCopy, BrokerError> {
        ask(&self.tx, |reply| Job::Backup { dir, reply }).await
    }

    /// Writes (and makes durable) a small record: proves the store takes writes.
    pub async fn probe(&self) -> Result<(), BrokerError> {
        ask(&self.tx, |reply| Job::Probe { reply }).await
    }

    /// Returns once every job sent before it is committed.
    pub async fn barrier(&self) {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Job::Barrier { reply }).await.is_ok() {
            let _ = rx.await;
        }
    }
}

/// A copy of the store made between two commits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackupCopy {
    /// Records copied.
    pub records: u64,
    /// The audit log's size and root at the moment of the copy.
    pub tree_size: u64,
    pub root: Digest,
}

/// What the committer needs; built once at start-up.
#[derive(Debug)]
pub struct CommitterDeps {
    pub store: Arc<dyn Store>,
    pub hub: Arc<Hub>,
    pub clock: Arc<dyn Clock>,
    pub log_key: Arc<SigningKey>,
    pub directory: Arc<DirectoryState>,
    pub timing: Timing,
    /// Records the log after durable commits (see [`crate::checkpoint`]).
    pub checkpoint: Option<crate::checkpoint::Writer>,
}

/// Restores the Merkle frontier from the store.
pub fn restore_frontier(store: &dyn Store) -> Result<Frontier, StoreError> {
    let size = read_u64(store, meta::AUDIT_SIZE)?;
    Frontier::restore(&StoreNodes(store), size)
}

/// Starts the committer on its own thread. The thread ends when every
/// [`Committer`] handle is dropped, after committing what was sent.
pub fn start(deps: CommitterDeps) -> Result<(Committer, std::thread::JoinHandle<()>), StoreError> {
    let frontier = restore_frontier(&*deps.store)?;
    deps.hub.tree.send_replace((frontier.size(), frontier.root()));
    let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
    let mut core = Core { deps, frontier, counters: HashMap::new(), needs_recovery: false };
    let handle = std::thread::Builder::new()
        .name("committer".into())
        .spawn(move || core.run(rx))
        .expect("spawn the committer thread");
    Ok((Committer { tx }, handle))
}

struct Core {
    deps: CommitterDeps,
    frontier: Frontier,
    /// Cached meta counters (queue sequences, receipt cursors, pending
    /// counts), by meta key.
    counters: HashMap<Vec<u8>, u64>,
    /// A commit failed and the store could not be reopened yet.
    needs_recovery: bool,
}

/// An answer held back until the batch is durable.
enum Pending {
    Submit(Reply<SubmitOutcome>, Result<SubmitOutcome, BrokerError>, bool),
    Ack(Reply<AckOutcome>, Result<AckOutcome, BrokerError>, bool),
    Unit(Reply<()>, Result<(), BrokerError>, bool),
    Delivered(Reply<DeliveryOutcome>, Result<DeliveryOutcome, BrokerError>, bool, Option<Handoff>),
    Barrier(oneshot::Sender<()>),
}

/// Effects to publish after a durable commit.
enum Effect {
    Message(AgencyId, u64),
    Receipt(AgencyId, u64),
    Event(AgencyId, HubEvent),
}

impl Core {
    fn run(&mut self, mut rx: mpsc::Receiver<Job>) {
        while let Some(first) = rx.blocking_recv() {
            let mut jobs = vec![first];
            while jobs.len() < MAX_BATCH_JOBS {
                match rx.try_recv() {
                    Ok(j) => jobs.push(j),
                    Err(_) => break,
                }
            }
            self.process(jobs);
        }
        // Stopping: the last durable state, so a clean restart checks all of it.
        if let Some(w) = &mut self.deps.checkpoint {
            w.flush();
        }
    }

    /// Reopens the store after a failed commit and reloads the Merkle
    /// frontier and counters from what is on disk. Until it succeeds, each
    /// batch tries again.
    fn recover(&mut self) {
        let reloaded = self.deps.store.recover().and_then(|()| restore_frontier(&*self.deps.store));
        match reloaded {
            Ok(frontier) => {
                self.frontier = frontier;
                self.counters.clear();
                self.needs_recovery = false;
                self.deps.hub.tree.send_replace((self.frontier.size(), self.frontier.root()));
            }
            Err(e) => {
                tracing::error!(error = %e, "reopening the store failed; will retry with the next batch");
                self.needs_recovery = true;
            }
        }
    }

    fn process(&mut self, jobs: Vec<Job>) {
        if self.needs_recovery {
            self.recover();
        }
        let jobs_in_batch = jobs.len();
        let now = self.deps.clock.now();
        let mut tx = Tx::new(self, now);
        let mut pending = Vec::with_capacity(jobs.len());
        let mut backups = Vec::new();
        for job in jobs {
            match job {
                Job::Submit { envelope, encoded, principal, refused, reply } => {
                    let mark = tx.batch.len();
                    let r = tx.submit(*envelope, encoded, &principal, refused);
                    let wrote = tx.batch.len() > mark;
                    pending.push(Pending::Submit(reply, r, wrote));
                }
                Job::Ack { ack, principal, reply } => {
                    let mark = tx.batch.len();
                    let r = tx.ack(*ack, &principal);
                    let wrote = tx.batch.len() > mark;
                    pending.push(Pending::Ack(reply, r, wrote));
                }
                Job::Delivered { message_id, principal, trusted, handoff, reply } => {
                    let mark = tx.batch.len();
                    let r = if trusted.is_cancelled() {
                        Ok(DeliveryOutcome::Untrusted)
                    } else {
                        tx.delivered(message_id, &principal)
                    };
                    if let Err(e) = &r {
                        tracing::warn!(error = %e, "recording a delivery failed");
                    }
                    let wrote = tx.batch.len() > mark;
                    pending.push(Pending::Delivered(reply, r, wrote, Some(handoff)));
                }
                Job::Reject { principal, reason, message_id, digest } => {
                    tx.reject(&principal, reason, message_id, digest)
                }
                Job::Summarise { summaries, reply } => {
                    for s in summaries {
                        tx.log(Event::RejectionSummary(s));
                    }
                    pending.push(Pending::Unit(reply, Ok(()), true));
                }
                Job::Deadline { key, reply } => {
                    let mark = tx.batch.len();
                    let r = tx.deadline(&key);
                    let wrote = tx.batch.len() > mark;
                    pending.push(Pending::Unit(reply, r, wrote));
                }
                Job::Meta { key, value } => tx.batch.put(Table::Meta, key, value),
                Job::Probe { reply } => {
                    tx.batch.put(Table::Meta, meta::HEALTH_PROBE.to_vec(), now.0.to_be_bytes().to_vec());
                    pending.push(Pending::Unit(reply, Ok(()), true));
                }
                Job::Backup { dir, reply } => backups.push((dir, reply)),
                Job::Barrier { reply } => pending.push(Pending::Barrier(reply)),
            }
        }
        let outcome = tx.finish();
        let committed = match outcome {
            Ok((batch, state)) => {
                let started = std::time::Instant::now();
                let result = if batch.is_empty() { Ok(()) } else { self.deps.store.commit(&batch) };
                if !batch.is_empty() {
                    metrics::histogram!(crate::metrics::COMMIT_SECONDS).record(started.elapsed().as_secs_f64());
                    metrics::histogram!(crate::metrics::COMMIT_JOBS).record(jobs_in_batch as f64);
                }
                if result.is_err() {
                    metrics::counter!(crate::metrics::COMMIT_FAILURES).increment(1);
                }
                match result {
                    Ok(()) => {
                        self.frontier = state.frontier;
                        self.counters.extend(state.counters);
                        // Deliveries first, then what the batch announces.
                        for p in &mut pending {
                            if let Pending::Delivered(_, Ok(DeliveryOutcome::Sent), _, handoff) = p
                                && let Some(send) = handoff.take()
                            {
                                send();
                            }
                        }
                        for effect in state.effects {
                            match effect {
                                Effect::Message(a, s) => self.deps.hub.message_durable(&a, s),
                                Effect::Receipt(a, c) => self.deps.hub.receipt_durable(&a, c),
                                Effect::Event(a, e) => self.deps.hub.publish(&a, e),
                            }
                        }
                        self.deps.hub.tree.send_replace((self.frontier.size(), self.frontier.root()));
                        if let Some(w) = &mut self.deps.checkpoint {
                            w.record(crate::checkpoint::Checkpoint {
                                tree_size: self.frontier.size(),
                                root: self.frontier.root(),
                            });
                        }
                        Ok(())
                    }
                    Err(e) => {
                        // The engine may hold the failed batch in memory or
                        // refuse all further writes: reopen it from disk and
                        // rebuild what this thread derived from it.
                        self.recover();
                        Err(e)
                    }
                }
            }
            Err(e) => Err(e),
        };
        let failed = committed.err().map(BrokerError::from);
        for p in pending {
            match p {
                Pending::Submit(reply, r, wrote) => {
                    let _ = reply.send(settle(r, wrote, &failed));
                }
                Pending::Ack(reply, r, wrote) => {
                    let _ = reply.send(settle(r, wrote, &failed));
                }
                Pending::Unit(reply, r, wrote) => {
                    let _ = reply.send(settle(r, wrote, &failed));
                }
                Pending::Delivered(reply, r, wrote, _handoff) => {
                    // A failed batch drops the handoff unsent (the delivery
                    // happens again on the next subscription).
                    let r = match (failed.is_some(), r) {
                        (true, Ok(DeliveryOutcome::Sent)) => Err(failed.clone().unwrap_or(BrokerError::StorageFailed)),
                        (_, r) => settle(r, wrote, &failed),
                    };
                    let _ = reply.send(r);
                }
                Pending::Barrier(reply) => {
                    let _ = reply.send(());
                }
            }
        }
        for (dir, reply) in backups {
            let copy = self.deps.store.backup_to(&dir).map(|records| BackupCopy {
                records,
                tree_size: self.frontier.size(),
                root: self.frontier.root(),
            });
            let _ = reply.send(copy.map_err(BrokerError::from));
        }
    }
}

/// A job's answer: its own result, unless it wrote and the commit failed.
fn settle<T>(r: Result<T, BrokerError>, wrote: bool, failed: &Option<BrokerError>) -> Result<T, BrokerError> {
    match (r, failed) {
        (Ok(_), Some(e)) if wrote => Err(e.clone()),
        (r, _) => r,
    }
}

/// The state one batch builds, adopted only if its commit succeeds.
struct TxState {
    frontier: Frontier,
    counters: HashMap<Vec<u8>, u64>,
    effects: Vec<Effect>,
}

/// One batch in the making: writes plus an overlay of what they change, so
/// later jobs in the same batch see earlier ones.
struct Tx<'a> {
    core: &'a Core,
    now: Timestamp,
    batch: Batch,
    state: TxState,
    messages: HashMap<MessageId, MessageRecord>,
    receipts: HashMap<(MessageId, u8), Vec<u8>>,
    deliveries: HashSet<Vec<u8>>,
    error: Option<StoreError>,
}

fn receipt_status_of(p: &pb::Receipt) -> Option<ReceiptStatus> {
    p.statement.as_ref().and_then(|s| ReceiptStatus::from_code(s.status))
}

impl<'a> Tx<'a> {
    fn new(core: &'a Core, now: Timestamp) -> Self {
        Self {
            core,
            now,
            batch: Batch::default(),
            state: TxState { frontier: core.frontier.clone(), counters: HashMap::new(), effects: Vec::new() },
            messages: HashMap::new(),
            receipts: HashMap::new(),
            deliveries: HashSet::new(),
            error: None,
        }
    }

    fn store(&self) -> &dyn Store {
        &*self.core.deps.store
    }

    fn finish(mut self) -> Result<(Batch, TxState), StoreError> {
        if let Some(e) = self.error {
            return Err(e);
        }
        for (id, rec) in &self.messages {
            self.batch.put(Table::Messages, keys::message(id), records::encode(rec));
        }
        for (key, value) in &self.state.counters {
            self.batch.put(Table::Meta, key.clone(), value.to_be_bytes().to_vec());
        }
        if self.state.frontier.size() != self.core.frontier.size() {
            self.batch.put(Table::Meta, meta::AUDIT_SIZE.to_vec(), self.state.frontier.size().to_be_bytes().to_vec());
        }
        Ok((self.batch, self.state))
    }

    fn message(&mut self, id: &MessageId) -> Result<Option<MessageRecord>, StoreError> {
        if let Some(r) = self.messages.get(id) {
            return Ok(Some(r.clone()));
        }
        match self.store().get(Table::Messages, &keys::message(id))? {
            None => Ok(None),
            Some(bytes) => Ok(Some(records::decode("message", &bytes)?)),
        }
    }

    fn receipt(&mut self, id: &MessageId, n: u8) -> Result<Option<pb::Receipt>, StoreError> {
        let bytes = match self.receipts.get(&(*id, n)) {
            Some(b) => Some(b.clone()),
            None => self.store().get(Table::Receipts, &keys::receipt(id, n))?,
        };
        bytes
            .map(|b| prost::Message::decode(b.as_slice()).map_err(|_| StoreError::Corrupt(format!("receipt {id}/{n}"))))
            .transpose()
    }

    fn find_receipt(
        &mut self,
        id: &MessageId,
        rec: &MessageRecord,
        status: ReceiptStatus,
    ) -> Result<Option<pb::Receipt>, StoreError> {
        for n in 0..rec.receipt_count {
            if let Some(r) = self.receipt(id, n)?
                && receipt_status_of(&r) == Some(status)
            {
                return Ok(Some(r));
            }
        }
        Ok(None)
    }

    /// The value of a meta counter as this batch sees it.
    fn counter(&self, key: &[u8]) -> Result<u64, StoreError> {
        if let Some(v) = self.state.counters.get(key).or_else(|| self.core.counters.get(key)) {
            return Ok(*v);
        }
        read_u64(self.store(), key)
    }

    /// Adds `delta` to a meta counter; returns the new value.
    fn bump(&mut self, key: Vec<u8>, delta: i64) -> Result<u64, StoreError> {
        let next = self.counter(&key)?.saturating_add_signed(delta);
        self.state.counters.insert(key, next);
        Ok(next)
    }

    fn next_seq(&mut self, agency: &AgencyId) -> Result<u64, StoreError> {
        self.bump(meta::last_seq(agency), 1)
    }

    fn next_cursor(&mut self, agency: &AgencyId) -> Result<u64, StoreError> {
        self.bump(meta::last_cursor(agency), 1)
    }

    /// Appends an audit entry (and its completed Merkle nodes); returns its index.
    fn log(&mut self, event: Event) -> u64 {
        let index = self.state.frontier.size();
        let bytes = entry_bytes(index, self.now, event);
        for node in self.state.frontier.append(leaf_hash(&bytes)) {
            if crate::audit::stores_level(node.level) {
                self.batch.put(Table::MerkleNodes, keys::merkle(node.level, node.index), node.hash.0.to_vec());
            }
        }
        self.batch.put(Table::Audit, keys::audit(index), bytes);
        index
    }

    /// Issues a receipt for the sender and puts it in the feed.
    fn add_receipt(
        &mut self,
        id: &MessageId,
        rec: &mut MessageRecord,
        status: ReceiptStatus,
        detail: String,
        ack: Option<SignedAck>,
        log_index: u64,
    ) -> Result<pb::Receipt, StoreError> {
        let bad = |what: &str| StoreError::Corrupt(format!("message {id}: {what}"));
        let sender = AgencyId::new(rec.sender.clone()).map_err(|_| bad("sender"))?;
        let statement = ReceiptStatement {
            message_id: *id,
            envelope_digest: Digest(rec.envelope_digest),
            status,
            at: self.now,
            sender: sender.clone(),
            recipient: AgencyId::new(rec.recipient.clone()).map_err(|_| bad("recipient"))?,
            recipient_sequence: rec.sequence,
            log_index,
            detail,
        };
        // Stored unsigned; signed on the way out, off this thread (see
        // referral_proto::receipt::sign_stored).
        let mut receipt = pb::Receipt::from(&statement.sign_placeholder(ack));
        receipt.broker_signature.clear();
        let n = rec.receipt_count;
        rec.receipt_count += 1;
        let bytes = prost::Message::encode_to_vec(&receipt);
        self.batch.put(Table::Receipts, keys::receipt(id, n), bytes.clone());
        self.receipts.insert((*id, n), bytes);
        let cursor = self.next_cursor(&sender)?;
        self.batch.put(
            Table::ReceiptFeed,
            keys::receipt_feed(&sender, cursor),
            records::encode(&FeedEntry { message_id: *id.as_bytes(), receipt: n }),
        );
        self.state.effects.push(Effect::Receipt(sender, cursor));
        Ok(receipt)
    }

    fn reject(&mut self, principal: &str, reason: &'static str, message_id: Option<MessageId>, digest: Option<Digest>) {
        self.log(Event::Rejected(pb::Rejected {
            principal: principal.to_owned(),
            reason: reason.to_owned(),
            message_id: message_id.map(|m| m.as_bytes().to_vec()).unwrap_or_default(),
            envelope_digest: digest.map(|d| d.0.to_vec()).unwrap_or_default(),
        }));
    }

    /// The signing key `key_id` of `agency` must be valid at this batch's
    /// time, the time its audit entry records. The service checked it (and
    /// the signature) at receive time a moment earlier; this closes the gap
    /// in which the key could have expired, so that the auditor's rule
    /// (key valid at the logged time) holds exactly.
    fn key_valid_now(&self, what: &'static str, agency: &AgencyId, key_id: &KeyId) -> Result<(), BrokerError> {
        let dir = self.core.deps.directory.current();
        let valid = dir.directory.agency(agency).and_then(|a| a.key(key_id)).is_some_and(|k| k.valid_at(self.now));
        if valid { Ok(()) } else { Err(BrokerError::KeyNotValid { what, key_id: *key_id, at: self.now }) }
    }

    fn keep<T>(&mut self, r: Result<T, StoreError>) -> Result<T, BrokerError> {
        r.map_err(|e| {
            let b = BrokerError::from(e.clone());
            self.error.get_or_insert(e);
            b
        })
    }

    fn submit(
        &mut self,
        envelope: Envelope,
        encoded: Vec<u8>,
        principal: &str,
        refused: Option<BrokerError>,
    ) -> Result<SubmitOutcome, BrokerError> {
        let id = envelope.header.message_id;
        let digest = envelope.digest();
        let existing = self.message(&id);
        let existing = self.keep(existing)?;
        if let Some(rec) = &existing
            && rec.envelope_digest == digest.0
        {
            let receipt = self.receipt(&id, 0);
            let receipt = self.keep(receipt)?.ok_or(BrokerError::StorageCorrupt)?;
            return Ok(SubmitOutcome { receipt, duplicate: true });
        }
        if let Some(e) = refused {
            return Err(e);
        }
        if existing.is_some() {
            self.reject(principal, "duplicate_conflict", Some(id), Some(digest));
            return Err(BrokerError::DuplicateConflict(id));
        }
        let h = &envelope.header;
        if let Err(e) = self.key_valid_now("sender", &h.sender, &h.sender_key_id) {
            self.reject(principal, e.reason(), Some(id), Some(digest));
            return Err(e);
        }
        let seq = self.next_seq(&h.recipient);
        let seq = self.keep(seq)?;
        let payload_digest = envelope.payload_digest();
        let log_index = self.log(Event::Submitted(pb::Submitted {
            header: Some(pb::EnvelopeHeader::from(h)),
            payload_digest: payload_digest.0.to_vec(),
            signature: envelope.signature.to_vec(),
            envelope_digest: digest.0.to_vec(),
            recipient_sequence: seq,
            payload_length: envelope.payload_len() as u32,
            submitted_by: principal.to_owned(),
        }));
        let timing = self.core.deps.timing;
        let ack_deadline_ms = self.now.0 + timing.ack_deadlines.for_urgency(h.urgency);
        let expires_at_ms = self.now.0 + timing.unacked_retention_ms;
        let mut rec = MessageRecord {
            sender: h.sender.to_string(),
            recipient: h.recipient.to_string(),
            urgency: h.urgency.code(),
            created_at_ms: h.created_at.0,
            accepted_at_ms: self.now.0,
            envelope_digest: digest.0,
            payload_len: envelope.payload_len() as u32,
            sequence: seq,
            submit_log_index: log_index,
            ack_deadline_ms,
            expires_at_ms,
            state: MessageState::Pending,
            escalated: false,
            delivered: false,
            purge_at_ms: None,
            purged: false,
            receipt_count: 0,
        };
        self.batch.put(Table::Envelopes, keys::message(&id), encoded);
        self.batch.put(Table::Queue, keys::queue(&h.recipient, seq), id.as_bytes().to_vec());
        // One stored deadline per message at a time: the escalation now; the
        // expiry is stored when the escalation fires (it always comes later).
        self.batch.put(Table::Deadlines, keys::deadline(ack_deadline_ms, DeadlineKind::Escalate, &id), vec![]);
        let receipt = self.add_receipt(&id, &mut rec, ReceiptStatus::Accepted, String::new(), None, log_index);
        let receipt = self.keep(receipt)?;
        let pending = self.bump(meta::pending(&h.recipient), 1);
        self.keep(pending)?;
        self.state.effects.push(Effect::Message(h.recipient.clone(), seq));
        self.messages.insert(id, rec);
        Ok(SubmitOutcome { receipt, duplicate: false })
    }

    fn ack(&mut self, ack: SignedAck, principal: &Principal) -> Result<AckOutcome, BrokerError> {
        let s = &ack.statement;
        let id = s.message_id;
        let uri = principal.uri();
        let existing = self.message(&id);
        let Some(mut rec) = self.keep(existing)? else {
            self.reject(&uri, "unknown_message", Some(id), Some(s.envelope_digest));
            return Err(BrokerError::UnknownMessage(id));
        };
        if rec.recipient != principal.agency.as_str() {
            self.reject(&uri, "ack_other_agency", Some(id), Some(s.envelope_digest));
            return Err(BrokerError::AckForOtherAgency { message_id: id, agency: principal.agency.clone() });
        }
        if rec.envelope_digest != s.envelope_digest.0 {
            self.reject(&uri, "ack_digest_mismatch", Some(id), Some(s.envelope_digest));
            return Err(BrokerError::AckDigestMismatch {
                message_id: id,
                acked: s.envelope_digest.to_hex(),
                stored: hex::encode(rec.envelope_digest),
            });
        }
        match rec.state {
            MessageState::Expired { .. } => {
                self.reject(&uri, "ack_after_expiry", Some(id), Some(s.envelope_digest));
                Err(BrokerError::AckAfterExpiry(id))
            }
            MessageState::Acknowledged { .. } => {
                let found = self.find_receipt(&id, &rec, ReceiptStatus::Acknowledged);
                let receipt = self.keep(found)?.ok_or(BrokerError::StorageCorrupt)?;
                Ok(AckOutcome { receipt, already_acknowledged: true })
            }
            MessageState::Pending => {
                // The ack is signed after the message was accepted, and with
                // a key valid now (the broker's receive time, judged again
                // here at the entry's logged time, which the auditor checks).
                if s.acknowledged_at.0 < rec.accepted_at_ms {
                    let e = BrokerError::AckBeforeSubmission {
                        message_id: id,
                        acknowledged_at: s.acknowledged_at,
                        accepted_at: Timestamp(rec.accepted_at_ms),
                    };
                    self.reject(&uri, e.reason(), Some(id), Some(s.envelope_digest));
                    return Err(e);
                }
                if let Err(e) = self.key_valid_now("ack", &s.acker_agency, &s.signer_key_id) {
                    self.reject(&uri, e.reason(), Some(id), Some(s.envelope_digest));
                    return Err(e);
                }
                let recipient = principal.agency.clone();
                let log_index = self.log(Event::Acknowledged(pb::Acknowledged {
                    ack: Some(pb::SignedAck::from(&ack)),
                    recipient_sequence: rec.sequence,
                    recipient: rec.recipient.clone(),
                    principal: uri.clone(),
                }));
                rec.state = MessageState::Acknowledged { at_ms: self.now.0 };
                let pending = self.bump(meta::pending(&recipient), -1);
                self.keep(pending)?;
                metrics::counter!(crate::metrics::ACKS).increment(1);
                let purge_at = self.now.0 + self.core.deps.timing.acked_retention_ms;
                rec.purge_at_ms = Some(purge_at);
                self.batch.delete(Table::Queue, keys::queue(&recipient, rec.sequence));
                let pending_deadline = if rec.escalated {
                    keys::deadline(rec.expires_at_ms, DeadlineKind::Expire, &id)
                } else {
                    keys::deadline(rec.ack_deadline_ms, DeadlineKind::Escalate, &id)
                };
                self.batch.delete(Table::Deadlines, pending_deadline);
                self.batch.put(Table::Deadlines, keys::deadline(purge_at, DeadlineKind::Purge, &id), vec![]);
                let pb_ack = pb::SignedAck::from(&ack);
                let receipt = self.add_receipt(&id, &mut rec, ReceiptStatus::Acknowledged, uri, Some(ack), log_index);
                let receipt = self.keep(receipt)?;
                self.state.effects.push(Effect::Event(
                    recipient,
                    HubEvent::Settled { message_id: *id.as_bytes(), sequence: rec.sequence, ack: pb_ack },
                ));
                self.messages.insert(id, rec);
                Ok(AckOutcome { receipt, already_acknowledged: false })
            }
        }
    }

    /// Records that `principal` is sent message `id`, if the message is
    /// still waiting in this writer's view (which includes the batch being
    /// built); a redelivery to the same principal records nothing new.
    fn delivered(&mut self, id: MessageId, principal: &str) -> Result<DeliveryOutcome, BrokerError> {
        let existing = self.message(&id);
        let Some(mut rec) = self.keep(existing)? else {
            return Ok(DeliveryOutcome::NotWaiting);
        };
        if rec.state != MessageState::Pending {
            return Ok(DeliveryOutcome::NotWaiting);
        }
        let key = keys::delivery(&id, principal);
        if self.deliveries.contains(&key) {
            return Ok(DeliveryOutcome::Sent);
        }
        let seen = self.store().get(Table::Deliveries, &key);
        if self.keep(seen)?.is_some() {
            return Ok(DeliveryOutcome::Sent);
        }
        self.deliveries.insert(key.clone());
        metrics::counter!(crate::metrics::DELIVERIES).increment(1);
        self.batch.put(Table::Deliveries, key, vec![]);
        let log_index = self.log(Event::Delivered(pb::Delivered {
            message_id: id.as_bytes().to_vec(),
            recipient_sequence: rec.sequence,
            recipient: rec.recipient.clone(),
            principal: principal.to_owned(),
        }));
        if !rec.delivered {
            rec.delivered = true;
            let r = self.add_receipt(&id, &mut rec, ReceiptStatus::Delivered, principal.to_owned(), None, log_index);
            self.keep(r)?;
        }
        self.messages.insert(id, rec);
        Ok(DeliveryOutcome::Sent)
    }

    fn deadline(&mut self, key: &[u8]) -> Result<(), BrokerError> {
        let Some((due, kind, id)) = keys::parse_deadline(key) else {
            // Never leave an unreadable deadline to be retried forever.
            self.batch.delete(Table::Deadlines, key.to_vec());
            return Ok(());
        };
        self.batch.delete(Table::Deadlines, key.to_vec());
        let existing = self.message(&id);
        let Some(mut rec) = self.keep(existing)? else {
            return Ok(());
        };
        let recipient = AgencyId::new(rec.recipient.clone()).map_err(|_| BrokerError::StorageCorrupt)?;
        match kind {
            DeadlineKind::Escalate if rec.state == MessageState::Pending && !rec.escalated => {
                let contact = self
                    .core
                    .deps
                    .directory
                    .current()
                    .directory
                    .agency(&recipient)
                    .and_then(|a| a.escalation.as_ref())
                    .map(|e| e.principal.clone());
                let contact_uri = contact.as_ref().map(Principal::uri).unwrap_or_default();
                let log_index = self.log(Event::Escalated(pb::Escalated {
                    message_id: id.as_bytes().to_vec(),
                    recipient_sequence: rec.sequence,
                    recipient: rec.recipient.clone(),
                    deadline_ms: due,
                    contact: contact_uri.clone(),
                }));
                rec.escalated = true;
                self.batch.put(Table::Deadlines, keys::deadline(rec.expires_at_ms, DeadlineKind::Expire, &id), vec![]);
                metrics::counter!(crate::metrics::ESCALATIONS).increment(1);
                let r = self.add_receipt(&id, &mut rec, ReceiptStatus::Escalated, contact_uri.clone(), None, log_index);
                self.keep(r)?;
                let alert = pb::Escalation {
                    message_id: id.as_bytes().to_vec(),
                    sender: rec.sender.clone(),
                    recipient: rec.recipient.clone(),
                    urgency: Urgency::ALL.iter().find(|u| u.code() == rec.urgency).map_or(0, |u| u.to_pb() as i32),
                    deadline_ms: due,
                    sequence: rec.sequence,
                };
                let contact_uri = (!contact_uri.is_empty()).then_some(contact_uri);
                self.state.effects.push(Effect::Event(
                    recipient.clone(),
                    HubEvent::Escalation { contact: contact_uri.clone(), alert: alert.clone() },
                ));
                if let Some(c) = contact.filter(|c| c.agency != recipient) {
                    self.state
                        .effects
                        .push(Effect::Event(c.agency.clone(), HubEvent::Escalation { contact: contact_uri, alert }));
                }
            }
            DeadlineKind::Expire if rec.state == MessageState::Pending => {
                let log_index = self.log(Event::Expired(pb::Expired {
                    message_id: id.as_bytes().to_vec(),
                    recipient_sequence: rec.sequence,
                    recipient: rec.recipient.clone(),
                }));
                rec.state = MessageState::Expired { at_ms: self.now.0 };
                let pending = self.bump(meta::pending(&recipient), -1);
                self.keep(pending)?;
                metrics::counter!(crate::metrics::EXPIRIES).increment(1);
                self.batch.delete(Table::Queue, keys::queue(&recipient, rec.sequence));
                // Reached only after the escalation fired and stored this expiry.
                self.purge(&id, &mut rec);
                let r = self.add_receipt(&id, &mut rec, ReceiptStatus::Expired, String::new(), None, log_index);
                self.keep(r)?;
            }
            DeadlineKind::Purge => self.purge(&id, &mut rec),
            _ => {}
        }
        self.messages.insert(id, rec);
        Ok(())
    }

    fn purge(&mut self, id: &MessageId, rec: &mut MessageRecord) {
        if rec.purged {
            return;
        }
        rec.purged = true;
        metrics::counter!(crate::metrics::PURGES).increment(1);
        self.batch.delete(Table::Envelopes, keys::message(id));
        self.log(Event::Purged(pb::Purged {
            message_id: id.as_bytes().to_vec(),
            envelope_digest: rec.envelope_digest.to_vec(),
        }));
    }
}
