//! `loadgen streams`: what idle subscribers cost the broker.
//!
//! Opens `--count` `Subscribe` streams of the recipient agency (its on-call
//! and system principals in turn) spread over connections of at most
//! `--per-connection` streams each, waits until every stream has caught up
//! (its first message is `CaughtUp`), measures the broker's resident memory
//! against a baseline taken before any stream was opened, then holds the
//! streams open longer than a heartbeat interval and checks that every one
//! is still open and alive.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use referral_proto::pb;
use tokio::sync::Semaphore;

use crate::load;
use crate::report::{StreamsReport, mib};
use crate::run::positive_f64;
use crate::server::{Kind, ServerProcess};
use crate::setup::{Machine, Setup, sender_profile, subscriber_profiles};

/// Subscribe calls being set up at once.
const OPENING_AT_ONCE: usize = 256;
/// Pause after the last stream opened before memory is read, so that
/// every stream task has settled.
const SETTLE: Duration = Duration::from_secs(2);

/// Options of `loadgen streams`.
#[derive(Debug, Clone, clap::Args)]
pub struct StreamsArgs {
    /// Idle Subscribe streams to open.
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub count: u64,
    /// Most streams on one HTTP/2 connection (the server allows about 200 at once).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=200))]
    pub per_connection: u64,
    /// Seconds to keep the streams open after measuring; longer than the 15 s heartbeat interval
    /// so that every live stream shows a heartbeat.
    #[arg(long, default_value_t = 20.0, value_parser = positive_f64)]
    pub hold: f64,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Work folder (new or empty); kept afterwards.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// The broker's log level.
    #[arg(long, default_value = "info")]
    pub broker_log_level: String,
}

#[derive(Debug, Default)]
struct StreamState {
    ended: AtomicBool,
    heartbeat: AtomicBool,
}

/// Carries out `loadgen streams`.
pub async fn streams(args: StreamsArgs) -> anyhow::Result<StreamsReport> {
    let setup = Setup::create(args.dir.as_deref(), false, &args.broker_log_level)?;
    let machine = Machine::describe(setup.work.path());
    let log = setup.file("broker.log");
    let server =
        ServerProcess::start(Kind::Broker, &setup.config_path, &log, &setup.profile(&sender_profile())).await?;
    // Let start-up work (the first tree head, the directory version) finish.
    tokio::time::sleep(SETTLE).await;
    let ready = server.memory()?;
    let count = args.count as usize;
    let per = args.per_connection as usize;
    let connections = count.div_ceil(per);
    let profiles = subscriber_profiles().map(|p| setup.profile(&p));
    let mut clients = Vec::with_capacity(connections);
    for i in 0..connections {
        clients.extend(load::connect(&profiles[i % profiles.len()], 1).await?);
    }
    tokio::time::sleep(SETTLE).await;
    let connected = server.memory()?;
    eprintln!("opening {count} streams over {connections} connections...");
    let cpu_before = server.cpu_seconds()?;
    let started = Instant::now();
    let opening = Arc::new(Semaphore::new(OPENING_AT_ONCE));
    let established = Arc::new(AtomicUsize::new(0));
    let mut openers = Vec::with_capacity(count);
    for i in 0..count {
        let client = clients[i / per].clone();
        let (opening, established) = (opening.clone(), established.clone());
        openers.push(tokio::spawn(async move {
            let _slot = opening.acquire_owned().await?;
            let mut stream =
                client.broker().subscribe(pb::SubscribeRequest {}).await.context("Subscribe refused")?.into_inner();
            match stream.message().await.context("the stream failed before its first message")? {
                Some(pb::Alert { event: Some(pb::alert::Event::CaughtUp(_)) }) => {}
                Some(other) => anyhow::bail!("the first message was not CaughtUp but {other:?}"),
                None => anyhow::bail!("the stream ended before its first message"),
            }
            established.fetch_add(1, Relaxed);
            let state = Arc::new(StreamState::default());
            let watched = state.clone();
            let reader = tokio::spawn(async move {
                loop {
                    match stream.message().await {
                        Ok(Some(pb::Alert { event: Some(pb::alert::Event::Heartbeat(_)) })) => {
                            watched.heartbeat.store(true, Relaxed);
                        }
                        Ok(Some(_)) => {}
                        Ok(None) | Err(_) => {
                            watched.ended.store(true, Relaxed);
                            return;
                        }
                    }
                }
            });
            Ok((state, reader))
        }));
    }
    let mut states = Vec::with_capacity(count);
    let mut readers = Vec::with_capacity(count);
    let mut errors = Vec::new();
    for o in openers {
        match o.await.context("a stream-opening task failed")? {
            Ok((s, r)) => {
                states.push(s);
                readers.push(r);
            }
            Err(e) if errors.len() < 10 => errors.push(format!("{e:#}")),
            Err(_) => {}
        }
    }
    let establish_seconds = started.elapsed().as_secs_f64();
    let cpu_establishing = server.cpu_seconds()? - cpu_before;
    eprintln!("{} streams established in {establish_seconds:.1} s; measuring", states.len());
    tokio::time::sleep(SETTLE).await;
    let with_streams = server.memory()?;
    eprintln!("holding them open for {:.0} s...", args.hold);
    tokio::time::sleep(Duration::from_secs_f64(args.hold)).await;
    let open_after_hold = states.iter().filter(|s| !s.ended.load(Relaxed)).count();
    let heartbeats_seen = states.iter().filter(|s| s.heartbeat.load(Relaxed)).count();
    let peak = server.memory()?.peak_kib;
    for r in readers {
        r.abort();
    }
    drop(clients);
    server.stop().await?;
    let n = states.len().max(1) as f64;
    Ok(StreamsReport {
        machine,
        requested: count,
        connections,
        established: states.len(),
        establish_seconds,
        open_after_hold,
        heartbeats_seen,
        hold_seconds: args.hold,
        broker_rss_ready_mib: mib(ready.rss_kib),
        broker_rss_connected_mib: mib(connected.rss_kib),
        broker_rss_streams_mib: mib(with_streams.rss_kib),
        broker_peak_rss_mib: mib(peak),
        rss_per_stream_kib: with_streams.rss_kib.saturating_sub(connected.rss_kib) as f64 / n,
        rss_per_stream_with_connections_kib: with_streams.rss_kib.saturating_sub(ready.rss_kib) as f64 / n,
        broker_cpu_seconds_establishing: cpu_establishing,
        errors,
    })
}
