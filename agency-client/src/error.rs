//! What can go wrong on the client side, each naming the problem.

use std::path::PathBuf;

use referral_proto::ids::{AgencyId, MessageId};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Profile(#[from] certs::profile::ProfileError),
    #[error("cannot reach the broker at {broker}: {message}")]
    Connect { broker: String, message: String },
    #[error("the broker refused: {}", refusal(.0))]
    Rpc(tonic::Status),
    #[error("the broker's directory is not acceptable: {0}")]
    Directory(#[from] referral_proto::directory::DirectoryError),
    /// With the ids the directory does list, so that a typo is fixed without
    /// another command.
    #[error("agency {agency} is not in the directory; {}", listed(.known))]
    UnknownAgency { agency: AgencyId, known: Vec<AgencyId> },
    #[error("this profile holds no agency key bundle valid now (role {0})")]
    NoValidKey(String),
    #[error(transparent)]
    Seal(#[from] referral_proto::seal::SealError),
    #[error("the broker's receipt does not check out: {0}")]
    Receipt(#[from] referral_proto::receipt::ReceiptError),
    /// A receipt or answer that does not prove what it claims.
    #[error(transparent)]
    Untrusted(#[from] crate::trust::ReceiptMismatch),
    #[error("the broker answered without a {0}")]
    Incomplete(&'static str),
    #[error("message {0} is not waiting for this agency (unknown, or addressed elsewhere)")]
    NotWaiting(MessageId),
    #[error("message {message_id} expired unacknowledged at {at} and can no longer be acknowledged")]
    Expired { message_id: MessageId, at: referral_proto::time::Timestamp },
    #[error("message {message_id} cannot be opened: {source}")]
    Open {
        message_id: MessageId,
        #[source]
        source: referral_proto::seal::OpenError,
    },
    #[error(transparent)]
    Ack(#[from] referral_proto::ack::AckError),
    #[error("the broker proved entry #{index} ({entry}), not the submission of {message_id}")]
    ProofForAnotherEntry { message_id: MessageId, index: u64, entry: String },
    #[error("{path}: {message}")]
    State { path: PathBuf, message: String },
    #[error("{0}")]
    Invalid(String),
    /// A blind overlap session that cannot go on; never names a subject.
    #[error("overlap session {session}: {message}")]
    Overlap { session: MessageId, message: String },
}

/// Agencies named in an error at most; a national directory has hundreds.
const LISTED: usize = 20;

/// `it lists a, b and c`, or the first [`LISTED`] and how many more.
fn listed(known: &[AgencyId]) -> String {
    let names: Vec<&str> = known.iter().take(LISTED).map(AgencyId::as_str).collect();
    match known.len() {
        0 => "it lists none".into(),
        n if n > LISTED => {
            format!("it lists {}, and {} more (`agency-client directory` shows them all)", names.join(", "), n - LISTED)
        }
        _ => format!("it lists {}", names.join(", ")),
    }
}

/// `CODE (reason): message`, the reason when the broker sent one.
fn refusal(s: &tonic::Status) -> String {
    match reason(s) {
        Some(r) => format!("{} ({r}): {}", code_name(s.code()), s.message()),
        None => format!("{}: {}", code_name(s.code()), s.message()),
    }
}

/// The gRPC code as its canonical name (`PERMISSION_DENIED`).
pub fn code_name(c: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match c {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

impl From<tonic::Status> for ClientError {
    fn from(s: tonic::Status) -> Self {
        ClientError::Rpc(s)
    }
}

impl ClientError {
    /// The gRPC status, when the broker answered with one.
    pub fn status(&self) -> Option<&tonic::Status> {
        match self {
            ClientError::Rpc(s) => Some(s),
            _ => None,
        }
    }

    /// The broker's stable reason code for a refusal (see [`reason`]).
    pub fn reason(&self) -> Option<String> {
        self.status().and_then(reason)
    }
}

/// The stable reason code of a broker refusal (PROTOCOL.md's error table,
/// e.g. `rate_limited`), read from the `google.rpc.ErrorInfo` in the
/// status details; None when the status carries none of the broker's
/// domain (a status made by the gRPC layer or a proxy, not the broker).
pub fn reason(status: &tonic::Status) -> Option<String> {
    use tonic_types::StatusExt as _;
    status.get_details_error_info().filter(|i| i.domain == referral_proto::ERROR_DOMAIN).map(|i| i.reason)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_agency_lists_the_known_ones_up_to_twenty() {
        let id = |i: usize| AgencyId::new(format!("kommun-{i:02}")).unwrap();
        let few = ClientError::UnknownAgency { agency: id(99), known: (0..2).map(id).collect() };
        assert_eq!(few.to_string(), "agency kommun-99 is not in the directory; it lists kommun-00, kommun-01");
        let many = ClientError::UnknownAgency { agency: id(99), known: (0..25).map(id).collect() };
        assert!(
            many.to_string().ends_with("kommun-19, and 5 more (`agency-client directory` shows them all)"),
            "{many}"
        );
    }
}
