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

/// Reads one of this tool's TOML files (profile, federation state, public
/// key, issued note). Errors give the line and column, or the setting and
/// what it must be, never the value found or the line it is on: a key or a
/// personal identity number pasted into the wrong place stays off the
/// screen and out of logs, as for the broker's configuration.
pub(crate) fn from_toml<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, String> {
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| referral_proto::text::toml_syntax_problem(text, e.span(), e.message()))?;
    serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
        format!("{}: {}", e.path(), referral_proto::text::serde_problem_without_value(e.inner().message()))
    })
}

/// The current wall-clock time.
pub fn now() -> referral_proto::time::Timestamp {
    let ms =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0);
    referral_proto::time::Timestamp(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    struct File {
        #[allow(dead_code)]
        principal: String,
        #[allow(dead_code)]
        port: u16,
    }

    /// A value in the wrong place is named by its setting and position,
    /// never shown: not in a syntax error, not in a type error.
    #[test]
    fn toml_errors_never_quote_the_value() {
        let secret = "19850312-2387";
        let e = from_toml::<File>(&format!("principal = \"x\"\nport = {secret}\n")).unwrap_err();
        assert!(e.starts_with("TOML syntax error at line 2, column "), "{e}");
        assert!(!e.contains("2387"), "{e}");
        let e = from_toml::<File>(&format!("principal = \"x\"\nport = \"{secret}\"\n")).unwrap_err();
        assert_eq!(e, "port: wrong type: expected u16, found a string (not shown)");
        let e = from_toml::<File>("principal = \"x\"\n").unwrap_err();
        assert!(e.ends_with("missing field `port`"), "{e}");
    }
}
