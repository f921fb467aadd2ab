//! Certificates for keys the federation never sees: the agency makes its
//! principal's TLS key and a certificate request (`certs request`), the
//! federation issues a certificate for the request's key (`certs issue
//! --csr`) into a folder of public material only, and the agency assembles
//! its profile from both (`certs profile`).
//!
//! What crosses between them: the request (public key, SPIFFE id, signed
//! with the private key), and back the certificate, the federation CA
//! certificate, the directory verification key and the broker's address.

use std::path::{Path, PathBuf};

use referral_proto::ids::Principal;
use referral_proto::keys::VerifyingKey;
use serde::{Deserialize, Serialize};

use crate::federation::{FederationError, read_federation_key};
use crate::profile::{self, CA, CERT, FEDERATION_PUB, NewProfile};
use crate::{durable_file, pki, secret_file};

/// The private key in a request folder (mode 0600; it stays there).
pub const KEY: &str = "key.pem";
/// The certificate request in a request folder: what the agency sends.
pub const CSR: &str = "request.csr";
/// What the federation says about an issued certificate, beside it.
pub const ISSUED: &str = "issued.toml";

#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("{0}: a request is already there; use --force to replace it")]
    Exists(PathBuf),
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error(transparent)]
    Federation(#[from] FederationError),
    #[error(transparent)]
    Pki(#[from] pki::PkiError),
    #[error(transparent)]
    Secret(#[from] secret_file::SecretFileError),
    #[error(transparent)]
    Profile(#[from] profile::ProfileError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RequestError + '_ {
    move |source| RequestError::Io { path: path.to_owned(), source }
}

fn read(path: &Path) -> Result<String, RequestError> {
    std::fs::read_to_string(path).map_err(io(path))
}

/// Writes a fresh key (0600) and a certificate request for `principal` into `out`.
pub fn make(out: &Path, principal: &Principal, force: bool) -> Result<(), RequestError> {
    if out.join(CSR).exists() && !force {
        return Err(RequestError::Exists(out.to_owned()));
    }
    let request = pki::request(principal)?;
    durable_file::create_dir_all_mode(out, 0o700).map_err(io(out))?;
    secret_file::write(&out.join(KEY), request.key_pem.as_bytes(), force)?;
    durable_file::write(out.join(CSR), &request.csr_pem).map_err(io(&out.join(CSR)))?;
    Ok(())
}

/// The federation's note beside an issued certificate.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Issued {
    pub principal: String,
    /// https://host:port of the broker.
    pub broker: String,
    /// DNS name in the broker's certificate.
    pub server_name: String,
    /// The federation's newest published directory version (see [`NewProfile`]).
    pub min_directory_version: u64,
}

/// Writes the folder the federation hands back: the certificate, the CA
/// certificate, the directory verification key and [`ISSUED`]. No private key.
pub fn write_issued(
    out: &Path,
    issued: &Issued,
    cert_pem: &str,
    ca_pem: &str,
    federation_key: &VerifyingKey,
    force: bool,
) -> Result<(), RequestError> {
    if out.join(ISSUED).exists() && !force {
        return Err(RequestError::Invalid {
            path: out.to_owned(),
            message: "an issued certificate is already there; use --force to replace it".into(),
        });
    }
    durable_file::create_dir_all(out).map_err(io(out))?;
    let note = toml::to_string_pretty(issued)
        .map_err(|e| RequestError::Invalid { path: out.join(ISSUED), message: e.to_string() })?;
    for (name, text) in [
        (CERT, cert_pem.to_owned()),
        (CA, ca_pem.to_owned()),
        (FEDERATION_PUB, format!("{}\n", federation_key.to_hex())),
        (ISSUED, note),
    ] {
        durable_file::write(out.join(name), text).map_err(io(&out.join(name)))?;
    }
    Ok(())
}

/// Assembles a profile in `out` from a request folder and an issued folder,
/// after checking that the certificate names the principal of the note and
/// is for the request's key. Returns the principal.
pub fn assemble_profile(
    request: &Path,
    issued: &Path,
    out: &Path,
    agency_keys: &[PathBuf],
    force: bool,
) -> Result<Principal, RequestError> {
    let note_path = issued.join(ISSUED);
    let note: Issued = crate::from_toml(&read(&note_path)?)
        .map_err(|message| RequestError::Invalid { path: note_path.clone(), message })?;
    let principal = Principal::parse_uri(&note.principal)
        .map_err(|e| RequestError::Invalid { path: note_path.clone(), message: e.to_string() })?;
    let cert_path = issued.join(CERT);
    let cert_pem = read(&cert_path)?;
    let info = pki::cert_info(&cert_pem)?;
    if info.uris != [principal.uri()] {
        return Err(RequestError::Invalid {
            path: cert_path,
            message: format!("the certificate names {:?}, not {}", info.uris, principal.uri()),
        });
    }
    let key_path = request.join(KEY);
    let key_pem = secret_file::read(&key_path)?;
    if !pki::key_matches_cert(&key_pem, &cert_pem)? {
        return Err(RequestError::Invalid {
            path: cert_path,
            message: format!(
                "the certificate is not for the key in {}; was it issued for another request?",
                key_path.display()
            ),
        });
    }
    let ca_pem = read(&issued.join(CA))?;
    let federation_key = read_federation_key(&issued.join(FEDERATION_PUB))?;
    let cert = pki::Issued { cert_pem, key_pem, serial: info.serial };
    profile::write(
        out,
        &NewProfile {
            principal: &principal,
            broker: &note.broker,
            server_name: &note.server_name,
            issued: &cert,
            ca_pem: &ca_pem,
            federation_key: &federation_key,
            bundle_files: agency_keys,
            min_directory_version: note.min_directory_version,
        },
        force,
    )?;
    Ok(principal)
}
