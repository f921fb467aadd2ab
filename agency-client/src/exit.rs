//! How `agency-client` ends: one exit code per kind of outcome a script
//! must tell apart (try again later, fix the input, fix the setup, ask a
//! person), in the style of BSD's sysexits.h, and with `--json` the error
//! as one JSON object on standard error. OPERATIONS.md has the table.

use std::ffi::OsString;
use std::process::ExitCode;

use clap::Parser as _;
use serde_json::json;

use crate::ClientError;
use crate::cli::{Cli, StdoutClosed};
use crate::display::{json_line, safe_block};

/// What kind of failure ended a command; each has its own exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// 1: anything not classified below (a declined confirmation, a bug).
    Failure,
    /// 2: an audit found that the log or a proof does not check out.
    AuditFailed,
    /// 64 (EX_USAGE): the command line is wrong.
    Usage,
    /// 65 (EX_DATAERR): the input is invalid, or the broker refused the
    /// request for good (INVALID_ARGUMENT, NOT_FOUND, ALREADY_EXISTS,
    /// FAILED_PRECONDITION, an oversize envelope). Resending it unchanged
    /// will not help.
    Data,
    /// 66 (EX_NOINPUT): an input file cannot be read.
    NoInput,
    /// 67 (EX_NOUSER): the recipient agency is not in the directory.
    UnknownAgency,
    /// 69 (EX_UNAVAILABLE): the broker failed in a way a retry will not fix
    /// (INTERNAL, UNKNOWN, DATA_LOSS, UNIMPLEMENTED): ask its operator.
    Unavailable,
    /// 74 (EX_IOERR): the client's own state folder cannot be read or written.
    Io,
    /// 75 (EX_TEMPFAIL): try again later, unchanged: the broker is
    /// unreachable, UNAVAILABLE (storage_failed, shutting_down,
    /// directory_stale), RESOURCE_EXHAUSTED (rate_limited,
    /// too_many_concurrent, storage_full), ABORTED or DEADLINE_EXCEEDED.
    TryAgain,
    /// 76 (EX_PROTOCOL): the broker's answer does not check out (a receipt,
    /// directory or proof that fails verification).
    Protocol,
    /// 77 (EX_NOPERM): not allowed (PERMISSION_DENIED, UNAUTHENTICATED), or
    /// the broker refused this profile's certificate in the TLS handshake
    /// (revoked, expired, not from the federation's CA).
    Permission,
    /// 78 (EX_CONFIG): the profile folder is missing, incomplete, expired
    /// or unsafe (a key others may read), or the broker's certificate does
    /// not check out against it (another CA, another name, expired).
    Config,
}

impl Class {
    pub fn code(self) -> u8 {
        match self {
            Class::Failure => 1,
            Class::AuditFailed => 2,
            Class::Usage => 64,
            Class::Data => 65,
            Class::NoInput => 66,
            Class::UnknownAgency => 67,
            Class::Unavailable => 69,
            Class::Io => 74,
            Class::TryAgain => 75,
            Class::Protocol => 76,
            Class::Permission => 77,
            Class::Config => 78,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Class::Failure => "failure",
            Class::AuditFailed => "audit_failed",
            Class::Usage => "usage",
            Class::Data => "data",
            Class::NoInput => "no_input",
            Class::UnknownAgency => "unknown_agency",
            Class::Unavailable => "unavailable",
            Class::Io => "io",
            Class::TryAgain => "try_again",
            Class::Protocol => "protocol",
            Class::Permission => "permission",
            Class::Config => "config",
        }
    }
}

/// A mistake on the command line that the argument parser cannot see.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// A broker refusal's class, from its gRPC code and stable reason.
pub fn of_status(s: &tonic::Status) -> Class {
    use tonic::Code::*;
    match (s.code(), crate::error::reason(s).as_deref()) {
        (ResourceExhausted, Some("oversize")) => Class::Data,
        (NotFound, Some("unknown_recipient")) => Class::UnknownAgency,
        (Unavailable | ResourceExhausted | Aborted | DeadlineExceeded | Cancelled, _) => Class::TryAgain,
        (InvalidArgument | NotFound | AlreadyExists | FailedPrecondition | OutOfRange, _) => Class::Data,
        (PermissionDenied | Unauthenticated, _) => Class::Permission,
        (Ok | Unknown | Internal | DataLoss | Unimplemented, _) => Class::Unavailable,
    }
}

fn of_client_error(e: &ClientError) -> (Class, Option<String>) {
    use ClientError as E;
    match e {
        E::Rpc(s) => (of_status(s), crate::error::reason(s)),
        E::Connect { .. } => (Class::TryAgain, Some("unreachable".into())),
        E::CertificateRefused(r) => match r.whose {
            crate::error::Refused::Ours => (Class::Permission, Some(r.reason.into())),
            crate::error::Refused::Brokers => (Class::Config, Some(r.reason.into())),
        },
        E::Profile(_) | E::NoValidKey(_) => (Class::Config, None),
        E::UnknownAgency { .. } => (Class::UnknownAgency, None),
        E::Directory(_) | E::Receipt(_) | E::Untrusted(_) | E::Incomplete(_) | E::ProofForAnotherEntry { .. } => {
            (Class::Protocol, None)
        }
        E::NotWaiting(_) => (Class::Data, Some("not_waiting".into())),
        E::Expired { .. } => (Class::Data, Some("expired".into())),
        E::Seal(_) | E::Open { .. } | E::Ack(_) | E::Invalid(_) | E::Overlap { .. } => (Class::Data, None),
        E::State { .. } => (Class::Io, None),
    }
}

/// The class of an error and its stable reason: the broker's when it gave
/// one, else a client-side one (the class's name unless more is known).
/// The outermost cause that is known decides.
pub fn classify(e: &anyhow::Error) -> (Class, String) {
    for cause in e.chain() {
        let found = if cause.is::<UsageError>()
            || cause.is::<referral_proto::ids::IdError>()
            || cause.is::<referral_proto::time::TimeError>()
        {
            Some((Class::Usage, None))
        } else if let Some(c) = cause.downcast_ref::<ClientError>() {
            Some(of_client_error(c))
        } else if let Some(s) = cause.downcast_ref::<tonic::Status>() {
            Some(match crate::error::certificate_refusal(s) {
                Some(r) => of_client_error(&ClientError::CertificateRefused(r)),
                None => (of_status(s), crate::error::reason(s)),
            })
        } else if cause.is::<certs::profile::ProfileError>() {
            Some((Class::Config, None))
        } else if cause.is::<crate::form::FormError>()
            || cause.is::<serde_json::Error>()
            || cause.is::<referral_proto::notice::ValidationErrors>()
        {
            Some((Class::Data, Some("invalid_referral".into())))
        } else if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            Some(match io.kind() {
                NotFound | PermissionDenied | IsADirectory => (Class::NoInput, None),
                _ => (Class::Io, None),
            })
        } else {
            None
        };
        if let Some((class, reason)) = found {
            return (class, reason.unwrap_or_else(|| class.as_str().into()));
        }
    }
    (Class::Failure, Class::Failure.as_str().into())
}

/// Prints a failure the way the output was asked for: `error: …` for
/// people, one JSON object for programs (both on standard error).
fn report(message: &str, class: Class, reason: &str, status: Option<&str>, json: bool) {
    if json {
        eprintln!(
            "{}",
            json_line(&json!({
                "exit_code": class.code(), "class": class.as_str(), "reason": reason, "status": status, "message": message,
            }))
        );
    } else {
        // Errors can quote text from elsewhere (the broker's messages).
        eprintln!("error: {}", safe_block(message, "  "));
    }
}

/// Parses the command line (`args` includes the program name) and runs it.
/// A usage error exits 64; `--help` and `--version` exit 0.
pub fn main_from<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    match Cli::try_parse_from(&args) {
        Ok(cli) => main_with(cli),
        Err(e) => {
            use clap::error::ErrorKind::{DisplayHelp, DisplayVersion};
            if matches!(e.kind(), DisplayHelp | DisplayVersion) {
                let _ = e.print();
                return ExitCode::SUCCESS;
            }
            if args.iter().any(|a| a == "--json") {
                let text = e.render().to_string();
                let first = text.lines().next().unwrap_or_default().trim_start_matches("error: ").to_owned();
                report(&first, Class::Usage, Class::Usage.as_str(), None, true);
            } else {
                let _ = e.print();
            }
            ExitCode::from(Class::Usage.code())
        }
    }
}

/// Runs a parsed command line to completion: installs the one TLS crypto
/// provider (ring), runs it on a fresh runtime, and turns the outcome into
/// the exit code of its class.
pub fn main_with(cli: Cli) -> ExitCode {
    let json = cli.json;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            report(&format!("cannot start the runtime: {e}"), Class::Io, Class::Io.as_str(), None, json);
            return ExitCode::from(Class::Io.code());
        }
    };
    match runtime.block_on(crate::cli::run(cli)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(Class::AuditFailed.code()),
        // The reader of our output went away: nothing is wrong with the work.
        Err(e) if e.is::<StdoutClosed>() => ExitCode::SUCCESS,
        Err(e) => {
            let (class, reason) = classify(&e);
            let status = e.chain().find_map(|c| {
                c.downcast_ref::<ClientError>()
                    .and_then(ClientError::status)
                    .or_else(|| c.downcast_ref::<tonic::Status>())
                    .map(|s| crate::error::code_name(s.code()))
            });
            report(&format!("{e:#}"), class, &reason, status, json);
            ExitCode::from(class.code())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;
    use tonic_types::{ErrorDetails, StatusExt as _};

    fn refusal(code: Code, reason: &str) -> tonic::Status {
        let details = ErrorDetails::with_error_info(reason, referral_proto::ERROR_DOMAIN, []);
        tonic::Status::with_error_details(code, "refused", details)
    }

    /// The broker's refusals (PROTOCOL.md's error table) by class.
    #[test]
    fn every_broker_refusal_has_its_class() {
        let cases = [
            (Code::ResourceExhausted, "rate_limited", 75),
            (Code::ResourceExhausted, "too_many_concurrent", 75),
            (Code::ResourceExhausted, "storage_full", 75),
            (Code::ResourceExhausted, "oversize", 65),
            (Code::Unavailable, "storage_failed", 75),
            (Code::Unavailable, "shutting_down", 75),
            (Code::Unavailable, "directory_stale", 75),
            (Code::Aborted, "subscriber_lagged", 75),
            (Code::InvalidArgument, "bad_signature", 65),
            (Code::InvalidArgument, "clock_skew", 65),
            (Code::AlreadyExists, "duplicate_conflict", 65),
            (Code::NotFound, "unknown_message", 65),
            (Code::NotFound, "unknown_recipient", 67),
            (Code::FailedPrecondition, "ack_after_expiry", 65),
            (Code::PermissionDenied, "role_not_allowed", 77),
            (Code::Unauthenticated, "revoked", 77),
            (Code::Internal, "storage_corrupt", 69),
        ];
        for (code, reason, exit) in cases {
            let e = anyhow::Error::new(ClientError::Rpc(refusal(code, reason)));
            assert_eq!(classify(&e), (class_of(exit), reason.to_owned()), "{reason}");
        }
        // Without the broker's reason (a proxy, the gRPC layer): by code.
        let e = anyhow::Error::new(ClientError::Rpc(tonic::Status::unavailable("connection reset")));
        assert_eq!(classify(&e), (Class::TryAgain, "try_again".to_owned()));
        let e = anyhow::Error::new(tonic::Status::unknown("transport error"));
        assert_eq!(classify(&e).0, Class::Unavailable);
    }

    fn class_of(code: u8) -> Class {
        [Class::TryAgain, Class::Data, Class::UnknownAgency, Class::Permission, Class::Unavailable]
            .into_iter()
            .find(|c| c.code() == code)
            .unwrap()
    }

    #[test]
    fn client_side_failures_have_their_class() {
        let usage = anyhow::Error::new(UsageError("--profile DIR is required".into()));
        assert_eq!(classify(&usage).0, Class::Usage);
        let id: Result<referral_proto::ids::MessageId, _> = "nope".parse();
        assert_eq!(classify(&anyhow::Error::new(id.unwrap_err())).0, Class::Usage);
        let missing = std::io::Error::from(std::io::ErrorKind::NotFound);
        let e = anyhow::Error::new(missing).context("cannot read referral.json");
        assert_eq!(classify(&e), (Class::NoInput, "no_input".to_owned()));
        let e = anyhow::Error::new(ClientError::Connect { broker: "https://x".into(), message: "refused".into() });
        assert_eq!(classify(&e), (Class::TryAgain, "unreachable".to_owned()));
        assert_eq!(classify(&anyhow::anyhow!("something else")).0, Class::Failure);
    }
}
