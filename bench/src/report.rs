//! The figures of a run and how they are shown: a human-readable table, or
//! JSON (`--json`) for scripts and for keeping results.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::fill::FillReport;
use crate::metrics::CommitReport;
use crate::server::Kind;
use crate::setup::Machine;
use crate::workload::Sizes;

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Latency {
    pub count: u64,
    pub mean_us: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

impl Latency {
    /// The summary of `h`, or `None` if it is empty.
    pub fn of(h: &Histogram<u64>) -> Option<Self> {
        (!h.is_empty()).then(|| Self {
            count: h.len(),
            mean_us: h.mean(),
            p50_us: h.value_at_quantile(0.50),
            p90_us: h.value_at_quantile(0.90),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
        })
    }
}

/// What was asked for.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    pub connections: usize,
    pub in_flight_per_connection: usize,
    pub concurrency: usize,
    pub size: usize,
    pub sizes: Sizes,
    pub count: Option<u64>,
    pub duration_seconds: Option<f64>,
    pub rate: Option<f64>,
    pub subscribers: usize,
    pub presealed: bool,
    pub fill: u64,
    /// The broker was also measured through SubmitStream.
    pub stream: bool,
    /// The broker was also measured on PostgreSQL.
    pub postgres: bool,
    /// Broker nodes on the database with --postgres (1, or 2: both measured).
    pub nodes: u32,
    pub broker_log_level: String,
    /// The broker's embedded store engine ("sled" or "fjall").
    pub engine: String,
}

/// The end-to-end figures (broker with subscribers only).
#[derive(Debug, Clone, Serialize)]
pub struct EndToEndReport {
    pub subscribers: usize,
    /// Submit sent to the alert's arrival, over every subscriber.
    pub alert: Option<Latency>,
    /// Submit sent to the ACKNOWLEDGED receipt's arrival at the sender.
    pub ack_receipt: Option<Latency>,
    /// Accepted submits x subscribers.
    pub alerts_expected: u64,
    /// Deliveries that arrived.
    pub alerts_received: u64,
    /// Messages a subscriber was told were settled (by another subscriber's
    /// ack) before it was sent them; the broker delivers only what is queued.
    pub settled_before_delivery: u64,
    pub ack_receipts_expected: u64,
    pub ack_receipts_received: u64,
    /// Acknowledgements that settled a message, and later ones answered
    /// with the existing receipt (every subscriber acknowledges every referral).
    pub acks_first: u64,
    pub acks_repeated: u64,
    pub ack_errors: u64,
    pub unreadable: u64,
    pub stream_errors: Vec<String>,
}

/// The figures of one target.
#[derive(Debug, Clone, Serialize)]
pub struct TargetReport {
    pub target: Kind,
    pub submits_ok: u64,
    pub duplicates: u64,
    pub errors: BTreeMap<String, u64>,
    pub seconds: f64,
    pub submits_per_second: f64,
    /// From sending a submit to its answer.
    pub submit_latency: Option<Latency>,
    /// Open loop: from the scheduled start of a submit to its answer.
    pub submit_latency_from_schedule: Option<Latency>,
    pub end_to_end: Option<EndToEndReport>,
    /// The broker's group commits over the window (from its admin endpoint).
    pub commits: Option<CommitReport>,
    /// Redis only: the length of the recipient's list after the run.
    pub queued_after: Option<u64>,
    /// CPU seconds of the server process over the measured window.
    pub server_cpu_seconds: f64,
    pub server_cpu_us_per_submit: f64,
    /// Server CPU seconds per wall-clock second: out of the machine's cores.
    pub server_cores_busy: f64,
    /// KiB the server wrote per submit through system calls (logs included), and
    /// KiB it sent to storage per submit (the store's write amplification).
    pub server_kib_written_per_submit: f64,
    pub server_kib_to_storage_per_submit: f64,
    pub generator_cpu_seconds: f64,
    pub server_rss_ready_mib: f64,
    pub server_rss_end_mib: f64,
    pub server_peak_rss_mib: f64,
    /// From spawning the process to its first answered RPC.
    pub ready_after_ms: f64,
    pub load_average_after: f64,
}

/// Everything `loadgen run` measured.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub machine: Machine,
    pub settings: Settings,
    /// Envelopes sealed before the clock started, and how fast.
    pub presealed: Option<SealReport>,
    pub fill: Option<FillReport>,
    pub targets: Vec<TargetReport>,
    /// Targets asked for but not measured, with why (redis-server missing).
    pub skipped: Vec<String>,
    /// Broker submits/s over ceiling submits/s, when both ran.
    pub broker_over_ceiling: Option<f64>,
    /// Broker submits/s over Redis LPUSHes/s, when both ran.
    pub broker_over_redis: Option<f64>,
    /// Redis LPUSHes/s over ceiling submits/s, when both ran.
    pub redis_over_ceiling: Option<f64>,
    /// The broker through SubmitStream, over the ceiling and over Redis.
    pub broker_stream_over_ceiling: Option<f64>,
    pub broker_stream_over_redis: Option<f64>,
    /// The broker on PostgreSQL over the broker on sled, and over Redis.
    pub broker_postgres_over_broker: Option<f64>,
    pub broker_postgres_over_redis: Option<f64>,
    /// Two broker nodes on one PostgreSQL database over one node, and over sled.
    pub broker_postgres_2_nodes_over_broker_postgres: Option<f64>,
    pub broker_postgres_2_nodes_over_broker: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SealReport {
    pub envelopes: usize,
    pub seconds: f64,
    pub per_second: f64,
}

/// Everything `loadgen streams` measured.
#[derive(Debug, Clone, Serialize)]
pub struct StreamsReport {
    pub machine: Machine,
    pub requested: usize,
    pub connections: usize,
    pub established: usize,
    pub establish_seconds: f64,
    /// Streams still open at the end of the hold.
    pub open_after_hold: usize,
    /// Streams that got a heartbeat during the hold: proof they were alive.
    pub heartbeats_seen: usize,
    pub hold_seconds: f64,
    pub broker_rss_ready_mib: f64,
    pub broker_rss_connected_mib: f64,
    pub broker_rss_streams_mib: f64,
    pub broker_peak_rss_mib: f64,
    /// (RSS with the streams − RSS with the connections alone) / streams.
    pub rss_per_stream_kib: f64,
    /// (RSS with the streams − RSS when ready) / streams: connections included.
    pub rss_per_stream_with_connections_kib: f64,
    pub broker_cpu_seconds_establishing: f64,
    pub errors: Vec<String>,
}

pub fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn ms(us: u64) -> String {
    format!("{:.2}", us as f64 / 1000.0)
}

pub(crate) fn latency_rows(rows: &mut Vec<(String, Vec<String>)>, name: &str, l: &[Option<Latency>]) {
    if l.iter().all(Option::is_none) {
        return;
    }
    let cell = |f: fn(&Latency) -> u64| l.iter().map(|x| x.as_ref().map_or("-".into(), |x| ms(f(x)))).collect();
    rows.push((format!("{name} p50 (ms)"), cell(|x| x.p50_us)));
    rows.push((format!("{name} p90 (ms)"), cell(|x| x.p90_us)));
    rows.push((format!("{name} p99 (ms)"), cell(|x| x.p99_us)));
    rows.push((format!("{name} p99.9 (ms)"), cell(|x| x.p999_us)));
    rows.push((format!("{name} max (ms)"), cell(|x| x.max_us)));
}

pub(crate) fn table(header: &[String], rows: &[(String, Vec<String>)]) -> String {
    let first = rows.iter().map(|(k, _)| k.chars().count()).max().unwrap_or(0).max(8);
    let cols = header.len();
    let widths: Vec<usize> = (0..cols)
        .map(|i| {
            rows.iter().map(|(_, v)| v.get(i).map_or(0, |s| s.chars().count())).max().unwrap_or(0).max(header[i].len())
        })
        .collect();
    let mut out = String::new();
    let _ = write!(out, "{:first$}", "");
    for (h, w) in header.iter().zip(&widths) {
        let _ = write!(out, "  {h:>w$}");
    }
    out.push('\n');
    for (k, v) in rows {
        let _ = write!(out, "{k:first$}");
        for (c, w) in v.iter().zip(&widths) {
            let _ = write!(out, "  {c:>w$}");
        }
        out.push('\n');
    }
    out
}

pub(crate) fn machine_line(m: &Machine) -> String {
    format!(
        "machine: {} CPUs ({}), {}, work folder on {}, load average {:.2} at start; \
         one core signed in {:.1} us and verified in {:.1} us at start",
        m.cpus,
        m.cpu_model,
        m.kernel,
        m.work_filesystem,
        m.load_average_at_start,
        m.core_speed.sign_us,
        m.core_speed.verify_us
    )
}

impl RunReport {
    /// The human-readable form.
    pub fn to_table(&self) -> String {
        let s = &self.settings;
        let mut out = String::new();
        let mode = match (s.rate, s.duration_seconds, s.count) {
            (Some(r), _, _) => format!("open loop at {r} submits/s offered"),
            _ => "closed loop".to_owned(),
        };
        let amount = match (s.duration_seconds, s.count) {
            (Some(d), _) => format!("for {d} s"),
            (None, Some(c)) => format!("{c} submits"),
            (None, None) => String::new(),
        };
        let _ = writeln!(
            out,
            "loadgen run: {} connections x {} in flight = {}, {mode}, {amount}; notice {} B, ciphertext {} B, envelope {} B; {}; {} subscribers; broker log level {}; store engine {}",
            s.connections,
            s.in_flight_per_connection,
            s.concurrency,
            s.sizes.notice_bytes,
            s.sizes.ciphertext_bytes,
            s.sizes.envelope_bytes,
            if s.presealed { "presealed" } else { "sealed on the fly" },
            s.subscribers,
            s.broker_log_level,
            s.engine,
        );
        let _ = writeln!(out, "{}", machine_line(&self.machine));
        if let Some(p) = &self.presealed {
            let _ = writeln!(out, "presealed {} envelopes in {:.1} s ({:.0}/s)", p.envelopes, p.seconds, p.per_second);
        }
        if let Some(f) = &self.fill {
            let _ = writeln!(
                out,
                "fill: {} queued messages in {:.1} s ({:.0}/s, {} failed), store {:.0} MiB on disk",
                f.messages,
                f.seconds,
                f.messages_per_second,
                f.failed,
                f.store_bytes as f64 / 1048576.0
            );
        }
        let header: Vec<String> = self.targets.iter().map(|t| t.target.as_str().to_owned()).collect();
        let mut rows: Vec<(String, Vec<String>)> = Vec::new();
        let col = |f: &dyn Fn(&TargetReport) -> String| self.targets.iter().map(f).collect::<Vec<_>>();
        rows.push(("submits/s".into(), col(&|t| format!("{:.0}", t.submits_per_second))));
        rows.push(("submits ok".into(), col(&|t| t.submits_ok.to_string())));
        rows.push(("errors".into(), col(&|t| t.errors.values().sum::<u64>().to_string())));
        rows.push(("seconds".into(), col(&|t| format!("{:.2}", t.seconds))));
        let lat: Vec<_> = self.targets.iter().map(|t| t.submit_latency).collect();
        latency_rows(&mut rows, "submit", &lat);
        let sched: Vec<_> = self.targets.iter().map(|t| t.submit_latency_from_schedule).collect();
        latency_rows(&mut rows, "from schedule", &sched);
        let alert: Vec<_> = self.targets.iter().map(|t| t.end_to_end.as_ref().and_then(|e| e.alert)).collect();
        latency_rows(&mut rows, "e2e alert", &alert);
        let ack: Vec<_> = self.targets.iter().map(|t| t.end_to_end.as_ref().and_then(|e| e.ack_receipt)).collect();
        latency_rows(&mut rows, "e2e ack receipt", &ack);
        if self.targets.iter().any(|t| t.end_to_end.is_some()) {
            rows.push((
                "alerts+settled first/expected".into(),
                col(&|t| {
                    t.end_to_end.as_ref().map_or("-".into(), |e| {
                        format!("{}+{}/{}", e.alerts_received, e.settled_before_delivery, e.alerts_expected)
                    })
                }),
            ));
            rows.push((
                "ack receipts received".into(),
                col(&|t| {
                    t.end_to_end
                        .as_ref()
                        .map_or("-".into(), |e| format!("{}/{}", e.ack_receipts_received, e.ack_receipts_expected))
                }),
            ));
        }
        if self.targets.iter().any(|t| t.queued_after.is_some()) {
            rows.push((
                "queued after (redis LLEN)".into(),
                col(&|t| t.queued_after.map_or("-".into(), |n| n.to_string())),
            ));
        }
        if self.targets.iter().any(|t| t.commits.is_some()) {
            let c = |f: &dyn Fn(&CommitReport) -> String| col(&|t| t.commits.as_ref().map_or("-".into(), f));
            rows.push(("group commits".into(), c(&|c| c.commits.to_string())));
            rows.push(("jobs per commit".into(), c(&|c| format!("{:.1}", c.jobs_per_commit))));
            rows.push(("commit time, mean (ms)".into(), c(&|c| format!("{:.2}", c.commit_ms))));
            rows.push(("share of time committing".into(), c(&|c| format!("{:.0}%", c.committing_share * 100.0))));
        }
        rows.push(("server CPU (s)".into(), col(&|t| format!("{:.2}", t.server_cpu_seconds))));
        rows.push(("server CPU per submit (us)".into(), col(&|t| format!("{:.0}", t.server_cpu_us_per_submit))));
        rows.push(("server cores busy".into(), col(&|t| format!("{:.2}", t.server_cores_busy))));
        rows.push((
            "server KiB written per submit".into(),
            col(&|t| format!("{:.1}", t.server_kib_written_per_submit)),
        ));
        rows.push((
            "server KiB to storage per submit".into(),
            col(&|t| format!("{:.1}", t.server_kib_to_storage_per_submit)),
        ));
        rows.push(("generator CPU (s)".into(), col(&|t| format!("{:.2}", t.generator_cpu_seconds))));
        rows.push(("server RSS at ready (MiB)".into(), col(&|t| format!("{:.1}", t.server_rss_ready_mib))));
        rows.push(("server RSS at end (MiB)".into(), col(&|t| format!("{:.1}", t.server_rss_end_mib))));
        rows.push(("server peak RSS (MiB)".into(), col(&|t| format!("{:.1}", t.server_peak_rss_mib))));
        rows.push(("spawn to first RPC (ms)".into(), col(&|t| format!("{:.0}", t.ready_after_ms))));
        rows.push(("load average after".into(), col(&|t| format!("{:.2}", t.load_average_after))));
        out.push('\n');
        out.push_str(&table(&header, &rows));
        for t in &self.targets {
            if !t.errors.is_empty() {
                let _ = writeln!(out, "{} errors: {:?}", t.target.as_str(), t.errors);
            }
            if let Some(e) = &t.end_to_end {
                let _ = writeln!(
                    out,
                    "{} acks: {} settled, {} repeated, {} failed; {} unreadable alerts",
                    t.target.as_str(),
                    e.acks_first,
                    e.acks_repeated,
                    e.ack_errors,
                    e.unreadable
                );
                for err in &e.stream_errors {
                    let _ = writeln!(out, "{} stream error: {err}", t.target.as_str());
                }
            }
        }
        for why in &self.skipped {
            let _ = writeln!(out, "{why}");
        }
        let ratios = [
            ("broker / redis", self.broker_over_redis),
            ("broker / ceiling", self.broker_over_ceiling),
            ("redis / ceiling", self.redis_over_ceiling),
            ("broker_stream / redis", self.broker_stream_over_redis),
            ("broker_stream / ceiling", self.broker_stream_over_ceiling),
            ("broker_postgres / broker (sled)", self.broker_postgres_over_broker),
            ("broker_postgres / redis", self.broker_postgres_over_redis),
            ("broker_postgres_2_nodes / broker_postgres", self.broker_postgres_2_nodes_over_broker_postgres),
            ("broker_postgres_2_nodes / broker (sled)", self.broker_postgres_2_nodes_over_broker),
        ];
        if ratios.iter().any(|(_, r)| r.is_some()) {
            out.push('\n');
        }
        for (name, r) in ratios {
            if let Some(r) = r {
                let _ = writeln!(out, "{name} throughput: {r:.2}x");
            }
        }
        out
    }
}

impl StreamsReport {
    /// The human-readable form.
    pub fn to_table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "loadgen streams: {} idle Subscribe streams over {} connections",
            self.requested, self.connections
        );
        let _ = writeln!(out, "{}", machine_line(&self.machine));
        let rows = vec![
            ("established".to_owned(), vec![format!("{} of {}", self.established, self.requested)]),
            ("time to establish (s)".into(), vec![format!("{:.2}", self.establish_seconds)]),
            (format!("open after {:.0} s hold", self.hold_seconds), vec![self.open_after_hold.to_string()]),
            ("heartbeats seen (streams)".into(), vec![self.heartbeats_seen.to_string()]),
            ("broker RSS at ready (MiB)".into(), vec![format!("{:.1}", self.broker_rss_ready_mib)]),
            ("broker RSS, connections open (MiB)".into(), vec![format!("{:.1}", self.broker_rss_connected_mib)]),
            ("broker RSS, streams open (MiB)".into(), vec![format!("{:.1}", self.broker_rss_streams_mib)]),
            ("broker peak RSS (MiB)".into(), vec![format!("{:.1}", self.broker_peak_rss_mib)]),
            ("RSS per stream (KiB)".into(), vec![format!("{:.1}", self.rss_per_stream_kib)]),
            (
                "RSS per stream incl. connections (KiB)".into(),
                vec![format!("{:.1}", self.rss_per_stream_with_connections_kib)],
            ),
            ("broker CPU establishing (s)".into(), vec![format!("{:.2}", self.broker_cpu_seconds_establishing)]),
        ];
        out.push('\n');
        out.push_str(&table(&["broker".to_owned()], &rows));
        for e in &self.errors {
            let _ = writeln!(out, "error: {e}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_come_from_the_histogram() {
        let mut h = crate::load::histogram();
        for v in 1..=1000u64 {
            h.record(v).unwrap();
        }
        let l = Latency::of(&h).unwrap();
        assert_eq!(l.count, 1000);
        assert!((499..=501).contains(&l.p50_us), "{l:?}");
        assert!((989..=991).contains(&l.p99_us), "{l:?}");
        assert!(Latency::of(&crate::load::histogram()).is_none());
    }

    #[test]
    fn tables_align_columns() {
        let t = table(
            &["a".into(), "bbbb".into()],
            &[("row".into(), vec!["1".into(), "2".into()]), ("longer row".into(), vec!["333".into(), "4".into()])],
        );
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines.iter().all(|l| l.len() == lines[0].len()), "{t}");
    }
}
