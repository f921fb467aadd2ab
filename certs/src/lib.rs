//! The federation's PKI tool as a library: everything `certs` does, callable
//! from tests, the broker's `dev` command and the demo.
//!
//! # Layout
//! - [`cli`]: the `certs` command line.
//! - [`pki`]: X.509 with rcgen: the CA, leaf certificates with SPIFFE URI SANs, CRLs.
//! - [`federation`]: a federation folder: registry, CA, directory key, CRL, signed directory.
//! - [`keygen`]: agency-side generation of end-to-end key bundles (the federation
//!   only ever sees the public half).
//! - [`broker_creds`]: the broker's server certificate and log key.
//! - [`profile`]: the client profile folder, written here and read by `agency-client`.
//! - [`dev`]: a complete development federation in one step.
//! - [`secret_file`]: 0600 files for secrets.
//! - [`tool_docs`]: shell completions and man pages, the same way for the three tools.
//! - [`durable_file`]: crash-safe file writing, used for every file written here,
//!   by the broker and by `agency-client`.
//!
//! Architecture invariant: generated material is written only where the caller
//! says; nothing here is ever checked in (the repository's `.gitignore`
//! excludes `*.key` and the default dev folder).

pub mod broker_creds;
pub mod cli;
pub mod dev;
pub mod durable_file;
pub mod federation;
pub mod keygen;
pub mod pki;
pub mod profile;
pub mod request;
pub mod secret_file;
pub mod tool_docs;

use std::path::Path;

use federation::FederationError;

pub(crate) const DAY_MS: i64 = 86_400_000;

/// Reads a public text file, naming it in the error.
pub(crate) fn read_text(path: &Path) -> Result<String, FederationError> {
    std::fs::read_to_string(path).map_err(|source| FederationError::Io { path: path.to_owned(), source })
}

/// Writes a public text file crash-safely (see [`durable_file`]).
pub(crate) fn write_text_atomic(path: &Path, text: &str) -> Result<(), FederationError> {
    durable_file::write(path, text).map_err(|source| FederationError::Io { path: path.to_owned(), source })
}

/// The current wall-clock time.
pub fn now() -> referral_proto::time::Timestamp {
    let ms =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0);
    referral_proto::time::Timestamp(ms)
}
