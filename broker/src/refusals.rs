//! Refusals of authenticated callers: each one answered, counted in the
//! metrics, and recorded in the audit log in one of two ways, by what it
//! proves.
//!
//! The audit log is permanent, so what a caller can make it hold must be
//! bounded by something the caller cannot forge. A refusal whose request
//! carried a **verified agency signature** (an envelope or ack whose
//! signature checked out with a key valid now, refused afterwards: clock
//! skew, a duplicate id with other content, an ack of an unknown message...)
//! is attributable to the agency's key and is logged one by one as a
//! `Rejected` entry, like the submissions such a key can make anyway.
//! Every other refusal (missing or malformed fields, bad or retired-key
//! signatures, routing) is only **counted** per (principal, reason); the
//! counts are written as one `RejectionSummary` entry per pair when the
//! interval closes ([`SUMMARY_INTERVAL`], and at shutdown). A certificate
//! sending garbage as fast as its rate limit allows thus adds at most one
//! entry per reason per interval.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use referral_proto::Digest;
use referral_proto::ids::{MessageId, Principal};
use referral_proto::pb;
use referral_proto::time::Timestamp;
use tonic::Status;

use crate::error::BrokerError;
use crate::state::BrokerState;

/// How long unsigned refusals are counted before their summary is logged.
pub const SUMMARY_INTERVAL: Duration = Duration::from_secs(60);

/// Most distinct (principal, reason) pairs counted in one interval; refusals
/// beyond it are counted under [`OVERFLOW_PRINCIPAL`], so that even many
/// certificates at once add a bounded number of entries per interval.
pub const MAX_PAIRS: usize = 4096;

/// The principal a summary names for refusals counted beyond [`MAX_PAIRS`].
pub const OVERFLOW_PRINCIPAL: &str = "*";

/// What a refused request proved about its origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Evidence {
    /// Its agency signature verified: logged one by one.
    Signed { message_id: MessageId, digest: Digest },
    /// Nothing beyond the caller's certificate: counted and summarised.
    Unsigned,
}

/// Counts of unsigned refusals in the current interval.
#[derive(Debug, Default)]
pub struct RejectionCounter {
    window: Mutex<Window>,
}

#[derive(Debug, Default)]
struct Window {
    from: Option<Timestamp>,
    counts: BTreeMap<(String, &'static str), u64>,
}

impl RejectionCounter {
    /// Counts one unsigned refusal of `principal` for `reason` at `now`.
    pub fn count(&self, principal: &str, reason: &'static str, now: Timestamp) {
        let mut w = self.window.lock().expect("rejection counter lock");
        w.from.get_or_insert(now);
        let key = if w.counts.len() < MAX_PAIRS || w.counts.contains_key(&(principal.to_owned(), reason)) {
            (principal.to_owned(), reason)
        } else {
            (OVERFLOW_PRINCIPAL.to_owned(), reason)
        };
        *w.counts.entry(key).or_default() += 1;
    }

    /// Closes the interval at `now`: its summaries (none if nothing was
    /// counted), and a fresh interval.
    pub fn take(&self, now: Timestamp) -> Vec<pb::RejectionSummary> {
        let w = std::mem::take(&mut *self.window.lock().expect("rejection counter lock"));
        let Some(from) = w.from else { return Vec::new() };
        w.counts
            .into_iter()
            .map(|((principal, reason), count)| pb::RejectionSummary {
                principal,
                reason: reason.to_owned(),
                count,
                from_ms: from.0,
                to_ms: now.0.max(from.0),
            })
            .collect()
    }
}

/// A refused request: the error (its reason code and gRPC status), who
/// made it and what it proved. Every refusal after authorization, whether
/// the service or the ledger decides it, is this value, and is recorded by
/// [`Refusal::entry`] (its audit entry, written by the ledger when the
/// evidence is signed) and [`RejectionCounter::record`] (traced, counted in
/// the metrics and, unsigned, in the summaries), and answered by
/// [`Refusal::status`].
#[derive(Debug, Clone)]
pub struct Refusal {
    pub principal: String,
    pub error: BrokerError,
    pub evidence: Evidence,
}

impl Refusal {
    pub fn new(principal: impl Into<String>, error: BrokerError, evidence: Evidence) -> Self {
        Self { principal: principal.into(), error, evidence }
    }

    pub fn reason(&self) -> &'static str {
        self.error.reason()
    }

    /// The audit entry that records this refusal one by one: only for a
    /// request whose agency signature verified (see the module's note).
    pub fn entry(&self) -> Option<pb::Rejected> {
        match self.evidence {
            Evidence::Signed { message_id, digest } => Some(pb::Rejected {
                principal: self.principal.clone(),
                reason: self.reason().to_owned(),
                message_id: message_id.as_bytes().to_vec(),
                envelope_digest: digest.0.to_vec(),
            }),
            Evidence::Unsigned => None,
        }
    }

    /// The answer the caller gets: the status with the reason code.
    pub fn status(&self) -> Status {
        self.error.clone().into()
    }
}

impl RejectionCounter {
    /// Records a refusal once it is final (a signed one once its audit
    /// entry is durable): traced, counted in the metrics, and counted for
    /// the summaries when it is not logged one by one.
    pub fn record(&self, refusal: &Refusal, now: Timestamp) {
        let reason = refusal.reason();
        tracing::info!(principal = %refusal.principal, reason, "request rejected");
        crate::metrics::rejected(reason);
        if refusal.evidence == Evidence::Unsigned {
            self.count(&refusal.principal, reason, now);
        }
    }
}

/// Answers a refusal the service decided: an unsigned one is recorded now;
/// a signed one goes to the ledger, which logs its entry, and is recorded
/// by the committer once that entry is durable.
pub async fn refuse(state: &BrokerState, principal: &Principal, e: BrokerError, evidence: Evidence) -> Status {
    let refusal = Refusal::new(principal.uri(), e, evidence);
    let status = refusal.status();
    match evidence {
        Evidence::Signed { .. } => state.committer.reject(refusal).await,
        Evidence::Unsigned => state.rejections.record(&refusal, state.clock.now()),
    }
    status
}

/// Logs the summaries of the interval now closing, durably, before it
/// returns. Called every [`SUMMARY_INTERVAL`] and at shutdown.
pub async fn close_interval(state: &BrokerState) {
    let summaries = state.rejections.take(state.clock.now());
    if !summaries.is_empty()
        && let Err(e) = state.committer.summarise(summaries).await
    {
        tracing::error!(error = %e, "logging the rejection summaries failed; their counts are lost");
    }
}

/// Closes an interval every [`SUMMARY_INTERVAL`] until shutdown (the last
/// one is closed by [`crate::server::Running::wait`], after the server
/// has stopped taking requests).
pub async fn summariser(state: Arc<BrokerState>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(SUMMARY_INTERVAL) => close_interval(&state).await,
            _ = state.shutdown.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_principal_and_reason_in_one_summary_each() {
        let c = RejectionCounter::default();
        assert!(c.take(Timestamp(5)).is_empty(), "nothing counted, nothing logged");
        for _ in 0..1000 {
            c.count("spiffe://t/agency/a/oncall/x", "missing_field", Timestamp(10));
        }
        c.count("spiffe://t/agency/a/oncall/x", "malformed_ack", Timestamp(11));
        c.count("spiffe://t/agency/b/system/y", "missing_field", Timestamp(12));
        let s = c.take(Timestamp(70));
        let got: Vec<_> = s.iter().map(|s| (s.principal.as_str(), s.reason.as_str(), s.count)).collect();
        assert_eq!(
            got,
            [
                ("spiffe://t/agency/a/oncall/x", "malformed_ack", 1),
                ("spiffe://t/agency/a/oncall/x", "missing_field", 1000),
                ("spiffe://t/agency/b/system/y", "missing_field", 1),
            ]
        );
        assert!(s.iter().all(|s| (s.from_ms, s.to_ms) == (10, 70)));
        assert!(c.take(Timestamp(80)).is_empty(), "a new interval starts empty");
    }

    #[test]
    fn pairs_beyond_the_cap_are_summarised_together() {
        let c = RejectionCounter::default();
        for i in 0..MAX_PAIRS + 500 {
            c.count(&format!("p{i}"), "missing_field", Timestamp(1));
        }
        let s = c.take(Timestamp(2));
        assert_eq!(s.len(), MAX_PAIRS + 1);
        let overflow = s.iter().find(|s| s.principal == OVERFLOW_PRINCIPAL).unwrap();
        assert_eq!(overflow.count, 500);
    }
}
