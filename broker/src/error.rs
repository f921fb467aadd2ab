//! The broker's errors, and the one place they become gRPC statuses.
//!
//! Every variant says who is at fault and what was wrong; messages never
//! contain payloads or personal data (only ids, agency names, sizes and
//! reasons). `reason()` is the stable machine-readable code written to the
//! audit log for rejections, used as the metrics label, and sent to the
//! client as a `google.rpc.ErrorInfo` in the status details (domain
//! [`referral_proto::ERROR_DOMAIN`]), so that clients never parse English.

use referral_proto::ids::{AgencyId, KeyId, MessageId};
use referral_proto::time::Timestamp;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt as _};

use crate::store::StoreError;

#[derive(Debug, Clone, thiserror::Error)]
pub enum BrokerError {
    // --- the caller's identity ---
    #[error("client certificate required")]
    NoClientCertificate,
    #[error("client certificate has no valid SPIFFE identity: {0}")]
    BadIdentity(String),
    #[error("client certificate belongs to trust domain {found}, not {expected}")]
    ForeignTrustDomain { found: String, expected: String },
    #[error("client certificate has been revoked")]
    Revoked,
    #[error("client certificate has expired")]
    CertificateExpired,

    // --- what the caller may do ---
    #[error("role {role} may not call {rpc}")]
    RoleNotAllowed { role: &'static str, rpc: &'static str },
    #[error("principal of agency {principal_agency} may not send as agency {sender}")]
    SenderMismatch { principal_agency: AgencyId, sender: AgencyId },
    #[error("agency {agency} is not in the directory, so it may not {action}")]
    AgencyNotInDirectory { agency: AgencyId, action: &'static str },
    #[error("policy does not allow {sender} ({sender_kind}) to send to {recipient} ({recipient_kind})")]
    PolicyForbids { sender: AgencyId, sender_kind: &'static str, recipient: AgencyId, recipient_kind: &'static str },
    #[error("message {message_id} is addressed to another agency; {agency} may not acknowledge it")]
    AckForOtherAgency { message_id: MessageId, agency: AgencyId },
    #[error("ack is signed for agency {acker}, but the caller is of agency {principal_agency}")]
    AckerMismatch { acker: AgencyId, principal_agency: AgencyId },

    // --- what the caller sent ---
    #[error("request lacks {0}")]
    Missing(&'static str),
    #[error("envelope is {size} bytes; the limit is {max}")]
    Oversize { size: usize, max: usize },
    #[error("malformed envelope: {0}")]
    MalformedEnvelope(String),
    #[error("recipient agency {0} is not in the directory")]
    UnknownRecipient(AgencyId),
    #[error("envelope rejected: {0}")]
    EnvelopeSignature(String),
    #[error(
        "{what} is {skew_s} s away from the broker's clock (allowed: {max_future_s} s ahead, {max_past_s} s behind)"
    )]
    ClockSkew { what: &'static str, skew_s: i64, max_future_s: i64, max_past_s: i64 },
    #[error("the {what} key {key_id} is not valid at the broker's receive time {at}")]
    KeyNotValid { what: &'static str, key_id: KeyId, at: Timestamp },
    #[error("message id {0} was already accepted with a different envelope digest")]
    DuplicateConflict(MessageId),
    #[error("malformed ack: {0}")]
    MalformedAck(String),
    #[error("ack note ciphertext is {size} bytes; at most {max} are allowed")]
    NoteTooLarge { size: usize, max: usize },
    #[error("ack rejected: {0}")]
    AckSignature(String),
    #[error("ack is for envelope digest {acked}, but message {message_id} has digest {stored}")]
    AckDigestMismatch { message_id: MessageId, acked: String, stored: String },
    #[error(
        "ack of message {message_id} is signed at {acknowledged_at}, before the broker accepted the message at {accepted_at}"
    )]
    AckBeforeSubmission { message_id: MessageId, acknowledged_at: Timestamp, accepted_at: Timestamp },
    #[error("message {0} is not known to the broker")]
    UnknownMessage(MessageId),
    #[error("message {0} expired unacknowledged and can no longer be acknowledged")]
    AckAfterExpiry(MessageId),
    #[error("invalid request: {0}")]
    InvalidRequest(String),

    // --- the blind overlap check ---
    #[error("malformed overlap request: {0}")]
    MalformedOverlap(String),
    #[error("overlap request rejected: {0}")]
    OverlapSignature(String),
    #[error("overlap session {0} is not known to the broker")]
    UnknownOverlap(MessageId),
    #[error("overlap session {0} already exists with another proposal")]
    OverlapExists(MessageId),
    #[error("agency {agency} takes no part in overlap session {session}")]
    OverlapNotParty { session: MessageId, agency: AgencyId },
    #[error("overlap session {0} has not been accepted by both sides; nothing blinded is relayed before that")]
    OverlapNotAccepted(MessageId),
    #[error(
        "overlap session {session} expired at {at}: it was not finished within the broker's session timeout, and its sealed chunks are deleted; start a new session"
    )]
    OverlapExpired { session: MessageId, at: referral_proto::time::Timestamp },
    #[error("overlap session {session}: {what}")]
    OverlapOutOfOrder { session: MessageId, what: String },
    #[error("overlap session {session}: {what}")]
    OverlapChunkMismatch { session: MessageId, what: String },
    #[error(
        "{a} and {b} have started {limit} overlap sessions today (UTC), the broker's daily limit for a pair; try again tomorrow"
    )]
    OverlapDailyLimit { a: AgencyId, b: AgencyId, limit: u32 },
    #[error("an overlap set of {size} (padded) elements is over the broker's cap of {max}")]
    OverlapSetTooLarge { size: u32, max: u32 },
    #[error("{0}")]
    OutOfRange(String),

    // --- limits ---
    #[error("rate limit: at most {per_second}/s submits with bursts of {burst} per principal; retry later")]
    RateLimited { per_second: u32, burst: u32 },
    #[error("too many concurrent {what} for this principal (limit {limit})")]
    TooManyConcurrent { what: &'static str, limit: usize },
    #[error(
        "more than {window} envelopes sent on this SubmitStream without a result; wait for results before sending more"
    )]
    SubmitWindowExceeded { window: u32 },
    #[error("subscriber did not read for {0} s; disconnected, reconnect to resume")]
    SubscriberStalled(u64),
    #[error("subscriber fell behind the live event stream; reconnect to resume")]
    SubscriberLagged,

    // --- the broker itself ---
    // A failed commit may still be on disk after the store is reopened
    // (Store::recover: wholly there or wholly absent), so neither text
    // says "not done": the retry with the same message id finds out.
    #[error(
        "broker storage is full; whether this request was stored is not known: retry later with the same message id, which is answered as the first time if it was"
    )]
    StorageFull,
    #[error(
        "broker storage failed; whether this request was stored is not known: retry later with the same message id, which is answered as the first time if it was"
    )]
    StorageFailed,
    #[error("broker storage is corrupt")]
    StorageCorrupt,
    #[error("broker is shutting down; retry against the restarted broker")]
    ShuttingDown,
    #[error(
        "the broker's directory (version {version}) went stale at {valid_until}; nothing can be verified until the federation publishes a fresh one, retry later"
    )]
    DirectoryStale { version: u64, valid_until: referral_proto::time::Timestamp },
}

impl From<StoreError> for BrokerError {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %e, "storage error");
        match e {
            StoreError::NoSpace => BrokerError::StorageFull,
            StoreError::Io(_) => BrokerError::StorageFailed,
            StoreError::Corrupt(_) | StoreError::Refused { .. } => BrokerError::StorageCorrupt,
        }
    }
}

impl BrokerError {
    /// The gRPC code for this error. The single mapping; see PROTOCOL.md, "Errors".
    pub fn code(&self) -> Code {
        use BrokerError as E;
        match self {
            E::NoClientCertificate
            | E::BadIdentity(_)
            | E::ForeignTrustDomain { .. }
            | E::Revoked
            | E::CertificateExpired => Code::Unauthenticated,
            E::RoleNotAllowed { .. }
            | E::SenderMismatch { .. }
            | E::AgencyNotInDirectory { .. }
            | E::PolicyForbids { .. }
            | E::AckForOtherAgency { .. }
            | E::AckerMismatch { .. }
            | E::OverlapNotParty { .. } => Code::PermissionDenied,
            E::Missing(_)
            | E::MalformedEnvelope(_)
            | E::EnvelopeSignature(_)
            | E::ClockSkew { .. }
            | E::KeyNotValid { .. }
            | E::AckBeforeSubmission { .. }
            | E::MalformedAck(_)
            | E::NoteTooLarge { .. }
            | E::AckSignature(_)
            | E::AckDigestMismatch { .. }
            | E::InvalidRequest(_)
            | E::MalformedOverlap(_)
            | E::OverlapSignature(_)
            | E::OverlapChunkMismatch { .. } => Code::InvalidArgument,
            E::OutOfRange(_) => Code::OutOfRange,
            E::UnknownRecipient(_) | E::UnknownMessage(_) | E::UnknownOverlap(_) => Code::NotFound,
            E::DuplicateConflict(_) | E::OverlapExists(_) => Code::AlreadyExists,
            E::AckAfterExpiry(_)
            | E::OverlapNotAccepted(_)
            | E::OverlapExpired { .. }
            | E::OverlapOutOfOrder { .. } => Code::FailedPrecondition,
            E::Oversize { .. }
            | E::RateLimited { .. }
            | E::TooManyConcurrent { .. }
            | E::SubmitWindowExceeded { .. }
            | E::SubscriberStalled(_)
            | E::OverlapDailyLimit { .. }
            | E::OverlapSetTooLarge { .. }
            | E::StorageFull => Code::ResourceExhausted,
            E::SubscriberLagged => Code::Aborted,
            E::StorageFailed | E::ShuttingDown | E::DirectoryStale { .. } => Code::Unavailable,
            E::StorageCorrupt => Code::Internal,
        }
    }

    /// Stable reason code for audit entries and metrics.
    pub fn reason(&self) -> &'static str {
        use BrokerError as E;
        match self {
            E::NoClientCertificate => "no_client_certificate",
            E::BadIdentity(_) => "bad_identity",
            E::ForeignTrustDomain { .. } => "foreign_trust_domain",
            E::Revoked => "revoked",
            E::CertificateExpired => "certificate_expired",
            E::RoleNotAllowed { .. } => "role_not_allowed",
            E::SenderMismatch { .. } => "sender_mismatch",
            E::AgencyNotInDirectory { .. } => "agency_not_in_directory",
            E::PolicyForbids { .. } => "policy",
            E::AckForOtherAgency { .. } => "ack_other_agency",
            E::AckerMismatch { .. } => "acker_mismatch",
            E::Missing(_) => "missing_field",
            E::Oversize { .. } => "oversize",
            E::MalformedEnvelope(_) => "malformed_envelope",
            E::UnknownRecipient(_) => "unknown_recipient",
            E::EnvelopeSignature(_) => "bad_signature",
            E::ClockSkew { .. } => "clock_skew",
            E::KeyNotValid { .. } => "key_not_valid",
            E::AckBeforeSubmission { .. } => "ack_before_submission",
            E::DuplicateConflict(_) => "duplicate_conflict",
            E::MalformedAck(_) => "malformed_ack",
            E::NoteTooLarge { .. } => "note_too_large",
            E::AckSignature(_) => "ack_bad_signature",
            E::AckDigestMismatch { .. } => "ack_digest_mismatch",
            E::UnknownMessage(_) => "unknown_message",
            E::AckAfterExpiry(_) => "ack_after_expiry",
            E::InvalidRequest(_) => "invalid_request",
            E::MalformedOverlap(_) => "malformed_overlap",
            E::OverlapSignature(_) => "overlap_bad_signature",
            E::UnknownOverlap(_) => "unknown_overlap",
            E::OverlapExists(_) => "overlap_exists",
            E::OverlapNotParty { .. } => "overlap_not_party",
            E::OverlapNotAccepted(_) => "overlap_not_accepted",
            E::OverlapExpired { .. } => "overlap_expired",
            E::OverlapOutOfOrder { .. } => "overlap_out_of_order",
            E::OverlapChunkMismatch { .. } => "overlap_chunk_mismatch",
            E::OverlapDailyLimit { .. } => "overlap_daily_limit",
            E::OverlapSetTooLarge { .. } => "overlap_set_too_large",
            E::OutOfRange(_) => "out_of_range",
            E::RateLimited { .. } => "rate_limited",
            E::TooManyConcurrent { .. } => "too_many_concurrent",
            E::SubmitWindowExceeded { .. } => "submit_window_exceeded",
            E::SubscriberStalled(_) => "subscriber_stalled",
            E::SubscriberLagged => "subscriber_lagged",
            E::StorageFull => "storage_full",
            E::StorageFailed => "storage_failed",
            E::StorageCorrupt => "storage_corrupt",
            E::ShuttingDown => "shutting_down",
            E::DirectoryStale { .. } => "directory_stale",
        }
    }
}

impl From<BrokerError> for Status {
    fn from(e: BrokerError) -> Status {
        let details = ErrorDetails::with_error_info(e.reason(), referral_proto::ERROR_DOMAIN, []);
        Status::with_error_details(e.code(), e.to_string(), details)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_message_names_the_problem() {
        let e = BrokerError::Oversize { size: 70_000, max: 65_536 };
        let s = Status::from(e);
        assert_eq!(s.code(), Code::ResourceExhausted);
        assert_eq!(s.message(), "envelope is 70000 bytes; the limit is 65536");
        assert_eq!(Status::from(BrokerError::StorageFull).code(), Code::ResourceExhausted);
        assert_eq!(Status::from(BrokerError::Revoked).code(), Code::Unauthenticated);
    }

    #[test]
    fn every_status_carries_its_reason_as_error_info() {
        let s = Status::from(BrokerError::RateLimited { per_second: 1, burst: 5 });
        let info = s.get_details_error_info().expect("ErrorInfo in the details");
        assert_eq!(info.reason, "rate_limited");
        assert_eq!(info.domain, referral_proto::ERROR_DOMAIN);
        assert!(info.metadata.is_empty());
    }
}
