//! The broker's own credentials: its TLS server certificate and key, and its
//! Ed25519 log key (receipts and tree heads), whose public half the
//! federation publishes in the directory.

use std::net::IpAddr;
use std::path::Path;

use referral_proto::keys::{KeyPurpose, SigningKey, signing_key_file};
use referral_proto::time::Timestamp;

use crate::federation::{Federation, FederationError};
use crate::{DAY_MS, secret_file, write_text_atomic};

pub const SERVER_CERT: &str = "server.pem";
pub const SERVER_KEY: &str = "server.key";
pub const LOG_KEY: &str = "log.key";

/// Writes `server.pem`, `server.key` and `log.key` into `out` and registers
/// the log key with the federation.
pub fn create(
    fed: &mut Federation,
    out: &Path,
    dns_names: Vec<String>,
    ips: Vec<IpAddr>,
    now: Timestamp,
    days: i64,
    overwrite: bool,
) -> Result<(), FederationError> {
    crate::durable_file::create_dir_all(out).map_err(|source| FederationError::Io { path: out.to_owned(), source })?;
    let issued = fed.issue_server(dns_names, ips, now.plus_millis(-60_000), now.plus_millis(days * DAY_MS))?;
    write_text_atomic(&out.join(SERVER_CERT), &issued.cert_pem)?;
    secret_file::write(&out.join(SERVER_KEY), issued.key_pem.as_bytes(), overwrite)?;
    let log_key = SigningKey::generate();
    secret_file::write(&out.join(LOG_KEY), signing_key_file(&log_key, KeyPurpose::BrokerLog).as_bytes(), overwrite)?;
    fed.set_broker_log_key(&log_key.verifying_key())
}

/// Issues a new server certificate and key into `out`, keeping the log key:
/// for renewing the broker's TLS identity without touching its signatures.
pub fn renew_server_cert(
    fed: &mut Federation,
    out: &Path,
    dns_names: Vec<String>,
    ips: Vec<IpAddr>,
    now: Timestamp,
    days: i64,
) -> Result<(), FederationError> {
    let issued = fed.issue_server(dns_names, ips, now.plus_millis(-60_000), now.plus_millis(days * DAY_MS))?;
    // Key first, then certificate: a reload between the two writes fails to
    // match them and keeps the old pair, rather than serving a mismatch.
    secret_file::write(&out.join(SERVER_KEY), issued.key_pem.as_bytes(), true)?;
    write_text_atomic(&out.join(SERVER_CERT), &issued.cert_pem)
}
