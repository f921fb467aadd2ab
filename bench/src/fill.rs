//! `--fill N`: loads a broker data directory with N queued, unacknowledged
//! messages before the broker starts, to measure it with a large backlog.
//!
//! The messages go through the broker's real committer (`broker::commit`,
//! built as `broker::server::start` builds it), so the store holds exactly
//! what N real submits leave: message records, envelopes, queue entries,
//! deadlines, audit entries, Merkle nodes and ACCEPTED receipts, in group
//! commits of up to the committer's batch size, each flushed and fsync'd.
//!
//! To be quick, one referral is sealed and every message reuses its
//! ciphertext under a fresh header (new message id, signed again: about
//! 25 µs). Each such envelope carries a valid sender signature, but HPKE's
//! `info` binds the message id, so **filled messages cannot be opened by
//! the recipient**: they exist only to load the store. Do not combine a
//! fill with subscribers (they would be sent the whole backlog, unreadable).
//! [`fill_among`] puts a few properly sealed, readable envelopes among them,
//! spread evenly through the queue, for measurements that open messages.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use broker::clock::SystemClock;
use broker::commit::{self, CommitterDeps, Timing};
use broker::config::Config;
use broker::directory::{DirectoryState, read_federation_key};
use broker::hub::Hub;
use broker::store::Store;
use referral_proto::keys::{KeyPurpose, parse_signing_key_file};

use crate::workload::Sealer;

/// Submits kept in flight towards the committer: enough to fill its
/// largest batches.
const IN_FLIGHT: usize = 2048;

/// How the fill went.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FillReport {
    pub messages: u64,
    pub failed: u64,
    pub seconds: f64,
    pub messages_per_second: f64,
    /// Bytes the store takes on disk afterwards (sled's count).
    pub store_bytes: u64,
}

/// Writes `count` queued messages from `sealer`'s principal into the data
/// directory of `config` (which no broker may be using).
pub async fn fill(config: &Config, count: u64, sealer: Arc<Sealer>) -> anyhow::Result<FillReport> {
    fill_among(config, count, sealer, Vec::new()).await
}

/// [`fill`], with `readable` (envelopes sealed by `sealer`'s principal)
/// taking every `count / readable.len()`-th place of the `count`, so that
/// they lie spread through the queue (in about that order: the committer
/// orders what is in flight at once as it arrives).
pub async fn fill_among(
    config: &Config,
    count: u64,
    sealer: Arc<Sealer>,
    readable: Vec<referral_proto::envelope::Envelope>,
) -> anyhow::Result<FillReport> {
    anyhow::ensure!(
        readable.len() as u64 <= count,
        "more readable envelopes ({}) than messages ({count})",
        readable.len()
    );
    let stride = if readable.is_empty() { u64::MAX } else { count / readable.len() as u64 };
    let readable = Arc::new(readable);
    let federation_key = read_federation_key(&config.federation.federation_key)?;
    let directory = Arc::new(DirectoryState::open(&config.federation.directory, federation_key, certs::now())?);
    let log_key_path = config.federation.log_key.display().to_string();
    let log_key_text =
        certs::secret_file::read(&config.federation.log_key).with_context(|| format!("cannot read {log_key_path}"))?;
    let log_key = Arc::new(parse_signing_key_file(&log_key_text, KeyPurpose::BrokerLog).context(log_key_path)?);
    let broker::config::Engine::Local(engine) = &config.storage.engine else {
        anyhow::bail!("--fill writes an embedded store (storage.engine = \"sled\" or \"fjall\")");
    };
    let store: Arc<dyn Store> = engine
        .open(&config.storage.data_dir)
        .with_context(|| format!("cannot open {}", config.storage.data_dir.display()))?;
    let frontier = commit::restore_frontier(&*store)?;
    let hub = Arc::new(Hub::new(store.clone(), (frontier.size(), frontier.root())));
    let (committer, thread) = commit::start(CommitterDeps {
        store: store.clone(),
        hub,
        clock: Arc::new(SystemClock),
        log_key,
        directory,
        checkpoint: Some(broker::checkpoint::Writer::open(
            &config.storage.data_dir,
            broker::checkpoint::Checkpoint { tree_size: frontier.size(), root: frontier.root() },
        )?),
        timing: Timing {
            ack_deadlines: config.delivery.ack_deadlines,
            unacked_retention_ms: config.delivery.unacked_retention_ms,
            acked_retention_ms: config.delivery.acked_retention_ms,
        },
        deadline_tick: config.delivery.deadline_tick,
        rejections: Default::default(),
    })?;
    let base = sealer.seal_domain()?;
    let principal = sealer.principal_uri();
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..IN_FLIGHT {
        let (committer, sealer, base, principal) = (committer.clone(), sealer.clone(), base.clone(), principal.clone());
        let (next, done, failed, readable) = (next.clone(), done.clone(), failed.clone(), readable.clone());
        tasks.push(tokio::spawn(async move {
            let mut first_error = None;
            loop {
                let i = next.fetch_add(1, Relaxed);
                if i >= count {
                    break;
                }
                let place = (i % stride == 0).then(|| readable.get((i / stride) as usize)).flatten();
                let envelope = match place.map_or_else(|| sealer.resign(&base), |e| Ok(e.clone())) {
                    Ok(e) => e,
                    Err(e) => {
                        failed.fetch_add(1, Relaxed);
                        first_error.get_or_insert(format!("{e:#}"));
                        continue;
                    }
                };
                let encoded = envelope.encode();
                match committer.submit(envelope, encoded, principal.clone()).await {
                    Ok(_) => done.fetch_add(1, Relaxed),
                    Err(e) => {
                        first_error.get_or_insert(e.to_string());
                        failed.fetch_add(1, Relaxed)
                    }
                };
            }
            first_error
        }));
    }
    drop(committer);
    let progress = {
        let done = done.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(10)).await;
                let n = done.load(Relaxed);
                eprintln!("  fill: {n} of {count} messages ({:.0}/s)", n as f64 / started.elapsed().as_secs_f64());
            }
        })
    };
    let mut first_error = None;
    for t in tasks {
        if let Some(e) = t.await.context("a fill task failed")? {
            first_error.get_or_insert(e);
        }
    }
    progress.abort();
    // The committer ends once every handle is gone, after its last commit.
    tokio::task::spawn_blocking(move || thread.join())
        .await
        .context("waiting for the committer")?
        .map_err(|_| anyhow::anyhow!("the committer thread panicked"))?;
    let seconds = started.elapsed().as_secs_f64();
    let store_bytes = store.size_on_disk().unwrap_or(0);
    drop(store);
    let messages = done.load(Relaxed);
    let failed = failed.load(Relaxed);
    if let Some(e) = first_error.filter(|_| messages == 0) {
        anyhow::bail!("the fill stored nothing; the first error was: {e}");
    }
    Ok(FillReport { messages, failed, seconds, messages_per_second: messages as f64 / seconds, store_bytes })
}
