//! What can go wrong on the client side, each naming the problem.

use std::path::PathBuf;

use referral_proto::ids::{AgencyId, MessageId};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Profile(#[from] certs::profile::ProfileError),
    #[error("cannot reach the broker at {broker}: {message}")]
    Connect { broker: String, message: String },
    /// A TLS handshake refused a certificate: which one, and why as far as
    /// TLS tells (see [`certificate_refusal`]).
    #[error(transparent)]
    CertificateRefused(#[from] CertificateRefusal),
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
    /// A status that is really a refused TLS handshake (the gRPC layer
    /// reports it as "transport error") becomes [`ClientError::CertificateRefused`].
    fn from(s: tonic::Status) -> Self {
        match certificate_refusal(&s) {
            Some(r) => ClientError::CertificateRefused(r),
            None => ClientError::Rpc(s),
        }
    }
}

/// Whose certificate a TLS handshake refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The broker refused this profile's certificate (it sent an alert).
    Ours,
    /// This client refused the broker's certificate.
    Brokers,
}

/// A certificate refused in the TLS handshake, with the cause TLS gives:
/// for our certificate, the alert the broker sent (`certificate_revoked`,
/// `certificate_expired`, `unknown_ca`, `bad_certificate`); for the
/// broker's, what our own check found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.message())]
pub struct CertificateRefusal {
    pub whose: Refused,
    /// Stable, for scripts (`--json`'s `reason`): `certificate_revoked`,
    /// `certificate_expired`, `unknown_ca`, `bad_certificate`,
    /// `certificate_refused`; for the broker's certificate the same with a
    /// `broker_` prefix, and `broker_certificate_wrong_name`.
    pub reason: &'static str,
    /// What the reason means, for people.
    pub cause: String,
}

impl CertificateRefusal {
    fn message(&self) -> String {
        match self.whose {
            Refused::Ours => format!(
                "your certificate was refused by the broker: {}; ask the federation operator for a new certificate",
                self.cause
            ),
            Refused::Brokers => format!(
                "the broker's certificate was refused: {}; check the profile's broker address, server_name and ca.pem",
                self.cause
            ),
        }
    }
}

/// The certificate refusal somewhere in `e`'s chain of causes: a rustls
/// error (directly, or inside the I/O error hyper and tonic wrap it in).
pub fn certificate_refusal(e: &(dyn std::error::Error + 'static)) -> Option<CertificateRefusal> {
    let mut cur = Some(e);
    while let Some(c) = cur {
        if let Some(r) = c.downcast_ref::<rustls::Error>() {
            return of_rustls(r);
        }
        // io::Error's `source` skips the error it wraps: look inside.
        if let Some(r) = c.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref())
            && let Some(r) = r.downcast_ref::<rustls::Error>()
        {
            return of_rustls(r);
        }
        // tokio-rustls hands hyper a received alert as text only
        // ("received fatal alert: CertificateRevoked").
        if let Some(name) = c.to_string().strip_prefix("received fatal alert: ") {
            let alert = ALERTS.iter().find(|a| format!("{a:?}") == name.trim());
            if let Some(r) = alert.and_then(|a| of_rustls(&rustls::Error::AlertReceived(*a))) {
                return Some(r);
            }
        }
        cur = c.source();
    }
    None
}

/// The alerts that refuse a certificate (the ones [`of_rustls`] names).
const ALERTS: [rustls::AlertDescription; 9] = {
    use rustls::AlertDescription as A;
    [
        A::CertificateRevoked,
        A::CertificateExpired,
        A::UnknownCA,
        A::BadCertificate,
        A::DecryptError,
        A::UnsupportedCertificate,
        A::CertificateUnknown,
        A::CertificateRequired,
        A::AccessDenied,
    ]
};

fn of_rustls(e: &rustls::Error) -> Option<CertificateRefusal> {
    use rustls::AlertDescription as A;
    use rustls::CertificateError as C;
    let ours = |reason, cause: &str| Some(CertificateRefusal { whose: Refused::Ours, reason, cause: cause.into() });
    let theirs = |reason, cause: String| Some(CertificateRefusal { whose: Refused::Brokers, reason, cause });
    match e {
        rustls::Error::AlertReceived(alert) => match alert {
            A::CertificateRevoked => ours("certificate_revoked", "revoked"),
            A::CertificateExpired => ours("certificate_expired", "expired, or not valid yet (TLS does not tell which)"),
            A::UnknownCA => ours("unknown_ca", "not issued by the federation's CA"),
            A::BadCertificate => ours("bad_certificate", "not acceptable (bad certificate)"),
            // A certificate whose issuer has the federation CA's name but
            // whose signature does not verify (another CA of the same name).
            A::DecryptError => ours("bad_certificate", "its signature does not verify against the federation's CA"),
            A::UnsupportedCertificate | A::CertificateUnknown | A::CertificateRequired | A::AccessDenied => {
                ours("certificate_refused", &format!("refused ({alert:?})"))
            }
            _ => None,
        },
        rustls::Error::InvalidCertificate(c) => match c {
            C::Revoked => theirs("broker_certificate_revoked", "revoked".into()),
            C::Expired | C::ExpiredContext { .. } => theirs("broker_certificate_expired", "expired".into()),
            C::NotValidYet | C::NotValidYetContext { .. } => {
                theirs("broker_certificate_expired", "not valid yet".into())
            }
            // BadSignature: issued by another CA with the same name.
            C::UnknownIssuer | C::BadSignature => {
                theirs("broker_unknown_ca", "not issued by the CA in the profile's ca.pem".into())
            }
            C::NotValidForName | C::NotValidForNameContext { .. } => {
                theirs("broker_certificate_wrong_name", "not issued for the profile's server_name".into())
            }
            other => theirs("broker_bad_certificate", format!("not acceptable ({other})")),
        },
        _ => None,
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
