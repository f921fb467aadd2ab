//! The load: submitting tasks over N connections with M requests in flight
//! on each (closed loop), or paced at an offered rate (open loop); live
//! subscribers of the recipient agency that open and acknowledge every
//! referral they get; and the sender watching its receipts. Latencies go
//! into HDR histograms with microsecond resolution.
//!
//! Open-loop latency is also measured from each submit's *scheduled* start,
//! so that a stalled server is not hidden by the generator waiting for it
//! (coordinated omission).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agency_client::Client;
use anyhow::Context as _;
use hdrhistogram::Histogram;
use referral_proto::directory::Directory;
use referral_proto::envelope::Envelope;
use referral_proto::ids::MessageId;
use referral_proto::pb;
use referral_proto::pb::referral_broker_client::ReferralBrokerClient;
use referral_proto::receipt::ReceiptStatus;
use referral_proto::seal::open;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

use crate::workload::Source;

/// Largest latency recorded (longer ones are clamped to it).
const MAX_LATENCY_US: u64 = 120_000_000;
/// Acknowledgements a subscriber has in flight at most.
const ACKS_IN_FLIGHT: usize = 256;
/// What acknowledgements say acknowledged them.
const ACKNOWLEDGED_BY: &str = "loadgen";

/// A latency histogram in microseconds, 3 significant figures.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("constant histogram bounds are valid")
}

/// `d` in whole microseconds, within the histograms' bounds.
pub fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).clamp(1, MAX_LATENCY_US)
}

/// Connects `n` clients (one HTTP/2 connection each) as `profile`.
pub async fn connect(profile: &Path, n: usize) -> anyhow::Result<Vec<Arc<Client>>> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let c =
            Client::connect_dir(profile).await.with_context(|| format!("cannot connect as {}", profile.display()))?;
        out.push(Arc::new(c));
    }
    Ok(out)
}

/// When each message was submitted, for end-to-end latencies.
#[derive(Debug, Default)]
pub struct SentTimes(Mutex<HashMap<[u8; 16], Instant>>);

impl SentTimes {
    fn insert(&self, id: [u8; 16], at: Instant) {
        self.0.lock().expect("sent-times lock").insert(id, at);
    }

    fn get(&self, id: &[u8]) -> Option<Instant> {
        let id: [u8; 16] = id.try_into().ok()?;
        self.0.lock().expect("sent-times lock").get(&id).copied()
    }
}

/// How the submits are driven.
#[derive(Debug, Clone)]
pub struct Plan {
    pub in_flight_per_connection: usize,
    /// Most submits.
    pub limit: u64,
    /// Stop taking new work after this long.
    pub duration: Option<Duration>,
    /// Offered submits per second (open loop); `None` is closed loop.
    pub rate: Option<f64>,
}

/// What the submitters measured.
#[derive(Debug)]
pub struct SubmitOutcome {
    pub accepted: u64,
    pub duplicates: u64,
    /// Failed submits by gRPC code (or `seal` for generator failures).
    pub errors: BTreeMap<String, u64>,
    pub elapsed: Duration,
    /// From sending each submit to its answer, successful ones only.
    pub latency: Histogram<u64>,
    /// Open loop only: from each submit's scheduled start to its answer.
    pub latency_from_schedule: Option<Histogram<u64>>,
}

/// What the submitting tasks share: the envelopes, the next submit's
/// number, and when to stop.
#[derive(Debug)]
pub struct Shared {
    pub source: Source,
    next: AtomicU64,
    limit: u64,
    pub start: Instant,
    end: Option<Instant>,
    pub period: Option<Duration>,
    sent: Option<Arc<SentTimes>>,
}

/// One submit to make: its number, and when it was due (open loop).
#[derive(Debug, Clone, Copy)]
pub struct Job {
    pub index: u64,
    pub scheduled: Option<Instant>,
}

impl Shared {
    /// Starts the clock now.
    pub fn new(source: Source, plan: &Plan, sent: Option<Arc<SentTimes>>) -> Self {
        let start = Instant::now();
        Self {
            limit: plan.limit.min(source.limit().unwrap_or(u64::MAX)),
            source,
            next: AtomicU64::new(0),
            start,
            end: plan.duration.map(|d| start + d),
            period: plan.rate.map(|r| Duration::from_secs_f64(1.0 / r)),
            sent,
        }
    }

    /// The next submit, waiting for its time in open loop; `None` once the
    /// limit or the duration is reached.
    pub async fn next_job(&self) -> Option<Job> {
        let index = self.next.fetch_add(1, Relaxed);
        if index >= self.limit {
            return None;
        }
        let scheduled = match self.period {
            Some(p) => {
                let due = self.start + p.mul_f64(index as f64);
                tokio::time::sleep_until(due.into()).await;
                Some(due)
            }
            None => None,
        };
        if self.end.is_some_and(|end| Instant::now() >= end) {
            return None;
        }
        Some(Job { index, scheduled })
    }
}

/// What one submitting task measured.
#[derive(Debug)]
pub struct WorkerResult {
    pub accepted: u64,
    pub duplicates: u64,
    pub errors: BTreeMap<String, u64>,
    pub latency: Histogram<u64>,
    pub from_schedule: Option<Histogram<u64>>,
}

impl WorkerResult {
    pub fn new(open_loop: bool) -> Self {
        Self {
            accepted: 0,
            duplicates: 0,
            errors: BTreeMap::new(),
            latency: histogram(),
            from_schedule: open_loop.then(histogram),
        }
    }
}

impl SubmitOutcome {
    /// The sum of the tasks' results; the time is from `start` to now.
    pub fn merge(results: Vec<WorkerResult>, plan: &Plan, start: Instant) -> anyhow::Result<Self> {
        let mut out = SubmitOutcome {
            accepted: 0,
            duplicates: 0,
            errors: BTreeMap::new(),
            elapsed: Duration::ZERO,
            latency: histogram(),
            latency_from_schedule: plan.rate.map(|_| histogram()),
        };
        for r in results {
            out.accepted += r.accepted;
            out.duplicates += r.duplicates;
            for (k, v) in r.errors {
                *out.errors.entry(k).or_default() += v;
            }
            out.latency.add(&r.latency).context("merging histograms")?;
            if let (Some(all), Some(h)) = (out.latency_from_schedule.as_mut(), r.from_schedule.as_ref()) {
                all.add(h).context("merging histograms")?;
            }
        }
        out.elapsed = start.elapsed();
        Ok(out)
    }
}

async fn worker(mut rpc: ReferralBrokerClient<Channel>, shared: Arc<Shared>) -> WorkerResult {
    let mut r = WorkerResult::new(shared.period.is_some());
    while let Some(Job { index, scheduled }) = shared.next_job().await {
        let envelope = match shared.source.get(index) {
            Ok(e) => e,
            Err(e) => {
                *r.errors.entry(format!("seal: {e:#}")).or_default() += 1;
                continue;
            }
        };
        let id = envelope.header.as_ref().and_then(|h| <[u8; 16]>::try_from(h.message_id.as_slice()).ok());
        let sent = Instant::now();
        if let (Some(times), Some(id)) = (&shared.sent, id) {
            times.insert(id, sent);
        }
        let answer = rpc.submit(pb::SubmitRequest { envelope: Some(envelope) }).await;
        let done = Instant::now();
        match answer {
            Ok(resp) => {
                r.accepted += 1;
                if resp.get_ref().duplicate {
                    r.duplicates += 1;
                }
                r.latency.saturating_record(micros(done - sent));
                if let (Some(h), Some(due)) = (r.from_schedule.as_mut(), scheduled) {
                    h.saturating_record(micros(done.saturating_duration_since(due)));
                }
            }
            Err(status) => *r.errors.entry(format!("{:?}", status.code())).or_default() += 1,
        }
    }
    r
}

/// Submits from `source` over `clients` (one connection each) until the
/// plan's limit or duration, and waits for every answer.
pub async fn submit(
    clients: &[Arc<Client>],
    source: Source,
    plan: &Plan,
    sent: Option<Arc<SentTimes>>,
) -> anyhow::Result<SubmitOutcome> {
    let shared = Arc::new(Shared::new(source, plan, sent));
    let mut tasks = Vec::new();
    for c in clients {
        for _ in 0..plan.in_flight_per_connection {
            tasks.push(tokio::spawn(worker(c.broker(), shared.clone())));
        }
    }
    let mut results = Vec::with_capacity(tasks.len());
    for t in tasks {
        results.push(t.await.context("a submitting task failed")?);
    }
    SubmitOutcome::merge(results, plan, shared.start)
}

/// What the sender of a SubmitStream hands its reader for each envelope.
struct InStream {
    at: Instant,
    scheduled: Option<Instant>,
}

/// Submits from `source` over `clients`, one SubmitStream on each, with up
/// to the plan's in-flight count (and at most the broker's window)
/// unanswered on each stream, until the plan's limit or duration.
pub async fn submit_streaming(
    clients: &[Arc<Client>],
    source: Source,
    plan: &Plan,
    sent: Option<Arc<SentTimes>>,
) -> anyhow::Result<SubmitOutcome> {
    let shared = Arc::new(Shared::new(source, plan, sent));
    let tasks: Vec<_> = clients
        .iter()
        .map(|c| tokio::spawn(stream_worker(c.broker(), shared.clone(), plan.in_flight_per_connection)))
        .collect();
    let mut results = Vec::with_capacity(tasks.len());
    for t in tasks {
        results.push(t.await.context("a streaming task failed")?);
    }
    SubmitOutcome::merge(results, plan, shared.start)
}

async fn stream_worker(mut rpc: ReferralBrokerClient<Channel>, shared: Arc<Shared>, in_flight: usize) -> WorkerResult {
    use pb::submit_result::Outcome;
    use pb::submit_stream_response::Event;
    let mut r = WorkerResult::new(shared.period.is_some());
    let (tx, rx) = tokio::sync::mpsc::channel::<pb::SubmitStreamRequest>(in_flight.max(1));
    let mut responses = match rpc.submit_stream(tokio_stream::wrappers::ReceiverStream::new(rx)).await {
        Ok(s) => s.into_inner(),
        Err(status) => {
            r.errors.insert(format!("open stream: {:?}", status.code()), 1);
            return r;
        }
    };
    let window = match responses.message().await {
        Ok(Some(pb::SubmitStreamResponse { event: Some(Event::Window(w)) })) => w.max_unanswered as usize,
        other => {
            r.errors.insert(format!("no window: {other:?}"), 1);
            return r;
        }
    };
    let credit = Arc::new(Semaphore::new(in_flight.min(window).max(1)));
    let (order_tx, mut order_rx) = tokio::sync::mpsc::unbounded_channel::<InStream>();
    let reader_credit = credit.clone();
    let open_loop = shared.period.is_some();
    let reader = tokio::spawn(async move {
        let mut r = WorkerResult::new(open_loop);
        while let Some(sent) = order_rx.recv().await {
            let answer = responses.message().await;
            let done = Instant::now();
            match answer {
                Ok(Some(pb::SubmitStreamResponse { event: Some(Event::Result(result)) })) => match result.outcome {
                    Some(Outcome::Accepted(a)) => {
                        r.accepted += 1;
                        r.duplicates += u64::from(a.duplicate);
                        r.latency.saturating_record(micros(done - sent.at));
                        if let (Some(h), Some(due)) = (r.from_schedule.as_mut(), sent.scheduled) {
                            h.saturating_record(micros(done.saturating_duration_since(due)));
                        }
                    }
                    Some(Outcome::Refused(f)) => *r.errors.entry(format!("refused {}", f.reason)).or_default() += 1,
                    None => *r.errors.entry("empty result".into()).or_default() += 1,
                },
                other => {
                    let why = match other {
                        Err(status) => format!("stream ended: {:?}", status.code()),
                        _ => "stream ended early".into(),
                    };
                    *r.errors.entry(why).or_default() += 1;
                    reader_credit.close();
                    break;
                }
            }
            reader_credit.add_permits(1);
        }
        r
    });
    let mut own_errors: BTreeMap<String, u64> = BTreeMap::new();
    loop {
        let Ok(permit) = credit.acquire().await else { break };
        let Some(Job { index, scheduled }) = shared.next_job().await else { break };
        let envelope = match shared.source.get(index) {
            Ok(e) => e,
            Err(e) => {
                *own_errors.entry(format!("seal: {e:#}")).or_default() += 1;
                continue;
            }
        };
        let id = envelope.header.as_ref().and_then(|h| <[u8; 16]>::try_from(h.message_id.as_slice()).ok());
        let at = Instant::now();
        if let (Some(times), Some(id)) = (&shared.sent, id) {
            times.insert(id, at);
        }
        if tx.send(pb::SubmitStreamRequest { envelope: Some(envelope) }).await.is_err() {
            break;
        }
        permit.forget();
        if order_tx.send(InStream { at, scheduled }).is_err() {
            break;
        }
    }
    drop(order_tx);
    // The reader still needs the stream open to get the last results;
    // closing the request side afterwards tells the broker we are done.
    let mut out = reader.await.unwrap_or_else(|_| {
        let mut r = WorkerResult::new(false);
        r.errors.insert("stream reader panicked".into(), 1);
        r
    });
    drop(tx);
    for (k, v) in own_errors {
        *out.errors.entry(k).or_default() += v;
    }
    for (k, v) in r.errors {
        *out.errors.entry(k).or_default() += v;
    }
    out
}

/// Counters and histograms of the end-to-end path.
#[derive(Debug)]
pub struct EndToEndStats {
    /// Submit sent to the alert's arrival at a subscriber (every subscriber counts).
    pub alert: Mutex<Histogram<u64>>,
    /// Submit sent to the ACKNOWLEDGED receipt's arrival at the sender.
    pub ack_receipt: Mutex<Histogram<u64>>,
    /// Deliveries that arrived, over every subscriber.
    pub alerts: AtomicU64,
    /// Messages a subscriber learnt were settled (acknowledged by another
    /// subscriber) before it was sent them: the broker delivers only what
    /// is still queued, so these never arrive as deliveries.
    pub settled_before_delivery: AtomicU64,
    /// (subscriber, message) pairs accounted for: delivered, or settled first.
    pub accounted: AtomicU64,
    pub ack_receipts: AtomicU64,
    pub acks_first: AtomicU64,
    pub acks_repeated: AtomicU64,
    pub ack_errors: AtomicU64,
    pub unreadable: AtomicU64,
    /// Streams that ended early, with why.
    pub stream_errors: Mutex<Vec<String>>,
}

impl Default for EndToEndStats {
    fn default() -> Self {
        Self {
            alert: Mutex::new(histogram()),
            ack_receipt: Mutex::new(histogram()),
            alerts: AtomicU64::new(0),
            settled_before_delivery: AtomicU64::new(0),
            accounted: AtomicU64::new(0),
            ack_receipts: AtomicU64::new(0),
            acks_first: AtomicU64::new(0),
            acks_repeated: AtomicU64::new(0),
            ack_errors: AtomicU64::new(0),
            unreadable: AtomicU64::new(0),
            stream_errors: Mutex::new(Vec::new()),
        }
    }
}

/// Live subscribers and the sender's receipt watcher.
#[derive(Debug)]
pub struct EndToEnd {
    pub sent: Arc<SentTimes>,
    pub stats: Arc<EndToEndStats>,
    pub subscribers: usize,
    tasks: Vec<JoinHandle<()>>,
    acks: Arc<Semaphore>,
}

impl EndToEnd {
    /// Subscribes `subscribers` principals of the recipient agency (the
    /// `profiles` in turn, one connection each) and waits until every one
    /// is caught up; then starts the sender's receipt watcher.
    pub async fn start(subscribers: usize, profiles: &[&Path], sender: &Path) -> anyhow::Result<Self> {
        let sent = Arc::new(SentTimes::default());
        let stats = Arc::new(EndToEndStats::default());
        let acks = Arc::new(Semaphore::new(ACKS_IN_FLIGHT * subscribers.max(1)));
        let mut tasks = Vec::new();
        for i in 0..subscribers {
            let profile = profiles[i % profiles.len()];
            let client = Arc::new(
                Client::connect_dir(profile).await.with_context(|| format!("subscriber {}", profile.display()))?,
            );
            let dir = client.directory().await.context("the subscriber cannot get the directory")?;
            let mut stream =
                client.broker().subscribe(pb::SubscribeRequest {}).await.context("cannot subscribe")?.into_inner();
            // The backlog (empty on a fresh store) ends with CaughtUp.
            loop {
                let alert = stream.message().await.context("the subscription failed")?;
                match alert.and_then(|a| a.event) {
                    Some(pb::alert::Event::CaughtUp(_)) => break,
                    Some(_) => {}
                    None => anyhow::bail!("the subscription ended before it caught up"),
                }
            }
            let (sent, stats, acks) = (sent.clone(), stats.clone(), acks.clone());
            tasks.push(tokio::spawn(async move {
                if let Err(e) = subscriber(client, dir, stream, sent, stats.clone(), acks).await {
                    stats.stream_errors.lock().expect("errors lock").push(format!("subscriber: {e:#}"));
                }
            }));
        }
        let watcher = Arc::new(Client::connect_dir(sender).await.context("receipt watcher")?);
        let receipts = watcher.watch_receipts(0).await.context("cannot watch receipts")?;
        let (s, st) = (sent.clone(), stats.clone());
        tasks.push(tokio::spawn(async move {
            let _client = watcher;
            if let Err(e) = receipt_watcher(receipts, s, st.clone()).await {
                st.stream_errors.lock().expect("errors lock").push(format!("receipt watcher: {e:#}"));
            }
        }));
        Ok(Self { sent, stats, subscribers, tasks, acks })
    }

    /// Waits until every accepted submit has reached every subscriber (as a
    /// delivery, or as a `Settled` event if another subscriber acknowledged
    /// it first) and its ACKNOWLEDGED receipt has reached the sender, or
    /// `timeout`.
    pub async fn drain(&self, accepted: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let alerts = accepted * self.subscribers as u64;
        loop {
            let done =
                self.stats.accounted.load(Relaxed) >= alerts && self.stats.ack_receipts.load(Relaxed) >= accepted;
            if done {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits (up to 30 s) until every acknowledgement in flight is answered.
    pub async fn quiesce(&self) {
        let all = (ACKS_IN_FLIGHT * self.subscribers.max(1)) as u32;
        if let Ok(Ok(permits)) = tokio::time::timeout(Duration::from_secs(30), self.acks.acquire_many(all)).await {
            drop(permits);
        }
    }

    /// Ends the subscriptions and the receipt watcher.
    pub fn stop(self) {
        for t in self.tasks {
            t.abort();
        }
    }
}

async fn subscriber(
    client: Arc<Client>,
    dir: Arc<Directory>,
    mut stream: tonic::Streaming<pb::Alert>,
    sent: Arc<SentTimes>,
    stats: Arc<EndToEndStats>,
    acks: Arc<Semaphore>,
) -> anyhow::Result<()> {
    // Every message this subscriber has been sent, or told was settled.
    let mut seen: HashSet<Vec<u8>> = HashSet::new();
    while let Some(alert) = stream.message().await? {
        let arrived = Instant::now();
        let d = match alert.event {
            Some(pb::alert::Event::Delivery(d)) => d,
            Some(pb::alert::Event::Settled(s)) => {
                if seen.insert(s.message_id) {
                    stats.settled_before_delivery.fetch_add(1, Relaxed);
                    stats.accounted.fetch_add(1, Relaxed);
                }
                continue;
            }
            _ => continue,
        };
        let Some(raw) = d.envelope else {
            stats.unreadable.fetch_add(1, Relaxed);
            continue;
        };
        if let Some(h) = raw.header.as_ref() {
            if let Some(at) = sent.get(&h.message_id) {
                stats.alert.lock().expect("histogram lock").saturating_record(micros(arrived - at));
            }
            if seen.insert(h.message_id.clone()) {
                stats.accounted.fetch_add(1, Relaxed);
            }
        }
        stats.alerts.fetch_add(1, Relaxed);
        // What an on-call person's client does: verify, open, then acknowledge
        // the digest computed here.
        let Ok(envelope) = Envelope::try_from(raw) else {
            stats.unreadable.fetch_add(1, Relaxed);
            continue;
        };
        if let Err(e) = open(&envelope, &dir, &client.bundles()) {
            if stats.unreadable.fetch_add(1, Relaxed) == 0 {
                stats.stream_errors.lock().expect("errors lock").push(format!("first unreadable referral: {e}"));
            }
            continue;
        }
        let permit = acks.clone().acquire_owned().await?;
        let (client, stats) = (client.clone(), stats.clone());
        let (id, digest): (MessageId, _) = (envelope.header.message_id, envelope.digest());
        tokio::spawn(async move {
            match client.ack_digest(id, digest, ACKNOWLEDGED_BY).await {
                Ok(a) if a.already_acknowledged => stats.acks_repeated.fetch_add(1, Relaxed),
                Ok(_) => stats.acks_first.fetch_add(1, Relaxed),
                Err(_) => stats.ack_errors.fetch_add(1, Relaxed),
            };
            drop(permit);
        });
    }
    Ok(())
}

async fn receipt_watcher(
    mut receipts: agency_client::ReceiptStream,
    sent: Arc<SentTimes>,
    stats: Arc<EndToEndStats>,
) -> anyhow::Result<()> {
    while let Some((_, receipt)) = receipts.next().await? {
        let arrived = Instant::now();
        if receipt.statement.status != ReceiptStatus::Acknowledged {
            continue;
        }
        if let Some(at) = sent.get(receipt.statement.message_id.as_bytes()) {
            stats.ack_receipt.lock().expect("histogram lock").saturating_record(micros(arrived - at));
        }
        stats.ack_receipts.fetch_add(1, Relaxed);
    }
    Ok(())
}
