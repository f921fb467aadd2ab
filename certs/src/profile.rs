//! A client profile folder: everything one principal needs to talk to the
//! broker, written by `certs` and read by `agency-client --profile DIR`.
//!
//! Layout of `DIR`:
//! - `profile.toml`: the principal's SPIFFE id, the broker address and TLS name
//! - `cert.pem`, `key.pem` (0600): the principal's client certificate and key
//! - `ca.pem`: the federation CA (to check the broker's certificate)
//! - `federation.pub`: the pinned federation directory key
//! - `agency-keys/*.key` (0600): the agency's end-to-end key bundles (system and on-call only)
//! - `state/`: what the client remembers (newest directory version seen, receipt cursor)

use std::path::{Path, PathBuf};

use referral_proto::ids::{Principal, Role};
use referral_proto::keys::{AgencyKeyBundle, VerifyingKey};
use referral_proto::time::Timestamp;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::federation::{FederationError, read_federation_key};
use crate::pki::{Issued, cert_info};
use crate::secret_file::{self, SecretFileError};
use crate::{keygen, read_text, write_text_atomic};

pub const PROFILE_FILE: &str = "profile.toml";
pub const CERT: &str = "cert.pem";
pub const KEY: &str = "key.pem";
pub const CA: &str = "ca.pem";
pub const FEDERATION_PUB: &str = "federation.pub";
pub const AGENCY_KEYS: &str = "agency-keys";
pub const STATE: &str = "state";
/// In `state/`: the newest directory version the client accepted (9.4).
pub const DIRECTORY_VERSION_FILE: &str = "directory-version";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProfileFile {
    principal: String,
    /// `https://host:port` of the broker.
    broker: String,
    /// The DNS name in the broker's certificate.
    server_name: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("{0}: not a profile folder (no profile.toml); make one with 'certs issue' or 'certs dev'")]
    NotAProfile(PathBuf),
    #[error("{0}: a profile already exists here; pass --force to replace it")]
    Exists(PathBuf),
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("{path}: missing; the profile is incomplete")]
    Missing { path: PathBuf },
    #[error("{path}: the certificate expired at {not_after}; ask the federation for a new one")]
    Expired { path: PathBuf, not_after: Timestamp },
    #[error("{path}: the certificate is not valid before {not_before}")]
    NotYetValid { path: PathBuf, not_before: Timestamp },
    #[error("{path}: the certificate is for {found}, but the profile says {expected}")]
    PrincipalMismatch { path: PathBuf, expected: String, found: String },
    #[error("{dir}: a {role} profile needs its agency's key bundle in agency-keys/, and there is none")]
    NoAgencyKeys { dir: PathBuf, role: Role },
    #[error("{path}: the key bundle is for agency {found}, but the profile's agency is {expected}")]
    BundleAgency { path: PathBuf, expected: String, found: String },
    #[error(transparent)]
    Secret(#[from] SecretFileError),
    #[error(transparent)]
    Federation(#[from] FederationError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A loaded, checked profile.
#[derive(Debug)]
pub struct Profile {
    pub dir: PathBuf,
    pub principal: Principal,
    pub broker: String,
    pub server_name: String,
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: Zeroizing<String>,
    pub cert_not_after: Timestamp,
    pub federation_key: VerifyingKey,
    /// Every key bundle of the agency, newest first.
    pub bundles: Vec<AgencyKeyBundle>,
}

/// What a new profile holds.
#[derive(Debug)]
pub struct NewProfile<'a> {
    pub principal: &'a Principal,
    pub broker: &'a str,
    pub server_name: &'a str,
    pub issued: &'a Issued,
    pub ca_pem: &'a str,
    pub federation_key: &'a VerifyingKey,
    /// Key bundle files to copy in (system and on-call roles).
    pub bundle_files: &'a [PathBuf],
    /// The federation's newest published directory version: a new profile
    /// starts out refusing anything older, so a broker cannot hand a fresh
    /// client an old (yet unexpired) directory. 0 for none.
    pub min_directory_version: u64,
}

fn need_bundles(role: Role) -> bool {
    matches!(role, Role::System | Role::Oncall)
}

/// Writes a profile folder.
pub fn write(dir: &Path, p: &NewProfile<'_>, overwrite: bool) -> Result<(), ProfileError> {
    if dir.join(PROFILE_FILE).exists() && !overwrite {
        return Err(ProfileError::Exists(dir.to_owned()));
    }
    if need_bundles(p.principal.role) && p.bundle_files.is_empty() {
        return Err(ProfileError::NoAgencyKeys { dir: dir.to_owned(), role: p.principal.role });
    }
    let keys_dir = dir.join(AGENCY_KEYS);
    crate::durable_file::create_dir_all(&keys_dir)
        .map_err(|source| ProfileError::Io { path: keys_dir.clone(), source })?;
    let file = ProfileFile {
        principal: p.principal.uri(),
        broker: p.broker.to_owned(),
        server_name: p.server_name.to_owned(),
    };
    let text = toml::to_string_pretty(&file)
        .map_err(|e| ProfileError::Invalid { path: dir.join(PROFILE_FILE), message: e.to_string() })?;
    write_text_atomic(&dir.join(PROFILE_FILE), &format!("# agency-client profile\n{text}"))?;
    write_text_atomic(&dir.join(CERT), &p.issued.cert_pem)?;
    secret_file::write(&dir.join(KEY), p.issued.key_pem.as_bytes(), overwrite)?;
    write_text_atomic(&dir.join(CA), p.ca_pem)?;
    write_text_atomic(&dir.join(FEDERATION_PUB), &format!("{}\n", p.federation_key.to_hex()))?;
    if p.min_directory_version > 0 {
        let state = dir.join(STATE);
        std::fs::create_dir_all(&state).map_err(|source| ProfileError::Io { path: state.clone(), source })?;
        let path = state.join(DIRECTORY_VERSION_FILE);
        let seen = std::fs::read_to_string(&path).ok().and_then(|t| t.trim().parse::<u64>().ok());
        if seen.is_none_or(|s| s < p.min_directory_version) {
            write_text_atomic(&path, &format!("{}\n", p.min_directory_version))?;
        }
    }
    for src in p.bundle_files {
        let bundle = keygen::read_bundle(src)?;
        if bundle.agency() != &p.principal.agency {
            return Err(ProfileError::BundleAgency {
                path: src.clone(),
                expected: p.principal.agency.to_string(),
                found: bundle.agency().to_string(),
            });
        }
        let dest = keys_dir.join(format!("{}.key", bundle.key_id()));
        secret_file::write(&dest, bundle.to_key_file().as_bytes(), overwrite)?;
    }
    Ok(())
}

/// Reads every key bundle in `dir/agency-keys/`, newest first, refusing
/// bundles of another agency and files others can read.
pub fn load_bundles(dir: &Path, principal: &Principal) -> Result<Vec<AgencyKeyBundle>, ProfileError> {
    let mut bundles = Vec::new();
    let keys_dir = dir.join(AGENCY_KEYS);
    if keys_dir.is_dir() {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(&keys_dir)
            .map_err(|source| ProfileError::Io { path: keys_dir.clone(), source })?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "key"))
            .collect();
        paths.sort();
        for path in paths {
            let bundle = keygen::read_bundle(&path)?;
            if bundle.agency() != &principal.agency {
                return Err(ProfileError::BundleAgency {
                    path,
                    expected: principal.agency.to_string(),
                    found: bundle.agency().to_string(),
                });
            }
            bundles.push(bundle);
        }
    }
    bundles.sort_by_key(|b| std::cmp::Reverse(b.public().not_before));
    Ok(bundles)
}

/// Copies a key bundle file into a profile's `agency-keys/` (mode 0600).
pub fn add_bundle(dir: &Path, bundle_file: &Path) -> Result<(), ProfileError> {
    let bundle = keygen::read_bundle(bundle_file)?;
    let keys_dir = dir.join(AGENCY_KEYS);
    crate::durable_file::create_dir_all(&keys_dir)
        .map_err(|source| ProfileError::Io { path: keys_dir.clone(), source })?;
    secret_file::write(&keys_dir.join(format!("{}.key", bundle.key_id())), bundle.to_key_file().as_bytes(), false)?;
    Ok(())
}

impl Profile {
    /// Loads and checks a profile folder at time `now`.
    pub fn load(dir: &Path, now: Timestamp) -> Result<Self, ProfileError> {
        let file_path = dir.join(PROFILE_FILE);
        if !file_path.is_file() {
            return Err(ProfileError::NotAProfile(dir.to_owned()));
        }
        let invalid = |path: &Path, message: String| ProfileError::Invalid { path: path.to_owned(), message };
        let text = read_text(&file_path)?;
        let file: ProfileFile = crate::from_toml(&text).map_err(|e| invalid(&file_path, e))?;
        let principal = Principal::parse_uri(&file.principal).map_err(|e| invalid(&file_path, e.to_string()))?;
        if !file.broker.starts_with("https://") {
            return Err(invalid(&file_path, format!("broker {:?} must be an https:// address", file.broker)));
        }
        let required = |name: &str| {
            let p = dir.join(name);
            if p.exists() { Ok(p) } else { Err(ProfileError::Missing { path: p }) }
        };
        let cert_path = required(CERT)?;
        let cert_pem = read_text(&cert_path)?;
        let info = cert_info(&cert_pem).map_err(|e| invalid(&cert_path, e.to_string()))?;
        if !info.uris.contains(&principal.uri()) {
            return Err(ProfileError::PrincipalMismatch {
                path: cert_path,
                expected: principal.uri(),
                found: info.uris.join(", "),
            });
        }
        if now >= info.not_after {
            return Err(ProfileError::Expired { path: cert_path, not_after: info.not_after });
        }
        if now < info.not_before {
            return Err(ProfileError::NotYetValid { path: cert_path, not_before: info.not_before });
        }
        let key_pem = secret_file::read(&required(KEY)?)?;
        let ca_pem = read_text(&required(CA)?)?;
        let federation_key = read_federation_key(&required(FEDERATION_PUB)?)?;
        let bundles = load_bundles(dir, &principal)?;
        if need_bundles(principal.role) && bundles.is_empty() {
            return Err(ProfileError::NoAgencyKeys { dir: dir.to_owned(), role: principal.role });
        }
        Ok(Self {
            dir: dir.to_owned(),
            principal,
            broker: file.broker,
            server_name: file.server_name,
            ca_pem,
            cert_pem,
            key_pem,
            cert_not_after: info.not_after,
            federation_key,
            bundles,
        })
    }

    /// Where the client keeps what it remembers between runs.
    pub fn state_dir(&self) -> PathBuf {
        self.dir.join(STATE)
    }

    /// The bundle to sign and seal with at `now`: the newest one valid then.
    pub fn current_bundle(&self, now: Timestamp) -> Option<&AgencyKeyBundle> {
        self.bundles.iter().find(|b| b.public().valid_at(now))
    }
}
