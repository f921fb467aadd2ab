//! Health: the standard gRPC health service (tonic-health) says SERVING
//! only while the store takes durable writes and the broker's certificate,
//! the federation CA and the CRL are all valid. The same check updates the
//! operational gauges and warns, ahead of time, about expiring credentials.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use referral_proto::time::Timestamp;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::state::BrokerState;

/// The services the health protocol reports on ("" is the whole server).
pub const SERVICES: [&str; 3] = ["", "referral.v1.ReferralBroker", "referral.v1.Auditor"];

/// How often an expiry warning may repeat.
const WARN_EVERY: Duration = Duration::from_secs(3600);

/// The latest health verdict.
#[derive(Debug, Default)]
pub struct Health {
    serving: AtomicBool,
    problems: std::sync::Mutex<Vec<String>>,
}

impl Health {
    pub fn is_serving(&self) -> bool {
        self.serving.load(Ordering::Relaxed)
    }

    pub fn problems(&self) -> Vec<String> {
        self.problems.lock().expect("health lock").clone()
    }
}

fn days(ms: i64) -> f64 {
    ms as f64 / 86_400_000.0
}

/// One health check: what is wrong now, and warnings about what will be.
pub async fn check(state: &BrokerState) -> (Vec<String>, Vec<String>) {
    let now = state.clock.now();
    let mut problems = Vec::new();
    let mut warnings = Vec::new();
    if let Err(e) = state.committer.probe().await {
        problems.push(format!("the store does not take durable writes: {e}"));
    }
    let tls = state.tls.current();
    let warn_ms = state.config.tls.expiry_warning.as_millis() as i64;
    let mut credential = |what: &str, key: &'static str, until: Option<Timestamp>, fix: &str| {
        let Some(until) = until else { return };
        metrics::gauge!(crate::metrics::CERT_NOT_AFTER, "which" => key).set((until.0 / 1000) as f64);
        if now >= until {
            problems.push(format!("{what} expired at {until}; {fix}"));
        } else if until.0 - now.0 < warn_ms {
            warnings.push(format!("{what} expires at {until} (in {:.1} days); {fix}", days(until.0 - now.0)));
        }
    };
    credential(
        "the broker's server certificate",
        "server",
        Some(tls.server_cert_not_after),
        "issue a new one (certs broker) and reload",
    );
    credential(
        "the federation CA certificate",
        "client_ca",
        Some(tls.client_ca_not_after),
        "the federation must renew its CA",
    );
    credential("the CRL", "crl_next_update", tls.crl_next_update, "write a fresh one (certs crl) and reload");
    credential(
        "the federation directory",
        "directory_valid_until",
        Some(state.directory.current().directory.valid_until),
        "the federation must publish a fresh one (certs directory) for the broker to reload",
    );
    (problems, warnings)
}

/// Updates the gauges that describe the queues and the log.
pub fn update_gauges(state: &BrokerState) {
    let now = state.clock.now();
    metrics::gauge!(crate::metrics::AUDIT_ENTRIES).set(state.hub.tree.borrow().0 as f64);
    if let Ok(s) = crate::status::gather(&*state.store, now) {
        for (agency, q) in s.queues {
            metrics::gauge!(crate::metrics::QUEUE_DEPTH, "recipient" => agency.clone()).set(q.pending as f64);
            metrics::gauge!(crate::metrics::OLDEST_UNACKED, "recipient" => agency)
                .set(q.oldest_unacked_seconds.unwrap_or(0) as f64);
        }
    }
}

/// Checks health every `interval` until shutdown.
pub async fn run(state: Arc<BrokerState>, reporter: HealthReporter, interval: Duration) {
    let mut warned: HashMap<String, Instant> = HashMap::new();
    loop {
        let (problems, warnings) = check(&state).await;
        let serving = problems.is_empty();
        let status = if serving { ServingStatus::Serving } else { ServingStatus::NotServing };
        for service in SERVICES {
            reporter.set_service_status(service, status).await;
        }
        if serving != state.health.is_serving() {
            if serving {
                tracing::info!("health: SERVING");
            } else {
                tracing::error!(problems = %problems.join("; "), "health: NOT_SERVING");
            }
        }
        state.health.serving.store(serving, Ordering::Relaxed);
        *state.health.problems.lock().expect("health lock") = problems;
        metrics::gauge!(crate::metrics::HEALTHY).set(if serving { 1.0 } else { 0.0 });
        for w in warnings {
            let key = w.split(" expires at").next().unwrap_or(&w).to_owned();
            if warned.get(&key).is_none_or(|t| t.elapsed() >= WARN_EVERY) {
                tracing::warn!("{w}");
                warned.insert(key, Instant::now());
            }
        }
        update_gauges(&state);
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = state.shutdown.cancelled() => {
                for service in SERVICES {
                    reporter.set_service_status(service, ServingStatus::NotServing).await;
                }
                return;
            }
        }
    }
}
