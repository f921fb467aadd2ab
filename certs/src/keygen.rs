//! Agency-side key generation: a new key bundle, written as a secret key file
//! (0600) beside a `.pub` file for the federation to register.

use std::path::{Path, PathBuf};

use referral_proto::ids::AgencyId;
use referral_proto::keys::AgencyKeyBundle;
use referral_proto::time::Timestamp;

use crate::federation::{FederationError, PublicKeyRecord};
use crate::secret_file;
use crate::{read_text, write_text_atomic};

/// Where [`generate`] put the two halves.
#[derive(Debug)]
pub struct KeyFiles {
    pub secret: PathBuf,
    pub public: PathBuf,
}

/// The `.pub` path beside a key file.
pub fn public_path(secret: &Path) -> PathBuf {
    let mut p = secret.as_os_str().to_owned();
    p.push(".pub");
    PathBuf::from(p)
}

/// Generates a bundle valid over `[not_before, not_after)` and writes it.
pub fn generate(
    agency: &AgencyId,
    out: &Path,
    not_before: Timestamp,
    not_after: Timestamp,
    overwrite: bool,
) -> Result<(AgencyKeyBundle, KeyFiles), FederationError> {
    let bundle = AgencyKeyBundle::generate(agency.clone(), not_before, not_after);
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        crate::durable_file::create_dir_all(parent)
            .map_err(|source| FederationError::Io { path: parent.to_owned(), source })?;
    }
    secret_file::write(out, bundle.to_key_file().as_bytes(), overwrite)?;
    let public = public_path(out);
    let record = PublicKeyRecord::from_key(agency, bundle.public());
    let text = toml::to_string_pretty(&record).map_err(|e| FederationError::Invalid(e.to_string()))?;
    write_text_atomic(
        &public,
        &format!("# Public half of an agency key bundle; give this to the federation.\n{text}"),
    )?;
    Ok((bundle, KeyFiles { secret: out.to_owned(), public }))
}

/// Reads a `.pub` file.
pub fn read_public(path: &Path) -> Result<PublicKeyRecord, FederationError> {
    let text = read_text(path)?;
    let record: PublicKeyRecord =
        crate::from_toml(&text).map_err(|message| FederationError::PublicKeyFile { path: path.to_owned(), message })?;
    record.to_key().map_err(|message| FederationError::PublicKeyFile { path: path.to_owned(), message })?;
    Ok(record)
}

/// Reads a secret key bundle file (refusing loose permissions).
pub fn read_bundle(path: &Path) -> Result<AgencyKeyBundle, FederationError> {
    let text = secret_file::read(path)?;
    AgencyKeyBundle::from_key_file(&text).map_err(|source| FederationError::KeyFile { path: path.to_owned(), source })
}
