//! The broker's metrics: names in one place, recorded through the `metrics`
//! facade and rendered in the Prometheus text format by the admin endpoint.
//!
//! Labels carry agency ids, reason codes and outcomes only: never a person,
//! a message id or a principal's name.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

pub const SUBMITS: &str = "broker_submits_total";
pub const REJECTIONS: &str = "broker_rejections_total";
pub const DELIVERIES: &str = "broker_deliveries_total";
pub const ACKS: &str = "broker_acks_total";
pub const ESCALATIONS: &str = "broker_escalations_total";
pub const EXPIRIES: &str = "broker_expiries_total";
pub const PURGES: &str = "broker_purges_total";
/// Overlap sessions proposed (and recorded).
pub const OVERLAP_SESSIONS: &str = "broker_overlap_sessions_total";
/// Overlap sessions the broker ended unfinished (their session timeout).
pub const OVERLAP_EXPIRED: &str = "broker_overlap_expired_total";
pub const COMMIT_SECONDS: &str = "broker_commit_seconds";
pub const COMMIT_JOBS: &str = "broker_commit_batch_jobs";
pub const COMMIT_FAILURES: &str = "broker_commit_failures_total";
pub const CONNECTIONS: &str = "broker_connections_open";
/// Connections closed after the handshake, by reason (`per_principal_limit`).
pub const CONNECTIONS_REFUSED: &str = "broker_connections_refused_total";
pub const HANDSHAKE_FAILURES: &str = "broker_tls_handshake_failures_total";
pub const STREAMS: &str = "broker_streams_open";
pub const QUEUE_DEPTH: &str = "broker_queue_depth";
/// Open Subscribe streams per agency; 0 means nobody on call is listening.
pub const LIVE_SUBSCRIBERS: &str = "broker_live_subscribers";
pub const OLDEST_UNACKED: &str = "broker_oldest_unacked_seconds";
pub const AUDIT_ENTRIES: &str = "broker_audit_log_entries";
pub const CERT_NOT_AFTER: &str = "broker_certificate_not_after_seconds";
pub const HEALTHY: &str = "broker_healthy";

/// Counts one refused request under its reason: a fixed word from
/// `BrokerError::reason`, never anything taken from the request.
pub fn rejected(reason: &'static str) {
    metrics::counter!(REJECTIONS, "reason" => reason).increment(1);
}

/// The process-wide recorder (installed once) and the handle that renders it.
pub fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                metrics_exporter_prometheus::Matcher::Full(COMMIT_SECONDS.into()),
                &[0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0],
            )
            .and_then(|b| {
                b.set_buckets_for_metric(
                    metrics_exporter_prometheus::Matcher::Full(COMMIT_JOBS.into()),
                    &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0],
                )
            })
            .expect("valid buckets")
            .build_recorder();
        let handle = recorder.handle();
        // Another recorder may exist (an embedding program's); then ours
        // only renders what it records itself, which is still correct.
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}

/// Counts an open thing (a connection, a stream) while alive.
#[derive(Debug)]
pub struct Open {
    name: &'static str,
    kind: &'static str,
}

impl Open {
    pub fn new(name: &'static str, kind: &'static str) -> Self {
        metrics::gauge!(name, "kind" => kind).increment(1.0);
        Self { name, kind }
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        metrics::gauge!(self.name, "kind" => self.kind).decrement(1.0);
    }
}
