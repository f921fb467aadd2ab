//! `loadgen acks`: what acknowledging one referral costs as its queue grows
//! (issue 18: with about 25,000 waiting, `agency-client ack` nearly stopped).
//!
//! Each `--waiting` level gets a fresh broker (its own federation and store,
//! the real `broker serve` as a child process, real mutual TLS). Its store is
//! first filled through the real committer with that many queued messages to
//! one agency ([`fill_among`]): `--readable` of them (at most the level)
//! sealed properly and spread evenly through the queue, the rest the fill's
//! unreadable copies. Then the agency's on-call client acknowledges
//! `--warmup` and then `--acks` timed referrals, each picked at random among
//! the readable ones waiting, exactly as `agency-client ack ID` does
//! (`Client::ack`: fetch by id, verify and open, sign, `Ack`). After each
//! ack the sender submits a fresh readable referral, untimed, so the queue
//! stays at its level. The report gives each level's percentiles and the
//! ratio of the largest level's to the smallest's.
//!
//! `--method subscribe` times the way `agency-client ack` found a message
//! before `Fetch` existed: read the `Subscribe` backlog until the message
//! shows up (each message before it delivered, recorded and opened on the
//! way), then ack it. Its cost grows with the queue.

use std::sync::Arc;
use std::time::Instant;

use agency_client::alerts::AlertEvent;
use agency_client::{Acked, Client};
use anyhow::Context as _;
use broker::directory::{DirectoryState, read_federation_key};
use certs::dev::SOCIAL;
use referral_proto::ids::{AgencyId, MessageId};
use serde::Serialize;

use crate::fill::fill_among;
use crate::load::{histogram, micros};
use crate::report::{Latency, latency_rows, machine_line, table};
use crate::server::{Kind, ServerProcess};
use crate::setup::{Machine, Setup, sender_profile, subscriber_profiles};
use crate::workload::{Sealer, sized_notice};

/// What the acknowledgements say acknowledged them.
const ACKNOWLEDGED_BY: &str = "loadgen";

/// How the acking client finds the message it acknowledges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AckMethod {
    /// `Client::ack`: one `Fetch` by id (what `agency-client ack` does).
    Fetch,
    /// Read the `Subscribe` backlog until the message shows up (before issue 18).
    Subscribe,
}

/// Options of `loadgen acks`.
#[derive(Debug, Clone, clap::Args)]
pub struct AcksArgs {
    /// Queue lengths to measure at, comma-separated; each on a fresh broker.
    #[arg(long, value_delimiter = ',', default_value = "10,100000", value_parser = clap::value_parser!(u64).range(1..))]
    pub waiting: Vec<u64>,
    /// Timed acknowledgements at each level.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..))]
    pub acks: u64,
    /// Untimed acknowledgements first at each level (connections, caches, the directory).
    #[arg(long, default_value_t = 10)]
    pub warmup: u64,
    /// Readable referrals among the waiting ones (capped at the level); the acks pick among them.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..))]
    pub readable: u64,
    /// How the client finds the message to acknowledge.
    #[arg(long, value_enum, default_value_t = AckMethod::Fetch)]
    pub method: AckMethod,
    /// Bytes of padded plaintext per referral (as for `run`).
    #[arg(long, default_value_t = 2048)]
    pub size: usize,
    /// Seed of the random picks (default: from the clock; the report says which).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// The broker's log level.
    #[arg(long, default_value = "info")]
    pub broker_log_level: String,
}

/// One queue length's figures.
#[derive(Debug, Clone, Serialize)]
pub struct AckLevel {
    pub waiting: u64,
    pub readable: u64,
    pub fill_seconds: f64,
    /// Spawn to first answered RPC, with the filled store.
    pub broker_ready_ms: f64,
    /// One acknowledgement as `agency-client ack ID` makes it, end to end.
    pub ack_latency: Option<Latency>,
}

/// The report of `loadgen acks`.
#[derive(Debug, Clone, Serialize)]
pub struct AcksReport {
    pub machine: Machine,
    pub method: AckMethod,
    pub acks_per_level: u64,
    pub warmup: u64,
    pub size: usize,
    pub seed: u64,
    pub levels: Vec<AckLevel>,
    /// p50 at the largest level over p50 at the smallest.
    pub p50_ratio: Option<f64>,
    /// p99 at the largest level over p99 at the smallest.
    pub p99_ratio: Option<f64>,
}

/// A small xorshift generator: the picks need to be spread, not secret,
/// and a seed repeats a run.
#[derive(Debug)]
struct Picks(u64);

impl Picks {
    fn below(&mut self, n: usize) -> usize {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        (x % n as u64) as usize
    }
}

/// Carries out `loadgen acks`.
pub async fn acks(args: AcksArgs) -> anyhow::Result<AcksReport> {
    anyhow::ensure!(!args.waiting.is_empty(), "--waiting needs at least one queue length");
    let notice = sized_notice(args.size)?;
    let seed = args.seed.unwrap_or_else(|| certs::now().0 as u64) | 1;
    let mut picks = Picks(seed);
    let machine = Machine::describe(&std::env::temp_dir());
    let mut levels = Vec::with_capacity(args.waiting.len());
    for &waiting in &args.waiting {
        levels.push(level(&args, waiting, &notice, &mut picks).await?);
    }
    let ratio = |f: fn(&Latency) -> u64| {
        let by_size = |l: &&AckLevel| l.waiting;
        let (small, large) = (levels.iter().min_by_key(by_size)?, levels.iter().max_by_key(by_size)?);
        let (s, l) = (small.ack_latency.as_ref()?, large.ack_latency.as_ref()?);
        Some(f(l) as f64 / f(s).max(1) as f64)
    };
    Ok(AcksReport {
        p50_ratio: ratio(|l| l.p50_us),
        p99_ratio: ratio(|l| l.p99_us),
        machine,
        method: args.method,
        acks_per_level: args.acks,
        warmup: args.warmup,
        size: args.size,
        seed,
        levels,
    })
}

async fn level(
    args: &AcksArgs,
    waiting: u64,
    notice: &referral_proto::notice::ReferralNotice,
    picks: &mut Picks,
) -> anyhow::Result<AckLevel> {
    let setup = Setup::create(None, false, &args.broker_log_level)?;
    let key = read_federation_key(&setup.config.federation.federation_key)?;
    let directory = DirectoryState::open(&setup.config.federation.directory, key, certs::now())?;
    let recipient = AgencyId::new(SOCIAL).context("the social services agency id")?;
    let sender_dir = setup.profile(&sender_profile());
    let sealer = Arc::new(Sealer::new(&sender_dir, &directory.current().directory, &recipient, notice.clone())?);
    let readable_count = args.readable.min(waiting);
    let readable = (0..readable_count).map(|_| sealer.seal_domain()).collect::<anyhow::Result<Vec<_>>>()?;
    let mut pool: Vec<MessageId> = readable.iter().map(|e| e.header.message_id).collect();
    eprintln!("{waiting} waiting: filling the store ({readable_count} of them readable)...");
    let fill = fill_among(&setup.config, waiting, sealer, readable).await?;
    anyhow::ensure!(
        fill.messages == waiting && fill.failed == 0,
        "the fill stored {} of {waiting} messages ({} failed)",
        fill.messages,
        fill.failed
    );
    let log = setup.file("broker.log");
    let server = ServerProcess::start(Kind::Broker, &setup.config_path, &log, &sender_dir).await?;
    let sender = Client::connect_dir(&sender_dir).await.context("cannot connect as the sender")?;
    let oncall_dir = setup.profile(&subscriber_profiles()[0]);
    let oncall = Client::connect_dir(&oncall_dir).await.context("cannot connect as the on-call principal")?;
    eprintln!("{waiting} waiting: {} acks ({} warm-up)...", args.acks, args.warmup);
    let mut h = histogram();
    for i in 0..args.warmup + args.acks {
        let id = pool.swap_remove(picks.below(pool.len()));
        let started = Instant::now();
        let acked = match args.method {
            AckMethod::Fetch => oncall.ack(id, ACKNOWLEDGED_BY).await.map_err(anyhow::Error::from),
            AckMethod::Subscribe => ack_after_backlog(&oncall, id).await,
        }
        .with_context(|| format!("acknowledging {id}"))?;
        let took = started.elapsed();
        anyhow::ensure!(!acked.already_acknowledged, "{id} was acknowledged twice");
        if i >= args.warmup {
            h.record(micros(took)).context("recording a latency")?;
        }
        // The queue stays at its level.
        pool.push(sender.send(&recipient, notice).await.context("submitting a fresh referral")?.message_id);
    }
    let ready_after = server.ready_after;
    drop((sender, oncall));
    let status = server.stop().await?;
    if !status.success() {
        eprintln!("broker: exited with {status}; see {}", log.display());
    }
    Ok(AckLevel {
        waiting,
        readable: readable_count,
        fill_seconds: fill.seconds,
        broker_ready_ms: ready_after.as_secs_f64() * 1000.0,
        ack_latency: Latency::of(&h),
    })
}

/// How `agency-client ack` found a message before `Fetch`: the agency's
/// whole backlog, in queue order, until the message shows up.
async fn ack_after_backlog(client: &Client, id: MessageId) -> anyhow::Result<Acked> {
    let mut alerts = client.subscribe().await?;
    while let Some(ev) = alerts.next().await? {
        match ev {
            AlertEvent::Referral(r) if r.message_id == id => {
                drop(alerts);
                return Ok(client.ack_digest(id, r.envelope_digest, ACKNOWLEDGED_BY).await?);
            }
            AlertEvent::CaughtUp { .. } => break,
            _ => {}
        }
    }
    anyhow::bail!("{id} is not in the backlog")
}

impl AcksReport {
    /// The human-readable form.
    pub fn to_table(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let method = match self.method {
            AckMethod::Fetch => "Client::ack (Fetch by id, open, sign, Ack)",
            AckMethod::Subscribe => "the Subscribe backlog until the message, then Ack (before issue 18)",
        };
        let _ = writeln!(
            out,
            "loadgen acks: {} timed acks per level after {} warm-up, {method}, {}-byte referrals, seed {}",
            self.acks_per_level, self.warmup, self.size, self.seed
        );
        let _ = writeln!(out, "{}", machine_line(&self.machine));
        let header: Vec<String> = self.levels.iter().map(|l| format!("{} waiting", l.waiting)).collect();
        let mut rows = vec![
            ("readable among them".to_owned(), self.levels.iter().map(|l| l.readable.to_string()).collect()),
            ("fill (s)".to_owned(), self.levels.iter().map(|l| format!("{:.1}", l.fill_seconds)).collect()),
            ("broker ready (ms)".to_owned(), self.levels.iter().map(|l| format!("{:.0}", l.broker_ready_ms)).collect()),
        ];
        let latencies: Vec<Option<Latency>> = self.levels.iter().map(|l| l.ack_latency).collect();
        latency_rows(&mut rows, "ack", &latencies);
        out.push('\n');
        out.push_str(&table(&header, &rows));
        if let (Some(p50), Some(p99)) = (self.p50_ratio, self.p99_ratio) {
            let _ = writeln!(out, "\nlargest / smallest queue: p50 x{p50:.2}, p99 x{p99:.2}");
        }
        out
    }
}
