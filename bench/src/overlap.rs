//! `loadgen overlap`: the blind overlap check (PROTOCOL.md section 13)
//! through the real broker, beside its core in the same run.
//!
//! Each `--size` N gets a fresh federation and a fresh broker (`broker
//! serve` as a child process, real mutual TLS, fsync'd store). The police
//! and social services system principals, library clients in this process,
//! run one session of N × N subjects with `--overlap-percent` of them in
//! common, exactly as `agency-client overlap start` and `accept` do
//! (`Client::overlap_propose`, `overlap_accept`, then both `OverlapRun::run`
//! at once). Measured: the wall time from proposing to both sides holding
//! their matches; the chunks and sealed bytes the broker relayed (from the
//! auditor's verified log, so each byte counted crossed the wire twice: to
//! the broker and on to the peer); what the broker wrote to storage and its
//! CPU time during the session. Then the core alone: the same two sets
//! through `Party::start`, `answer` and `finish`, both sides one after the
//! other on one core (as `cargo bench -p referral-proto --bench psi`), and
//! the ratio of the two.

use std::time::{Duration, Instant};

use agency_client::Client;
use agency_client::overlap::LegalBasis;
use anyhow::Context as _;
use certs::dev::{POLICE, SOCIAL};
use referral_proto::ids::{AgencyId, MessageId};
use referral_proto::notice::LegalBasisKind;
use referral_proto::psi::{Party, PersonalIdentityNumber};
use serde::Serialize;

use crate::report::{machine_line, table};
use crate::server::{Kind, ServerProcess};
use crate::setup::{Machine, Setup};

/// Options of `loadgen overlap`.
#[derive(Debug, Clone, clap::Args)]
pub struct OverlapArgs {
    /// Subjects on each side, comma-separated; each on a fresh broker.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000", value_parser = clap::value_parser!(u64).range(1..=50_000))]
    pub size: Vec<u64>,
    /// Share of each side's subjects the other side also holds, in percent.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(0..=100))]
    pub overlap_percent: u64,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// The broker's log level.
    #[arg(long, default_value = "info")]
    pub broker_log_level: String,
}

/// One size's figures.
#[derive(Debug, Clone, Serialize)]
pub struct OverlapSize {
    pub subjects: u64,
    pub common: u64,
    /// Padded set size each side brought.
    pub padded: u32,
    /// Propose and accept (hashing, blinding, padding, signing, two RPCs each).
    pub propose_accept_seconds: f64,
    /// From proposing to both sides holding their matches.
    pub through_broker_seconds: f64,
    pub chunks: u64,
    /// Sealed chunk bytes the broker received (and forwarded as many).
    pub sealed_bytes: u64,
    /// What the broker wrote to storage during the session (`write_bytes`).
    pub broker_storage_written_bytes: u64,
    pub broker_cpu_seconds: f64,
    /// The same session, core only, one core.
    pub core_seconds: f64,
    /// Blinded sets and answers both sides would send, core only.
    pub core_bytes: u64,
    pub time_ratio: f64,
    pub bytes_ratio: f64,
}

/// The report of `loadgen overlap`.
#[derive(Debug, Clone, Serialize)]
pub struct OverlapReport {
    pub machine: Machine,
    pub overlap_percent: u64,
    pub sizes: Vec<OverlapSize>,
}

/// `n` distinct valid personal identity numbers starting at `offset`:
/// 999 serials a date, a date a month from 1950 (as the core's benchmark).
fn numbers(n: u64, offset: u64) -> anyhow::Result<Vec<PersonalIdentityNumber>> {
    let now = certs::now();
    (offset..offset + n)
        .map(|i| {
            let k = i / 999;
            let body = format!("{}{:02}01{:03}", 1950 + k / 12, 1 + k % 12, i % 999);
            (0..10)
                .map(|c| format!("{body}{c}"))
                .find_map(|s| PersonalIdentityNumber::parse(&s, now).ok())
                .context("no check digit fits a generated number")
        })
        .collect()
}

/// Carries out `loadgen overlap`.
pub async fn overlap(args: OverlapArgs) -> anyhow::Result<OverlapReport> {
    anyhow::ensure!(!args.size.is_empty(), "--size needs at least one set size");
    let machine = Machine::describe(&std::env::temp_dir());
    let mut sizes = Vec::with_capacity(args.size.len());
    for &n in &args.size {
        sizes.push(one(&args, n).await?);
    }
    Ok(OverlapReport { machine, overlap_percent: args.overlap_percent, sizes })
}

async fn one(args: &OverlapArgs, n: u64) -> anyhow::Result<OverlapSize> {
    let common = n * args.overlap_percent / 100;
    let police_subjects = numbers(n, 0)?;
    let social_subjects = numbers(n, n - common)?;
    let setup = Setup::create(None, false, &args.broker_log_level)?;
    let police_dir = setup.profile(&format!("{POLICE}-system"));
    let social_dir = setup.profile(&format!("{SOCIAL}-system"));
    let log = setup.file("broker.log");
    let server = ServerProcess::start(Kind::Broker, &setup.config_path, &log, &police_dir).await?;
    let police = Client::connect_dir(&police_dir).await.context("cannot connect as the police")?;
    let social = Client::connect_dir(&social_dir).await.context("cannot connect as social services")?;
    let basis = LegalBasis { kind: LegalBasisKind::Osl10_18c, citation: "OSL 10 kap. 18 c §".into() };
    let social_id = AgencyId::new(SOCIAL).context("the social services agency id")?;
    eprintln!("{n} x {n}: through the broker...");
    let (cpu0, written0) = (server.cpu_seconds()?, server.written()?);
    let started = Instant::now();
    let a = police.overlap_propose(&social_id, &police_subjects, &basis).await.context("proposing")?;
    let b = social.overlap_accept(a.session(), &social_subjects, &basis).await.context("accepting")?;
    let propose_accept = started.elapsed();
    let wait = Duration::from_secs(3600);
    let (ra, rb) = tokio::join!(a.run(&police, wait), b.run(&social, wait));
    let through_broker = started.elapsed();
    let (cpu1, written1) = (server.cpu_seconds()?, server.written()?);
    let (ra, rb) = (ra.context("the police side")?, rb.context("the social services side")?);
    anyhow::ensure!(
        ra.matches.len() as u64 == common && rb.matches.len() as u64 == common,
        "{} and {} matches, not {common}",
        ra.matches.len(),
        rb.matches.len()
    );
    let auditor = Client::connect_dir(&setup.profile("auditor")).await.context("cannot connect as the auditor")?;
    let v =
        auditor.verify_log(&setup.file("auditor-state.json"), |_, _| {}).await.context("verifying the audit log")?;
    anyhow::ensure!(v.report.failures.is_empty(), "the audit log does not verify");
    let session = v.report.overlaps.first().context("no overlap session in the log")?;
    let (chunks, sealed_bytes) = (session.chunks, session.sealed_bytes);
    drop((police, social, auditor));
    let status = server.stop().await?;
    if !status.success() {
        eprintln!("broker: exited with {status}; see {}", log.display());
    }

    eprintln!("{n} x {n}: the core alone...");
    let id = MessageId::generate(certs::now().0);
    let mut rng = referral_proto::seal::getrandom_rng();
    let started = Instant::now();
    let (pa, sa) = Party::start(id, &police_subjects, &mut rng)?;
    let (pb, sb) = Party::start(id, &social_subjects, &mut rng)?;
    let (wa, answer_a) = pa.answer(&sb);
    let (wb, answer_b) = pb.answer(&sa);
    let (ma, mb) = (wa.finish(&answer_b)?, wb.finish(&answer_a)?);
    let core = started.elapsed();
    anyhow::ensure!(ma.len() as u64 == common && mb.len() as u64 == common, "the core found other matches");
    let core_bytes =
        (sa.as_bytes().len() + sb.as_bytes().len() + answer_a.to_bytes().len() + answer_b.to_bytes().len()) as u64;
    Ok(OverlapSize {
        subjects: n,
        common,
        padded: ra.own_size,
        propose_accept_seconds: propose_accept.as_secs_f64(),
        through_broker_seconds: through_broker.as_secs_f64(),
        chunks,
        sealed_bytes,
        broker_storage_written_bytes: written1.storage_bytes.saturating_sub(written0.storage_bytes),
        broker_cpu_seconds: cpu1 - cpu0,
        core_seconds: core.as_secs_f64(),
        core_bytes,
        time_ratio: through_broker.as_secs_f64() / core.as_secs_f64(),
        bytes_ratio: sealed_bytes as f64 / core_bytes.max(1) as f64,
    })
}

impl OverlapReport {
    /// The human-readable form.
    pub fn to_table(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "loadgen overlap: one session N x N ({}% in common) through a fresh broker (mTLS), \
             both sides library clients in this process, beside the core alone on one core",
            self.overlap_percent
        );
        let _ = writeln!(out, "{}", machine_line(&self.machine));
        let header: Vec<String> = self.sizes.iter().map(|s| format!("{0} x {0}", s.subjects)).collect();
        let col = |f: &dyn Fn(&OverlapSize) -> String| self.sizes.iter().map(f).collect::<Vec<String>>();
        let rows = vec![
            ("padded set".to_owned(), col(&|s| s.padded.to_string())),
            ("matches each side".to_owned(), col(&|s| s.common.to_string())),
            ("propose + accept (s)".to_owned(), col(&|s| format!("{:.2}", s.propose_accept_seconds))),
            ("through the broker (s)".to_owned(), col(&|s| format!("{:.2}", s.through_broker_seconds))),
            ("core alone (s)".to_owned(), col(&|s| format!("{:.2}", s.core_seconds))),
            ("time broker / core".to_owned(), col(&|s| format!("x{:.2}", s.time_ratio))),
            ("chunks relayed".to_owned(), col(&|s| s.chunks.to_string())),
            ("sealed bytes relayed".to_owned(), col(&|s| s.sealed_bytes.to_string())),
            ("core bytes".to_owned(), col(&|s| s.core_bytes.to_string())),
            ("bytes broker / core".to_owned(), col(&|s| format!("x{:.3}", s.bytes_ratio))),
            ("broker storage written".to_owned(), col(&|s| s.broker_storage_written_bytes.to_string())),
            ("broker CPU (s)".to_owned(), col(&|s| format!("{:.2}", s.broker_cpu_seconds))),
        ];
        out.push('\n');
        out.push_str(&table(&header, &rows));
        out
    }
}
