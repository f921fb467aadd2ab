//! The committer: the single writer, a thin loop around the
//! [`crate::ledger`]. Every state change (submit, ack, delivery, refusal,
//! deadline) is a job sent here; the committer takes all jobs waiting,
//! runs them through one ledger [`Step`], makes the batch durable once
//! (group commit), and only then counts metrics, hands deliveries to their
//! streams, wakes subscribers and answers the callers.
//!
//! Deadlines (escalation, expiry, purge) are run here too, on a timer: at
//! each tick every deadline that is due joins the next batch (one fsync for
//! all of them), and the timer wakes early when a batch stores an earlier
//! deadline.
//!
//! Being the only writer, it assigns audit indexes, queue sequences and
//! receipt cursors without locks, checks idempotency without races, and
//! keeps the audit log's Merkle frontier in memory.
//!
//! Architecture invariant: nothing is answered, delivered or announced
//! before the batch that records it is durable.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use referral_proto::Digest;
use referral_proto::ack::SignedAck;
use referral_proto::envelope::Envelope;
use referral_proto::ids::{MessageId, Principal};
use referral_proto::keys::SigningKey;
use referral_proto::pb;
use referral_proto::time::Timestamp;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::audit::AuditLog;
pub use crate::audit::restore_frontier;
use crate::clock::Clock;
use crate::config::OverlapConfig;
use crate::directory::DirectoryState;
use crate::error::BrokerError;
use crate::hub::Hub;
pub use crate::ledger::overlap::RelayOutcome;
pub use crate::ledger::{AckOutcome, DeliveryOutcome, SubmitOutcome, Timing};
use crate::ledger::{Effect, Step, Transition};
use crate::refusals::{Refusal, RejectionCounter};
use crate::store::keys::meta;
use crate::store::records::OverlapRecord;
use crate::store::tables::Tables;
use crate::store::{Store, StoreError};
use referral_proto::overlap::{Chunk, SignedStatement};

/// Most jobs folded into one commit.
const MAX_BATCH_JOBS: usize = 1024;
/// Jobs waiting before senders have to wait too (backpressure).
const QUEUE_CAPACITY: usize = 8192;
/// Due deadlines carried out in one batch; more are taken by the next one.
const DEADLINES_PER_BATCH: usize = 256;

/// Puts a delivery into its subscriber's stream. The committer calls it
/// once the `Delivered` entry is durable and before it publishes anything
/// of that batch, and only if the message is still waiting in the writer's
/// own view: so whether a message is sent is decided against the same
/// state that settles it, and a delivery is in its stream before any
/// settlement after it is announced (issue: an alert after its ack).
pub type Handoff = Box<dyn FnOnce() + Send>;

type Reply<T> = oneshot::Sender<Result<T, BrokerError>>;

enum Job {
    Submit {
        envelope: Box<Envelope>,
        encoded: Vec<u8>,
        principal: String,
        /// Set when the envelope failed the broker's checks: it is then
        /// answered only if it repeats an accepted envelope exactly.
        refused: Option<Refusal>,
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
    Reject(Box<Refusal>),
    Summarise {
        summaries: Vec<pb::RejectionSummary>,
        reply: Reply<()>,
    },
    Meta {
        key: Vec<u8>,
        value: Vec<u8>,
        /// Answered once the value is durable, when given.
        reply: Option<Reply<()>>,
    },
    Probe {
        reply: Reply<()>,
    },
    Backup {
        dir: PathBuf,
        /// The store's own error, so that the operator sees the real cause.
        reply: oneshot::Sender<Result<BackupCopy, StoreError>>,
    },
    Barrier {
        reply: oneshot::Sender<()>,
    },
    Overlap {
        command: OverlapCommand,
        principal: String,
        reply: Reply<OverlapAnswer>,
    },
}

/// A change to an overlap session (see [`crate::ledger::overlap`]); the
/// service has checked its form, route and signature.
#[derive(Debug)]
pub enum OverlapCommand {
    Propose(SignedStatement, OverlapConfig),
    Accept(SignedStatement, OverlapConfig),
    Relay(Box<Chunk>),
    Finish(SignedStatement),
}

/// What an overlap command answers once durable.
#[derive(Debug, Clone)]
pub enum OverlapAnswer {
    Session(Box<OverlapRecord>),
    Relayed(RelayOutcome),
}

/// A cheap handle for sending jobs to the committer.
#[derive(Debug, Clone)]
pub struct Committer {
    tx: mpsc::Sender<Job>,
}

/// A job in the commit queue, and its answer to come.
#[derive(Debug)]
pub struct Queued<T>(oneshot::Receiver<Result<T, BrokerError>>);

impl<T> Queued<T> {
    /// The job's answer, once the committer has made it.
    pub async fn outcome(self) -> Result<T, BrokerError> {
        self.0.await.map_err(|_| BrokerError::ShuttingDown)?
    }
}

/// Puts the job `make` builds into the commit queue.
async fn queue<T>(tx: &mpsc::Sender<Job>, make: impl FnOnce(Reply<T>) -> Job) -> Result<Queued<T>, BrokerError> {
    let (reply, rx) = oneshot::channel();
    tx.send(make(reply)).await.map_err(|_| BrokerError::ShuttingDown)?;
    Ok(Queued(rx))
}

/// Queues the job and waits for its answer.
async fn ask<T>(tx: &mpsc::Sender<Job>, make: impl FnOnce(Reply<T>) -> Job) -> Result<T, BrokerError> {
    queue(tx, make).await?.outcome().await
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
    /// late retry), else refused, and the refusal recorded, by the ledger.
    pub async fn submit_if_duplicate(
        &self,
        envelope: Envelope,
        refused: Refusal,
    ) -> Result<SubmitOutcome, BrokerError> {
        let principal = refused.principal.clone();
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

    /// Records, durably, that `message_id` is being sent to `principal`,
    /// then calls `handoff` (which puts it into the stream) before anything
    /// later is announced. Answers [`DeliveryOutcome::NotWaiting`] when the
    /// message was settled first and [`DeliveryOutcome::Untrusted`] when
    /// the connection's trust ended (`trusted` is cancelled): then nothing
    /// is recorded or sent. Checked here, on the single writer, so that no
    /// DELIVERED receipt can name a principal after the reload that ended
    /// its trust.
    pub async fn delivered(
        &self,
        message_id: MessageId,
        principal: String,
        trusted: CancellationToken,
        handoff: Handoff,
    ) -> Result<DeliveryOutcome, BrokerError> {
        self.delivered_queued(message_id, principal, trusted, handoff).await?.outcome().await
    }

    /// [`Committer::delivered`] in two halves: when this returns the job is
    /// in the commit queue, in order with everything queued before it (so
    /// its handoff runs after theirs); [`Queued::outcome`] then waits for
    /// its answer. A stream queues a page of deliveries this way and they
    /// share group commits, instead of one commit round trip each.
    pub async fn delivered_queued(
        &self,
        message_id: MessageId,
        principal: String,
        trusted: CancellationToken,
        handoff: Handoff,
    ) -> Result<Queued<DeliveryOutcome>, BrokerError> {
        queue(&self.tx, |reply| Job::Delivered { message_id, principal, trusted, handoff, reply }).await
    }

    /// Logs a refusal of a signed request (see [`crate::refusals`]).
    pub async fn reject(&self, refusal: Refusal) {
        let _ = self.tx.send(Job::Reject(Box::new(refusal))).await;
    }

    /// Logs the rejection summaries of a closed interval; answers once durable.
    pub async fn summarise(&self, summaries: Vec<pb::RejectionSummary>) -> Result<(), BrokerError> {
        ask(&self.tx, |reply| Job::Summarise { summaries, reply }).await
    }

    /// [`Committer::meta`] from synchronous code: queued at once (in order
    /// with everything sent before), or logged if the queue is full.
    pub fn meta_nowait(&self, key: &[u8], value: Vec<u8>) {
        if self.tx.try_send(Job::Meta { key: key.to_vec(), value, reply: None }).is_err() {
            tracing::warn!(key = %String::from_utf8_lossy(key), "the commit queue is full; a meta value was not stored");
        }
    }

    /// Stores a value in the meta table (tree heads, the directory version).
    pub async fn meta(&self, key: &[u8], value: Vec<u8>) {
        let _ = self.tx.send(Job::Meta { key: key.to_vec(), value, reply: None }).await;
    }

    /// [`Committer::meta`], answering once the value is durable.
    pub async fn meta_durable(&self, key: &[u8], value: Vec<u8>) -> Result<(), BrokerError> {
        ask(&self.tx, |reply| Job::Meta { key: key.to_vec(), value, reply: Some(reply) }).await
    }

    /// Copies the whole store to `dir` between two commits.
    pub async fn backup(&self, dir: PathBuf) -> Result<BackupCopy, StoreError> {
        let (reply, rx) = oneshot::channel();
        let stopping = || StoreError::Io("the broker is shutting down; no backup was made".into());
        self.tx.send(Job::Backup { dir, reply }).await.map_err(|_| stopping())?;
        rx.await.map_err(|_| stopping())?
    }

    /// Writes (and makes durable) a small record: proves the store takes writes.
    pub async fn probe(&self) -> Result<(), BrokerError> {
        ask(&self.tx, |reply| Job::Probe { reply }).await
    }

    /// Carries out an overlap command; answers once it is durable.
    pub async fn overlap(&self, command: OverlapCommand, principal: String) -> Result<OverlapAnswer, BrokerError> {
        ask(&self.tx, |reply| Job::Overlap { command, principal, reply }).await
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
    /// How often due deadlines are looked for (at most; earlier when one is set).
    pub deadline_tick: Duration,
    /// Where refusals are counted once final.
    pub rejections: Arc<RejectionCounter>,
    /// Records the log after durable commits (see [`crate::checkpoint`]).
    pub checkpoint: Option<crate::checkpoint::Writer>,
}

/// The running committer: its thread, and the signal that stops it.
#[derive(Debug)]
pub struct CommitterThread {
    thread: std::thread::JoinHandle<()>,
    stop: CancellationToken,
}

impl CommitterThread {
    /// Stops taking jobs, commits every job already queued, and waits for
    /// the thread to end (a blocking call).
    pub fn stop_and_join(self) {
        self.stop.cancel();
        let _ = self.thread.join();
    }

    /// Waits for the thread to end once every [`Committer`] handle is gone.
    pub fn join(self) -> std::thread::Result<()> {
        self.thread.join()
    }
}

/// Starts the committer on its own thread. It ends when every
/// [`Committer`] handle is dropped or [`CommitterThread::stop_and_join`]
/// is called, after committing what was sent.
pub fn start(deps: CommitterDeps) -> Result<(Committer, CommitterThread), StoreError> {
    let log = AuditLog::restore(&*deps.store)?;
    deps.hub.tree.send_replace((log.size(), log.root()));
    let next_deadline = Tables(&*deps.store).next_deadline()?;
    let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
    let stop = CancellationToken::new();
    let mut core = Core {
        deps,
        log,
        counters: HashMap::new(),
        needs_recovery: false,
        next_deadline,
        backoff: false,
        generation: None,
    };
    let stopped = stop.clone();
    let thread = std::thread::Builder::new()
        .name("committer".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().expect("committer runtime");
            rt.block_on(core.run(rx, stopped));
        })
        .expect("spawn the committer thread");
    Ok((Committer { tx }, CommitterThread { thread, stop }))
}

struct Core {
    deps: CommitterDeps,
    /// The audit log as of the last durable commit.
    log: AuditLog,
    /// Cached meta counters (queue sequences, receipt cursors, pending
    /// counts), by meta key.
    counters: HashMap<Vec<u8>, u64>,
    /// A commit failed and the store could not be reopened yet.
    needs_recovery: bool,
    /// The earliest stored deadline, in the clock's milliseconds.
    next_deadline: Option<i64>,
    /// The last batch failed: deadlines wait a whole tick before the next
    /// try, so that a broken store is not retried in a busy loop.
    backoff: bool,
    /// On a store several nodes write: the store's write generation that
    /// `log`, `counters` and `next_deadline` reflect (None: unknown).
    generation: Option<u64>,
}

/// An answer held back until the batch is durable; `wrote` says whether the
/// job added writes (its answer then depends on the commit).
enum Pending {
    Submit(Reply<SubmitOutcome>, Result<SubmitOutcome, BrokerError>, bool),
    Ack(Reply<AckOutcome>, Result<AckOutcome, BrokerError>, bool),
    Unit(Reply<()>, Result<(), BrokerError>, bool),
    Delivered(Reply<DeliveryOutcome>, Result<DeliveryOutcome, BrokerError>, bool, Option<Handoff>),
    Barrier(oneshot::Sender<()>),
    Overlap(Reply<OverlapAnswer>, Result<OverlapAnswer, BrokerError>, bool),
}

impl Core {
    async fn run(&mut self, mut rx: mpsc::Receiver<Job>, stop: CancellationToken) {
        enum Wake {
            Job(Box<Job>),
            Tick,
            Stop,
        }
        loop {
            let wait = self.until_next_deadline();
            let wake = tokio::select! {
                biased;
                job = rx.recv() => job.map_or(Wake::Stop, |j| Wake::Job(Box::new(j))),
                _ = stop.cancelled() => Wake::Stop,
                _ = tokio::time::sleep(wait) => Wake::Tick,
            };
            let mut jobs = Vec::new();
            match wake {
                Wake::Job(j) => jobs.push(*j),
                Wake::Tick => {}
                Wake::Stop => break,
            }
            take_waiting(&mut rx, &mut jobs);
            self.process(jobs);
        }
        // Refuse new jobs; commit those already queued.
        rx.close();
        loop {
            let mut jobs = Vec::new();
            take_waiting(&mut rx, &mut jobs);
            if jobs.is_empty() {
                break;
            }
            self.process(jobs);
        }
        // Stopping: the last durable state, so a clean restart checks all of it.
        if let Some(w) = &mut self.deps.checkpoint {
            w.flush();
        }
    }

    /// How long the loop may wait for a job before deadlines are due: at
    /// most a tick, so that a clock moved by hand (tests) is noticed too.
    fn until_next_deadline(&self) -> Duration {
        let tick = self.deps.deadline_tick;
        if self.backoff {
            return tick;
        }
        match self.next_deadline {
            Some(due) => {
                let ms = due.saturating_sub(self.deps.clock.now().0).max(0) as u64;
                tick.min(Duration::from_millis(ms))
            }
            None => tick,
        }
    }

    /// Reopens the store after a failed commit and reloads the audit log and
    /// counters from what is on disk. Until it succeeds, each batch tries again.
    fn recover(&mut self) {
        self.reload(true);
        // A commit that reported failure may still have become durable (on
        // PostgreSQL, a COMMIT whose answer was lost): wake this node's
        // readers for whatever the store now holds, since no other node's
        // listener announces this node's own writes.
        if !self.needs_recovery
            && let Err(e) = self.deps.hub.reread()
        {
            tracing::warn!(error = %e, "re-reading the counters after recovery failed");
        }
    }

    /// Reloads the audit log, counters and next deadline from the store,
    /// after reopening it when `reopen` (else reading inside the batch begun).
    fn reload(&mut self, reopen: bool) {
        self.generation = None;
        let reopened = if reopen { self.deps.store.recover() } else { Ok(()) };
        let reloaded = reopened.and_then(|()| AuditLog::restore(&*self.deps.store));
        match reloaded {
            Ok(log) => {
                self.log = log;
                self.counters.clear();
                self.needs_recovery = false;
                self.next_deadline = Tables(&*self.deps.store).next_deadline().unwrap_or(self.next_deadline);
                self.deps.hub.tree_durable(self.log.size(), self.log.root());
            }
            Err(e) => {
                tracing::error!(error = %e, "reopening the store failed; will retry with the next batch");
                self.needs_recovery = true;
            }
        }
    }

    /// Begins the batch on the store: on a store several nodes write, this
    /// takes the writer lock and, if another node wrote since this one last
    /// did, reloads the log, counters and deadlines under it first.
    fn begin_batch(&mut self) -> Result<Option<u64>, StoreError> {
        let generation = self.deps.store.begin_batch()?;
        if let Some(g) = generation
            && self.generation != Some(g)
        {
            self.reload(false);
            if self.needs_recovery {
                self.deps.store.end_batch();
                return Err(StoreError::Io("reloading what another broker node wrote failed".into()));
            }
            self.generation = Some(g);
        }
        Ok(generation)
    }

    fn process(&mut self, jobs: Vec<Job>) {
        if self.needs_recovery {
            self.recover();
        }
        let begun = self.begin_batch();
        let jobs_in_batch = jobs.len();
        let now = self.deps.clock.now();
        let directory = self.deps.directory.current();
        let tables = Tables(&*self.deps.store);
        let mut step = Step::new(tables, &self.log, &self.counters, &directory.directory, self.deps.timing, now);
        let mut pending = Vec::with_capacity(jobs.len());
        let mut backups = Vec::new();
        for job in jobs {
            let mark = step.writes();
            match job {
                Job::Submit { envelope, encoded, principal, refused, reply } => {
                    let r = step.submit(&envelope, encoded, &principal, refused);
                    pending.push(Pending::Submit(reply, r, step.writes() > mark));
                }
                Job::Ack { ack, principal, reply } => {
                    let r = step.ack(*ack, &principal);
                    pending.push(Pending::Ack(reply, r, step.writes() > mark));
                }
                Job::Delivered { message_id, principal, trusted, handoff, reply } => {
                    let r = if trusted.is_cancelled() {
                        Ok(DeliveryOutcome::Untrusted)
                    } else {
                        step.deliver(message_id, &principal)
                    };
                    if let Err(e) = &r {
                        tracing::warn!(error = %e, "recording a delivery failed");
                    }
                    pending.push(Pending::Delivered(reply, r, step.writes() > mark, Some(handoff)));
                }
                Job::Reject(refusal) => step.refuse(*refusal),
                Job::Summarise { summaries, reply } => {
                    step.summarise(summaries);
                    pending.push(Pending::Unit(reply, Ok(()), true));
                }
                Job::Meta { key, value, reply } => {
                    step.meta(key, value);
                    if let Some(reply) = reply {
                        pending.push(Pending::Unit(reply, Ok(()), true));
                    }
                }
                Job::Probe { reply } => {
                    step.meta(meta::HEALTH_PROBE.to_vec(), now.0.to_be_bytes().to_vec());
                    pending.push(Pending::Unit(reply, Ok(()), true));
                }
                Job::Backup { dir, reply } => backups.push((dir, reply)),
                Job::Barrier { reply } => pending.push(Pending::Barrier(reply)),
                Job::Overlap { command, principal, reply } => {
                    let session = |r: OverlapRecord| OverlapAnswer::Session(Box::new(r));
                    let r = match command {
                        OverlapCommand::Propose(s, limits) => step.overlap_propose(s, &principal, limits).map(session),
                        OverlapCommand::Accept(s, limits) => step.overlap_accept(s, &principal, limits).map(session),
                        OverlapCommand::Relay(chunk) => {
                            step.overlap_relay(&chunk, &principal).map(OverlapAnswer::Relayed)
                        }
                        OverlapCommand::Finish(s) => step.overlap_finish(s, &principal).map(session),
                    };
                    pending.push(Pending::Overlap(reply, r, step.writes() > mark));
                }
            }
        }
        let deadlines_ran = due_deadlines(&*self.deps.store, self.next_deadline, &mut step, now);
        let committed = match begun {
            Ok(generation) => step.finish().and_then(|t| self.commit(t, generation, jobs_in_batch, &mut pending)),
            Err(e) => {
                tracing::error!(error = %e, "beginning a batch failed");
                Err(e)
            }
        };
        self.deps.store.end_batch();
        let failed = committed.err().map(BrokerError::from);
        self.backoff = failed.is_some();
        if deadlines_ran {
            self.next_deadline = match Tables(&*self.deps.store).next_deadline() {
                Ok(next) => next,
                Err(e) => {
                    tracing::error!(error = %e, "reading the next deadline failed; looking again at the next tick");
                    Some(now.0)
                }
            };
        }
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
                Pending::Overlap(reply, r, wrote) => {
                    let _ = reply.send(settle(r, wrote, &failed));
                }
            }
        }
        for (dir, reply) in backups {
            let copy = self.deps.store.backup_to(&dir).map(|records| BackupCopy {
                records,
                tree_size: self.log.size(),
                root: self.log.root(),
            });
            let _ = reply.send(copy);
        }
    }

    /// Makes `t` durable, then adopts it and publishes its effects.
    fn commit(
        &mut self,
        t: Transition,
        generation: Option<u64>,
        jobs: usize,
        pending: &mut [Pending],
    ) -> Result<(), StoreError> {
        let mut batch = t.writes.into_batch();
        if let Some(g) = generation
            && !batch.is_empty()
        {
            let grew = t.log.size() > self.log.size();
            batch.changes = crate::cluster::encode(&t.effects, (t.log.size(), t.log.root()), grew);
            self.generation = Some(g + 1);
        }
        if !batch.is_empty() {
            let started = std::time::Instant::now();
            if let Err(e) = self.deps.store.commit(&batch) {
                metrics::counter!(crate::metrics::COMMIT_FAILURES).increment(1);
                // The engine may hold the failed batch in memory or refuse
                // all further writes: reopen it from disk and rebuild what
                // this thread derived from it.
                self.recover();
                return Err(e);
            }
            metrics::histogram!(crate::metrics::COMMIT_SECONDS).record(started.elapsed().as_secs_f64());
            metrics::histogram!(crate::metrics::COMMIT_JOBS).record(jobs as f64);
        }
        self.log = t.log;
        self.counters.extend(t.counters);
        // Deliveries first, then what the batch announces.
        for p in pending.iter_mut() {
            if let Pending::Delivered(_, Ok(DeliveryOutcome::Sent), _, handoff) = p
                && let Some(send) = handoff.take()
            {
                send();
            }
        }
        let now = self.deps.clock.now();
        for effect in t.effects {
            match effect {
                Effect::Message(a, s) => self.deps.hub.message_durable(&a, s),
                Effect::Receipt(a, c) => self.deps.hub.receipt_durable(&a, c),
                Effect::Event(a, e) => self.deps.hub.publish(&a, e),
                Effect::Count(name) => metrics::counter!(name).increment(1),
                Effect::Refused(r) => self.deps.rejections.record(&r, now),
                Effect::DeadlineSet(due) => {
                    self.next_deadline = Some(self.next_deadline.map_or(due, |d| d.min(due)));
                }
            }
        }
        self.deps.hub.tree_durable(self.log.size(), self.log.root());
        if let Some(w) = &mut self.deps.checkpoint {
            w.record(self.log.checkpoint());
        }
        Ok(())
    }
}

/// Adds the jobs waiting, up to a batch.
fn take_waiting(rx: &mut mpsc::Receiver<Job>, jobs: &mut Vec<Job>) {
    while jobs.len() < MAX_BATCH_JOBS {
        match rx.try_recv() {
            Ok(j) => jobs.push(j),
            Err(_) => break,
        }
    }
}

/// Adds every deadline due at `now` (up to a batch's worth) to `step` when
/// the earliest stored one, `next`, has come; whether any were looked for.
fn due_deadlines(store: &dyn Store, next: Option<i64>, step: &mut Step<'_>, now: Timestamp) -> bool {
    if next.is_none_or(|due| due > now.0) {
        return false;
    }
    match Tables(store).due_deadlines(now.0, DEADLINES_PER_BATCH) {
        Ok(due) => {
            for d in due {
                if let Err(e) = step.deadline(d) {
                    tracing::error!(error = %e, "carrying out a deadline failed");
                }
            }
        }
        Err(e) => tracing::error!(error = %e, "reading deadlines failed"),
    }
    true
}

/// A job's answer: its own result, unless it wrote and the commit failed.
fn settle<T>(r: Result<T, BrokerError>, wrote: bool, failed: &Option<BrokerError>) -> Result<T, BrokerError> {
    match (r, failed) {
        (Ok(_), Some(e)) if wrote => Err(e.clone()),
        (r, _) => r,
    }
}
