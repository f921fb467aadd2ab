//! The broker's own view of its commits, read from its admin endpoint
//! (`GET /metrics`, Prometheus text): how many group commits it made, how
//! many jobs each carried, and how long each took (apply, flush and
//! fdatasync). Best effort: a broker without the endpoint yields nothing.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const COMMIT_SECONDS: &str = "broker_commit_seconds";
const COMMIT_JOBS: &str = "broker_commit_batch_jobs";

/// Running totals of the commit histograms.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CommitTotals {
    pub commits: f64,
    pub seconds: f64,
    pub jobs: f64,
}

/// Commit figures over a measured window.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct CommitReport {
    pub commits: u64,
    pub jobs_per_commit: f64,
    /// Mean time of one commit: applying the batch, flushing, fdatasync.
    pub commit_ms: f64,
    /// Share of the window the committer spent inside commits.
    pub committing_share: f64,
}

impl CommitTotals {
    /// The figures between `self` (earlier) and `later`, over `window`.
    pub fn until(&self, later: &CommitTotals, window: Duration) -> Option<CommitReport> {
        let commits = later.commits - self.commits;
        (commits > 0.0).then(|| CommitReport {
            commits: commits as u64,
            jobs_per_commit: (later.jobs - self.jobs) / commits,
            commit_ms: (later.seconds - self.seconds) * 1000.0 / commits,
            committing_share: (later.seconds - self.seconds) / window.as_secs_f64(),
        })
    }
}

/// The sum of every sample line `name{...} value` (or `name value`).
pub fn sum_of(text: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some(rest) = line.strip_prefix(name) else { continue };
        if !(rest.starts_with(' ') || rest.starts_with('{')) {
            continue;
        }
        let value: Option<f64> = rest.rsplit(' ').next().and_then(|v| v.parse().ok());
        if let Some(v) = value {
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

/// Parses the commit totals from Prometheus text; absent histograms (no
/// commit recorded yet) count as zero.
pub fn parse(text: &str) -> CommitTotals {
    CommitTotals {
        commits: sum_of(text, &format!("{COMMIT_SECONDS}_count")).unwrap_or(0.0),
        seconds: sum_of(text, &format!("{COMMIT_SECONDS}_sum")).unwrap_or(0.0),
        jobs: sum_of(text, &format!("{COMMIT_JOBS}_sum")).unwrap_or(0.0),
    }
}

/// Fetches the commit totals from the admin endpoint at `addr`, which
/// needs its bearer `token`.
pub async fn scrape(addr: SocketAddr, token: &str) -> Option<CommitTotals> {
    let fetch = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        let request = format!(
            "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
        );
        s.write_all(request.as_bytes()).await.ok()?;
        let mut body = Vec::new();
        s.read_to_end(&mut body).await.ok()?;
        let text = String::from_utf8_lossy(&body);
        text.starts_with("HTTP/1.1 200").then(|| parse(&text))
    };
    tokio::time::timeout(Duration::from_secs(5), fetch).await.ok().flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_totals_are_read_and_differenced() {
        let before = "# TYPE broker_commit_seconds histogram\n\
            broker_commit_seconds_bucket{le=\"0.01\"} 3\n\
            broker_commit_seconds_sum 0.5\nbroker_commit_seconds_count 10\n\
            broker_commit_batch_jobs_sum 100\nbroker_commit_batch_jobs_count 10\n";
        let after = "broker_commit_seconds_sum 1.5\nbroker_commit_seconds_count 60\n\
            broker_commit_batch_jobs_sum{x=\"y\"} 3100\n";
        let (b, a) = (parse(before), parse(after));
        let r = b.until(&a, Duration::from_secs(2)).unwrap();
        assert_eq!(r.commits, 50);
        assert!((r.jobs_per_commit - 60.0).abs() < 1e-9);
        assert!((r.commit_ms - 20.0).abs() < 1e-9);
        assert!((r.committing_share - 0.5).abs() < 1e-9);
        assert_eq!(parse("nothing yet"), CommitTotals::default());
    }
}
