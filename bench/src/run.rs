//! `loadgen run`: measures the ceiling, Redis and the broker (or any one of
//! them), in that order, on one fresh federation with the same envelopes,
//! and reports each with the broker's rate as a share of the others'.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use broker::directory::{DirectoryState, read_federation_key};
use certs::dev::SOCIAL;
use referral_proto::ids::AgencyId;

use crate::fill::{FillReport, fill};
use crate::load::{self, EndToEnd, Plan, SubmitOutcome};
use crate::procfs;
use crate::redis::{self, RedisServer};
use crate::report::{EndToEndReport, Latency, RunReport, SealReport, Settings, TargetReport, mib};
use crate::server::{Kind, ServerProcess};
use crate::setup::{Machine, Setup, load_average, sender_profile, subscriber_profiles};
use crate::workload::{Sealer, Source, sized_notice};

/// Submits when neither `--count` nor `--duration` is given.
pub const DEFAULT_COUNT: u64 = 20_000;
/// Longest wait, after the last submit, for alerts and receipts to arrive.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);

/// Which servers to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TargetChoice {
    Broker,
    Ceiling,
    /// Debian's redis-server as a durable queue (skipped when not installed).
    Redis,
    /// The ceiling, then the broker.
    Both,
    /// The ceiling, Redis (when installed), then the broker.
    All,
}

/// Options of `loadgen run`.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// HTTP/2 connections (one client each) the submits are spread over.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub connections: u64,
    /// Submits in flight on each connection (total concurrency: connections x in-flight).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub in_flight: u64,
    /// Bytes of padded plaintext per referral: the notice is grown to SIZE - 4 encoded
    /// bytes, so 2048 gives exactly the 2 KiB padding bucket.
    #[arg(long, default_value_t = 2048)]
    pub size: usize,
    /// Submits to make (default 20000 unless --duration is given).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,
    /// Seconds to submit for (with --count too: whichever ends first).
    #[arg(long, value_parser = positive_f64)]
    pub duration: Option<f64>,
    /// Offered load in submits per second, paced (open loop); default: as fast as answered (closed loop).
    #[arg(long, value_parser = positive_f64)]
    pub rate: Option<f64>,
    /// Live subscribers of the recipient agency that acknowledge every referral (broker only).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=1000))]
    pub subscribers: u64,
    /// Seal every envelope before the clock starts (in parallel); otherwise each is sealed just before its submit.
    #[arg(long)]
    pub presealed: bool,
    /// The server(s) to measure.
    #[arg(long, value_enum, default_value_t = TargetChoice::All)]
    pub target: TargetChoice,
    /// Before starting the broker, load its store with this many queued, unacknowledged (unreadable) messages.
    #[arg(long, default_value_t = 0)]
    pub fill: u64,
    /// Also measure the broker through SubmitStream (after unary Submit, on a fresh store): one
    /// stream per connection with up to --in-flight envelopes unanswered on each.
    #[arg(long)]
    pub stream: bool,
    /// Also measure the broker on PostgreSQL (storage.engine = "postgres", after the embedded one,
    /// on a fresh database): a local PostgreSQL with TLS and fsync is started for the run
    /// (Debian's postgresql; skipped with a line when it is not installed).
    #[arg(long)]
    pub postgres: bool,
    /// With --postgres: 2 also measures two broker nodes serving at once on
    /// one database (half the connections to each), after the one node.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=2))]
    pub nodes: u32,
    /// The broker's embedded store engine (storage.engine) for --target broker, both and all,
    /// and --stream; default: the broker's own (fjall for the new store of each run).
    #[arg(long, value_enum)]
    pub engine: Option<EngineChoice>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Work folder (new or empty) for the federation, the store and the logs; kept afterwards.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Keep the temporary work folder (its path is printed).
    #[arg(long)]
    pub keep: bool,
    /// The broker's log level (the production default is info; per-submit lines are debug).
    #[arg(long, default_value = "info")]
    pub broker_log_level: String,
}

/// `--engine`: the embedded engines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EngineChoice {
    Sled,
    Fjall,
}

pub fn positive_f64(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!("{s:?} is not a positive number")),
    }
}

/// How many submits the run makes at most, and whether that is bounded.
fn submit_limit(args: &RunArgs) -> anyhow::Result<Option<u64>> {
    Ok(match (args.count, args.duration, args.rate) {
        (Some(c), _, _) => Some(c),
        (None, None, _) => Some(DEFAULT_COUNT),
        (None, Some(d), Some(r)) => Some((d * r).ceil() as u64),
        (None, Some(_), None) if args.presealed => {
            anyhow::bail!("--presealed with --duration needs --count or --rate, to know how many envelopes to seal")
        }
        (None, Some(_), None) => None,
    })
}

fn check(args: &RunArgs) -> anyhow::Result<()> {
    if args.fill > 0 && args.subscribers > 0 {
        anyhow::bail!(
            "--fill with --subscribers would send every subscriber the whole filled backlog, which cannot be opened; run them separately"
        );
    }
    if args.fill > 0 && matches!(args.target, TargetChoice::Ceiling | TargetChoice::Redis) {
        anyhow::bail!("--fill loads the broker's store; it means nothing with --target ceiling or redis");
    }
    if args.stream && args.fill > 0 {
        anyhow::bail!("--stream measures on a fresh store; run --fill without it");
    }
    if args.stream && matches!(args.target, TargetChoice::Ceiling | TargetChoice::Redis) {
        anyhow::bail!("--stream drives the broker; use it with --target broker, both or all");
    }
    if args.postgres && (args.fill > 0 || matches!(args.target, TargetChoice::Ceiling | TargetChoice::Redis)) {
        anyhow::bail!(
            "--postgres drives the broker on a fresh database; use it with --target broker, both or all, without --fill"
        );
    }
    if args.keep && args.dir.is_some() {
        anyhow::bail!("--dir folders are always kept; --keep is for the temporary folder");
    }
    Ok(())
}

/// Carries out `loadgen run`.
pub async fn run(args: RunArgs) -> anyhow::Result<RunReport> {
    check(&args)?;
    let limit = submit_limit(&args)?;
    let notice = sized_notice(args.size)?;
    let mut setup = Setup::create(args.dir.as_deref(), args.keep, &args.broker_log_level)?;
    if let Some(engine) = args.engine {
        let name = match engine {
            EngineChoice::Sled => "sled",
            EngineChoice::Fjall => "fjall",
        };
        setup.set_storage_engine(name)?;
    }
    if !matches!(setup.work, crate::setup::WorkDir::Temporary(_)) {
        eprintln!("work folder: {}", setup.work.path().display());
    }
    let machine = Machine::describe(setup.work.path());
    let key = read_federation_key(&setup.config.federation.federation_key)?;
    let directory = DirectoryState::open(&setup.config.federation.directory, key, certs::now())?;
    let recipient = AgencyId::new(SOCIAL).context("the social services agency id")?;
    let sealer =
        Arc::new(Sealer::new(&setup.profile(&sender_profile()), &directory.current().directory, &recipient, notice)?);
    let sizes = sealer.sizes()?;
    let (source, presealed) = if args.presealed {
        let n = usize::try_from(limit.unwrap_or(DEFAULT_COUNT)).context("--count is too large for this machine")?;
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        eprintln!("sealing {n} envelopes on {threads} threads...");
        let started = Instant::now();
        let s = sealer.clone();
        let envelopes = tokio::task::spawn_blocking(move || s.seal_many(n, threads)).await??;
        let seconds = started.elapsed().as_secs_f64();
        (
            Source::Presealed(Arc::new(envelopes)),
            Some(SealReport { envelopes: n, seconds, per_second: n as f64 / seconds }),
        )
    } else {
        (Source::OnTheFly(sealer.clone()), None)
    };
    let plan = Plan {
        in_flight_per_connection: args.in_flight as usize,
        limit: limit.unwrap_or(u64::MAX),
        duration: args.duration.map(Duration::from_secs_f64),
        rate: args.rate,
    };
    let kinds: &[Kind] = match args.target {
        TargetChoice::Broker => &[Kind::Broker],
        TargetChoice::Ceiling => &[Kind::Ceiling],
        TargetChoice::Redis => &[Kind::Redis],
        TargetChoice::Both => &[Kind::Ceiling, Kind::Broker],
        TargetChoice::All => &[Kind::Ceiling, Kind::Redis, Kind::Broker],
    };
    let mut kinds = kinds.to_vec();
    if args.stream {
        kinds.push(Kind::BrokerStream);
    }
    if args.postgres {
        kinds.push(Kind::BrokerPostgres);
        if args.nodes == 2 {
            kinds.push(Kind::BrokerPostgres2);
        }
    }
    let postgres_installed = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| d.flatten().any(|e| e.path().join("bin/postgres").exists()))
        .unwrap_or(false);
    let redis_exe = if kinds.contains(&Kind::Redis) { redis::find_redis_server() } else { None };
    let mut skipped = Vec::new();
    let mut targets = Vec::new();
    let mut fill_report: Option<FillReport> = None;
    for &kind in &kinds {
        if kind == Kind::Redis && redis_exe.is_none() {
            let why = "redis: skipped: redis-server is not installed (on Debian: apt-get install redis-server)";
            eprintln!("{why}");
            skipped.push(why.to_owned());
            continue;
        }
        if matches!(kind, Kind::BrokerPostgres | Kind::BrokerPostgres2) && !postgres_installed {
            let why = "broker_postgres: skipped: PostgreSQL is not installed (on Debian: apt-get install postgresql)";
            eprintln!("{why}");
            skipped.push(why.to_owned());
            continue;
        }
        if kind == Kind::BrokerStream && kinds.contains(&Kind::Broker) {
            // The same envelopes again would all be duplicates: a fresh store.
            let data = &setup.config.storage.data_dir;
            std::fs::remove_dir_all(data).with_context(|| format!("cannot empty {}", data.display()))?;
        }
        if kind == Kind::Broker && args.fill > 0 {
            eprintln!("filling the broker's store with {} queued messages...", args.fill);
            let f = fill(&setup.config, args.fill, sealer.clone()).await?;
            eprintln!("  filled {} in {:.1} s ({:.0}/s)", f.messages, f.seconds, f.messages_per_second);
            fill_report = Some(f);
        }
        targets.push(measure(kind, &setup, &args, source.clone(), &plan, redis_exe.as_deref()).await?);
    }
    let rate_of = |k: Kind| targets.iter().find(|t| t.target == k).map(|t| t.submits_per_second);
    let ratio = |a: Kind, b: Kind| match (rate_of(a), rate_of(b)) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    };
    let (broker_over_ceiling, broker_over_redis, redis_over_ceiling) =
        (ratio(Kind::Broker, Kind::Ceiling), ratio(Kind::Broker, Kind::Redis), ratio(Kind::Redis, Kind::Ceiling));
    let (stream_over_ceiling, stream_over_redis) =
        (ratio(Kind::BrokerStream, Kind::Ceiling), ratio(Kind::BrokerStream, Kind::Redis));
    let (postgres_over_sled, postgres_over_redis) =
        (ratio(Kind::BrokerPostgres, Kind::Broker), ratio(Kind::BrokerPostgres, Kind::Redis));
    let (two_over_one, two_over_sled) =
        (ratio(Kind::BrokerPostgres2, Kind::BrokerPostgres), ratio(Kind::BrokerPostgres2, Kind::Broker));
    Ok(RunReport {
        machine,
        settings: Settings {
            connections: args.connections as usize,
            in_flight_per_connection: args.in_flight as usize,
            concurrency: (args.connections * args.in_flight) as usize,
            size: args.size,
            sizes,
            count: limit,
            duration_seconds: args.duration,
            rate: args.rate,
            subscribers: args.subscribers as usize,
            presealed: args.presealed,
            fill: args.fill,
            stream: args.stream,
            postgres: args.postgres,
            nodes: args.nodes,
            broker_log_level: args.broker_log_level.clone(),
            engine: match &setup.config.storage.engine {
                broker::config::Engine::Local(e) => e.name().to_owned(),
                broker::config::Engine::Postgres(_) => "postgres".to_owned(),
            },
        },
        presealed,
        fill: fill_report,
        targets,
        skipped,
        broker_over_ceiling,
        broker_over_redis,
        redis_over_ceiling,
        broker_stream_over_ceiling: stream_over_ceiling,
        broker_stream_over_redis: stream_over_redis,
        broker_postgres_over_broker: postgres_over_sled,
        broker_postgres_over_redis: postgres_over_redis,
        broker_postgres_2_nodes_over_broker_postgres: two_over_one,
        broker_postgres_2_nodes_over_broker: two_over_sled,
    })
}

/// A server under test: this executable re-run, or redis-server.
enum Running {
    Grpc(ServerProcess),
    Redis(RedisServer),
}

impl Running {
    fn pid(&self) -> u32 {
        match self {
            Running::Grpc(s) => s.pid,
            Running::Redis(s) => s.pid,
        }
    }

    fn ready_after(&self) -> Duration {
        match self {
            Running::Grpc(s) => s.ready_after,
            Running::Redis(s) => s.ready_after,
        }
    }

    /// `e`, with the server's exit status and log tail when it has exited
    /// (its /proc entry is then unreadable).
    fn gone(mut self, e: anyhow::Error) -> anyhow::Error {
        match &mut self {
            Running::Grpc(_) => e,
            Running::Redis(s) => match s.exited() {
                Some(why) => e.context(why),
                None => e,
            },
        }
    }

    async fn stop(self) -> anyhow::Result<std::process::ExitStatus> {
        match self {
            Running::Grpc(s) => s.stop().await,
            Running::Redis(s) => s.stop().await,
        }
    }
}

/// Starts `kind`, drives the load against it, stops it, and reports.
async fn measure(
    kind: Kind,
    setup: &Setup,
    args: &RunArgs,
    source: Source,
    plan: &Plan,
    redis_exe: Option<&std::path::Path>,
) -> anyhow::Result<TargetReport> {
    let sender = setup.profile(&sender_profile());
    let log = setup.file(&format!("{}.log", kind.as_str()));
    eprintln!("{}: starting...", kind.as_str());
    // The broker on PostgreSQL: a database of its own for this run, kept
    // until the broker has stopped.
    let mut database = None;
    // With two nodes: the second node, and the sender's profile for it.
    let mut second: Option<(ServerProcess, PathBuf)> = None;
    let server = match (kind, redis_exe) {
        (Kind::Redis, Some(exe)) => Running::Redis(RedisServer::start(exe, setup, &sender, &log).await?),
        (Kind::Redis, None) => anyhow::bail!("redis-server is not installed"),
        (Kind::BrokerPostgres | Kind::BrokerPostgres2, _) => {
            let dir = setup.file(&format!("postgres-{}", kind.as_str()));
            let pg = tokio::task::spawn_blocking(move || integration_tests::postgres::PgServer::start(&dir)).await?;
            // Beside broker.toml: its relative paths are relative to its folder.
            let config = setup.config_path.with_file_name(format!("{}.toml", kind.as_str()));
            let s = pg.settings();
            let storage = format!(
                "[storage]\nengine = \"postgres\"\npostgres_url = \"{}\"\npostgres_ca = \"{}\"\npostgres_password_file = \"{}\"\n",
                s.url,
                s.ca_file.display(),
                s.password_file.as_deref().unwrap_or(std::path::Path::new("")).display()
            );
            let data_dir = setup.config.storage.data_dir.display().to_string();
            let text = std::fs::read_to_string(&setup.config_path)?
                .replacen("[storage]\n", &storage, 1)
                .replace(&data_dir, &setup.file(&format!("data-{}", kind.as_str())).display().to_string());
            std::fs::write(&config, &text)?;
            database = Some(pg);
            let first = ServerProcess::start(kind, &config, &log, &sender).await?;
            if kind == Kind::BrokerPostgres2 {
                // The second node: its own port, admin port, data folder and
                // log; the sender's profile copied and pointed at it.
                let (addr, admin) = (crate::setup::free_port()?, crate::setup::free_port()?);
                let text = text
                    .replace(&setup.addr.to_string(), &addr.to_string())
                    .replace(&setup.admin.to_string(), &admin.to_string())
                    .replace(&format!("data-{}", kind.as_str()), &format!("data-{}-b", kind.as_str()));
                let config_b = setup.config_path.with_file_name(format!("{}-b.toml", kind.as_str()));
                std::fs::write(&config_b, text)?;
                let profile_b = setup.file("sender-node-b");
                copy_dir(&sender, &profile_b)?;
                let file = profile_b.join("profile.toml");
                let before = std::fs::read_to_string(&file)?;
                let text = before.replace(&setup.addr.to_string(), &addr.to_string());
                anyhow::ensure!(text != before, "{} does not name the first node's address", file.display());
                std::fs::write(&file, text)?;
                let log_b = setup.file(&format!("{}-b.log", kind.as_str()));
                second = Some((ServerProcess::start(kind, &config_b, &log_b, &profile_b).await?, profile_b));
            }
            Running::Grpc(first)
        }
        _ => Running::Grpc(ServerProcess::start(kind, &setup.config_path, &log, &sender).await?),
    };
    eprintln!("{}: answering after {:.0} ms", kind.as_str(), server.ready_after().as_secs_f64() * 1000.0);
    let pid = server.pid();
    let ready_memory = match procfs::memory(pid) {
        Ok(m) => m,
        Err(e) => return Err(server.gone(e.into())),
    };
    let subscribers = if kind.is_broker() { args.subscribers as usize } else { 0 };
    if !kind.is_broker() && args.subscribers > 0 {
        eprintln!("{}: no subscribers (it serves submits only)", kind.as_str());
    }
    let recipient_queue = redis::queue_key(SOCIAL);
    let (clients, redis_connections) = match &server {
        Running::Grpc(_) => match &second {
            // Half the connections to each node (the first gets the odd one).
            Some((_, profile_b)) => {
                let n = args.connections as usize;
                let mut clients = load::connect(&sender, n - n / 2).await?;
                clients.extend(load::connect(profile_b, n / 2).await?);
                (clients, Vec::new())
            }
            None => (load::connect(&sender, args.connections as usize).await?, Vec::new()),
        },
        Running::Redis(r) => (Vec::new(), r.connect_many(args.connections as usize).await?),
    };
    let e2e = if subscribers > 0 {
        let profiles = subscriber_profiles().map(|p| setup.profile(&p));
        let refs: Vec<&std::path::Path> = profiles.iter().map(PathBuf::as_path).collect();
        Some(EndToEnd::start(subscribers, &refs, &sender).await?)
    } else {
        None
    };
    let commits_before =
        if kind.is_broker() { crate::metrics::scrape(setup.admin, &setup.admin_token).await } else { None };
    let pid_b = second.as_ref().map(|(s, _)| s.pid);
    let cpu_of = |pid: u32| -> anyhow::Result<f64> {
        Ok(procfs::cpu_seconds(pid)? + pid_b.map(procfs::cpu_seconds).transpose()?.unwrap_or(0.0))
    };
    let cpu_before = cpu_of(pid)?;
    let written_before = procfs::written(pid)?;
    let own_before = procfs::cpu_seconds(std::process::id())?;
    let window = Instant::now();
    eprintln!("{}: submitting...", kind.as_str());
    let outcome: SubmitOutcome = match &server {
        Running::Grpc(_) if kind == Kind::BrokerStream => {
            load::submit_streaming(&clients, source, plan, e2e.as_ref().map(|e| e.sent.clone())).await?
        }
        Running::Grpc(_) => load::submit(&clients, source, plan, e2e.as_ref().map(|e| e.sent.clone())).await?,
        Running::Redis(_) => redis::submit(redis_connections, source, plan, &recipient_queue).await?,
    };
    let end_to_end = match e2e {
        Some(e2e) => {
            let drained = e2e.drain(outcome.accepted, DRAIN_TIMEOUT).await;
            if !drained {
                eprintln!(
                    "{}: not every alert or receipt arrived within {} s of the last submit",
                    kind.as_str(),
                    DRAIN_TIMEOUT.as_secs()
                );
            }
            e2e.quiesce().await;
            let report = end_to_end_report(&e2e, outcome.accepted);
            e2e.stop();
            Some(report)
        }
        None => None,
    };
    let window = window.elapsed();
    let cpu = cpu_of(pid)? - cpu_before;
    let written = procfs::written(pid)?;
    let own = procfs::cpu_seconds(std::process::id())? - own_before;
    let end_memory = procfs::memory(pid)?;
    let commits = match commits_before {
        Some(before) => {
            crate::metrics::scrape(setup.admin, &setup.admin_token).await.and_then(|after| before.until(&after, window))
        }
        None => None,
    };
    // What Redis holds afterwards: every LPUSH it answered is on the list.
    let queued_after = match &server {
        Running::Redis(r) => Some(r.list_length(&recipient_queue).await?),
        Running::Grpc(_) => None,
    };
    let ready_after = server.ready_after();
    drop(clients);
    let status = server.stop().await?;
    if let Some((b, _)) = second {
        let status = b.stop().await?;
        if !status.success() {
            eprintln!("{}: the second node exited with {status}", kind.as_str());
        }
    }
    drop(database);
    if !status.success() {
        eprintln!("{}: exited with {status}; see {}", kind.as_str(), log.display());
    }
    let submits_per_second = outcome.accepted as f64 / outcome.elapsed.as_secs_f64();
    let per_submit =
        |bytes: u64| if outcome.accepted > 0 { bytes as f64 / 1024.0 / outcome.accepted as f64 } else { 0.0 };
    Ok(TargetReport {
        target: kind,
        submits_ok: outcome.accepted,
        duplicates: outcome.duplicates,
        errors: outcome.errors,
        seconds: outcome.elapsed.as_secs_f64(),
        submits_per_second,
        submit_latency: Latency::of(&outcome.latency),
        submit_latency_from_schedule: outcome.latency_from_schedule.as_ref().and_then(Latency::of),
        end_to_end,
        commits,
        queued_after,
        server_cpu_seconds: cpu,
        server_cpu_us_per_submit: if outcome.accepted > 0 { cpu * 1e6 / outcome.accepted as f64 } else { 0.0 },
        server_cores_busy: cpu / window.as_secs_f64(),
        server_kib_written_per_submit: per_submit(written.syscall_bytes - written_before.syscall_bytes),
        server_kib_to_storage_per_submit: per_submit(written.storage_bytes - written_before.storage_bytes),
        generator_cpu_seconds: own,
        server_rss_ready_mib: mib(ready_memory.rss_kib),
        server_rss_end_mib: mib(end_memory.rss_kib),
        server_peak_rss_mib: mib(end_memory.peak_kib),
        ready_after_ms: ready_after.as_secs_f64() * 1000.0,
        load_average_after: load_average(),
    })
}

fn end_to_end_report(e2e: &EndToEnd, accepted: u64) -> EndToEndReport {
    use std::sync::atomic::Ordering::Relaxed;
    let s = &e2e.stats;
    EndToEndReport {
        subscribers: e2e.subscribers,
        alert: Latency::of(&s.alert.lock().expect("histogram lock")),
        ack_receipt: Latency::of(&s.ack_receipt.lock().expect("histogram lock")),
        alerts_expected: accepted * e2e.subscribers as u64,
        alerts_received: s.alerts.load(Relaxed),
        settled_before_delivery: s.settled_before_delivery.load(Relaxed),
        ack_receipts_expected: accepted,
        ack_receipts_received: s.ack_receipts.load(Relaxed),
        acks_first: s.acks_first.load(Relaxed),
        acks_repeated: s.acks_repeated.load(Relaxed),
        ack_errors: s.ack_errors.load(Relaxed),
        unreadable: s.unreadable.load(Relaxed),
        stream_errors: s.stream_errors.lock().expect("errors lock").clone(),
    }
}

/// Copies the folder `from` (files and sub-folders) to `to`.
fn copy_dir(from: &std::path::Path, to: &std::path::Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}
